"""The two adapter protocols every platform implements, the base classes that hold their
defaults, and the values they exchange.

A provider module imports this file and its own API client, nothing from the engine. The
engine talks to providers only through these protocols: every capability it uses is declared
here (with a default in DatabaseBase / AppBase), so nothing in runbook/ has to probe an adapter
with getattr to find out what it can do.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Literal, Mapping, MutableMapping, Protocol, runtime_checkable
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, Field

from runbook.secret import Secret, mask_url

if TYPE_CHECKING:
    from runbook.dblog import LogLines

CredentialMode = Literal["sql", "api"]

# libpq's sslmode values, for every provider's `sslmode:` key
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

# `database.pooler`, on every provider's database block (added by with_pooler, not by each model)
PoolerMode = Literal["auto", "none", "session", "transaction"]
_POOLER_HELP = ("what the tool's own connection goes through: auto (recognise known pooler endpoints and probe), "
                "none, session, or transaction (refused for the tool's own session; the app's URL may use one)")
_with_pooler: dict[type, type] = {}


def with_pooler(model: type[Any]) -> type[Any]:
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


def _annotated_env_var() -> Any:
    from pydantic import AfterValidator

    return Annotated[str, AfterValidator(_env_var_name)]


#: a config key that names an environment variable (which holds a secret)
EnvVarName = _annotated_env_var()


# -- the two endpoints of a database ------------------------------------------------------------

class Connect(BaseModel):
    """Where the tool reaches the server (a tunnel, a bastion, a port-forward, a test server),
    overriding what the platform reports. Never what the app's URL names: see AppAddress."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str
    port: int = Field(default=5432, ge=1, le=65535)


class AppAddress(BaseModel):
    """The two endpoints of a database, shared by every provider's config: `connect` is where
    the tool connects; `app_host`/`app_port` are what the app's URL names, by default the
    endpoint the platform reports (never the tunnel the tool came in by)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    connect: Connect | None = Field(default=None, description="where the tool connects (a tunnel, bastion or "
                                    "port-forward); the app's URL keeps the platform's endpoint")
    app_host: str | None = Field(default=None, description="host in the app's URL (default: the endpoint the "
                                 "platform reports)", examples=["db.internal"])
    app_port: int | None = Field(default=None, ge=1, le=65535, description="port in the app's URL (default: the "
                                 "platform's)", examples=[6432])

    def tool_address(self, reported: tuple[str, int]) -> tuple[str, int]:
        """Where the tool's own session goes."""
        return (self.connect.host, self.connect.port) if self.connect else reported

    def app_address(self, reported: tuple[str, int]) -> tuple[str, int]:
        """What the app's URL names: the platform's endpoint unless app_host/app_port say otherwise."""
        return (self.app_host or reported[0], self.app_port or reported[1])


def through(url: Secret, connect: Connect | None) -> Secret:
    """`url` with its network address moved to `connect` (a tunnel the tool comes in by): an IP
    goes in hostaddr, so TLS still checks the name the URL gives; a name replaces the host."""
    if connect is None:
        return url
    import ipaddress

    from psycopg.conninfo import make_conninfo

    extra = {"port": str(connect.port)}
    try:
        ipaddress.ip_address(connect.host)
        extra["hostaddr"] = connect.host
    except ValueError:
        extra["host"] = connect.host
    return Secret(make_conninfo(url.reveal(), **extra))


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
    #: what the app's URL names for this login when the tool reaches it elsewhere (database.connect):
    #: a platform-issued credential (Heroku) carries both; None: the app uses host/port as they are
    app_endpoint: tuple[str, int] | None = None

    def as_app(self) -> "Credential":
        """This login as the app's URL names it (the platform's endpoint, never the tool's tunnel)."""
        if self.app_endpoint is None:
            return self
        return replace(self, host=self.app_endpoint[0], port=self.app_endpoint[1], app_endpoint=None)

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


class EmbeddedServer(Protocol):
    """A PostgreSQL server the tool runs itself (`local` without a DSN): what `runbook embedded` drives."""

    data_dir: Path

    @property
    def port(self) -> int: ...
    def initialised(self) -> bool: ...
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


#: a database provider's way to prove the app's login from here: the app's URL in, the same
#: user, password and database at an endpoint the provider chose out (see runbook/login.py)
LoginRoute = Callable[[Secret], Secret]


