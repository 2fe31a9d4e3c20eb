"""`provider: heroku` — Heroku Postgres through the Platform and Data APIs, and a Heroku app's config vars.

Heroku does not let the database owner create logins (`CREATE ROLE … PASSWORD` fails with
"must be a member of rds_password"), so credentials come from the Data API
(`/postgres/v0/databases/{addon}/credentials`) and reach the app as an add-on attachment with
namespace `credential:{name}`: Heroku then keeps `{NAME}_URL` current through rotations itself.
Grants run over the owner's URL (the add-on's default attachment, e.g. DATABASE_URL).

Token: HEROKU_API_KEY, else the `api.heroku.com` entry of ~/.netrc (the Heroku CLI's convention).
Base URLs: HEROKU_API_URL and HEROKU_DATA_API_URL, so tests and rehearsals point at loopback.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import netrc
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from providers.base import Credential, DatabaseInfo, OpenContext, SslMode
from providers.http import ApiClient, RateBudget, shared_budget
from providers.local import Connect
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret, redact, reveal

log = logging.getLogger(__name__)

PLATFORM_API_URL = "https://api.heroku.com"
DATA_API_URL = "https://api.data.heroku.com"
ACCEPT = "application/vnd.heroku+json; version=3"
NETRC_MACHINE = "api.heroku.com"
SERVICE = "heroku-postgresql"
UPGRADE_PLAN = "heroku-postgresql:standard-0"

# Plan families (the part after "heroku-postgresql:"), as the Heroku CLI classifies them.
_ESSENTIAL = re.compile(r"^(essential|dev|basic|mini|hobby)")     # no named credentials at all
_ADVANCED = re.compile(r"^(advanced|performance)")                # credentials under /data/postgres/v1
# Credential store states in which the active user/password is usable.
_USABLE = ("active", "rotation_completed")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_APP_NAME = re.compile(r"^(?:[a-z][a-z0-9-]{1,29}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
_ADDON_REF = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_POLL_FIRST = 0.1
_POLL_MAX = 5.0


# ---------------------------------------------------------------------------------------------
# configuration


class HerokuDatabaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="heroku database")
    provider: Literal["heroku"] = "heroku"
    addon: str = Field(default="DATABASE", description="the Heroku Postgres add-on: attachment name (DATABASE) or add-on name")
    # not required in the file: filled from the app block's name during validation
    app: str = Field(default="", description="the app the add-on is attached to (default: the app block's name)")
    connect: Connect | None = Field(default=None, description="reach the server at this host/port instead of what Heroku reports")
    sslmode: SslMode = Field(default="require", description="sslmode of the owner URL and the app URL")

    @model_validator(mode="before")
    @classmethod
    def _default_app(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and not data.get("app"):
            app_block = (info.context or {}).get("app") or {}
            name = app_block.get("name") if isinstance(app_block, dict) else None
            if not name:
                raise ValueError("app is required: name the Heroku app here or in the app block (app: {name: …})")
            data = {**data, "app": name}
        return data

    @field_validator("app")
    @classmethod
    def _app(cls, v: str) -> str:
        return _check_app_name(v)

    @field_validator("addon")
    @classmethod
    def _addon(cls, v: str) -> str:
        if not _ADDON_REF.match(v):
            raise ValueError(f"addon {v!r} is not an attachment name (DATABASE) or add-on name (postgresql-shaped-12345)")
        return v

    @field_validator("sslmode")
    @classmethod
    def _sslmode(cls, v: str) -> str:
        if v not in _SSLMODES:
            raise ValueError(f"sslmode {v!r} is not one of {', '.join(_SSLMODES)}")
        return v

    def open(self, ctx: OpenContext) -> "HerokuDatabase":
        return HerokuDatabase(self, ctx)


class HerokuAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="heroku app")
    platform: Literal["heroku"] = "heroku"
    name: str = Field(description="the Heroku app whose config vars hold the role's URL and the flag", examples=['raptor-staging'])
    # the database block's add-on, when it is on Heroku too: what attach_url attaches
    _addon: str | None = PrivateAttr(default=None)
    _addon_app: str | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_app_name(v)

    @model_validator(mode="after")
    def _database(self, info: ValidationInfo) -> "HerokuAppConfig":
        db = (info.context or {}).get("database") or {}
        if isinstance(db, dict) and db.get("provider") == "heroku":
            self._addon = db.get("addon") or "DATABASE"
            self._addon_app = db.get("app") or self.name
        return self

    def open(self, ctx: OpenContext) -> "HerokuApp":
        return HerokuApp(self, ctx)


def _check_app_name(v: str) -> str:
    if not _APP_NAME.match(v):
        raise ValueError(f"{v!r} is not a Heroku app name (lower-case letters, digits and dashes, 2-30 long)")
    return v


# ---------------------------------------------------------------------------------------------
# token, base URLs, clients


def heroku_token(environ: Mapping[str, str]) -> Secret:
    """HEROKU_API_KEY, else the api.heroku.com password in $NETRC or $HOME/.netrc."""
    token = (environ.get("HEROKU_API_KEY") or "").strip()
    if token:
        return Secret(token)
    path = environ.get("NETRC") or (str(Path(environ["HOME"]) / ".netrc") if environ.get("HOME") else None)
    if path and Path(path).is_file():
        try:
            entry = netrc.netrc(path).authenticators(NETRC_MACHINE)
        except netrc.NetrcParseError as exc:
            # never echo the parser's message: it quotes the offending token
            raise ConfigError(f"{path}:{exc.lineno}: not a valid netrc file") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        if entry and entry[2]:
            return Secret(entry[2].strip())
    raise ConfigError(
        f"no Heroku API token: set HEROKU_API_KEY, or run `heroku login` (it writes the {NETRC_MACHINE} entry of ~/.netrc)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(environ: Mapping[str, str], var: str, default: str) -> str:
    url = (environ.get(var) or default).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{var}={url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ConfigError(f"{var}={url}: plain http is allowed only on loopback (the API token would travel in clear)")
    return url


def heroku_error(response: httpx.Response) -> str:
    """`HTTP 422 invalid_params: <Heroku's message>`: the API's own id and text, never the body."""
    ident = message = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        ident, message = body.get("id"), body.get("message")
    text = f"HTTP {response.status_code}"
    if isinstance(ident, str) and ident:
        text += f" {ident[:80]}"
    if isinstance(message, str) and message.strip():
        text += ": " + " ".join(message.split())[:300]
    return text


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProviderError(f"heroku: {what} answered HTTP {response.status_code} without JSON") from None


