"""What one run works with. `Context` is the session: the project, the environment, the two
adapters, the admin connection and the journal, opened lazily so that `rollback` touches only
the app side and `plan` never takes a lock. `RunState` is what earlier steps of the run hand to
later ones, written only by `apply` (and by the engine after each step). `StepContext` is the
read-only view a step gets of both, with the engine's one "plan only" flag.

Adapters and connections open lazily, so `rollback` touches only the app side and `plan`
never takes a lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from providers.base import (AppPlatform, Credential, DatabaseInfo, DatabaseProvider, OpenContext, Progress,
                            ProviderRuntime, RetryPolicy)
from runbook.errors import ConfigError, RunbookError
from runbook.extras import require as require_extras
from runbook.project import Environment, FlagSpec, ManagedRole, Project, RoleSpec, SettingsSpec
from runbook.secret import Secret, redact

if TYPE_CHECKING:
    from psycopg import Connection

    from runbook.app_url import UrlState


# Where long platform waits are shown: (env name, providers.base.Progress) → None. The CLI installs
# its display (runbook.render.ProgressDisplay); None (scripts, tests) shows nothing.
PROGRESS_SINK: Callable[[str, Progress], None] | None = None


def _seconds(value: timedelta) -> float:
    return value.total_seconds()


class SoakJournal(Protocol):
    """What steps read and write in the environment's journal (runbook/journal.py's store)."""

    def events(self, env: str, limit: int = ...) -> list[dict[str, Any]]: ...
    def open_soak(self, env: str) -> dict[str, Any] | None: ...
    def latest_soak(self, env: str) -> dict[str, Any] | None: ...
    def start_soak(self, env: str, digest: str, run_id: int | None, at: float) -> int: ...
    def end_soak(self, env: str, status: str, reason: str, at: float, *, include_passed: bool = False) -> bool: ...


class RoleJournal:
    """The store as one role of a several-roles project sees it: its own soaks (and soaks from
    before the role column of its very spec). Everything else passes through."""

    def __init__(self, store: Any, scope: tuple[str, str]) -> None:
        self.store = store
        self.scope = scope

    def open_soak(self, env: str) -> dict[str, Any] | None:
        return self.store.open_soak(env, self.scope)      # type: ignore[no-any-return]

    def latest_soak(self, env: str) -> dict[str, Any] | None:
        return self.store.latest_soak(env, self.scope)    # type: ignore[no-any-return]

    def start_soak(self, env: str, digest: str, run_id: int | None, at: float) -> int:
        return self.store.start_soak(env, digest, run_id, at, self.scope)   # type: ignore[no-any-return]

    def end_soak(self, env: str, status: str, reason: str, at: float, *, include_passed: bool = False) -> bool:
        return self.store.end_soak(env, status, reason, at, include_passed=include_passed,   # type: ignore[no-any-return]
                                   role=self.scope)

    def event(self, run_id: int | None, env: str, step: str, kind: str, summary: str, data: Any = None) -> None:
        self.store.event(run_id, env, step, kind, summary, data, role=self.scope[0])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def role_store(store: Any, project: Project, managed: ManagedRole) -> Any:
    """`store` scoped to `managed`'s soaks where the project has several roles; as it is for `role:`."""
    if store is None or not project.several:
        return store
    return RoleJournal(store, (managed.name, managed.digest()))


@dataclass
class RunState:
    """What later steps of one run need from earlier ones. Steps write it only in `apply`; the
    engine records which steps changed something. A preview (plan only) starts from a fresh one,
    so nothing a preview learns can leak into the run that follows it."""

    credential: Credential | None = None       # the platform credential created or rotated (Heroku)
    new_password: Secret | None = None          # the password a role step set
    login: str | None = None                    # alternating rotation: the login new_password is for
    written: Credential | None = None           # the credential the url step wrote to the app
    changed: list[str] = field(default_factory=list)   # steps that applied changes (preview: planned them)
    app_changed: bool = False                   # one of them changed the app's config
    soak_started: bool = False
    verified: dict[str, Any] = field(default_factory=dict)   # what each step's verify read (drift --fix reports from grants')


