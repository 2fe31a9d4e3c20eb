"""`provider: heroku` — Heroku Postgres through the Platform and Data APIs, and a Heroku app's config vars.

Heroku does not let the database owner create logins (`CREATE ROLE … PASSWORD` fails with
"must be a member of rds_password"), so credentials come from the Data API
(`/postgres/v0/databases/{addon}/credentials`) and reach the app as an add-on attachment with
namespace `credential:{name}`: Heroku then keeps `{NAME}_URL` current through rotations itself.
Grants run over the owner's URL (the add-on's default attachment, e.g. DATABASE_URL).

Token: HEROKU_API_KEY, else the `api.heroku.com` entry of ~/.netrc (the Heroku CLI's convention).
Base URLs: the tool's HEROKU_API_URL / HEROKU_DATA_API_URL first, then the Heroku CLI's own
HEROKU_HOST / HEROKU_DATA_HOST with the CLI's meaning (see `api_urls`), so both tools talk to the
same hosts.

What the Heroku CLI (npm `heroku` 11.10.0) does is the reference for every call here; the comments
name the CLI file each rule comes from (dist/… in the npm package, src/… in heroku/cli).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import netrc
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from providers.base import AppBase, Connect, Credential, DatabaseBase, DatabaseInfo, OpenContext, Progress, SslMode
from providers.http import ApiClient, RateBudget, RateModel, shared_budget
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret, mask_url, redact, reveal

log = logging.getLogger(__name__)

PLATFORM_API_URL = "https://api.heroku.com"
DATA_API_URL = "https://api.data.heroku.com"
# @heroku-cli/command lib/api-client.js: the domains HEROKU_HOST may name (anything else: the CLI
# warns and uses heroku.com), and the loopback names it accepts too
_HEROKU_DOMAINS = ("heroku.com", "herokai.com", "herokuspace.com", "herokudev.com")
_LOCAL_HOSTS = ("localhost", "127.0.0.1")
ACCEPT = "application/vnd.heroku+json; version=3"
NETRC_MACHINE = "api.heroku.com"
SERVICE = "heroku-postgresql"
UPGRADE_PLAN = "heroku-postgresql:standard-0"

# Plan families (the part after "heroku-postgresql:"), as the Heroku CLI classifies them.
_ESSENTIAL = re.compile(r"^(essential|dev|basic|mini|hobby)")     # no named credentials at all
_ADVANCED = re.compile(r"^(advanced|performance)")                # credentials under /data/postgres/v1
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

    # the app block's Heroku app (when it is on Heroku): where preflight looks at the URL variable
    _app_block: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _app_side(self, info: ValidationInfo) -> "HerokuDatabaseConfig":
        app_block = (info.context or {}).get("app") or {}
        if isinstance(app_block, dict) and app_block.get("platform") == "heroku" and app_block.get("name"):
            self._app_block = str(app_block["name"])
        return self

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
    name: str = Field(description="the Heroku app whose config vars hold the role's URL and the flag",
                      examples=["raptor-staging"])
    connection_pooling: bool = Field(
        default=False,
        description="attach the role's credential through Heroku's connection pooling (PgBouncer on the database "
                    "server, transaction mode): the URL variable then holds the pooled URL, which verify logs in through")
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
        elif self.connection_pooling:
            raise ValueError("connection_pooling is Heroku Postgres's: it needs the database block on provider: heroku")
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


def _checked_url(var: str, url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{var}={url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ConfigError(f"{var}={url}: plain http is allowed only on loopback (the API token would travel in clear)")
    return url


def _cli_platform_url(host: str) -> str:
    """HEROKU_HOST as the CLI reads it (@heroku-cli/command lib/vars.js `apiUrl`): an http(s)://
    value is the Platform API base itself, anything else a domain under which it is api.{host}.
    A host outside Heroku's domains and loopback is ignored with a warning, as the CLI does."""
    # the CLI's loopback test is a substring match (`localhost.example.net` passes it); here the
    # host name itself must be loopback
    bare = (urlsplit(host if "://" in host else f"https://{host}").hostname or "").lower()
    if not (any(bare == d or bare.endswith("." + d) for d in _HEROKU_DOMAINS) or bare in _LOCAL_HOSTS):
        log.warning("heroku: HEROKU_HOST=%s is not a Heroku domain; using heroku.com, as the Heroku CLI does", host)
        return PLATFORM_API_URL
    return host if host.startswith("http") else f"https://api.{host}"