def _q(segment: str) -> str:
    return quote(segment, safe="")


# writes sent to each account by this process: an answer read before the latest one is stale
_WRITES: dict[str, int] = {}
_WRITES_LOCK = threading.Lock()


class HerokuApi:
    """The Platform API and Data API clients of one provider object (same token, same budget)."""

    def __init__(self, ctx: OpenContext, *, budget: RateBudget | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        token = heroku_token(ctx.environ)
        self.platform_url = _base_url(ctx.environ, "HEROKU_API_URL", PLATFORM_API_URL)
        self.data_url = _base_url(ctx.environ, "HEROKU_DATA_API_URL", DATA_API_URL)
        headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token.reveal()}"}
        account = ctx.budget_key or "heroku:" + hashlib.sha256(token.reveal().encode()).hexdigest()[:16]
        budget = budget or shared_budget(account)
        self.account = account
        common = dict(headers=headers, retry=ctx.retry, transport=ctx.http_transport, budget=budget,
                      describe_error=heroku_error, sleep=sleep)
        self.platform = ApiClient("heroku", self.platform_url, **common)
        self.data = ApiClient("heroku data", self.data_url, **common)

    def close(self) -> None:
        self.platform.close()
        self.data.close()

    def write(self, client: ApiClient, method: str, path: str, **kw: Any) -> httpx.Response:
        """Every change goes through here. Counted before it is sent: one whose answer is lost
        still changed things. (A credential change also changes the config vars it is attached as,
        so the database and app sides of one account share the count.)"""
        with _WRITES_LOCK:
            _WRITES[self.account] = _WRITES.get(self.account, 0) + 1
        return client.request(method, path, **kw)

    def writes(self) -> int:
        with _WRITES_LOCK:
            return _WRITES.get(self.account, 0)

    def _named(self, app: str, ref: str) -> tuple[dict[str, Any], bool]:
        """What `ref` names on `app`: (the add-on, False) by add-on name/id, else (the
        attachment, True) by attachment name."""
        path = f"/apps/{_q(app)}/addons/{_q(ref)}"
        r = self.platform.request("GET", path, allow=(404,))
        if r.status_code != 404:
            return _json(r, path), False
        path = f"/apps/{_q(app)}/addon-attachments/{_q(ref)}"
        r = self.platform.request("GET", path, allow=(404,))
        if r.status_code == 404:
            raise ConfigError(
                f"heroku: app {app} has no add-on or attachment named {ref!r} ({heroku_error(r)}); "
                f"`heroku addons -a {app}` lists them")
        return _json(r, path), True

    def resolve_addon(self, app: str, ref: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The add-on named `ref` on `app`, by add-on name/id, else by attachment name.

        Returns (add-on, attachment): the attachment only when `ref` named one."""
        found, is_attachment = self._named(app, ref)
        if not is_attachment:
            return found, None
        addon_id = (found.get("addon") or {}).get("id")
        if not addon_id:
            raise ProviderError(f"heroku: attachment {ref} on {app} names no add-on")
        path = f"/addons/{_q(addon_id)}"
        return _json(self.platform.request("GET", path), path), found

    def addon_id(self, app: str, ref: str) -> str:
        """Only the id of the add-on `ref` names: an attachment already carries it, so the add-on
        itself (plan, state) is not read again."""
        found, is_attachment = self._named(app, ref)
        addon_id = (found.get("addon") or {}).get("id") if is_attachment else found.get("id")
        if not addon_id:
            raise ProviderError(f"heroku: {ref} on {app} names no add-on")
        return str(addon_id)


class _Reads:
    """Answers read since the account's last write: the same read again returns them instead of
    asking Heroku (e.g. the config vars a step just verified, read again by the next step)."""

    def __init__(self, api: HerokuApi) -> None:
        self.api = api
        self._stamp = -1
        self._values: dict[str, Any] = {}

    def _current(self) -> dict[str, Any]:
        stamp = self.api.writes()
        if stamp != self._stamp:
            self._values, self._stamp = {}, stamp
        return self._values

    def get(self, key: str, read: Callable[[], Any]) -> Any:
        values = self._current()
        if key not in values:
            values[key] = read()     # kept under the stamp taken before reading: a write meanwhile voids it
        return values[key]

    def put(self, key: str, value: Any) -> Any:
        self._current()[key] = value
        return value


def plan_refusal(plan: str, addon: str, app: str) -> ConfigError | None:
    """Why this plan rules the change out (an error to raise), or None when it is supported."""
    service, _, tier = plan.partition(":")
    if service != SERVICE:
        return ConfigError(f"heroku: add-on {addon} on {app} is {plan}, not Heroku Postgres ({SERVICE})")
    if _ESSENTIAL.match(tier):
        return Refused(
            f"heroku: {addon} on {app} is on plan {plan}, an Essential-tier plan without named credentials; "
            f"upgrade it first: heroku addons:upgrade {addon} {UPGRADE_PLAN} -a {app}")
    if _ADVANCED.match(tier):
        return Refused(
            f"heroku: {addon} on {app} is on plan {plan}, an Advanced-tier database: its credentials live in the "
            f"/data/postgres/v1 API and attach through instance pools, which pg-runbook does not drive; create and "
            f"attach the credential with `heroku data:pg:credentials:create {addon} --name <role> -a {app}` and "
            f"`heroku data:pg:attachments:create {addon} --credential <role> -a {app}`")
    return None


def _with_address(url: str, connect: Connect | None, sslmode: str) -> str:
    from psycopg.conninfo import make_conninfo

    extra: dict[str, str] = {"sslmode": sslmode}
    if connect:
        extra.update(host=connect.host, port=str(connect.port))
    return make_conninfo(url, **extra)


# ---------------------------------------------------------------------------------------------
# the database side


class HerokuDatabase:
    key = "heroku"

    def __init__(self, config: HerokuDatabaseConfig, ctx: OpenContext, *, budget: RateBudget | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.ctx = ctx
        self.app = config.app
        self.api = HerokuApi(ctx, budget=budget, sleep=sleep)
        self._sleep = sleep
        self._addon: dict[str, Any] | None = None
        self._attachment: dict[str, Any] | None = None
        self._checked = False
        self._reads = _Reads(self.api)

    def close(self) -> None:
        self.api.close()

    # -- the add-on and its plan

    def _resolve(self) -> dict[str, Any]:
        if self._addon is None:
            self._addon, self._attachment = self.api.resolve_addon(self.app, self.config.addon)
        return self._addon

    def _supported(self) -> dict[str, Any]:
        """The add-on, after the tier check: every credentials call goes through here first, so an
        Essential or Advanced database never receives a mutating request."""
        addon = self._resolve()
        if not self._checked:
            refusal = plan_refusal(str((addon.get("plan") or {}).get("name") or ""), self.config.addon, self.app)
            if refusal is not None:
                raise refusal
            state = addon.get("state")
            if state and state != "provisioned":
                raise Refused(f"heroku: add-on {addon.get('name')} is {state}, not provisioned yet; "
                              f"wait with `heroku addons:wait {addon.get('name')} -a {self.app}`")
            self._checked = True
        return addon

    @property
    def addon_name(self) -> str:
        return str(self._resolve().get("name") or self.config.addon)

    def describe(self) -> DatabaseInfo:
        addon = self._supported()
        details = {
            "app": self.app,
            "addon": str(addon.get("name")),
            "owner url": self.admin_var(),
            "credentials": f"{self.api.data_url}/postgres/v0/databases/{addon.get('name')}/credentials",
        }
        return DatabaseInfo(engine="postgres", plan=str(addon["plan"]["name"]), credentials="api", details=details)

    # -- the owner's connection

    def admin_var(self) -> str:
        """The app config var holding the owner's URL: the default (credential-less) attachment's."""
        addon = self._resolve()
        if self._attachment is not None:
            if self._attachment.get("namespace"):
                raise ConfigError(
                    f"heroku: attachment {self._attachment.get('name')} carries {self._attachment.get('namespace')}, "
                    f"not the owner; set database.addon to the add-on's default attachment (e.g. DATABASE) or its name")
            return f"{self._attachment['name']}_URL"
        path = f"/apps/{_q(self.app)}/addon-attachments"
        attachments = _json(self.api.platform.request("GET", path), path)
        names = sorted(a["name"] for a in attachments
                       if (a.get("addon") or {}).get("id") == addon.get("id") and not a.get("namespace"))
        if not names:
            raise ConfigError(f"heroku: add-on {addon.get('name')} has no default attachment on {self.app}; "
                              f"attach it: heroku addons:attach {addon.get('name')} --as DATABASE -a {self.app}")
        return f"{'DATABASE' if 'DATABASE' in names else names[0]}_URL"

    def admin_dsn(self) -> Secret:
        # asked for three times before the first step (run, state store, preflight)
        return self._reads.get("admin_dsn", self._read_admin_dsn)

    def _read_admin_dsn(self) -> Secret:
        var = self.admin_var()
        path = f"/apps/{_q(self.app)}/config-vars"
        url = _json(self.api.platform.request("GET", path), path).get(var)
        if not url:
            raise ProviderError(f"heroku: config var {var} is not set on {self.app}")
        return Secret(_with_address(url, self.config.connect, self.config.sslmode))

    def preflight_sql(self, conn: Any) -> list[str]:
        row = conn.execute(
            "SELECT current_user, pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database"
            " WHERE datname = current_database()").fetchone()
        if row and row[0] != row[1]:
            return [f"the admin connection logs in as {row[0]}, but the database belongs to {row[1]}: grants and "
                    f"default privileges need the owner; point database.addon at the add-on's default attachment"]
        return []

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(self.admin_dsn().reveal())
        return Credential(name=user, user=user, host=str(parts.get("host")), port=int(str(parts.get("port") or 5432)),
                          database=str(parts.get("dbname")), password=password, sslmode=self.config.sslmode)

    # -- credentials (Data API)

    def _credentials_path(self, name: str | None = None) -> str:
        base = f"/postgres/v0/databases/{_q(str(self._supported()['id']))}/credentials"
        return base if name is None else f"{base}/{_q(name)}"

    def _info(self, name: str, *, reuse: bool = False) -> dict[str, Any] | None:
        """The credential's record (None: there is none). `reuse`: an answer read since the last
        write will do (a step's apply after its observe); polls never reuse, Heroku moves the state."""
        if reuse:
            return self._reads.get(f"credential:{name}", lambda: self._info(name))
        path = self._credentials_path(name)
        r = self.api.data.request("GET", path, allow=(404,))
        return self._reads.put(f"credential:{name}", None if r.status_code == 404 else _json(r, path))

    def _write(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.api.write(self.api.data, method, path, **kw)

    def _to_credential(self, info: Mapping[str, Any], name: str) -> Credential | None:
        if info.get("state") not in _USABLE:
            return None
        active = [c for c in info.get("credentials") or [] if c.get("state") == "active" and c.get("password")]
        if not active:
            return None
        chosen = next((c for c in active if c.get("user") == name), active[0])
        try:
            host, port, database = str(info["host"]), int(info["port"]), str(info["database"])
        except (KeyError, TypeError, ValueError):
            raise ProviderError(f"heroku data: credential {name} on {self.addon_name} has no usable host/port/database") from None
        if self.config.connect:
            host, port = self.config.connect.host, self.config.connect.port
        return Credential(name=name, user=str(chosen["user"]), host=host, port=port, database=database,
                          password=Secret(str(chosen["password"])), sslmode=self.config.sslmode)

    def _wait_usable(self, name: str, *, previous: str | None = None) -> Credential:
        """Poll until the credential is active (with a new password after a rotation), within the retry budget."""
        pauses = self._pauses()
        while True:
            info = self._info(name)
            if info is None:
                raise ProviderError(f"heroku data: credential {name} on {self.addon_name} disappeared while waiting for it")
            credential = self._to_credential(info, name)
            if credential is not None and (previous is None or credential.password.reveal() != previous):
                return credential
            state = info.get("state")
            if not next(pauses):
                raise ProviderError(
                    f"heroku data: credential {name} on {self.addon_name} is still {state!r} after "
                    f"{self.ctx.retry.total_seconds:.0f}s; see `heroku pg:credentials {self.addon_name} -a {self.app}` "
                    f"and run again")

    def _pauses(self) -> Iterator[bool]:
        """Sleep before each new look, doubling up to _POLL_MAX; False once the retry budget is spent.
        The budget counts the larger of the time we chose to wait and the wall time, so it holds
        whatever `sleep` does."""
        budget = self.ctx.retry.total_seconds
        started, waited, delay = time.monotonic(), 0.0, _POLL_FIRST
        while True:
            remaining = budget - max(waited, time.monotonic() - started)
            if remaining <= 0:
                yield False
                return
            pause = min(delay, remaining)
            log.debug("heroku data: looking again in %.1fs", pause)
            self._sleep(pause)
            waited += pause
            delay = min(delay * 2, _POLL_MAX)
            yield True

    def credential(self, name: str) -> Credential | None:
        info = self._info(name, reuse=True)
        return None if info is None else self._to_credential(info, name)

    def create_credential(self, name: str) -> Credential:
        if self._info(name, reuse=True) is None:
            path = self._credentials_path()
            r = self._write("POST", path, json={"name": name}, allow=(409, 422))
            # a 409/422 after a retried POST (the first one landed) or a concurrent run: adopt what is there
            if r.status_code in (409, 422) and self._info(name) is None:
                raise ProviderError(f"heroku data: POST {path} failed: {redact(heroku_error(r))}")
            log.info("heroku data: credential %s requested on %s", name, self.addon_name)
        return self._wait_usable(name)

    def rotate(self, name: str) -> Credential:
        info = self._info(name, reuse=True)
        if info is None:
            raise ProviderError(f"heroku data: no credential {name} on {self.addon_name} to rotate")
        current = self._to_credential(info, name)
        self._write("POST", self._credentials_path(name) + "/credentials_rotation", json={})
        log.info("heroku data: rotation of %s on %s started", name, self.addon_name)
        return self._wait_usable(name, previous=current.password.reveal() if current and current.password else None)

    def destroy(self, name: str) -> None:
        if name == "default":
            raise ConfigError("heroku: the default credential is the owner's and cannot be destroyed")
        addon = self._supported()
        path = f"/addons/{_q(str(addon['id']))}/addon-attachments"
        attached = [a for a in _json(self.api.platform.request("GET", path), path)
                    if a.get("namespace") == f"credential:{name}"]
        if attached:
            where = ", ".join(f"{a['name']} on {(a.get('app') or {}).get('name')}" for a in attached)
            first = attached[0]
            raise Refused(
                f"heroku: credential {name} is still attached ({where}); detach it first: "
                f"heroku addons:detach {first['name']} -a {(first.get('app') or {}).get('name')}")
        r = self._write("DELETE", self._credentials_path(name), allow=(404,))
        if r.status_code == 404:
            return
        log.info("heroku data: credential %s on %s destroyed; objects it owned go to the default credential",
                 name, self.addon_name)
        self._wait_gone(name)

    def _wait_gone(self, name: str) -> None:
        pauses = self._pauses()
        while (info := self._info(name)) is not None:
            if not next(pauses):
                raise ProviderError(f"heroku data: credential {name} on {self.addon_name} is still {info.get('state')!r} "
                                    f"{self.ctx.retry.total_seconds:.0f}s after it was destroyed")


# ---------------------------------------------------------------------------------------------
# the app side


class HerokuApp:
    key = "heroku"
    #: a config-var PATCH (and an attachment change) creates a release, which restarts the dynos
    config_change_restarts = True

    def __init__(self, config: HerokuAppConfig, ctx: OpenContext, *, budget: RateBudget | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.ctx = ctx
        self.name = config.name
        self.api = HerokuApi(ctx, budget=budget, sleep=sleep)
        self._addon_id: str | None = None
        self._reads = _Reads(self.api)

    def close(self) -> None:
        self.api.close()

    def describe(self) -> dict[str, str]:
        return {"heroku app": self.name, "config vars": f"{self.api.platform_url}/apps/{self.name}/config-vars",
                "restart": "every config-var change restarts the dynos"}

    def _config_path(self) -> str:
        return f"/apps/{_q(self.name)}/config-vars"

    def get_config(self, keys: list[str]) -> dict[str, str | None]:
        path = self._config_path()
        values = self._reads.get("config-vars", lambda: _json(self.api.platform.request("GET", path), path))
        return {k: values.get(k) for k in keys}

    def _write(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.api.write(self.api.platform, method, path, **kw)

    def _patch(self, body: dict[str, str | None]) -> None:
        for key in body:
            if not _CONFIG_KEY.match(key):
                raise ConfigError(f"{key!r} is not a valid config var name")
        if body:
            self._write("PATCH", self._config_path(), json=body)
            log.info("heroku: config vars %s changed on %s (the dynos restart)", ", ".join(sorted(body)), self.name)

    def set_config(self, changes: Mapping[str, str | Secret]) -> None:
        self._patch({k: reveal(v) for k, v in changes.items()})

    def unset_config(self, keys: list[str]) -> None:
        self._patch({k: None for k in keys})

    def restart(self) -> None:
        self._write("DELETE", f"/apps/{_q(self.name)}/dynos")
        log.info("heroku: dynos of %s restarted", self.name)

    def _addon(self) -> str | None:
        if self._addon_id is None and self.config._addon:
            self._addon_id = self.api.addon_id(self.config._addon_app or self.name, self.config._addon)
        return self._addon_id

    def _attachment(self, attachment_name: str) -> dict[str, Any] | None:
        path = f"/apps/{_q(self.name)}/addon-attachments/{_q(attachment_name)}"
        r = self.api.platform.request("GET", path, allow=(404,))
        return None if r.status_code == 404 else _json(r, path)

    def attach_url(self, credential: Credential, var: str) -> bool:
        """Attach the add-on with namespace credential:{name} as `var` minus _URL: Heroku then sets
        `var` and keeps it current through rotations. False when the database is not on Heroku."""
        if not var.endswith("_URL") or len(var) <= 4 or not self.config._addon:
            return False
        name, namespace = var[:-4], f"credential:{credential.name}"
        addon_id = self._addon()
        existing = self._attachment(name)
        if existing and (existing.get("addon") or {}).get("id") == addon_id and existing.get("namespace") == namespace:
            return True
        # confirm: replace an attachment of that name (a stale one, or the plain var a run without attachments set)
        self._write("POST", "/addon-attachments", json={
            "addon": addon_id, "app": self.name, "name": name, "namespace": namespace, "confirm": self.name})
        log.info("heroku: %s attached to %s as %s", namespace, self.name, var)
        return True

    def detach_url(self, credential_name: str, var: str) -> bool:
        if not var.endswith("_URL") or len(var) <= 4:
            return False
        existing = self._attachment(var[:-4])
        if not existing or existing.get("namespace") != f"credential:{credential_name}":
            return False
        addon_id = self._addon()
        if addon_id and (existing.get("addon") or {}).get("id") != addon_id:
            return False
        self._write("DELETE", f"/addon-attachments/{_q(str(existing['id']))}", allow=(404,))
        log.info("heroku: credential:%s detached from %s (%s removed)", credential_name, self.name, var)
        return True
