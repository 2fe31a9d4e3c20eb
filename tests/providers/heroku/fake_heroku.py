"""A contract fake of the Heroku Platform API and the Heroku Postgres Data API, on 127.0.0.1.

Two loopback HTTP servers (tests/providers/loopback.py; one per API, so a client that mixes up
base URLs gets 404s) share one state and one request log, backed by a real PostgreSQL database:

- an add-on's default attachment (DATABASE_URL) points at the database as an owner role the fake
  creates (owner of the database, no CREATEROLE, like Heroku's default credential);
- the public schema loses its PUBLIC grants, so new credentials lack USAGE as on Heroku;
- creating a credential CREATE ROLEs a real login (after `provision_polls` looks in `provisioning`),
  rotating ALTER ROLEs a new password and rewrites every attached config var, destroying
  REASSIGNs/DROPs what the role owned and DROP ROLEs it, and is refused while it is attached;
- attaching an add-on with namespace `credential:{name}` sets `{NAME}_URL` to that credential's URL;
  a name already in use (an attachment of that name, or any attachment's or plain config var
  `{NAME}_URL`) is answered `423 confirmation_required` unless the body carries `confirm: <app>`,
  which replaces it (the real API's status and body: heroku CLI lib/addons/util.js
  `trapConfirmationRequired`, and its nock fixtures of `addons:attach`);
- attachment reads honour `Accept-Inclusion: addon:plan,config_vars` (without it an attachment's
  add-on carries only id, name and app, as the Platform API answers);
- every config change is a release; `GET /apps/{app}/releases` answers them with `Range`
  (`version ..; max=N, order=desc`), 206 when more remain, as the CLI reads them after attaching;
- Data API auth is checked per call the way the CLI sends it: Basic `:token` for the credential
  list, one credential and a rotation, Bearer for create, destroy and connection pooling; the
  other scheme is answered 401 (and kept in `auth_rejections`);
- a credential's users can be `active` before its own state says so (`store_lag` looks in
  `provisioning`, then `ready_state`, e.g. `created`), as the CLI's fixtures show;
- `POST /client/v11/databases/{addon}/connection-pooling` (`heroku pg:connection-pooling:attach`)
  attaches a credential through the pooler: namespace `connection-pooling:{credential}`, and
  `{NAME}_URL` names the pooler's address (`pooler`: (host, port), e.g. a real PgBouncer).

`shared_port=True` serves both APIs on one port, told apart by path (/postgres/…, /client/… are
the Data API's), the way the Heroku CLI reaches them: HEROKU_DATA_HOST takes HEROKU_HOST's scheme
and port (`cli_environ()`), so the real `heroku` client can be pointed at this fake.

Every request is recorded (`requests`) so tests assert exact paths, headers and bodies. Faults are
injected with `inject()`: 429 with Retry-After, 500/503, an arbitrary error status, a slow
response (read timeout), a dropped connection. `latency` adds per-request delay, and `rate_limit`
runs a per-token bucket that answers 429 with Retry-After when empty; every response carries
RateLimit-Remaining. Passwords the fake generates can be chosen through `passwords`.

Usable outside pytest (benchmarks): `FakeHeroku(...).start()`, then `.stop()`.
"""

from __future__ import annotations

import base64
import math
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import psycopg
from psycopg import sql

from tests.providers.loopback import Dropped, LoopbackServer, Request

ACCEPT = "application/vnd.heroku+json; version=3"
# the API variants the CLI also sends (3.sdk: @heroku/heroku-cli-util's resolvers)
ACCEPTED = (ACCEPT, "application/vnd.heroku+json; version=3.sdk")
DEFAULT_TOKEN = "fake-heroku-token-0123456789"
_NOW = "2025-01-01T00:00:00Z"


@dataclass
class Fault:
    kind: str                    # "429" | "500" | "503" | "error" | "slow" | "reset"
    method: str | None
    path: re.Pattern[str] | None
    api: str | None
    count: int
    retry_after: float = 1
    delay: float = 2.0
    when: str = "before"         # slow/reset: before or after the request takes effect
    status: int = 500
    error_id: str = "server_error"
    message: str = "Internal server error."

    def matches(self, api: str, method: str, path: str) -> bool:
        return (self.count > 0 and (self.api is None or self.api == api)
                and (self.method is None or self.method == method)
                and (self.path is None or self.path.search(path) is not None))


class ApiError(Exception):
    def __init__(self, status: int, ident: str, message: str) -> None:
        super().__init__(message)
        self.status, self.ident, self.message = status, ident, message


@dataclass
class _Credential:
    uuid: str
    name: str
    addon_id: str
    state: str
    password: str
    polls: int                       # looks left before the current transition completes
    pending: str | None = None       # "create" | "rotate" | "destroy"
    role_created: bool = False
    lag: int = 0                     # looks left in `provisioning` after the user became active
    old_password: str = ""           # the password before the rotation in progress