@dataclass
class Context:
    project: Project
    env: Environment
    command: str
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    http_transport: Any = None
    # what the providers of the whole runtime share: rate budgets, a fleet's HTTP clients (runbook/run.py's Runtime)
    providers: ProviderRuntime = field(default_factory=ProviderRuntime)
    store: Any = None                     # StateStore | None
    run_id: int | None = None
    run_started_at: float | None = None   # wall clock when this mutating run took its lock
    notes: list[str] = field(default_factory=list)

    # observations kept for the run (as `info` is): dropped by the apply that changes them
    url_memo: UrlState | None = None
    credential_memo: tuple[Credential | None] | None = None     # (the platform's credential for the role,)

    selected: ManagedRole | None = None   # the role this part of the run is about (default: the first)
    _opened_for: str | None = None        # the role the adapters were opened for (their names come from it)
    _app_session: tuple[UrlState, Any] | None = None   # the login that proved url_memo, kept for verify

    _db: DatabaseProvider | None = None
    _app: AppPlatform | None = None
    _info: DatabaseInfo | None = None
    _admin: Any = None
    _admin_dsn: Secret | None = None     # fetched once per run (a provider may read it from a secret manager)
    _owner: str | None = None
    pooler: Any = None                    # runbook.pooler.Detection, once the tool's first session is open
    admin_label: str | None = None        # the admin session's application_name purpose (a mutating run's lock label)
    lock: Any = None                      # runbook.locks.EnvLock held on the admin session, while it is
    _shared: dict[str, object] = field(default_factory=dict)   # what both adapters share (OpenContext.shared)

    # --- facts about the project ---------------------------------------------------------
    @property
    def managed(self) -> ManagedRole:
        if self.selected is None:
            return next(iter(self.project.roles.values()))
        return self.selected

    def select_role(self, managed: ManagedRole) -> None:
        """The rest of the run is about `managed`: what was observed of another role is dropped,
        and adapters (opened with a role's URL variable and flag) reopen on next use. The admin
        session, the lock and the journal stay."""
        if self.managed.name == managed.name:
            self.selected = managed
            return
        self.selected = managed
        self.forget_url()            # and the app-role session that proved the other role's URL
        self.credential_memo = None
        self._owner = None
        if self._opened_for is not None and self._opened_for != managed.name:
            self._close_adapters()
            self._db = self._app = None
            self._opened_for = None

    @property
    def role(self) -> RoleSpec:
        return self.managed.spec

    @property
    def settings(self) -> SettingsSpec:
        return self.project.spec.settings

    @property
    def url_var(self) -> str:
        return self.managed.url_var

    @property
    def flag(self) -> FlagSpec | None:
        return self.managed.flag

    @property
    def digest(self) -> str:
        return self.managed.digest()

    @property
    def soak_store(self) -> Any:
        """The journal as this role sees its soaks (runbook.context.role_store)."""
        return role_store(self.store, self.project, self.managed)

    def note(self, text: str) -> None:
        self.notes.append(redact(text))

    def take_notes(self) -> list[str]:
        out, self.notes = self.notes, []
        return out

    # --- adapters ------------------------------------------------------------------------
    def open_context(self) -> OpenContext:
        s = self.settings
        return OpenContext(
            env_name=self.env.name, app_name=self.project.spec.app, base_dir=self.project.base_dir,
            environ=self.environ,
            retry=RetryPolicy(attempts=s.http_attempts, total_seconds=_seconds(s.retry_budget),
                              timeout_seconds=_seconds(s.http_timeout)),
            http_transport=self.http_transport, role_name=self.role.name, url_var=self.url_var,
            role_logins=self.role.logins,
            flag_name=self.flag.name if self.flag is not None else "",
            progress=self.report_progress, shared=self._shared, runtime=self.providers,
        )

    def report_progress(self, event: Progress) -> None:
        """A provider's long wait changed state: to the CLI's display, named by environment."""
        sink = PROGRESS_SINK
        if sink is not None:
            sink(self.env.name, event)

    def require_extras(self, *, app_only: bool = False) -> None:
        """The optional libraries this environment's providers need (ConfigError naming the extra).
        Both sides before either is used, so the database side never changes and then finds the
        app side unreachable; the app side alone for rollback, whatever the database side needs."""
        sides = {"app": self.env.app.platform}
        if not app_only:
            sides = {"database": self.env.database.provider, **sides}
        require_extras(self.env.name, sides, self.environ)

    @property
    def db(self) -> DatabaseProvider:
        if self._db is None:
            self.require_extras()
            self._db = self.env.database.open(self.open_context())
            self._opened_for = self.managed.name
        return self._db

    @property
    def app(self) -> AppPlatform:
        if self._app is None:
            self.require_extras(app_only=True)
            self._app = self.env.app.open(self.open_context())
            self._opened_for = self.managed.name
        return self._app

    @property
    def info(self) -> DatabaseInfo:
        if self._info is None:
            self._info = self.db.describe()
        return self._info

    @property
    def api_credentials(self) -> bool:
        return self.info.credentials == "api"

    @property
    def role_grants(self) -> tuple[str, ...]:
        """The memberships the role may hold: the platform's (rds_iam, …) and its member_of."""
        return tuple(dict.fromkeys((*self.info.role_grants, *self.managed.member_of)))

    def platform_credential(self) -> Credential | None:
        """The credential the platform holds for the role (API credentials), read once per run."""
        if self.credential_memo is None:
            from runbook.alternating import api_login

            self.credential_memo = (self.db.credential(api_login(self)),)
        return self.credential_memo[0]

    # --- SQL -----------------------------------------------------------------------------
    def admin_dsn(self) -> Secret:
        """The provider's admin DSN, asked for once per run."""
        if self._admin_dsn is None:
            found: Secret = self.db.admin_dsn()
            self._admin_dsn = found
        return self._admin_dsn

    def admin(self) -> Connection[Any]:
        """The owner/master connection (autocommit; grant steps open their own transactions). A
        mutating run's environment lock and its in-database journal live on it too (`lock`)."""
        if self._admin is None or self._admin.closed:
            reopened = self._admin is not None
            self._admin = connect(self.admin_dsn(), self, purpose=self.admin_label or self.command)
            if reopened and self.lock is not None and self.lock.held:
                self.lock.reacquire(self._admin)     # the lock went with the old session
        return self._admin      # type: ignore[no-any-return]  # held as Any: psycopg is imported lazily

    def label_admin(self, label: str) -> None:
        """Name the admin session `label` (a mutating run's lock label, which a second run shows as
        the holder), whether it is open already (a drift --fix read first) or opens later."""
        self.admin_label = label
        if self._admin is not None and not self._admin.closed:
            self._admin.execute("SELECT pg_catalog.set_config('application_name', %s, false)",
                                (application_name(self.project, label),))

    def check_pooler(self, conn: Connection[Any], open_another: Callable[[], Connection[Any]], dsn: Secret) -> None:
        """Find out once per run what the tool's session goes through; refuse a transaction pooler."""
        from runbook import pooler

        if self.pooler is None:
            declared = self.db.pooler
            details = self._info.details if self._info is not None else {}
            self.pooler = pooler.detect(declared, dsn, conn, open_another, details)
        if self.pooler.mode == "transaction":
            raise pooler.refusal(self.pooler, self.env.name)

    @property
    def owner(self) -> str:
        if self._owner is None:
            row = self.admin().execute("SELECT current_user").fetchone()
            self._owner = self.role.owner or str(row[0] if row else "")
        return self._owner

    def forget_url(self) -> None:
        """Drop what this run observed of the app's URL, and the login that proved it."""
        self.url_memo = None
        kept, self._app_session = self._app_session, None
        if kept is not None:
            _close_quietly(kept[1])

    def keep_app_session(self, state: UrlState, conn: Any) -> None:
        if self._app_session is not None:
            _close_quietly(self._app_session[1])
        self._app_session = (state, conn)

    def take_app_session(self, state: UrlState) -> Any:
        """The session that logged in for `state` (this run's current observation of the URL,
        unchanged since), handed over once, its new transaction pinned as connect_as_app pins
        one (that round trip also proves it alive); else None."""
        kept = self._app_session
        if kept is None or kept[0] is not state or state is not self.url_memo:
            return None
        self._app_session = None
        conn = kept[1]
        try:
            pin_session(conn, local=True)
        except Exception:
            _close_quietly(conn)      # the server ended it meanwhile: the caller logs in afresh
            return None
        return conn

    def journal_history(self, limit: int = 200) -> list[dict[str, Any]]:
        """This env's journal, oldest first: the store's events, then records journalled only
        locally (a rollback that failed before it reached the store)."""
        from runbook.local_journal import LocalJournal

        events = list(self.store.events(self.env.name, limit=limit)) if self.store is not None else []
        local = LocalJournal(project_dir(self.project) / "journal.jsonl")
        return events + [r for r in local.records() if r.get("env") == self.env.name]

    def rotation_events(self) -> list[dict[str, Any]]:
        """The selected alternating role's rotation records, however far back (the store's
        dedicated query, runbook/journal.py turn_events), then its locally journalled ones."""
        from runbook.local_journal import LocalJournal

        role = self.role.name if self.project.several else None
        events = list(self.store.turn_events(self.env.name, role, tuple(self.role.logins), self.role.name)) \
            if self.store is not None else []
        local = LocalJournal(project_dir(self.project) / "journal.jsonl")
        return events + [r for r in local.records() if r.get("env") == self.env.name and r.get("role") in (None, role)]

    def close(self) -> None:
        self.forget_url()
        if self._admin is not None and not self._admin.closed:
            self._admin.close()
        self._close_adapters()

    def _close_adapters(self) -> None:
        # best effort: an adapter that fails to close must not hide the run's own outcome
        for adapter in (self._db, self._app):
            if adapter is not None:
                try:
                    adapter.close()
                except Exception:
                    pass