@runtime_checkable
class DatabaseProvider(Protocol):
    """The database side of an environment. DatabaseBase holds the defaults."""

    key: str

    def describe(self) -> DatabaseInfo:
        """Read-only. Raise errors.Refused when the platform rules the change out (tier, state)."""
        ...

    def admin_dsn(self) -> Secret:
        """A libpq conninfo/URL for the owner/master connection used for grants and checks:
        where the tool connects (database.connect when given, else the platform's endpoint)."""
        ...

    def admin_dsn_if_running(self) -> Secret | None:
        """The admin DSN without starting anything (rollback must not boot a database); None:
        the server is not running."""
        ...

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        """What the app uses for a login created in SQL (credentials == "sql"): the platform's
        endpoint, or app_host/app_port; never where the tool connects."""
        ...

    def preflight_sql(self, conn: Any) -> list[str]:
        """Platform-specific checks over the admin connection before any change.

        Return problems as human sentences (each with its fix); empty means go on.
        """
        ...

    @property
    def pooler(self) -> PoolerMode:
        """What the tool's own connection goes through, as the operator declared it."""
        ...

    #: True when login_route moves the app's login to an endpoint of the provider's choosing
    routes_logins: bool

    def login_route(self, url: Secret) -> Secret: ...

    #: True when adjust_existing_role may have something to undo on a role the platform made
    adjusts_existing_roles: bool

    def adjust_existing_role(self, conn: Any, role: str) -> list[str]:
        """Take away what the platform's API gave a role it created (its admin group, CREATEROLE);
        the sentences said about what was changed."""
        ...

    def embedded_server(self) -> EmbeddedServer | None:
        """The server the tool runs itself, where it does (local without a DSN)."""
        ...

    def create_login_role(self, conn: Any, role: str) -> None:
        """Make the login role through the platform's API, where only the API can
        (`DatabaseInfo.login_role_api`: Cloud SQL IAM users); attributes and grants follow in SQL."""
        ...

    def close(self) -> None: ...

    def read_log(self, since: float, role: str, *, asked: bool = True, admin_dsn: Secret | None = None) -> "LogLines | None":
        """The database's own log since `since` (epoch seconds): `role`'s records only, read
        with runbook.dblog's caps. None when the platform has no log the tool can read, and,
        when not `asked` (the soak check nobody wrote), wherever reading it needs more than the
        tool already uses (another API, another permission). `admin_dsn`: the run's own, for a
        provider that reads the log over SQL (asked for once per run)."""
        ...

    # credentials == "api" only
    def credential(self, name: str) -> Credential | None: ...
    def create_credential(self, name: str) -> Credential: ...
    def rotate(self, name: str) -> Credential: ...
    def destroy(self, name: str) -> None: ...


class DatabaseBase:
    """The defaults of a DatabaseProvider's optional capabilities; every provider subclasses it."""

    key: str = ""
    config: Any = None
    adjusts_existing_roles: ClassVar[bool] = False

    @property
    def pooler(self) -> PoolerMode:
        mode: PoolerMode = getattr(self.config, "pooler", "auto")   # with_pooler adds it to every model
        return mode

    @property
    def connect(self) -> Connect | None:
        """database.connect: where the tool reaches the server instead of the platform's endpoint."""
        found = getattr(self.config, "connect", None)
        return found if isinstance(found, Connect) else None

    @property
    def routes_logins(self) -> bool:
        # through a tunnel, the app's endpoint may not exist from here: prove its login through ours
        return self.connect is not None

    def admin_dsn(self) -> Secret:
        raise NotImplementedError

    def admin_dsn_if_running(self) -> Secret | None:
        return self.admin_dsn()

    def preflight_sql(self, conn: Any) -> list[str]:
        return []

    def login_route(self, url: Secret) -> Secret:
        """The app's URL, reached through `connect` when the tool comes in by a tunnel."""
        return through(url, self.connect)

    def adjust_existing_role(self, conn: Any, role: str) -> list[str]:
        return []

    def embedded_server(self) -> EmbeddedServer | None:
        return None

    def read_log(self, since: float, role: str, *, asked: bool = True, admin_dsn: Secret | None = None) -> "LogLines | None":
        return None        # no database log the tool can read

    def create_login_role(self, conn: Any, role: str) -> None:
        raise NotImplementedError(f"{self.key} login roles are made in SQL")

    def close(self) -> None:
        return None

    def credential(self, name: str) -> Credential | None:
        raise NotImplementedError(f"{self.key} credentials are SQL roles")

    def create_credential(self, name: str) -> Credential:
        raise NotImplementedError(f"{self.key} credentials are SQL roles")

    def rotate(self, name: str) -> Credential:
        raise NotImplementedError(f"{self.key} credentials are SQL roles")

    def destroy(self, name: str) -> None:
        raise NotImplementedError(f"{self.key} credentials are SQL roles")


