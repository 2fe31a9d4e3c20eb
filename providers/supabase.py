"""`provider: supabase` and `platform: supabase` — a Supabase project via the Management API.

Database side: the project must be ACTIVE_HEALTHY (GET /v1/projects/{ref}); the plan is read from
its organization (GET /v1/organizations/{slug}). The role is created in SQL as `postgres`, which
on hosted Supabase is not a superuser, so the engine must never send NOSUPERUSER explicitly
(Supabase rejects it): `describe()` says so with details["no_superuser_clause"] = "1".

Addresses (`admin_form` for the tool's own session, `url_form` for the app's URL):
- direct:      the project's database.host (db.{ref}.supabase.co), port 5432, user = role
- session:     the Supavisor pooler host, port 5432, user = {role}.{ref}
- transaction: the pooler host, port 6543, user = {role}.{ref}
Hosts come from the Management API: the direct one from GET /v1/projects/{ref} (database.host),
the pooler's from GET /v1/projects/{ref}/config/database/pooler (db_host of the PRIMARY), never
built from the region (projects are on aws-0-… and aws-1-… hosts). `pooler_host` overrides it,
`connect: {host, port}` overrides the whole address.
Defaults: the tool connects through the session pooler (the direct host is IPv6-only without
Supabase's IPv4 add-on, so it fails from IPv4-only CI runners); the app's URL is the session
pooler, or the transaction pooler when the app is Edge Functions (Supabase's advice for
serverless code). The tool's own session is refused over a transaction-mode pooler: a
transaction pooler hands each transaction to any server connection, so the session-level
advisory lock that serialises runs and `SET lock_timeout` would silently apply to someone
else's connection.

Rate limits: 120 requests per endpoint per project per minute; a 429 lasts for the rest of the
window and says how long in X-RateLimit-Reset (no Retry-After): RATE declares that model.

App side (`platform: supabase`): Edge Function secrets. Reads return only SHA-256 digests of the
values, so `get_config` returns Digest and the engine verifies by digest. Edge Functions read
secrets on every invocation, so there is nothing to restart.

Token: SUPABASE_ACCESS_TOKEN; base URL: SUPABASE_API_URL (default https://api.supabase.com).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from providers.base import AppAddress, AppBase, Connect, Credential, DatabaseBase, DatabaseInfo, Digest, EnvVarName, OpenContext, SslMode
from providers.http import ApiClient, RateBudget, RateModel, shared_budget
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret, reveal

DEFAULT_API = "https://api.supabase.com"
TOKEN_ENV = "SUPABASE_ACCESS_TOKEN"
TRANSACTION_PORT = 6543
UrlForm = Literal["direct", "session", "transaction"]

# the Management API's own pattern for a project ref (openapi.json: 20 characters, ^[a-z]+$)
_REF = re.compile(r"^[a-z]{20}$")

RATE = RateModel("Supabase Management API", "window", limit=120, window_seconds=60, per="endpoint",
                 remaining_headers=("X-RateLimit-Remaining",), reset_header="X-RateLimit-Reset", low_water=10)

# project states that waiting does not fix, and what to do instead
_STATUS_HINTS = {
    "INACTIVE": "it is paused: restore it from the dashboard (Project Settings → General → Restore project)",
    "PAUSING": "it is being paused: restore it from the dashboard once it is paused",
    "INIT_FAILED": "its set-up failed and waiting will not fix it: contact Supabase support or create a new project",
    "REMOVED": "it was deleted: point database.project_ref at an existing project",
    "RESTORE_FAILED": "its restore failed and waiting will not fix it: retry the restore from the dashboard, "
                      "or contact Supabase support",
    "PAUSE_FAILED": "pausing it failed and waiting will not fix it: restore it from the dashboard, "
                    "or contact Supabase support",
}
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")

TRANSACTION_REFUSAL = (
    "the tool's own session cannot go through Supabase's transaction-mode pooler (port 6543): it "
    "holds a session-level advisory lock for the whole run and sets lock_timeout for its grant "
    "transactions, and a transaction pooler moves each transaction to another server connection. "
    "Use database.admin_form: session (the default: the pooler's port 5432) or direct (db.{ref}.supabase.co:5432, "
    "IPv6-only without Supabase's IPv4 add-on)")


def supabase_error(response: httpx.Response) -> str:
    """`HTTP 400: <message>` from the Management API's {"message": ...} error body."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    message = ""
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("error") or "")[:300]
    return f"HTTP {response.status_code}: {message}" if message else f"HTTP {response.status_code}"