_CONFIG_FAULTS = ("could not translate host name", "Name or service not known", "password authentication failed",
                  "does not exist", "invalid ", "no password supplied", "unrecognized", "SSL is not enabled",
                  "could not parse network address", "missing \"=\"")


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


def application_name(project: Project, purpose: str) -> str:
    return f"runbook:{project.spec.app}:{purpose}"[:63]


def connect(dsn: Secret, ctx: Context | None, *, purpose: str, autocommit: bool = True,
            timeout: float | None = None) -> Connection[Any]:
    """Open one of the tool's own psycopg connections; failures end as one clear line.

    No startup `options` (PgBouncer at its defaults refuses the parameter): session settings
    are SET once connected. No prepared statements (`prepare_threshold=None`): a pooler may
    put the next statement on a server connection that never saw the PREPARE. With a context,
    the first session also finds out what pooler it goes through, and a transaction pooler is
    refused before anything is changed (runbook/pooler.py)."""
    settings = ctx.settings if ctx else None
    connect_timeout = max(1, int(timeout or (settings.connect_timeout.total_seconds() if settings else 10)))
    name = application_name(ctx.project, purpose) if ctx else f"runbook:{purpose}"[:63]
    # the session's settings ride on the pinning statement: one round trip for both
    conn = _open(dsn, autocommit=autocommit, connect_timeout=connect_timeout, application_name=name,
                 settings=settings)
    try:
        if ctx is not None:
            ctx.check_pooler(conn, lambda: _open(dsn, autocommit=True, connect_timeout=connect_timeout,
                                                application_name=name), dsn)
    except BaseException as exc:
        conn.close()
        import psycopg

        if isinstance(exc, psycopg.Error):
            first = redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunbookError(f"cannot set up the database session: {first}") from None
        raise
    return conn