@runtime_checkable
class AppPlatform(Protocol):
    """The app side: where the URL and the flag live, what the app process receives, and how
    the app restarts. AppBase holds the defaults; steps speak only in these intents."""

    key: str
    #: True when a config change restarts the app by itself (Heroku config vars).
    config_change_restarts: bool
    #: True when a restart's processes need every role's URL in place first (ECS task secrets).
    restart_reads_every_url: bool
    #: False when the tool has no way to restart the app (dotenv without `restart:`).
    can_restart: bool
    #: True when the URL the platform writes names its pooler, not the credential's endpoint.
    url_is_pooled: bool

    def several_urls(self, url_vars: list[str]) -> str | None:
        """Why a project whose roles use these URL variables cannot run here (ECS or Cloud Run
        with one URL secret for the environment); None: each variable has its own setting."""
        ...

    def received_url(self) -> str | Digest | None:
        """What the app process will receive for the URL (the resolved ECS task-definition
        reference, the serving Cloud Run revision's env, the Heroku config var, the dotenv
        line); None when unset; a Digest where the store is write-only."""
        ...

    def received_flag(self) -> str | Digest | None:
        """What the app process will receive for the flag."""
        ...

    def stored_url(self) -> str | Digest | None:
        """What the URL's store holds, whether or not the app still reads it (retire must find
        a secret a stopped run left behind)."""
        ...

    def put_url(self, credential: Credential) -> None:
        """Give the app the role's URL (attached where the platform keeps it current itself)."""
        ...

    def remove_url(self, credential_name: str) -> None:
        """Take the role's URL away from the app (detached where it was attached)."""
        ...

    def set_flag(self, value: str) -> None: ...
    def restart(self) -> None: ...

    def url_problem(self, url: str) -> str | None:
        """Why the app could not use `url` although its login works (Cloud Run: no socket mount)."""
        ...

    def describe(self) -> dict[str, str]:
        """Where config lives, for humans (e.g. {"dotenv": ".runbook/staging.env"})."""
        ...

    def close(self) -> None: ...


def check_url_places(one_key: str, one: str | None, many_key: str, many: Mapping[str, str] | None,
                     check: Callable[[str, str], None]) -> None:
    """An app config's URL places (pydantic validator body): `one_key` for one role, or `many_key`
    (each role's url_var → its own secret), never both, never neither; `check(where, name)` judges
    each name; no name for two variables, where one secret would hold two roles' URLs, the last
    write winning."""
    if one is not None and many is not None:
        raise ValueError(f"{one_key} and {many_key} together: give {one_key} (one role) or {many_key}, not both")
    if one is None and many is None:
        raise ValueError(f"{one_key} is required (or {many_key}: each role's url_var → its own secret)")
    where = {one_key: one} if one is not None else {f"{many_key}.{var}": name for var, name in (many or {}).items()}
    if not where:
        raise ValueError(f"{many_key} is empty")
    for what, name in where.items():
        check(what, name)
    names = list(where.values())
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{many_key}: {', '.join(twice)} is named for several variables; each role needs its own")


