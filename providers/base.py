"""The two adapter protocols every platform implements, and the values they exchange.

A provider module imports this file and its own API client, nothing from the engine. The
engine talks to providers only through these protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal, Mapping, Protocol, runtime_checkable
from urllib.parse import quote, urlencode

from runbook.secret import Secret, mask_url

CredentialMode = Literal["sql", "api"]

# libpq's sslmode values, for every provider's `sslmode:` key
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

# `database.pooler`, on every provider's database block (added by with_pooler, not by each model)
PoolerMode = Literal["auto", "none", "session", "transaction"]
_POOLER_HELP = ("what the tool's own connection goes through: auto (recognise known pooler endpoints and probe), "
                "none, session, or transaction (refused for the tool's own session; the app's URL may use one)")
_with_pooler: dict[type, type] = {}


def with_pooler(model: type) -> type:
    """`model` with a `pooler: auto | none | session | transaction` field (default auto): one
    subclass per provider model, made once, so no provider has to declare it."""
    if model not in _with_pooler:
        from pydantic import Field, create_model

        _with_pooler[model] = model if "pooler" in model.model_fields else create_model(
            model.__name__, __base__=model, __module__=model.__module__,
            pooler=(PoolerMode, Field(default="auto", description=_POOLER_HELP)))
    return _with_pooler[model]


def _env_var_name(value: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value or ""):
        raise ValueError(f"{value!r} must name an environment variable, not hold the secret itself")
    return value


def _annotated_env_var():
    from pydantic import AfterValidator

    return Annotated[str, AfterValidator(_env_var_name)]


#: a config key that names an environment variable (which holds a secret)
EnvVarName = _annotated_env_var()


@dataclass(frozen=True)
class Credential:
    """A login for the application role. The password only ever travels as a Secret."""

    name: str
    user: str
    host: str
    port: int
    database: str
    password: Secret | None = None
    sslmode: str = "require"
    options: Mapping[str, str] = field(default_factory=dict)

    def url(self) -> Secret:
        """postgresql://user:password@host:port/db?sslmode=..., quoted properly, as a Secret."""
        user = quote(self.user, safe="")
        auth = f"{user}:{quote(self.password.reveal(), safe='')}" if self.password else user
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = {"sslmode": self.sslmode, **dict(self.options)} if self.sslmode else dict(self.options)
        tail = f"?{urlencode(query)}" if query else ""
        return Secret(f"postgresql://{auth}@{host}:{self.port}/{quote(self.database, safe='')}{tail}")

    def masked_url(self) -> str:
        return mask_url(self.url())


@dataclass(frozen=True)
class Digest:
    """What a write-only config store returns instead of a value (Supabase secrets: sha256 hex)."""

    sha256: str

    @staticmethod
    def of(value: "str | Secret") -> "Digest":
        import hashlib

        raw = value.reveal() if isinstance(value, Secret) else value
        return Digest(hashlib.sha256(raw.encode()).hexdigest())


@dataclass(frozen=True)
class DatabaseInfo:
    """What `describe()` learned: enough to decide, before any change, whether to go on."""

    engine: str                       # "postgres", "aurora-postgresql", ...
    version: str | None = None        # server version as the platform reports it
    plan: str | None = None           # plan / tier / instance class
    credentials: CredentialMode = "sql"   # "api": the platform creates logins (Heroku)
    password_auth: bool = True        # False: the role logs in without a password (RDS IAM auth)
    role_grants: tuple[str, ...] = ()  # platform roles the app role must be in (e.g. rds_iam)
    login_role_api: bool = False      # the platform must create the login role (`create_login_role`: Cloud SQL IAM users)
    details: Mapping[str, str] = field(default_factory=dict)   # shown by plan / diagnose


@runtime_checkable
class DatabaseProvider(Protocol):
    """The database side of an environment."""

    key: str

    def describe(self) -> DatabaseInfo:
        """Read-only. Raise errors.Refused when the platform rules the change out (tier, state)."""

    def admin_dsn(self) -> Secret:
        """A libpq conninfo/URL for the owner/master connection used for grants and checks."""

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        """The app-facing address for a login created in SQL (credentials == "sql")."""

    def preflight_sql(self, conn: object) -> list[str]:
        """Platform-specific checks over the admin connection before any change.

        Return problems as human sentences (each with its fix); empty means go on.
        """

    # credentials == "api" only
    def credential(self, name: str) -> Credential | None: ...
    def create_credential(self, name: str) -> Credential: ...
    def rotate(self, name: str) -> Credential: ...
    def destroy(self, name: str) -> None: ...


@runtime_checkable
class AppPlatform(Protocol):
    """The app side: where the URL and the flag live, and how the app restarts."""

    key: str
    #: True when set_config/unset_config restart the app by themselves (Heroku config vars).
    config_change_restarts: bool

    def get_config(self, keys: list[str]) -> "dict[str, str | Digest | None]":
        """Current values; None when unset; a Digest where the store is write-only."""
    def set_config(self, changes: Mapping[str, str | Secret]) -> None: ...
    def unset_config(self, keys: list[str]) -> None: ...
    def restart(self) -> None: ...

    def attach_url(self, credential: Credential, var: str) -> bool:
        """Let the platform keep `var` current itself (Heroku attachments). False: not supported."""

    def detach_url(self, credential_name: str, var: str) -> bool:
        """Undo attach_url. False: not supported / nothing attached."""

    def describe(self) -> dict[str, str]:
        """Where config lives, for humans (e.g. {"dotenv": ".runbook/staging.env"})."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for every provider call: attempts and total wall time (DESIGN: never wait forever)."""

    attempts: int = 5
    total_seconds: float = 120.0
    timeout_seconds: float = 30.0
    max_backoff_seconds: float = 20.0


@dataclass(frozen=True)
class Progress:
    """One state change of a long platform wait (an ECS deployment, a Cloud Run rollout, a
    Heroku credential being provisioned, sessions draining), for the operator to watch.

    `what` names the wait ("ecs deployment"), `state` is the platform's own word for where it
    is ("IN_PROGRESS 1/2 tasks"), `remaining` the seconds left of the tool's wait (None:
    unbounded or unknown), `done` True on the last event of that wait."""

    what: str
    state: str
    remaining: float | None = None
    done: bool = False
    fields: Mapping[str, object] = field(default_factory=dict)


ProgressSink = Callable[[Progress], None]


def _no_progress(_event: Progress) -> None:
    return None


@dataclass(frozen=True)
class OpenContext:
    """What a provider may know about where it runs: never the engine, only these facts."""

    env_name: str
    app_name: str
    base_dir: "object"                 # pathlib.Path of the project file's folder
    environ: Mapping[str, str]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    http_transport: object | None = None   # an httpx transport injected by tests; None = real network
    role_name: str = ""                # the application role (for IAM policies and messages)
    url_var: str = ""                  # the app config variable that holds the role's URL
    flag_name: str = ""                # the app config variable that holds the feature flag
    budget_key: str | None = None      # fleet runs share one rate budget per account
    progress: ProgressSink = _no_progress  # long waits report each state change here (the CLI renders them)