class _Management:
    """The Management API client for one token (shared by the database and app sides)."""

    def __init__(self, ctx: OpenContext, budget: RateBudget | None = None) -> None:
        token = (ctx.environ.get(TOKEN_ENV) or "").strip()
        if not token:
            raise ConfigError(f"{TOKEN_ENV} is not set; create a personal access token at "
                              "https://supabase.com/dashboard/account/tokens and export it")
        key = ctx.budget_key or "supabase:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        self.api = ApiClient(
            "Supabase Management API", ctx.environ.get("SUPABASE_API_URL") or DEFAULT_API,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            retry=ctx.retry, transport=ctx.http_transport,   # type: ignore[arg-type]
            budget=budget or shared_budget(key, RATE, ctx.runtime), rate=RATE, describe_error=supabase_error,
            runtime=ctx.runtime,
        )

    def json(self, method: str, path: str, **kw: Any) -> Any:
        response = self.api.request(method, path, **kw)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ProviderError(f"Supabase Management API: {method} {path} answered with something that is not JSON") from None


class _UsesManagement:
    """The Management API client, opened on first use (a plan or a rollback may never need it)."""

    ctx: OpenContext
    _budget: RateBudget | None
    _mgmt: _Management | None = None

    @property
    def mgmt(self) -> _Management:
        if self._mgmt is None:
            self._mgmt = _Management(self.ctx, self._budget)
        return self._mgmt

    def close(self) -> None:
        if self._mgmt is not None:
            self._mgmt.api.close()
            self._mgmt = None


def _check_ref(v: str) -> str:
    if not _REF.match(v):
        raise ValueError(f"project_ref {v!r} is not a Supabase project reference (20 lower-case letters)")
    return v


class SupabaseDatabaseConfig(AppAddress):
    model_config = ConfigDict(extra="forbid", frozen=True, title="supabase database")
    provider: Literal["supabase"] = "supabase"
    project_ref: str = Field(description="project reference (the 20 letters in db.<ref>.supabase.co)", examples=["abcdefghijklmnopqrst"])
    password_env: EnvVarName = Field(description="environment variable holding the postgres user's password", examples=['SUPABASE_DB_PASSWORD'])
    admin_user: str = Field(default="postgres", description="the user that creates the role (postgres on Supabase)")
    database: str = Field(default="postgres", description="database the role is granted in")
    url_form: UrlForm = Field(default="session", description="how the app connects: direct, session or transaction "
                              "pooler (default: transaction for Edge Functions, else session)")
    admin_form: UrlForm = Field(default="session", description="how the tool connects: session (default: the direct "
                                "host is IPv6-only without the IPv4 add-on) or direct; never transaction")
    sslmode: SslMode = Field(default="require", description="sslmode of the admin session and the app URL")
    region: str | None = Field(default=None, description="project region, shown by plan; hosts come from the "
                               "Management API, never from the region", examples=["eu-central-1"])
    pooler_host: str | None = Field(default=None, description="the Supavisor host, if not the one the Management API reports",
                                       examples=["aws-1-eu-central-1.pooler.supabase.com"])
    connect: Connect | None = Field(default=None, description="where the tool connects instead of the address its "
                                    "form gives (a tunnel); the app's URL keeps the form's address")

    _ref = field_validator("project_ref")(_check_ref)

    @model_validator(mode="before")
    @classmethod
    def _url_form_for_the_app(cls, v: Any, info: ValidationInfo) -> Any:
        # Edge Functions are serverless: each invocation opens a connection, so Supabase advises
        # the transaction pooler for them
        if isinstance(v, dict) and "url_form" not in v:
            app = (info.context or {}).get("app") or {}
            if app.get("platform") == "supabase":
                v = {**v, "url_form": "transaction"}
        return v

    def open(self, ctx: OpenContext) -> "SupabaseDatabase":
        return SupabaseDatabase(self, ctx)