def api_urls(environ: Mapping[str, str]) -> tuple[str, str]:
    """(Platform API base, Data API base). Precedence, each API on its own:

    Platform: HEROKU_API_URL, else HEROKU_HOST (the CLI's meaning), else https://api.heroku.com.
    Data:     HEROKU_DATA_API_URL, else HEROKU_DATA_HOST (or HEROKU_POSTGRESQL_HOST, which the CLI
              also reads: @heroku/heroku-cli-util dist/utils/pg/host.js) as a bare host name, with
              the scheme and port of the CLI's Platform URL (HEROKU_HOST's), as the CLI's http
              client combines them (@heroku/http-call: `hostname` replaces only the host), else
              https://api.data.heroku.com.
    """
    cli_host = (environ.get("HEROKU_HOST") or "").strip()
    cli_platform = _cli_platform_url(cli_host) if cli_host else PLATFORM_API_URL
    if (environ.get("HEROKU_API_URL") or "").strip():
        platform = _checked_url("HEROKU_API_URL", environ["HEROKU_API_URL"])
    else:
        platform = _checked_url("HEROKU_HOST" if cli_host else "HEROKU_API_URL", cli_platform)
    data_var = next((v for v in ("HEROKU_DATA_HOST", "HEROKU_POSTGRESQL_HOST") if (environ.get(v) or "").strip()), None)
    if (environ.get("HEROKU_DATA_API_URL") or "").strip():
        data = _checked_url("HEROKU_DATA_API_URL", environ["HEROKU_DATA_API_URL"])
    elif data_var:
        host = environ[data_var].strip()
        if not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host):
            raise ConfigError(f"{data_var}={host!r} is not a host name (the Heroku CLI takes the scheme and port "
                              f"from HEROKU_HOST; set HEROKU_DATA_API_URL for a full URL)")
        base = urlsplit(cli_platform)
        data = _checked_url(data_var, f"{base.scheme}://{host}" + (f":{base.port}" if base.port else ""))
    else:
        data = DATA_API_URL
    return platform, data


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


# Heroku's documented limit: a bucket of 4,500 requests per account, refilled at about 75 a minute,
# with what is left in RateLimit-Remaining on every answer
RATE = RateModel("Heroku Platform API", "bucket", limit=4500, window_seconds=3600,
                 remaining_headers=("RateLimit-Remaining",))