class AppBase:
    """The defaults of an AppPlatform. The intents are written over a key → value store
    (get_config/set_config/unset_config with the URL's and the flag's variable names), which is
    what dotenv files, Heroku config vars and Supabase secrets are; a platform whose URL and
    flag live in different places (ECS, Cloud Run) overrides the intents instead."""

    key: str = ""
    config_change_restarts: bool = False
    can_restart: bool = True
    url_is_pooled: bool = False
    # a restart starts processes that fail unless every role's URL is already where they read it
    # (an ECS task definition's secrets): a several-roles run writes them all before restarting
    restart_reads_every_url: bool = False
    ctx: OpenContext

    def several_urls(self, url_vars: list[str]) -> str | None:
        return None      # a keyed store holds one value per variable

    # the key → value store; a keyed platform implements these three
    def get_config(self, keys: list[str]) -> "Mapping[str, str | Digest | None]":
        raise NotImplementedError

    def set_config(self, changes: Mapping[str, str | Secret]) -> None:
        raise NotImplementedError

    def unset_config(self, keys: list[str]) -> None:
        raise NotImplementedError

    def received_url(self) -> str | Digest | None:
        return self.get_config([self.ctx.url_var]).get(self.ctx.url_var)

    def received_flag(self) -> str | Digest | None:
        return self.get_config([self.ctx.flag_name]).get(self.ctx.flag_name)

    def stored_url(self) -> str | Digest | None:
        return self.received_url()

    def put_url(self, credential: Credential) -> None:
        if not self.attach_url(credential, self.ctx.url_var):
            self.set_config({self.ctx.url_var: credential.url()})

    def remove_url(self, credential_name: str) -> None:
        if not self.detach_url(credential_name, self.ctx.url_var):
            self.unset_config([self.ctx.url_var])

    def set_flag(self, value: str) -> None:
        self.set_config({self.ctx.flag_name: value})

    def restart(self) -> None:
        raise NotImplementedError

    def attach_url(self, credential: Credential, var: str) -> bool:
        """Let the platform keep `var` current itself (Heroku attachments). False: not supported."""
        return False

    def detach_url(self, credential_name: str, var: str) -> bool:
        """Undo attach_url. False: not supported / nothing attached."""
        return False

    def url_problem(self, url: str) -> str | None:
        return None

    def describe(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        return None


class IntentApp(AppBase):
    """An app platform whose URL and flag live in different places (ECS: a secret and an SSM
    parameter, referenced from the task definition; Cloud Run: a Secret Manager version and a
    plain env var of the serving revision). It implements the intents through four hooks that
    say which of the two (and which other plain variables) a call is about; the key → value form
    (scripts, the provider tests) is split into those here, once, so the platform itself never
    compares a variable's name with the URL's or the flag's."""

    #: False: the platform holds only the URL and the flag (ECS); True: other keys are plain env vars
    other_keys: ClassVar[bool] = False

    # -- the hooks -----------------------------------------------------------------------------
    def read(self, *, url: bool, flag: bool, others: list[str]) -> "Mapping[str, str | Digest | None]":
        """What the app process receives, under the keys "url", "flag" and each of `others`."""
        raise NotImplementedError

    def write(self, *, url: Secret | None = None, flag: str | None = None,
              others: Mapping[str, str | Secret] | None = None) -> None:
        """Store and hand the app what is given (None: leave it), in as few rollouts as the platform allows."""
        raise NotImplementedError

    def remove(self, *, url: bool = False, flag: bool = False, others: list[str] | None = None) -> None:
        """Stop handing the app what is named, then delete what the tool stored for it."""
        raise NotImplementedError

    def places(self) -> tuple[str, str]:
        """Where the URL and the flag are kept, for messages."""
        return ("", "")

    # -- the intents ---------------------------------------------------------------------------
    def received_url(self) -> str | Digest | None:
        return self.read(url=True, flag=False, others=[]).get("url")

    def received_flag(self) -> str | Digest | None:
        return self.read(url=False, flag=True, others=[]).get("flag")

    def put_url(self, credential: Credential) -> None:
        self.write(url=credential.url())

    def remove_url(self, credential_name: str) -> None:
        self.remove(url=True)

    def set_flag(self, value: str) -> None:
        self.write(flag=value)

    # -- the key → value form --------------------------------------------------------------------
    def _split(self, keys: "list[str]") -> tuple[bool, bool, list[str]]:
        url = bool(self.ctx.url_var) and self.ctx.url_var in keys
        flag = bool(self.ctx.flag_name) and self.ctx.flag_name in keys
        others = [k for k in keys if k not in (self.ctx.url_var, self.ctx.flag_name)]
        if others and not self.other_keys:
            from runbook.errors import ConfigError

            url_place, flag_place = self.places()
            raise ConfigError(f"the {self.key} platform keeps only {self.ctx.url_var or 'the URL'} {url_place} and "
                              f"{self.ctx.flag_name or 'the flag'} {flag_place}; {others[0]!r} has no place")
        return url, flag, others

    def _keyed(self, keys: "list[str]", got: "Mapping[str, str | Digest | None]") -> "dict[str, str | Digest | None]":
        names = {self.ctx.url_var: "url", self.ctx.flag_name: "flag"}
        return {k: got.get(names.get(k, k)) for k in keys}

    def get_config(self, keys: list[str]) -> "Mapping[str, str | Digest | None]":
        url, flag, others = self._split(keys)
        if not keys:
            return {}
        return self._keyed(keys, self.read(url=url, flag=flag, others=others))

    def set_config(self, changes: Mapping[str, str | Secret]) -> None:
        url, flag, others = self._split(list(changes))    # unknown keys are refused before any write
        value = changes.get(self.ctx.url_var) if url else None
        flag_value = changes.get(self.ctx.flag_name) if flag else None
        self.write(url=None if value is None else value if isinstance(value, Secret) else Secret(value),
                   flag=None if flag_value is None else flag_value.reveal() if isinstance(flag_value, Secret)
                   else flag_value,
                   others={k: changes[k] for k in others} or None)

    def unset_config(self, keys: list[str]) -> None:
        url, flag, others = self._split(keys)
        self.remove(url=url, flag=flag, others=others or None)

    def stored_config(self, keys: list[str]) -> "Mapping[str, str | Digest | None]":
        url, flag, others = self._split(keys)
        names = {self.ctx.url_var: "url", self.ctx.flag_name: "flag"}
        got = self.stored(url=url, flag=flag)
        return {k: got.get(names.get(k, k)) for k in keys}

    def stored(self, *, url: bool, flag: bool) -> "Mapping[str, str | Digest | None]":
        """What the stores hold, referenced by the app or not."""
        return self.read(url=url, flag=flag, others=[])

    def stored_url(self) -> str | Digest | None:
        return self.stored(url=True, flag=False).get("url")


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


class BudgetStoreDown(Exception):
    """The BudgetStore cannot be reached or used; the message is one line with no secret in it."""


class BudgetStore(Protocol):
    """Accounts' buckets kept outside this process, so that several processes (fleet shards)
    draw on one budget per account (runbook.rate_store keeps them in the central state store).
    `account` is the provider's key for the account (a store keeps only a hash of it), `model`
    the platform's providers.http.RateModel. Every call is atomic across processes and raises
    BudgetStoreDown when the store cannot answer."""

    def take(self, account: str, model: Any) -> tuple[float, bool]:
        """Admit one request: (0, _) if admitted, else (seconds until the refill makes room, and
        whether an answer may make room sooner: requests are out before the first answer said
        what is left) and nothing is taken."""
        ...

    def observe(self, account: str, model: Any, remaining: float | None, retry_after: float | None) -> None:
        """One admitted request was answered: with the remaining count it announced (None: none)
        and, for a 429, how long it was told to wait."""
        ...

    def cancel(self, account: str, model: Any) -> None:
        """One admitted request got no answer."""
        ...


class ProviderRuntime:
    """What the provider objects of one runtime share (runbook.run.Runtime holds one; a fleet's
    environments share it): each account's rate budget and write count, the TLS context, and a
    fleet's HTTP clients. Passed in on OpenContext instead of living in module globals, so two
    runtimes in one process (tests, an embedding program) never draw on each other's budgets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.budgets: dict[str, Any] = {}       # account key → providers.http.RateBudget
        self.writes: dict[str, int] = {}        # account key → writes sent (Heroku: staleness of reads)
        self.tls: Any = None                    # httpx's default SSL context, built once
        self.clients: Any = None                # providers.clients.SharedClients while a fleet runs
        # a fleet on a central state store: the accounts' buckets there (a BudgetStore, above),
        # shared with the fleet's other shards, and where a one-line note goes if it stops answering
        self.budget_store: BudgetStore | None = None
        self.note: Callable[[str], None] = lambda line: None

    def budget(self, key: str, build: Callable[[], Any]) -> Any:
        with self.lock:
            found = self.budgets.get(key)
            if found is None:
                found = self.budgets[key] = build()
            return found

    def count_write(self, key: str) -> None:
        with self.lock:
            self.writes[key] = self.writes.get(key, 0) + 1

    def writes_of(self, key: str) -> int:
        with self.lock:
            return self.writes.get(key, 0)

    def tls_context(self, build: Callable[[], Any]) -> Any:
        with self.lock:
            if self.tls is None:
                self.tls = build()
            return self.tls


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
    role_logins: tuple[str, ...] = ()  # the logins the app takes turns on (alternating rotation: NAME_a, NAME_b)
    url_var: str = ""                  # the app config variable that holds the role's URL
    flag_name: str = ""                # the app config variable that holds the feature flag
    budget_key: str | None = None      # fleet runs share one rate budget per account
    progress: ProgressSink = _no_progress  # long waits report each state change here (the CLI renders them)
    # what the database and app sides of one environment share (one Heroku API object, so one
    # client, one rate budget and one read cache): the Context hands both sides the same mapping
    shared: MutableMapping[str, object] = field(default_factory=dict)
    # what the provider objects of the whole runtime share (rate budgets, a fleet's clients)
    runtime: ProviderRuntime = field(default_factory=ProviderRuntime)