class SupabaseDatabase(_UsesManagement, DatabaseBase):
    key = "supabase"

    def __init__(self, config: SupabaseDatabaseConfig, ctx: OpenContext, *, budget: RateBudget | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self._budget = budget        # default: the budget shared by every client of this token
        self._project: dict[str, Any] | None = None
        self._pooler: str | None = None

    @property
    def ref(self) -> str:
        return self.config.project_ref

    def project(self) -> dict[str, Any]:
        if self._project is None:
            body = self.mgmt.json("GET", f"/v1/projects/{self.ref}")
            self._project = body if isinstance(body, dict) else {}
        return self._project

    def _plan(self, project: dict[str, Any]) -> str | None:
        org = project.get("organization_slug") or project.get("organization_id")
        if not org:
            return None
        # a token scoped to the project may not read its organization: the plan is then unknown
        response = self.mgmt.api.request("GET", f"/v1/organizations/{org}", allow=(401, 403, 404))
        if response.status_code != 200:
            return None
        try:
            body = response.json()
        except ValueError:
            return None
        return str(body.get("plan")) if isinstance(body, dict) and body.get("plan") else None

    def describe(self) -> DatabaseInfo:
        project = self.project()
        status = project.get("status")
        if status != "ACTIVE_HEALTHY":
            hint = _STATUS_HINTS.get(str(status), "wait for it")
            raise Refused(f"Supabase project {self.ref} is {status or 'in an unknown state'}, not ACTIVE_HEALTHY; "
                          f"{hint}, then rerun")
        if self.config.admin_form == "transaction":
            raise Refused(TRANSACTION_REFUSAL.format(ref=self.ref))
        database = project.get("database") or {}
        details = {
            "project_ref": self.ref,
            "region": str(project.get("region") or self.config.region or ""),
            "status": str(status),
            "admin_form": self.config.admin_form,
            "url_form": self.config.url_form,
            "no_superuser_clause": "1",   # hosted Supabase rejects an explicit NOSUPERUSER
        }
        if self.config.admin_form == "direct" and not self.config.connect:
            details["note_direct"] = (f"admin_form: direct connects to {database.get('host') or 'the direct host'}, "
                                      "which is IPv6-only without Supabase's IPv4 add-on; from an IPv4-only runner "
                                      "use admin_form: session (the default)")
        return DatabaseInfo(
            engine="postgres",
            version=str(database.get("version")) if database.get("version") else None,
            plan=self._plan(project),
            credentials="sql",
            details={k: v for k, v in details.items() if v},
        )

    def _pooler_host(self) -> str:
        if self.config.pooler_host:
            return self.config.pooler_host
        if self._pooler is None:
            body = self.mgmt.json("GET", f"/v1/projects/{self.ref}/config/database/pooler")
            entries = body if isinstance(body, list) else []
            host = next((str(e["db_host"]) for e in entries
                         if isinstance(e, dict) and e.get("database_type") == "PRIMARY" and e.get("db_host")), None)
            if host is None:
                raise ProviderError(f"Supabase Management API: the pooler config of project {self.ref} names no "
                                    "PRIMARY db_host; set database.pooler_host")
            self._pooler = host
        return self._pooler

    def _direct_host(self) -> str:
        host = (self.project().get("database") or {}).get("host")
        if not host:
            raise ProviderError(f"Supabase Management API: project {self.ref} reports no database.host; "
                                "set database.connect")
        return str(host)

    def address(self, form: UrlForm, role: str, *, app: bool = False) -> tuple[str, int, str]:
        """(host, port, user) for `role` in the given form: for the tool, `connect` overrides host
        and port; for the app (`app`), app_host/app_port do, and `connect` never does."""
        user = role if form == "direct" else f"{role}.{self.ref}"
        if self.config.connect and not app:
            return self.config.connect.host, self.config.connect.port, user
        if self.config.app_host and self.config.app_port and app:
            return self.config.app_host, self.config.app_port, user    # no Management API read needed
        if form == "direct":
            reported = (self._direct_host(), 5432)
        else:
            reported = (self._pooler_host(), TRANSACTION_PORT if form == "transaction" else 5432)
        host, port = self.config.app_address(reported) if app else reported
        return host, port, user

    def admin_dsn(self) -> Secret:
        from psycopg.conninfo import make_conninfo

        if self.config.admin_form == "transaction":
            raise Refused(TRANSACTION_REFUSAL.format(ref=self.ref))
        host, port, user = self.address(self.config.admin_form, self.config.admin_user)
        if port == TRANSACTION_PORT:
            raise Refused(TRANSACTION_REFUSAL.format(ref=self.ref))
        password = self.ctx.environ.get(self.config.password_env)
        if not password:
            raise ConfigError(f"environment variable {self.config.password_env} (database.password_env) is not set; "
                              "it holds the database password of the Supabase project")
        return Secret(make_conninfo(host=host, port=str(port), user=user, password=password,
                                    dbname=self.config.database, sslmode=self.config.sslmode))

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        host, port, login = self.address(self.config.url_form, user, app=True)
        return Credential(name=user, user=login, host=host, port=port, database=self.config.database,
                          password=password, sslmode=self.config.sslmode)

    def preflight_sql(self, conn: Any) -> list[str]:
        row = conn.execute("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not row or not row[0]:
            return [f"the admin user {self.config.admin_user} lacks CREATEROLE, so it cannot create the application "
                    "role; connect as postgres (database.admin_user)"]
        return []

    def read_log(self, since: float, role: str, *, asked: bool = True, admin_dsn: Secret | None = None):
        if not asked:
            return None      # the log API and its permission are the operator's to grant: on when written
        from providers import supabase_logs

        return supabase_logs.read(self.mgmt, self.ref, since, role)

    # credentials are SQL roles for this provider
    def credential(self, name: str) -> Credential | None:
        raise NotImplementedError("Supabase application roles are created in SQL")

    create_credential = rotate = destroy = credential


class SupabaseAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="supabase app")
    platform: Literal["supabase"] = "supabase"
    project_ref: str = Field(description="project whose Edge Function secrets hold the URL and flag "
                             "(default: the supabase database's project)", examples=["abcdefghijklmnopqrst"])

    @model_validator(mode="before")
    @classmethod
    def _ref_from_database(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, dict) and "project_ref" not in v:
            database = (info.context or {}).get("database") or {}
            if database.get("provider") == "supabase" and database.get("project_ref"):
                v = {**v, "project_ref": database["project_ref"]}
        return v

    _ref = field_validator("project_ref")(_check_ref)

    def open(self, ctx: OpenContext) -> "SupabaseApp":
        return SupabaseApp(self, ctx)


class SupabaseApp(_UsesManagement, AppBase):
    key = "supabase"
    # Edge Functions read secrets on each invocation: a change is live without a restart
    config_change_restarts = True

    def __init__(self, config: SupabaseAppConfig, ctx: OpenContext, *, budget: RateBudget | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self._budget = budget
        # the secrets listing as last read (name → digest); any write of ours forgets it
        self._listing: dict[str, Any] | None = None

    @property
    def _path(self) -> str:
        return f"/v1/projects/{self.config.project_ref}/secrets"

    def describe(self) -> dict[str, str]:
        return {"supabase": f"Edge Function secrets of project {self.config.project_ref}"}

    def get_config(self, keys: list[str]) -> dict[str, str | Digest | None]:
        stored = self._secrets()
        out: dict[str, str | Digest | None] = {}
        for key in keys:
            value = stored.get(key)
            if key not in stored:
                out[key] = None
            elif value is None:
                out[key] = Digest("")   # present but no digest given: never matches, so it is rewritten
            elif isinstance(value, str) and _DIGEST.match(value):
                out[key] = Digest(value.lower())
            else:
                # not a digest: compare it as a value rather than never matching
                out[key] = str(value)
        return out

    def set_config(self, changes: Mapping[str, str | Secret]) -> None:
        body = [{"name": key, "value": str(reveal(value))} for key, value in changes.items()]
        self._change("POST", list(changes), body)

    def unset_config(self, keys: list[str]) -> None:
        self._change("DELETE", keys, list(keys))

    def _secrets(self) -> dict[str, Any]:
        """name → what the listing holds for it; read once until the next write (the step after a
        verify reads the same listing again)."""
        if self._listing is None:
            body = self.mgmt.json("GET", self._path)
            self._listing = {str(s.get("name")): s.get("value") for s in body or [] if isinstance(s, dict)}
        return self._listing

    def _change(self, method: str, keys: list[str], body: Any) -> None:
        """The one way secrets are written: names checked before anything is sent, and the
        listing forgotten before sending (a write whose answer is lost may still have landed)."""
        for key in keys:
            if not _ENV_VAR.match(key):
                raise ConfigError(f"{key!r} is not a valid secret name")
            if key.upper().startswith("SUPABASE_"):
                raise ConfigError(f"{key}: names starting with SUPABASE_ are reserved by Supabase; "
                                  "choose another url_var / flag name")
        self._listing = None
        self.mgmt.api.request(method, self._path, json=body)

    def restart(self) -> None:
        """Nothing to do: Edge Functions read their secrets on every invocation."""

    def attach_url(self, credential: Credential, var: str) -> bool:
        return False

    def detach_url(self, credential_name: str, var: str) -> bool:
        return False