def _statement_timeout(settings: SettingsSpec) -> str:
    return f"{int(settings.statement_timeout.total_seconds() * 1000)}ms"


def _open(dsn: Secret, *, autocommit: bool, connect_timeout: int, application_name: str,
          settings: SettingsSpec | None = None) -> Connection[Any]:
    """A pinned connection; with `settings`, the tool's session settings too (by SET after
    connecting, never startup options), in the same statement as the pin."""
    import psycopg

    try:
        conn = psycopg.connect(
            dsn.reveal(), autocommit=autocommit, connect_timeout=connect_timeout,
            application_name=application_name, prepare_threshold=None,
        )
        try:
            pin_session(conn, statement_timeout=None if settings is None else _statement_timeout(settings))
        except BaseException:
            conn.close()
            raise
        return conn
    except psycopg.OperationalError as exc:
        first = redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # a wrong host name, database, user or password is bad configuration (exit 2); a server
        # that is down or slow is a failure worth retrying (exit 1)
        if any(m in first for m in _CONFIG_FAULTS):
            raise ConfigError(f"cannot connect to the database: {first}") from None
        raise RunbookError(f"cannot connect to the database: {first}") from None
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"bad database DSN: {redact(str(exc)).strip().splitlines()[0]}") from None


# The owner may own the database and so `ALTER DATABASE … SET search_path = evil, pg_catalog`
# (or `SET role`): every session the tool opens would then resolve unqualified names through the
# owner's schema first and run the owner's look-alike functions with the admin's powers.
PINNED_SEARCH_PATH = "pg_catalog, pg_temp"