class HerokuApi:
    """The Platform API and Data API clients of one provider object (same token, same budget)."""

    def __init__(self, ctx: OpenContext, *, budget: RateBudget | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        token = heroku_token(ctx.environ)
        self.platform_url, self.data_url = api_urls(ctx.environ)
        # Bearer is the CLI's default on both APIs (@heroku-cli/command lib/api-client.js); the
        # Data API calls that the CLI sends with Basic instead pass `basic_auth()`
        headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token.reveal()}"}
        self._basic = "Basic " + base64.b64encode(f":{token.reveal()}".encode()).decode()
        account = ctx.budget_key or "heroku:" + hashlib.sha256(token.reveal().encode()).hexdigest()[:16]
        budget = budget or shared_budget(account, RATE, ctx.runtime)
        self.account = account
        # writes sent to each account by this runtime: an answer read before the latest one is stale
        self.runtime = ctx.runtime
        common = dict(headers=headers, retry=ctx.retry, transport=ctx.http_transport, budget=budget,
                      describe_error=heroku_error, sleep=sleep, runtime=ctx.runtime)
        self.platform = ApiClient("heroku", self.platform_url, **common)
        self.data = ApiClient("heroku data", self.data_url, **common)
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.platform.close()
        self.data.close()

    def basic_auth(self) -> dict[str, str]:
        """The token as the password of Basic auth (`:token`), which the CLI sends to the Data API
        for the credential list, one credential and a rotation (dist/commands/pg/credentials.js,
        pg/credentials/url.js, pg/credentials/rotate.js); create and destroy go with Bearer."""
        return {"Authorization": self._basic}

    def write(self, client: ApiClient, method: str, path: str, **kw: Any) -> httpx.Response:
        """Every change goes through here. Counted before it is sent: one whose answer is lost
        still changed things. (A credential change also changes the config vars it is attached as,
        so the database and app sides of one account share the count.)"""
        self.runtime.count_write(self.account)
        return client.request(method, path, **kw)

    def writes(self) -> int:
        return self.runtime.writes_of(self.account)

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

    def addon_ref(self, app: str, ref: str) -> dict[str, str]:
        """Only the id and name of the add-on `ref` names: an attachment already carries them, so
        the add-on itself (plan, state) is not read again."""
        found, is_attachment = self._named(app, ref)
        addon = (found.get("addon") or {}) if is_attachment else found
        if not addon.get("id"):
            raise ProviderError(f"heroku: {ref} on {app} names no add-on")
        return {"id": str(addon["id"]), "name": str(addon.get("name") or addon["id"])}


def shared_api(ctx: OpenContext, *, budget: RateBudget | None = None,
               sleep: Callable[[float], None] = time.sleep) -> HerokuApi:
    """The one HerokuApi of an environment: its database and app sides share the clients (one
    connection pool each for the Platform and Data APIs), the token and the rate budget."""
    key = f"heroku api:{id(budget)}:{id(sleep)}"
    api = ctx.shared.get(key)
    if not isinstance(api, HerokuApi) or api.closed:
        api = ctx.shared[key] = HerokuApi(ctx, budget=budget, sleep=sleep)
    return api


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