@dataclass
class _Addon:
    id: str
    name: str
    app: str
    plan: str
    owner: str
    owner_password: str
    state: str = "provisioned"
    credentials: dict[str, _Credential] = field(default_factory=dict)


@dataclass
class _Attachment:
    id: str
    name: str
    app: str
    addon_id: str
    namespace: str | None


class FakeHeroku:
    def __init__(self, *, admin_dsn: str | None, database: str, port: int, host: str = "127.0.0.1",
                 advertised_host: str | None = None, advertised_port: int | None = None,
                 tokens: tuple[str, ...] = (DEFAULT_TOKEN,), latency: float = 0.0,
                 rate_limit: int | None = None, rate_window_seconds: float = 3600.0,
                 provision_polls: int = 1, rotation_polls: int = 1, revoke_polls: int = 1,
                 store_lag: int = 0, ready_state: str = "active",
                 pooler: tuple[str, int] | None = None, shared_port: bool = False,
                 rotation_user: bool = False) -> None:
        """admin_dsn: a superuser conninfo for `database` (None: no PostgreSQL behind, for pure HTTP
        benchmarks; credentials then exist only in the fake). host/port: where apps reach the
        server; advertised_*: what the APIs report instead (to exercise `connect:` overrides).
        latency: seconds added to every request. rate_limit: requests per token per
        rate_window_seconds (a refilling bucket); None: unlimited. store_lag: looks for which a
        new credential stays `provisioning` after its user is active; ready_state: its state after
        that. pooler: (host, port) that connection-pooling URLs name; None: pooling unavailable.
        rotation_user: while a rotation runs, the active user is a temporary `{name}-rotating`
        and the credential's own user is `revoking` (the CLI's fixtures; no database role behind it)."""
        self.admin_dsn = admin_dsn
        self.database = database
        self.pg_host, self.pg_port = host, port
        self.advertised_host = advertised_host or host
        self.advertised_port = advertised_port or port
        self.tokens = set(tokens)
        self.token = tokens[0]
        self.latency = latency
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.provision_polls, self.rotation_polls, self.revoke_polls = provision_polls, rotation_polls, revoke_polls
        self.store_lag, self.ready_state = store_lag, ready_state
        self.rotation_user = rotation_user
        self.pooler = pooler
        self.auth_rejections: list[str] = []   # "METHOD path: wanted Basic" for each call sent with the wrong scheme
        self.release_log: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[Request] = []
        self.errors: list[str] = []          # bugs inside the fake: tests assert this stays empty
        self.passwords: list[str] = []       # next generated passwords, in order (test hook)
        self.releases: dict[str, int] = {}
        self.restarts: dict[str, int] = {}
        self.delayed_seconds = 0.0           # latency and slow faults actually applied
        self._apps: dict[str, dict[str, Any]] = {}
        self._config: dict[str, dict[str, str]] = {}
        self._addons: dict[str, _Addon] = {}
        self._attachments: dict[str, _Attachment] = {}
        self._faults: list[Fault] = []
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.RLock()
        self._apis = {"shared": _Api(self, "shared")} if shared_port else {api: _Api(self, api) for api in ("platform", "data")}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FakeHeroku":
        for server in self._apis.values():
            server.start()
        return self

    def stop(self) -> None:
        for server in self._apis.values():
            server.stop()

    def __enter__(self) -> "FakeHeroku":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def _servers(self) -> dict[str, ThreadingHTTPServer]:
        """The running HTTP servers by API (benchmarks tune their sockets)."""
        return {api: s.httpd for api, s in self._apis.items() if s.httpd is not None}

    @property
    def platform_url(self) -> str:
        return (self._apis.get("platform") or self._apis["shared"]).url

    @property
    def data_url(self) -> str:
        return (self._apis.get("data") or self._apis["shared"]).url

    def cli_environ(self) -> dict[str, str]:
        """The Heroku CLI's own variables for this fake (shared_port only: the CLI reaches the
        Data API on HEROKU_HOST's port)."""
        if "shared" not in self._apis:
            raise ValueError("the Heroku CLI needs both APIs on one port: FakeHeroku(shared_port=True)")
        return {"HEROKU_API_KEY": self.token, "HEROKU_HOST": self.platform_url, "HEROKU_DATA_HOST": "127.0.0.1"}

    def environ(self) -> dict[str, str]:
        """The environment a client needs to talk to this fake."""
        return {"HEROKU_API_KEY": self.token, "HEROKU_API_URL": self.platform_url,
                "HEROKU_DATA_API_URL": self.data_url}

    # -- set-up helpers (no HTTP) ------------------------------------------------------------

    def add_app(self, name: str) -> str:
        with self._lock:
            if name not in self._apps:
                self._apps[name] = {"id": str(uuid.uuid4()), "name": name}
                self._config[name] = {}
                self.releases[name] = self.restarts[name] = 0
                self.release_log[name] = []
            return self._apps[name]["id"]

    def add_addon(self, app: str, *, owner: str, plan: str = "heroku-postgresql:standard-0",
                  name: str | None = None, attachment: str = "DATABASE", state: str = "provisioned",
                  elsewhere: bool = False) -> str:
        """Provision a Heroku Postgres add-on on `app` whose owner is the real role `owner`.
        elsewhere: its database is not the one behind this fake (another app's): no PostgreSQL change."""
        self.add_app(app)
        password = self._password()
        addon = _Addon(id=str(uuid.uuid4()), name=name or f"postgresql-{secrets.token_hex(3)}-{len(self._addons) + 10000}",
                       app=app, plan=plan, owner=owner, owner_password=password, state=state)
        if self.admin_dsn and not elsewhere:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(owner), sql.Literal(_verifier(conn, owner, password))))
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(self.database), sql.Identifier(owner)))
                # Heroku: credentials other than the owner start without USAGE on public
                conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        with self._lock:
            self._addons[addon.id] = addon
            if attachment:
                self._attach(addon, app, attachment, None)
        return addon.id

    def addon(self, ref: str) -> dict[str, Any]:
        with self._lock:
            return self._addon_json(self._find_addon(ref))

    def create_credential(self, addon_ref: str, name: str, password: str | None = None) -> None:
        """A credential made outside the tool (e.g. by hand with the CLI), already active."""
        with self._lock:
            addon = self._find_addon(addon_ref)
            cred = _Credential(str(uuid.uuid4()), name, addon.id, "active", password or self._password(), 0)
            self._create_role(cred)
            addon.credentials[name] = cred

    def credential_password(self, addon_ref: str, name: str) -> str:
        with self._lock:
            return self._find_addon(addon_ref).credentials[name].password

    def owner_url(self, addon_ref: str) -> str:
        with self._lock:
            addon = self._find_addon(addon_ref)
            return self._url(addon.owner, addon.owner_password)

    def config_vars(self, app: str) -> dict[str, str]:
        with self._lock:
            return dict(self._config[app])

    def set_config_var(self, app: str, key: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._config[app].pop(key, None)
            else:
                self._config[app][key] = value

    def attachments(self, app: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [self._attachment_json(a, include="addon:plan,config_vars")
                    for a in self._attachments.values() if app is None or a.app == app]

    def attach(self, app: str, addon_ref: str, name: str, credential: str | None = None) -> None:
        """An attachment made outside the tool (by hand, or of another add-on)."""
        with self._lock:
            addon = self._find_addon(addon_ref)
            self.add_app(app)
            self._attach(addon, app, name, f"credential:{credential}" if credential else None)

    def inject(self, kind: str, *, method: str | None = None, path: str | None = None, api: str | None = None,
               count: int = 1, retry_after: float = 1, delay: float = 2.0, when: str = "before",
               status: int = 500, error_id: str = "server_error", message: str = "Internal server error.") -> None:
        """Fail the next `count` matching requests. kind: "429" (Retry-After: retry_after), "500",
        "503", "error" (status/error_id/message), "slow" (answer `delay` seconds late; when="after":
        the change is made before the delay), "reset" (drop the connection; when="after": the
        change is made first)."""
        if kind not in ("429", "500", "503", "error", "slow", "reset"):
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._faults.append(Fault(kind, method, re.compile(path) if path else None, api, count, retry_after,
                                      delay, when, status, error_id, message))

    def mutating(self) -> list[Request]:
        return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- internals: state --------------------------------------------------------------------

    def _password(self) -> str:
        return self.passwords.pop(0) if self.passwords else "p" + secrets.token_hex(32)

    def _url(self, user: str, password: str) -> str:
        return (f"postgres://{quote(user, safe='')}:{quote(password, safe='')}@{self.advertised_host}:"
                f"{self.advertised_port}/{quote(self.database, safe='')}")

    def _find_app(self, ref: str) -> str:
        for name, app in self._apps.items():
            if ref in (name, app["id"]):
                return name
        raise ApiError(404, "not_found", "Couldn't find that app.")

    def _find_addon(self, ref: str, app: str | None = None) -> _Addon:
        for addon in self._addons.values():
            if ref in (addon.id, addon.name):
                if app is None or addon.app == app or any(
                        a.addon_id == addon.id and a.app == app for a in self._attachments.values()):
                    return addon
        raise ApiError(404, "not_found", "Couldn't find that add-on.")

    def _addon_json(self, addon: _Addon) -> dict[str, Any]:
        vars_ = sorted(f"{a.name}_URL" for a in self._attachments.values() if a.addon_id == addon.id and a.app == addon.app)
        return {
            "id": addon.id, "name": addon.name, "state": addon.state, "config_vars": vars_,
            "addon_service": {"id": "6c67493d-8fc2-4cd4-9161-4f1ec11cbe69", "name": "heroku-postgresql"},
            "app": {"id": self._apps[addon.app]["id"], "name": addon.app},
            "plan": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, addon.plan)), "name": addon.plan},
            "provider_id": f"resource{addon.id[:8]}@heroku.com", "created_at": _NOW, "updated_at": _NOW,
            "web_url": f"https://data.heroku.com/datastores/{addon.id}",
        }

    def _attachment_json(self, att: _Attachment, include: str | None = None) -> dict[str, Any]:
        """An attachment as the Platform API serialises it; `include` is the request's
        Accept-Inclusion (`addon:plan`, `config_vars`), which adds those fields."""
        addon = self._addons[att.addon_id]
        wanted = {part.strip() for part in (include or "").split(",")}
        ref = {"id": addon.id, "name": addon.name, "app": {"id": self._apps[addon.app]["id"], "name": addon.app}}
        if "addon:plan" in wanted:
            ref["plan"] = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, addon.plan)), "name": addon.plan}
        answer = {
            "id": att.id, "name": att.name, "namespace": att.namespace, "addon": ref,
            "app": {"id": self._apps[att.app]["id"], "name": att.app},
            "created_at": _NOW, "updated_at": _NOW, "web_url": None,
        }
        if "config_vars" in wanted:
            answer["config_vars"] = [f"{att.name}_URL"]
        return answer

    def _credential_json(self, addon: _Addon, cred: _Credential) -> dict[str, Any]:
        live = cred.role_created and cred.state not in ("revoking",) and cred.pending != "create"
        users = [{"user": cred.name, "password": cred.password, "connections": 0,
                  "state": "active" if live else "revoking" if cred.state == "revoking" else "enabling"}]
        if self.rotation_user and cred.pending == "rotate":
            users = [{"user": cred.name, "password": cred.old_password, "connections": 0, "state": "revoking"},
                     {"user": f"{cred.name}-rotating", "password": cred.password, "connections": 0, "state": "active"}]
        return {"uuid": cred.uuid, "name": cred.name, "state": cred.state, "database": self.database,
                "host": self.advertised_host, "port": self.advertised_port, "credentials": users}

    def _release(self, app: str, description: str = "Set config vars") -> None:
        self.releases[app] += 1
        self.restarts[app] += 1
        self.release_log[app].append({
            "id": str(uuid.uuid4()), "version": self.releases[app], "description": description,
            "status": "succeeded", "current": True, "created_at": _NOW, "updated_at": _NOW,
            "app": {"id": self._apps[app]["id"], "name": app}})

    def _value_for(self, att: _Attachment) -> str:
        addon = self._addons[att.addon_id]
        if att.namespace is None:
            return self._url(addon.owner, addon.owner_password)
        kind, _, cred_name = att.namespace.partition(":")
        cred = addon.credentials[cred_name] if cred_name != "default" else None
        user, password = (cred.name, cred.password) if cred else (addon.owner, addon.owner_password)
        if kind == "connection-pooling":
            host, port = self.pooler or (self.advertised_host, self.advertised_port)
            return (f"postgres://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
                    f"{quote(self.database, safe='')}")
        return self._url(user, password)

    def _attach(self, addon: _Addon, app: str, name: str, namespace: str | None) -> _Attachment:
        att = _Attachment(str(uuid.uuid4()), name, app, addon.id, namespace)
        self._attachments[att.id] = att
        self._config[app][f"{name}_URL"] = self._value_for(att)
        self._release(app, f"Attach {name} ({addon.name})")
        return att

    def _advance(self, addon: _Addon, cred: _Credential) -> None:
        """One look at a credential: pending transitions complete after their polls run out."""
        if cred.polls > 0:
            cred.polls -= 1
            return
        if cred.pending == "create":
            self._create_role(cred)
            cred.pending, cred.lag = "settle", self.store_lag
            self._advance(addon, cred)
        elif cred.pending == "settle":
            # the user is active; the store's own state follows `lag` looks later
            if cred.lag > 0:
                cred.lag -= 1
                return
            cred.state, cred.pending = self.ready_state, None
        elif cred.pending == "rotate":
            cred.state, cred.pending = "active", None
        elif cred.pending == "destroy":
            del addon.credentials[cred.name]

    # -- internals: PostgreSQL ---------------------------------------------------------------

    def _create_role(self, cred: _Credential) -> None:
        if self.admin_dsn:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(cred.name), sql.Literal(_verifier(conn, cred.name, cred.password))))
        cred.role_created = True

    def _rotate_role(self, cred: _Credential) -> None:
        if self.admin_dsn:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(cred.name), sql.Literal(_verifier(conn, cred.name, cred.password))))
                # like Heroku, sessions on the old password are reset
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (cred.name,))

    def _drop_role(self, addon: _Addon, cred: _Credential) -> None:
        if not cred.role_created:
            return
        role, owner = sql.Identifier(cred.name), sql.Identifier(addon.owner)
        if self.admin_dsn:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (cred.name,))
                # Heroku: objects the credential owned are handed to the default credential
                conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, owner))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
                conn.execute(sql.SQL("DROP ROLE {}").format(role))
        cred.role_created = False

    # -- internals: HTTP ---------------------------------------------------------------------

    def _take_fault(self, api: str, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(api, method, path):
                    fault.count -= 1
                    return fault
        return None

    def _delay(self, seconds: float) -> None:
        time.sleep(seconds)
        with self._lock:
            self.delayed_seconds += seconds

    def _rate(self, token: str) -> tuple[bool, int, float]:
        """(allowed, remaining, retry_after) for one request under the per-token bucket."""
        if self.rate_limit is None:
            return True, 4500, 0.0
        refill = self.rate_limit / self.rate_window_seconds
        with self._lock:
            now = time.monotonic()
            tokens, stamp = self._buckets.get(token, (float(self.rate_limit), now))
            tokens = min(float(self.rate_limit), tokens + (now - stamp) * refill)
            if tokens < 1:
                self._buckets[token] = (tokens, now)
                return False, 0, math.ceil((1 - tokens) / refill)
            tokens -= 1
            self._buckets[token] = (tokens, now)
            return True, int(tokens), 0.0

    def answer(self, api: str, record: Request) -> tuple[int, Any, dict[str, str]]:
        """One recorded request on `api`: latency, the token, the rate limit, the version header,
        an injected fault, then the API itself."""
        if self.latency:
            self._delay(self.latency)
        scheme, token = _auth(record.header("Authorization"))
        allowed, remaining, retry_after = self._rate(token or "")
        extra = {"RateLimit-Remaining": str(remaining)}
        if token not in self.tokens:
            return 401, {"id": "unauthorized", "message": "Invalid credentials provided."}, extra
        wanted = _scheme_for(api, record.method, record.path)
        if scheme != wanted:
            with self._lock:
                self.auth_rejections.append(f"{record.method} {record.path}: wanted {wanted}, got {scheme}")
            return 401, {"id": "unauthorized", "message": "Invalid credentials provided."}, extra
        if not allowed:
            record.fault = "rate_limit"
            return 429, {"id": "rate_limit", "message": "Your account reached the API rate limit\nPlease wait a few minutes before making new requests"}, {
                **extra, "Retry-After": _num(retry_after)}
        if api == "platform" and record.header("Accept") not in ACCEPTED:
            return 400, {"id": "missing_version", "message": f"Please specify a version along with Heroku's API MIME type. For example, `Accept: {ACCEPT}`."}, extra
        fault = self._take_fault(api, record.method, record.path)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "429":
                return 429, {"id": "rate_limit", "message": "Your account reached the API rate limit\nPlease wait a few minutes before making new requests"}, {
                    "RateLimit-Remaining": "0", "Retry-After": _num(fault.retry_after)}
            if fault.kind in ("500", "503"):
                ident = "server_error" if fault.kind == "500" else "service_unavailable"
                return int(fault.kind), {"id": ident, "message": "Heroku is temporarily unavailable."}, extra
            if fault.kind == "error":
                return fault.status, {"id": fault.error_id, "message": fault.message}, extra
            if fault.when == "before":
                if fault.kind == "reset":
                    raise Dropped()
                self._delay(fault.delay)
        try:
            status, payload, *more = self.dispatch(api, record.method, record.path, record.body, record.headers)
            extra.update(*more)
        except ApiError as exc:
            status, payload = exc.status, {"id": exc.ident, "message": exc.message}
        if fault is not None and fault.when == "after":
            if fault.kind == "reset":
                raise Dropped()
            self._delay(fault.delay)
        return status, payload, extra

    def dispatch(self, api: str, method: str, path: str, body: Any,
                 headers: dict[str, str] | None = None) -> tuple[Any, ...]:
        """(status, payload) or (status, payload, response headers). `headers`: the request's,
        lower-case names."""
        with self._lock:
            if api == "platform":
                return self._platform(method, path, body, headers or {})
            return self._data(method, path, body)

    def _platform(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[Any, ...]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        include = headers.get("accept-inclusion")
        match method, parts:
            case "GET", ["apps", app, "addons", ref]:
                return 200, self._addon_json(self._find_addon(ref, self._find_app(app)))
            case "GET", ["addons", ref]:
                return 200, self._addon_json(self._find_addon(ref))
            case "GET", ["apps", app, "addon-attachments"]:
                app = self._find_app(app)
                return 200, [self._attachment_json(a, include) for a in self._attachments.values() if a.app == app]
            case "GET", ["apps", app, "addon-attachments", ref]:
                app = self._find_app(app)
                for att in self._attachments.values():
                    if att.app == app and ref in (att.id, att.name):
                        return 200, self._attachment_json(att, include)
                raise ApiError(404, "not_found", "Couldn't find that add on attachment.")
            case "GET", ["addons", ref, "addon-attachments"]:
                addon = self._find_addon(ref)
                return 200, [self._attachment_json(a, include) for a in self._attachments.values() if a.addon_id == addon.id]
            case "GET", ["apps", app, "releases"]:
                return self._releases(self._find_app(app), headers.get("range"))
            case "POST", ["actions", "addon-attachments", "resolve"]:
                return 200, self._resolve(body, include)
            case "GET", ["addons", ref, "config", namespace]:
                # the credential's config as `heroku addons:attach --credential` checks it exists
                addon = self._find_addon(ref)
                kind, _, cred_name = namespace.partition(":")
                cred = addon.credentials.get(cred_name) if kind == "credential" else None
                if cred is None or not cred.role_created:
                    return 200, []
                return 200, [{"name": "URL", "value": self._url(cred.name, cred.password)}]
            case "POST", ["addon-attachments"]:
                return 201, self._create_attachment(body)
            case "DELETE", ["addon-attachments", ref]:
                att = self._attachments.get(ref)
                if att is None:
                    raise ApiError(404, "not_found", "Couldn't find that add on attachment.")
                answer = self._attachment_json(att)
                del self._attachments[ref]
                self._config[att.app].pop(f"{att.name}_URL", None)
                self._release(att.app, f"Detach {att.name}")
                return 200, answer
            case "GET", ["apps", app, "config-vars"]:
                return 200, dict(self._config[self._find_app(app)])
            case "PATCH", ["apps", app, "config-vars"]:
                return 200, self._patch_config(self._find_app(app), body)
            case "DELETE", ["apps", app, "dynos"]:
                self.restarts[self._find_app(app)] += 1
                return 202, {}
        raise ApiError(404, "not_found", "The requested API endpoint was not found. Are you using the right HTTP verb (i.e. `GET` vs. `POST`), and did you specify your intended version with the `Accept` header?")

    def _create_attachment(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or "addon" not in body or "app" not in body:
            raise ApiError(422, "invalid_params", "Missing required params: addon, app.")
        app = self._find_app(_ref(body["app"]))
        addon = self._find_addon(_ref(body["addon"]))
        namespace = body.get("namespace")
        if namespace is not None:
            kind, _, cred_name = str(namespace).partition(":")
            cred = addon.credentials.get(cred_name)
            # credential:{name}, or connection-pooling:{name} as `heroku pg:promote` re-attaches a pooler
            known = cred is not None and cred.role_created or (kind == "connection-pooling" and cred_name == "default")
            if kind not in ("credential", "connection-pooling") or not known:
                raise ApiError(422, "invalid_params", f"Could not find credential {cred_name} for database {addon.name}.")
        name = body.get("name") or f"HEROKU_POSTGRESQL_{secrets.token_hex(2).upper()}"
        return self._attachment_json(self._attach_named(addon, app, str(name), namespace, body.get("confirm")))

    def _resolve(self, body: Any, include: str | None) -> list[dict[str, Any]]:
        """POST /actions/addon-attachments/resolve: the app's attachments named `addon_attachment`,
        or of the add-on of that name/id (@heroku/heroku-cli-util dist/utils/addons/attachment-resolver.js)."""
        if not isinstance(body, dict) or not isinstance(body.get("addon_attachment"), str):
            raise ApiError(422, "invalid_params", "Missing required params: addon_attachment.")
        ref = body["addon_attachment"]
        app = self._find_app(str(body["app"])) if body.get("app") else None
        found = [a for a in self._attachments.values() if (app is None or a.app == app) and (
            ref in (a.name, a.id) or ref in (self._addons[a.addon_id].name, a.addon_id))]
        if not found:
            raise ApiError(404, "not_found", "Couldn't find that add on attachment.")
        return [self._attachment_json(a, include) for a in found]

    def _attach_named(self, addon: _Addon, app: str, name: str, namespace: str | None, confirm: Any) -> _Attachment:
        """Attach as `name`, after the checks the Platform API makes: a valid name, and a name
        whose variable is in use answered 423 confirmation_required unless `confirm` is the app;
        confirmed, the attachments holding it are replaced."""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ApiError(422, "invalid_params", "Name must start with a letter and can only contain uppercase letters, numbers, and underscores.")
        var = f"{name}_URL"
        same = [a for a in self._attachments.values() if a.app == app and (a.name == name or f"{a.name}_URL" == var)]
        if (same or var in self._config[app]) and confirm != app:
            raise ApiError(423, "confirmation_required", f"Adding {name} to app {app} would overwrite existing vars {var}.")
        for old in same:
            del self._attachments[old.id]
        return self._attach(addon, app, name, namespace)

    def _releases(self, app: str, range_header: str | None) -> tuple[int, Any, dict[str, str]]:
        """The app's releases by version; `Range: version ..; max=N, order=desc` as the CLI asks
        (206 Partial Content with Next-Range when more remain, as the Platform API pages)."""
        log = list(self.release_log[app])
        limit, desc = 200, False
        if range_header:
            m = re.fullmatch(r"version\s+\.\.\s*(?:;\s*(.*))?", range_header.strip())
            if m is None:
                raise ApiError(400, "bad_request", f"Invalid Range header: {range_header}")
            for option in filter(None, (o.strip() for o in (m.group(1) or "").split(","))):
                key, _, value = option.partition("=")
                if key == "max" and value.isdigit() and 0 < int(value) <= 1000:
                    limit = int(value)
                elif key == "order" and value in ("asc", "desc"):
                    desc = value == "desc"
                else:
                    raise ApiError(400, "bad_request", f"Invalid Range header: {range_header}")
        if desc:
            log.reverse()
        page = log[:limit]
        if len(log) > limit:
            nxt = page[-1]["version"]
            return 206, page, {"Next-Range": f"version {'' if desc else ']'}{nxt}..; max={limit}, order={'desc' if desc else 'asc'}"}
        return 200, page

    def _patch_config(self, app: str, body: Any) -> dict[str, str]:
        if not isinstance(body, dict) or not all(isinstance(v, (str, type(None))) for v in body.values()):
            raise ApiError(422, "invalid_params", "Config vars must be a hash of strings or nulls.")
        managed = {f"{a.name}_URL" for a in self._attachments.values() if a.app == app}
        clash = sorted(set(body) & managed)
        if clash:
            raise ApiError(422, "invalid_params", f"Cannot overwrite attachment values {', '.join(clash)}.")
        for key, value in body.items():
            if value is None:
                self._config[app].pop(key, None)
            else:
                self._config[app][key] = value
        self._release(app)
        return dict(self._config[app])

    def _data(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and len(parts) == 5 and parts[:3] == ["client", "v11", "databases"] and parts[4] == "connection-pooling":
            return 201, self._connection_pooling(parts[3], body)
        if parts[:3] != ["postgres", "v0", "databases"] or len(parts) < 5 or parts[4] != "credentials":
            raise ApiError(404, "not_found", "Not found.")
        try:
            addon = self._find_addon(parts[3])
        except ApiError:
            raise ApiError(404, "not_found", f"Couldn't find database {parts[3]}.") from None
        tier = addon.plan.partition(":")[2]
        rest = parts[5:]
        match method, rest:
            case "GET", []:
                for cred in list(addon.credentials.values()):
                    self._advance(addon, cred)
                return 200, [self._credential_json(addon, c) for c in addon.credentials.values()]
            case "POST", []:
                if re.match(r"(essential|dev|basic|mini|hobby)", tier):
                    raise ApiError(422, "unprocessable_entity", "You can't create a custom credential on Essential-tier databases.")
                name = body.get("name") if isinstance(body, dict) else None
                if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
                    raise ApiError(422, "invalid_params", "Name must be lower-case letters, digits and underscores.")
                if name in addon.credentials or name in ("default", addon.owner):
                    raise ApiError(422, "unprocessable_entity", f"A credential named {name} already exists on {addon.name}.")
                addon.credentials[name] = _Credential(str(uuid.uuid4()), name, addon.id, "provisioning",
                                                      self._password(), self.provision_polls, "create")
                return 200, {"message": f"Credential {name} is being created within {addon.name}."}
            case "GET", [name]:
                cred = addon.credentials.get(name)
                if cred is not None:
                    self._advance(addon, cred)
                    cred = addon.credentials.get(name)
                if cred is None:
                    raise ApiError(404, "not_found", f"Couldn't find credential {name} on {addon.name}.")
                return 200, self._credential_json(addon, cred)
            case "DELETE", [name]:
                cred = addon.credentials.get(name)
                if cred is None or cred.pending == "destroy":
                    raise ApiError(404, "not_found", f"Couldn't find credential {name} on {addon.name}.")
                apps = sorted({a.app for a in self._attachments.values() if a.addon_id == addon.id
                               and a.namespace in (f"credential:{name}", f"connection-pooling:{name}")})
                if apps:
                    raise ApiError(422, "unprocessable_entity",
                                   f"Credential {name} must be detached from the app{'s' if len(apps) > 1 else ''} "
                                   f"{', '.join(apps)} before destroying.")
                self._drop_role(addon, cred)
                cred.state, cred.pending, cred.polls = "revoking", "destroy", self.revoke_polls
                return 200, {"message": f"The credential {name} has been destroyed within {addon.name} and detached from all apps."}
            case "POST", [name, "credentials_rotation"]:
                cred = addon.credentials.get(name)
                if cred is None or cred.pending is not None:
                    raise ApiError(404 if cred is None else 422, "not_found" if cred is None else "unprocessable_entity",
                                   f"Couldn't find credential {name} on {addon.name}." if cred is None
                                   else f"Credential {name} is {cred.state}; try again later.")
                cred.old_password, cred.password = cred.password, self._password()
                self._rotate_role(cred)
                cred.state, cred.pending, cred.polls = "rotating", "rotate", self.rotation_polls
                for att in self._attachments.values():
                    if att.addon_id == addon.id and att.namespace in (f"credential:{name}", f"connection-pooling:{name}"):
                        self._config[att.app][f"{att.name}_URL"] = self._value_for(att)
                        self._release(att.app)
                return 200, {"message": f"Rotating credential {name} on {addon.name}."}
        raise ApiError(404, "not_found", "Not found.")


    def _connection_pooling(self, ref: str, body: Any) -> dict[str, Any]:
        """`heroku pg:connection-pooling:attach`: dist/commands/pg/connection-pooling/attach.js
        posts {app, credential, name} (name optional: DATABASE_CONNECTION_POOL, as Dev Center's
        article on connection pooling describes) and reads the attachment from the answer."""
        try:
            addon = self._find_addon(ref)
        except ApiError:
            raise ApiError(404, "not_found", f"Couldn't find database {ref}.") from None
        if re.match(r"(essential|dev|basic|mini|hobby)", addon.plan.partition(":")[2]):
            raise ApiError(422, "unprocessable_entity", "You can't perform this operation on Essential-tier databases.")
        if self.pooler is None:
            raise ApiError(422, "unprocessable_entity", f"Connection pooling is not available for {addon.name}.")
        if not isinstance(body, dict) or not isinstance(body.get("app"), str) or not isinstance(body.get("credential"), str):
            raise ApiError(422, "invalid_params", "Missing required params: app, credential.")
        app = self._find_app(body["app"])
        credential = body["credential"]
        cred = addon.credentials.get(credential)
        if credential != "default" and (cred is None or not cred.role_created):
            raise ApiError(422, "invalid_params", f"Could not find credential {credential} for database {addon.name}.")
        name = body.get("name") or "DATABASE_CONNECTION_POOL"
        att = self._attach_named(addon, app, str(name), f"connection-pooling:{credential}", None)
        return self._attachment_json(att)


def _auth(header: str | None) -> tuple[str | None, str | None]:
    """("Bearer" | "Basic", token) from an Authorization header; Basic carries `:token` (or
    `email:token`, which the API also takes)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme == "Bearer":
        return "Bearer", value
    if scheme == "Basic":
        try:
            user_pass = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return "Basic", None
        return "Basic", user_pass.partition(":")[2]
    return None, None


def _scheme_for(api: str, method: str, path: str) -> str:
    """The auth scheme the Heroku CLI sends on this call: Bearer everywhere (its API client's
    default) except the Data API's credential reads and rotations, which it sends with Basic
    `:token` (dist/commands/pg/credentials.js, pg/credentials/url.js, pg/credentials/rotate.js)."""
    if api == "data" and re.fullmatch(r"/postgres/v0/databases/[^/]+/credentials(/[^/]+(/credentials_rotation)?)?", path):
        if method == "GET" or path.endswith("/credentials_rotation"):
            return "Basic"
    return "Bearer"


def _ref(value: Any) -> str:
    """The API takes an identity as a string or as {"id": …} / {"name": …}."""
    if isinstance(value, dict):
        return str(value.get("id") or value.get("name") or "")
    return str(value)


def _verifier(conn: psycopg.Connection, role: str, password: str) -> str:
    """A SCRAM verifier, so that no plaintext password reaches the server log (log_statement=all)."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


class _Api(LoopbackServer):
    """One of the two APIs: its own port, the fake's shared request log, errors and lock."""
    server_version = "FakeHeroku/1"
    content_type = "application/json; charset=utf-8"
    crash_reply = {"id": "fake_bug", "message": "The fake failed; see fake.errors."}

    def __init__(self, fake: FakeHeroku, api: str) -> None:
        super().__init__(api, requests=fake.requests, errors=fake.errors, lock=fake._lock)
        self.fake = fake

    def respond(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        api = self.name
        if api == "shared":
            api = "data" if request.path.startswith(("/postgres/", "/client/")) else "platform"
            request.api = api
        status, payload, extra = self.fake.answer(api, request)
        return status, payload, {"Request-Id": str(uuid.uuid4()), **extra}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def start_fake(pg: Any, *, app: str = "raxx-api-staging", plan: str = "heroku-postgresql:standard-0",
               addon_name: str = "postgresql-fluffy-12345", **options: Any) -> FakeHeroku:
    """A started fake with one app and one add-on owned by a fresh role, over a `pg` test target."""
    fake = FakeHeroku(admin_dsn=pg.admin_dsn, database=pg.dbname, port=pg.port, **options).start()
    try:
        fake.add_addon(app, owner=pg.role("owner"), plan=plan, name=addon_name)
    except BaseException:
        fake.stop()
        raise
    return fake