def pin_session(conn: Connection[Any], *, local: bool = False, statement_timeout: str | None = None) -> None:
    """Right after connecting, before any other statement: search_path to pg_catalog then pg_temp
    (pg_temp last, so a temporary object cannot shadow a catalog one either) and no SET ROLE a
    database or role default slipped in. The statement itself calls only qualified names.

    `local`: for the transaction the (non-autocommit) connection has just begun, and no longer.
    Sessions as the app role use it: they may go through the app's transaction pooler, where a
    session-level setting would stay on the server connection and reach the app's next client.
    `statement_timeout` ("5000ms"): set in the same statement, at the same scope."""
    from psycopg.pq import TransactionStatus

    if statement_timeout is None:
        conn.execute("SELECT pg_catalog.set_config('search_path', %s, %s), "
                     "pg_catalog.set_config('role', 'none', %s)", (PINNED_SEARCH_PATH, local, local))
    else:
        conn.execute("SELECT pg_catalog.set_config('search_path', %s, %s), "
                     "pg_catalog.set_config('role', 'none', %s), pg_catalog.set_config('statement_timeout', %s, %s)",
                     (PINNED_SEARCH_PATH, local, local, statement_timeout, local))
    if not local and not conn.autocommit and conn.info.transaction_status == TransactionStatus.INTRANS:
        conn.commit()      # a session setting, kept: not rolled back with the first transaction


def project_dir(project: Project) -> Path:
    return project.base_dir / ".runbook"


@dataclass(frozen=True)
class StepContext:
    """A step's read-only view of the run: the project and environment, the adapters and the
    admin connection (opened on first use), the journal, what earlier steps handed on (`state`,
    written only through `apply`'s argument) and the engine's `plan_only`. Notes a step makes go
    to the session and out with the step's report."""

    session: Context = field(repr=False)
    state: RunState
    plan_only: bool

    @property
    def project(self) -> Project:
        return self.session.project

    @property
    def env(self) -> Environment:
        return self.session.env

    @property
    def command(self) -> str:
        return self.session.command

    @property
    def environ(self) -> Mapping[str, str]:
        return self.session.environ

    @property
    def role(self) -> RoleSpec:
        return self.session.role

    @property
    def settings(self) -> SettingsSpec:
        return self.session.settings

    @property
    def url_var(self) -> str:
        return self.session.url_var

    @property
    def flag(self) -> FlagSpec | None:
        return self.session.flag

    @property
    def digest(self) -> str:
        return self.session.digest

    @property
    def store(self) -> SoakJournal | None:
        # the runtime's store (typed where it is opened), as the selected role sees its soaks
        return self.session.soak_store  # type: ignore[no-any-return]

    @property
    def run_id(self) -> int | None:
        return self.session.run_id

    @property
    def run_started_at(self) -> float | None:
        return self.session.run_started_at

    @property
    def db(self) -> DatabaseProvider:
        return self.session.db

    @property
    def app(self) -> AppPlatform:
        return self.session.app

    @property
    def info(self) -> DatabaseInfo:
        return self.session.info

    @property
    def api_credentials(self) -> bool:
        return self.session.api_credentials

    @property
    def managed(self) -> ManagedRole:
        return self.session.managed

    @property
    def role_grants(self) -> tuple[str, ...]:
        return self.session.role_grants

    @property
    def owner(self) -> str:
        return self.session.owner

    def admin(self) -> Connection[Any]:
        return self.session.admin()

    def note(self, text: str) -> None:
        self.session.note(text)

    def journal_history(self, limit: int = 200) -> list[dict[str, Any]]:
        return self.session.journal_history(limit)

    def rotation_events(self) -> list[dict[str, Any]]:
        return self.session.rotation_events()

    def platform_credential(self) -> Credential | None:
        """API credentials: the one this run made or rotated, else the one the platform holds.
        None where logins are SQL roles."""
        if not self.api_credentials:
            return None
        return self.state.credential or self.session.platform_credential()

    def url_state(self, *, refresh: bool = False) -> UrlState:
        from runbook.app_url import url_state

        return url_state(self.session, issued=self.platform_credential(), refresh=refresh, keep=not self.plan_only)

    def expected_endpoint(self, login: str | None = None) -> Credential | None:
        """Where a login with the app's URL may go (runbook/app_url.py); `login`: which of an
        alternating role's logins it names (default: the role)."""
        from runbook.app_url import expected_endpoint

        return expected_endpoint(self.session, self.platform_credential(), login)

    def forget_url(self) -> None:
        """After any apply (the engine calls it): observe the app's URL afresh."""
        self.session.forget_url()