class HerokuDatabase(DatabaseBase):
    key = "heroku"

    def __init__(self, config: HerokuDatabaseConfig, ctx: OpenContext, *, budget: RateBudget | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.ctx = ctx
        self.app = config.app
        self.api = shared_api(ctx, budget=budget, sleep=sleep)
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

    def read_log(self, since: float, role: str, *, asked: bool = True, admin_dsn: Secret | None = None):
        if not asked:
            return None      # the log API and its permission are the operator's to grant: on when written
        from providers import heroku_logs

        # the add-on's log goes to the app that owns it, which may not be the one attached here
        owner = str((self._resolve().get("app") or {}).get("name") or self.app)
        return heroku_logs.read(self.api, owner, since, role, transport=self.ctx.http_transport,
                                timeout=self.ctx.retry.timeout_seconds)

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

    def _config_vars(self) -> Mapping[str, str]:
        """The add-on's app's config vars, read once until the next write (the owner's URL and
        preflight's look at the URL variable share the answer)."""
        path = f"/apps/{_q(self.app)}/config-vars"
        return self._reads.get("config-vars", lambda: _json(self.api.platform.request("GET", path), path))

    def _read_admin_dsn(self) -> Secret:
        var = self.admin_var()
        url = self._config_vars().get(var)
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
        return self._url_var_problems()

    def _url_var_problems(self) -> list[str]:
        """Before a run creates the credential, the URL variable it will be attached as must not be
        someone else's: refused here, before any change, rather than at the url step after the
        credential and grants. (Once the credential exists the url step refuses on its own, and a
        retire is not held up by a variable it will not touch.)"""
        var, role, app = self.ctx.url_var, self.ctx.role_name, self.config._app_block
        logins = self.ctx.role_logins or (role,)
        if not (app and role and var.endswith("_URL") and len(var) > 4) or any(
                self.credential(name) is not None for name in logins):
            return []
        addon = self._resolve()
        ref = {"id": str(addon["id"]), "name": str(addon.get("name") or addon["id"])}
        if app == self.app:
            config = self._config_vars()
        else:
            path = f"/apps/{_q(app)}/config-vars"
            config = _json(self.api.platform.request("GET", path), path)
        # a Heroku credential's user is its name (dist/commands/pg/credentials/url.js fixtures)
        siblings = tuple(n for n in logins if n != role)
        holding = UrlVar(self.api, app, ref, self.app, lambda: config, siblings).holding(var, role, role)
        return [holding.refusal] if holding.refusal else []

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        from psycopg.conninfo import conninfo_to_dict

        # the endpoint Heroku reports in the owner's URL, never the `connect` the tool comes in by
        var = self.admin_var()
        url = self._config_vars().get(var)
        if not url:
            raise ProviderError(f"heroku: config var {var} is not set on {self.app}")
        parts = conninfo_to_dict(url)
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
        r = self.api.data.request("GET", path, headers=self.api.basic_auth(), allow=(404,))
        return self._reads.put(f"credential:{name}", None if r.status_code == 404 else _json(r, path))

    def _write(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.api.write(self.api.data, method, path, **kw)

    def _to_credential(self, info: Mapping[str, Any], name: str) -> Credential | None:
        """The login the credential offers now, or None while it has none.

        Usable when one of its users is `active`, whatever the credential's own state says: the
        CLI's rule (dist/commands/pg/credentials/url.js picks `credentials.find(c => c.state ===
        'active')`; its fixtures show a credential in state `created` with an active user)."""
        active = [c for c in info.get("credentials") or [] if c.get("state") == "active" and c.get("password")]
        if not active:
            return None
        chosen = next((c for c in active if c.get("user") == name), active[0])
        try:
            host, port, database = str(info["host"]), int(info["port"]), str(info["database"])
        except (KeyError, TypeError, ValueError):
            raise ProviderError(f"heroku data: credential {name} on {self.addon_name} has no usable host/port/database") from None
        # the tool reaches the login through `connect`; the app's attachment names Heroku's endpoint
        app_endpoint = None
        if self.config.connect:
            app_endpoint = (host, port)
            host, port = self.config.connect.host, self.config.connect.port
        return Credential(name=name, user=str(chosen["user"]), host=host, port=port, database=database,
                          password=Secret(str(chosen["password"])), sslmode=self.config.sslmode,
                          app_endpoint=app_endpoint)

    def _wait_usable(self, name: str, *, previous: str | None = None) -> Credential:
        """Poll until the credential has an active user (with a new password after a rotation),
        within the retry budget; each state change goes to the operator's progress sink."""
        wait = _Wait(self.ctx, self._sleep, f"heroku credential {name}")
        while True:
            info = self._info(name)
            if info is None:
                wait.report("gone", done=True)
                raise ProviderError(f"heroku data: credential {name} on {self.addon_name} disappeared while waiting for it")
            credential = self._to_credential(info, name)
            ready = credential is not None and (previous is None or (
                credential.password.reveal() != previous
                # mid-rotation the active user can be a temporary one (`{name}-rotating` in the CLI's
                # fixtures, test/unit/commands/pg/credentials.unit.test.ts): wait for the credential's own
                and (credential.user == name or info.get("state") != "rotating")))
            wait.report(_state_word(info), done=ready)
            if ready:
                return credential
            if not wait.pause():
                raise ProviderError(
                    f"heroku data: credential {name} on {self.addon_name} is still {info.get('state')!r} after "
                    f"{self.ctx.retry.total_seconds:.0f}s; see `heroku pg:credentials {self.addon_name} -a {self.app}` "
                    f"and run again")

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
        self._write("POST", self._credentials_path(name) + "/credentials_rotation", json={}, headers=self.api.basic_auth())
        log.info("heroku data: rotation of %s on %s started", name, self.addon_name)
        return self._wait_usable(name, previous=current.password.reveal() if current and current.password else None)

    def destroy(self, name: str) -> None:
        if name == "default":
            raise ConfigError("heroku: the default credential is the owner's and cannot be destroyed")
        addon = self._supported()
        path = f"/addons/{_q(str(addon['id']))}/addon-attachments"
        attached = [a for a in _json(self.api.platform.request("GET", path), path) if _ours(a, None, name)]
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
        wait = _Wait(self.ctx, self._sleep, f"heroku credential {name} removal")
        while (info := self._info(name)) is not None:
            wait.report(_state_word(info))
            if not wait.pause():
                raise ProviderError(f"heroku data: credential {name} on {self.addon_name} is still {info.get('state')!r} "
                                    f"{self.ctx.retry.total_seconds:.0f}s after it was destroyed")
        wait.report("gone", done=True)


def _state_word(info: Mapping[str, Any]) -> str:
    """`provisioning (raptor_app: enabling)`: the store's state and each user's, never a password."""
    users = ", ".join(f"{c.get('user')}: {c.get('state')}" for c in info.get("credentials") or [])
    return f"{info.get('state')}" + (f" ({users})" if users else "")


class _Wait:
    """One bounded platform wait: pauses doubling from _POLL_FIRST up to _POLL_MAX, within the
    retry budget, and a Progress event on each change of state.

    The budget counts the larger of the time we chose to wait and the wall time, so it holds
    whatever `sleep` does."""

    def __init__(self, ctx: OpenContext, sleep: Callable[[float], None], what: str) -> None:
        self.ctx, self.sleep, self.what = ctx, sleep, what
        self.budget = ctx.retry.total_seconds
        self.started, self.waited, self.delay = time.monotonic(), 0.0, _POLL_FIRST
        self.last: str | None = None

    def remaining(self) -> float:
        return max(0.0, self.budget - max(self.waited, time.monotonic() - self.started))

    def report(self, state: str, *, done: bool = False) -> None:
        if state != self.last or done:
            self.last = state
            self.ctx.progress(Progress(self.what, state, remaining=None if done else self.remaining(), done=done))

    def pause(self) -> bool:
        """Sleep before the next look; False (without sleeping) once the budget is spent."""
        remaining = self.remaining()
        if remaining <= 0:
            return False
        pause = min(self.delay, remaining)
        log.debug("%s: looking again in %.1fs", self.what, pause)
        self.sleep(pause)
        self.waited += pause
        self.delay = min(self.delay * 2, _POLL_MAX)
        return True


# ---------------------------------------------------------------------------------------------
# the app side


class HerokuApp(AppBase):
    key = "heroku"
    #: a config-var PATCH (and an attachment change) creates a release, which restarts the dynos
    config_change_restarts = True

    def __init__(self, config: HerokuAppConfig, ctx: OpenContext, *, budget: RateBudget | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.ctx = ctx
        self.name = config.name
        self.api = shared_api(ctx, budget=budget, sleep=sleep)
        self._addon_ref: dict[str, str] | None = None
        self._reads = _Reads(self.api)

    def close(self) -> None:
        self.api.close()

    @property
    def url_is_pooled(self) -> bool:
        """True when the attachment puts the pooler's endpoint, not the credential's, in the URL."""
        return self.config.connection_pooling

    def describe(self) -> dict[str, str]:
        described = {"heroku app": self.name, "config vars": f"{self.api.platform_url}/apps/{self.name}/config-vars",
                     "restart": "every config-var change restarts the dynos"}
        if self.config.connection_pooling:
            described["url"] = "attached through Heroku's connection pooling (PgBouncer, transaction mode)"
        return described

    def _config_path(self) -> str:
        return f"/apps/{_q(self.name)}/config-vars"

    def get_config(self, keys: list[str]) -> dict[str, str | None]:
        values = self._config_values()
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

    def _addon(self) -> dict[str, str] | None:
        """The database block's add-on ({id, name}), when the database is on Heroku too."""
        if self._addon_ref is None and self.config._addon:
            self._addon_ref = self.api.addon_ref(self.config._addon_app or self.name, self.config._addon)
        return self._addon_ref

    def _attachment(self, attachment_name: str) -> dict[str, Any] | None:
        path = f"/apps/{_q(self.name)}/addon-attachments/{_q(attachment_name)}"
        r = self.api.platform.request("GET", path, allow=(404,))
        return None if r.status_code == 404 else _json(r, path)

    def _config_values(self) -> dict[str, str]:
        path = self._config_path()
        return self._reads.get("config-vars", lambda: _json(self.api.platform.request("GET", path), path))

    def attach_url(self, credential: Credential, var: str) -> bool:
        """Attach the add-on for credential {name} as `var` minus _URL: Heroku then sets `var` and
        keeps it current through rotations (with `connection_pooling`, to the pooled URL). False
        when the database is not on Heroku.

        The Platform API answers a name whose variable is taken with 423 confirmation_required,
        and `confirm` replaces whatever holds it (dist/commands/addons/attach.js with
        lib/addons/util.js `trapConfirmationRequired`). So confirm is sent only when the holder
        is provably ours: an attachment of this add-on for this credential, or a plain config var
        whose URL names this role on this add-on's host (the hand-run runbook's step 3). Anything
        else is refused before any change, naming the holder and the fix."""
        if not var.endswith("_URL") or len(var) <= 4 or not self.config._addon:
            return False
        name, addon = var[:-4], self._addon()
        if addon is None:
            return False
        wanted = f"{_POOLED if self.config.connection_pooling else _DIRECT}:{credential.name}"
        holding = self._url_var(addon).holding(var, credential.name, credential.user)
        if holding.refusal:
            raise Refused(holding.refusal)
        mine, plain = holding.mine, holding.plain
        if any(a.get("namespace") == wanted for a in mine):
            return True
        if self.config.connection_pooling:
            self._attach_pooled(credential, name, addon, mine, adopt=plain is not None)
        else:
            body: dict[str, Any] = {"addon": addon["id"], "app": self.name, "name": name, "namespace": wanted}
            if mine or plain is not None:
                body["confirm"] = self.name      # replaces only what was proven ours above
            r = self._write("POST", "/addon-attachments", json=body, allow=(423,))
            if r.status_code == 423 and not self._landed(var, credential, addon, wanted):
                # taken between our look and the POST: someone else's, by the rule above
                raise Refused(f"heroku: {var} on {self.name} was taken while pg-runbook attached it "
                              f"({heroku_error(r)}); nothing was changed, run again to see who holds it")
        log.info("heroku: %s of %s attached to %s as %s%s", wanted, addon["name"], self.name, var, self._release_note())
        return True

    def _attach_pooled(self, credential: Credential, name: str, addon: Mapping[str, str],
                       mine: list[dict[str, Any]], *, adopt: bool) -> None:
        """`heroku pg:connection-pooling:attach` for this credential: the Data API call the CLI
        makes (dist/commands/pg/connection-pooling/attach.js: POST /client/v11/databases/{name}/
        connection-pooling {app, credential, name}, Bearer). The CLI sends credential 'default'
        only; the API takes a credential's name there. That call has no confirm, so what held the
        name (ours, proven by attach_url) is removed first; a rerun after a failure in between
        finds the name free and converges."""
        for old in mine:
            self._write("DELETE", f"/addon-attachments/{_q(str(old['id']))}", allow=(404,))
        if adopt:
            self._patch({f"{name}_URL": None})
        path = f"/client/v11/databases/{_q(addon['name'])}/connection-pooling"
        r = self.api.write(self.api.data, "POST", path, json={"app": self.name, "credential": credential.name, "name": name},
                           allow=(422, 423))
        if r.status_code in (422, 423) and not self._landed(f"{name}_URL", credential, addon, f"{_POOLED}:{credential.name}"):
            raise ProviderError(
                f"heroku data: POST {path} failed: {redact(heroku_error(r))}; check `heroku pg:info {addon['name']} "
                f"-a {self.name}` (Connection Pooling: Available), or set connection_pooling: false in the app block")

    def _landed(self, var: str, credential: Credential, addon: Mapping[str, str], wanted: str) -> bool:
        """After a refusal of a retried POST: did an earlier attempt, whose answer was lost, attach it?"""
        holding = self._url_var(addon).holding(var, credential.name, credential.user)
        return any(a.get("namespace") == wanted for a in holding.mine)

    def _url_var(self, addon: Mapping[str, str]) -> "UrlVar":
        # alternating: the other login's attachment is ours to replace, and so is the role's own
        # `single` credential's while it is converted to the pair
        siblings = tuple(dict.fromkeys((*self.ctx.role_logins, self.ctx.role_name)))
        return UrlVar(self.api, self.name, addon, self.config._addon_app or self.name, self._config_values, siblings)

    def _release_note(self) -> str:
        """`: release v42 restarts the dynos`, as the CLI reports after attaching (it reads the
        latest release: dist/commands/addons/attach.js); empty when Heroku does not say."""
        path = f"/apps/{_q(self.name)}/releases"
        try:
            r = self.api.platform.request("GET", path, headers={"Range": "version ..; max=1, order=desc"}, allow=(206,))
            releases = _json(r, path)
        except ProviderError as exc:      # only for the log line: the attachment is made either way
            log.debug("heroku: the latest release of %s is unknown (%s)", self.name, exc.message)
            return ""
        version = releases[0].get("version") if isinstance(releases, list) and releases and isinstance(releases[0], dict) else None
        return f" (release v{version} restarts the dynos)" if version is not None else ""

    def detach_url(self, credential_name: str, var: str) -> bool:
        if not var.endswith("_URL") or len(var) <= 4:
            return False
        existing = self._attachment(var[:-4])
        addon = self._addon()
        if not existing or not _ours(existing, addon["id"] if addon else None, credential_name):
            return False
        self._write("DELETE", f"/addon-attachments/{_q(str(existing['id']))}", allow=(404,))
        log.info("heroku: %s detached from %s (%s removed)", existing.get("namespace"), self.name, var)
        return True


def _attachments(api: HerokuApi, path: str) -> list[dict[str, Any]]:
    # the variables each attachment sets come only with Accept-Inclusion, as the CLI asks for
    # them (@heroku/heroku-cli-util dist/utils/addons/attachment-resolver.js)
    return _json(api.platform.request("GET", path, headers={"Accept-Inclusion": "addon:plan,config_vars"}), path)


@dataclass(frozen=True)
class Holding:
    """Who holds an app's URL variable, as far as attaching a credential there goes."""

    mine: list[dict[str, Any]]      # the credential's own attachments of this add-on under that name
    plain: str | None               # a hand-set value proven to be the credential's URL (to adopt)
    refusal: str | None             # held by someone else: why, and the fix


class UrlVar:
    """The holders of a URL variable on `app`, judged for credential `role` of `addon`
    ({id, name}; its own app `home`). `config` reads the app's config vars."""

    def __init__(self, api: HerokuApi, app: str, addon: Mapping[str, str], home: str,
                 config: Callable[[], Mapping[str, str]], siblings: tuple[str, ...] = ()) -> None:
        self.api, self.app, self.addon, self.home, self.config = api, app, addon, home, config
        self.siblings = siblings

    def holding(self, var: str, role: str, user: str) -> Holding:
        name = var[:-4]
        attachments = _attachments(self.api, f"/apps/{_q(self.app)}/addon-attachments")
        holders = [a for a in attachments if a.get("name") == name or var in (a.get("config_vars") or [])]
        # alternating rotation: the role's other login's attachment is ours to replace too
        mine = [a for a in holders if a.get("name") == name and any(_ours(a, self.addon["id"], r) for r in (role, *self.siblings))]
        others = [a for a in holders if a not in mine]
        if others:
            return Holding(mine, None, self._held_by(others[0], var, role))
        plain = None if mine else self.config().get(var)
        if plain is not None and not self._names_role(plain, role, user, attachments):
            return Holding(mine, None, (
                f"heroku: {var} on {self.app} is a config var set by hand ({_describe_url(plain)}), not a URL of "
                f"credential {role} on {self.addon['name']}; pg-runbook will not overwrite it. Unset it "
                f"(heroku config:unset {var} -a {self.app}) or choose another url_var"))
        return Holding(mine, plain, None)

    def _held_by(self, holder: Mapping[str, Any], var: str, role: str) -> str:
        holder_addon = holder.get("addon") or {}
        if holder_addon.get("id") == self.addon["id"]:
            namespace = holder.get("namespace")
            whose = f"its {namespace}" if namespace else "its owner (default) credential"
            what = f"attachment {holder.get('name')} of {self.addon['name']} for {whose}"
        else:
            what = f"attachment {holder.get('name')} of another add-on, {holder_addon.get('name')}"
        return (f"heroku: {var} on {self.app} is set by {what}; pg-runbook replaces only its own attachment of "
                f"credential {role}. Choose another url_var, or detach it first: "
                f"heroku addons:detach {holder.get('name')} -a {self.app}")

    def _names_role(self, value: str, role: str, user: str, attachments: list[dict[str, Any]]) -> bool:
        """Does `value` log in as this credential on this add-on? Its user must be the
        credential's, and its host, port and database those of a URL Heroku set for this add-on
        (one of the add-on's attachment variables: the hand-run runbook copied the URL from there)."""
        parts = _url_parts(value)
        if parts is None or parts[0] not in (user, role):
            return False
        return parts[1:] in self._addon_endpoints(attachments)

    def _addon_endpoints(self, attachments: list[dict[str, Any]]) -> set[tuple[str, int, str]]:
        """(host, port, database) of every URL Heroku set for this add-on on this app, else on the
        add-on's own app."""
        def endpoints(atts: list[dict[str, Any]], values: Mapping[str, str]) -> set[tuple[str, int, str]]:
            found = set()
            for a in atts:
                if (a.get("addon") or {}).get("id") == self.addon["id"]:
                    for v in a.get("config_vars") or []:
                        parts = _url_parts(values.get(v) or "")
                        if parts is not None:
                            found.add(parts[1:])
            return found

        here = endpoints(attachments, self.config())
        if here or self.home == self.app:
            return here
        path = f"/apps/{_q(self.home)}/config-vars"
        return endpoints(_attachments(self.api, f"/apps/{_q(self.home)}/addon-attachments"),
                         _json(self.api.platform.request("GET", path), path))


# the namespaces of a credential's attachments: direct, and through Heroku's connection pooling
# (dist/commands/pg/promote.js re-attaches a pooler as namespace connection-pooling:default)
_DIRECT, _POOLED = "credential", "connection-pooling"


def _ours(attachment: Mapping[str, Any], addon_id: str | None, credential_name: str) -> bool:
    """An attachment of this add-on (when known) for this credential, direct or pooled."""
    namespace = attachment.get("namespace")
    if namespace not in (f"{_DIRECT}:{credential_name}", f"{_POOLED}:{credential_name}"):
        return False
    return addon_id is None or (attachment.get("addon") or {}).get("id") == addon_id


def _url_parts(value: str) -> tuple[str, str, int, str] | None:
    """(user, host, port, database) of a postgres URL, None for anything else."""
    try:
        parts = urlsplit(value)
        port = parts.port or 5432
    except ValueError:
        return None
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname or not parts.username:
        return None
    return unquote(parts.username), parts.hostname.lower(), port, unquote(parts.path.lstrip("/"))


def _describe_url(value: str) -> str:
    """What a hand-set value names, without its password (or anything, when it is no URL)."""
    parts = _url_parts(value)
    if parts is None:
        return "not a postgres URL"
    return mask_url(f"postgres://{quote(parts[0], safe='')}:x@{parts[1]}:{parts[2]}/{quote(parts[3], safe='')}")
