"""The journal: runs, events, soaks, checkpoints and approvals, behind one StateStore.

Default store: a `runbook` schema in the environment's own database (like alembic_version: every
operator and CI job that can reach the database shares it; the application role gets no access).
Alternatives: `sqlite:///path` and a central `postgresql://…` URL. `rollback` may write to a
local JSON-lines file when no store is reachable; the next run that reaches the store imports it.

Nothing secret is ever written: every text and JSON value passes through the redactor, and a
Secret serialises as the mask.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from runbook.errors import ConfigError, RunbookError
from runbook.pool import ConnectionPool, close_quietly
from runbook.secret import MASK, Secret, redact

SCHEMA = "runbook"
TABLES = ("runs", "events", "soaks", "checkpoints", "approvals")
BUDGET_TABLES = ("rate_budgets",)     # made only when a fleet shares its rate budget here (runbook/rate_store.py)


def _json(data: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, Secret):
            return MASK
        if isinstance(o, (set, frozenset, tuple)):
            return list(o)
        return str(o)

    return redact(json.dumps(data if data is not None else {}, default=default, sort_keys=True))


@functools.lru_cache(maxsize=1)
def _os_user() -> str:
    # once per process: without USER/LOGNAME set, getuser() reads the password database, and
    # every journal record asks
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def actor() -> str:
    return os.environ.get("RUNBOOK_ACTOR") or _os_user()


@functools.lru_cache(maxsize=1)
def host() -> str:
    return socket.gethostname()


# (role name, its spec digest): how a several-roles project scopes soak reads and writes
RoleScope = tuple[str, str]


class StateStore(Protocol):
    location: str

    def begin(self, env: str, command: str, digest: str, detail: dict[str, Any] | None = None,
              roles: list[str] | None = None) -> int: ...
    def event(self, run_id: int | None, env: str, step: str, kind: str, summary: str, data: Any = None,
              role: str | None = None) -> None: ...
    def finish(self, run_id: int, status: str, detail: dict[str, Any] | None = None) -> None: ...
    def interrupted(self, env: str, current: int) -> list[dict[str, Any]]: ...
    def runs(self, env: str | None, limit: int = 50, role: str | None = None) -> list[dict[str, Any]]: ...
    def events(self, env: str | None, run_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]: ...
    def open_soak(self, env: str, role: RoleScope | None = None) -> dict[str, Any] | None: ...
    def latest_soak(self, env: str, role: RoleScope | None = None) -> dict[str, Any] | None: ...
    def start_soak(self, env: str, digest: str, run_id: int | None, at: float, role: RoleScope | None = None) -> int: ...
    def end_soak(self, env: str, status: str, reason: str, at: float, *, include_passed: bool = False,
                 role: RoleScope | None = None) -> bool: ...
    def checkpoints(self, soak_id: int) -> list[dict[str, Any]]: ...
    def record_checkpoint(self, soak_id: int, offset_s: float, at: float, late: bool, status: str, details: Any) -> bool: ...
    def approve(self, env: str, from_env: str | None, soak_id: int | None, digest: str, sign_off: str,
                forced: bool, reason: str | None, role: str | None = None) -> int: ...
    def last_approval(self, env: str, role: str) -> dict[str, Any] | None: ...
    def turn_events(self, env: str, role: str | None, logins: tuple[str, ...],
                    converted: str | None = None) -> list[dict[str, Any]]: ...
    def approvals(self, env: str | None, limit: int = 50) -> list[dict[str, Any]]: ...
    def journal(self, env: str, run_id: int | None, role: str | None = None) -> "RunJournal": ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class RunJournal:
    """The journal of one run in one environment: what the engine writes intents and results to,
    with the environment and run bound once instead of passed with every record."""

    store: Any                  # StateStore
    env: str
    run_id: int | None
    role: str | None = None     # the managed role the records are about (several roles: each its own)

    def __call__(self, step: str, kind: str, summary: str, data: Any = None) -> None:
        if self.role is None:
            self.store.event(self.run_id, self.env, step, kind, summary, data)
        else:
            self.store.event(self.run_id, self.env, step, kind, summary, data, role=self.role)

    def for_role(self, role: str | None) -> "RunJournal":
        return RunJournal(self.store, self.env, self.run_id, role)


_PG_DDL = [
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    "REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
    """CREATE TABLE IF NOT EXISTS {schema}.runs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, env text NOT NULL, command text NOT NULL,
        status text NOT NULL, actor text, host text, pid int, started_at double precision NOT NULL,
        finished_at double precision, digest text, detail text, roles text, app text)""",
    """CREATE TABLE IF NOT EXISTS {schema}.events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id bigint, env text NOT NULL,
        at double precision NOT NULL, step text, kind text NOT NULL, summary text, data text, app text, role text)""",
    """CREATE TABLE IF NOT EXISTS {schema}.soaks (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, env text NOT NULL, digest text NOT NULL,
        run_id bigint, started_at double precision NOT NULL, ended_at double precision,
        status text NOT NULL DEFAULT 'running', end_reason text, app text, role text)""",
    """CREATE TABLE IF NOT EXISTS {schema}.checkpoints (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, soak_id bigint NOT NULL, offset_s double precision NOT NULL,
        at double precision NOT NULL, late boolean NOT NULL, status text NOT NULL, details text,
        UNIQUE (soak_id, offset_s))""",
    """CREATE TABLE IF NOT EXISTS {schema}.approvals (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, env text NOT NULL, from_env text, soak_id bigint,
        digest text, sign_off text NOT NULL, actor text, host text, at double precision NOT NULL,
        forced boolean NOT NULL, reason text, app text, role text)""",
    "CREATE INDEX IF NOT EXISTS events_env_idx ON {schema}.events (env, id)",
    "CREATE INDEX IF NOT EXISTS runs_env_idx ON {schema}.runs (env, id)",
]

_SQLITE_DDL = [
    """CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL, command TEXT NOT NULL,
        status TEXT NOT NULL, actor TEXT, host TEXT, pid INTEGER, started_at REAL NOT NULL, finished_at REAL,
        digest TEXT, detail TEXT, roles TEXT, app TEXT)""",
    """CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER, env TEXT NOT NULL,
        at REAL NOT NULL, step TEXT, kind TEXT NOT NULL, summary TEXT, data TEXT, app TEXT, role TEXT)""",
    """CREATE TABLE IF NOT EXISTS soaks (id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL, digest TEXT NOT NULL,
        run_id INTEGER, started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL DEFAULT 'running', end_reason TEXT,
        app TEXT, role TEXT)""",
    """CREATE TABLE IF NOT EXISTS checkpoints (id INTEGER PRIMARY KEY AUTOINCREMENT, soak_id INTEGER NOT NULL,
        offset_s REAL NOT NULL, at REAL NOT NULL, late BOOLEAN NOT NULL, status TEXT NOT NULL, details TEXT,
        UNIQUE (soak_id, offset_s))""",
    """CREATE TABLE IF NOT EXISTS approvals (id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL, from_env TEXT,
        soak_id INTEGER, digest TEXT, sign_off TEXT NOT NULL, actor TEXT, host TEXT, at REAL NOT NULL,
        forced BOOLEAN NOT NULL, reason TEXT, app TEXT, role TEXT)""",
]

# Tables keyed by app (checkpoints hang off a soak). A journal written before the key existed gets
# the column on first open; a store that belongs to one project (the environment's own database,
# a SQLite file) gives its old rows to the app that opens it, a central one leaves them unkeyed:
# there is no telling whose they were, so they open no gate for anyone.
KEYED = ("runs", "events", "soaks", "approvals")
# Tables whose rows say which managed role they are about (`roles:`). A row from before the column
# has none: it is the shorthand role's, and a `roles:` entry with that spec digest claims its soaks.
ROLE_SCOPED = ("events", "soaks", "approvals")
# A several-roles run says which roles it covered: `runs.roles`, a JSON list of names (role names
# are plain identifiers, so a name's JSON string is exact to search for). NULL: a `role:` project's
# run, or a run from before the column, which covered the project's roles of its time.
RUN_ROLES = "roles"

_COLUMNS = {
    "runs": ("id", "env", "command", "status", "actor", "host", "pid", "started_at", "finished_at", "digest", "detail",
             "roles"),
    "events": ("id", "run_id", "env", "at", "step", "kind", "summary", "data", "role"),
    "soaks": ("id", "env", "digest", "run_id", "started_at", "ended_at", "status", "end_reason", "role"),
    "checkpoints": ("id", "soak_id", "offset_s", "at", "late", "status", "details"),
    "approvals": ("id", "env", "from_env", "soak_id", "digest", "sign_off", "actor", "host", "at", "forced", "reason",
                  "role"),
}


class _SqlStore:
    """Shared logic; subclasses say how to run a statement against their database.

    Every row carries the app (the project identity) beside the environment: two projects that
    share a central store, both with a `staging`, never read each other's runs, soaks or
    approvals. A store opened without an app (a script inspecting it) reads every app's rows."""

    location: str
    app: str | None = None
    # False: a file from before the role column, opened read-only (nothing may add it): its rows
    # have no role, so they read as the shorthand's and as soaks of the very digest asked for
    has_role: bool = True
    # False: a journal from before `runs.roles` opened by a reader that may not add it
    has_run_roles: bool = True

    def _scoped(self, where: str, params: tuple) -> tuple[str, tuple]:
        if self.app is None:
            return where, params
        return f"({where}) AND app = %s", (*params, self.app)

    def _role_scoped(self, where: str, params: tuple, role: RoleScope | None) -> tuple[str, tuple]:
        """One role's soaks: its own rows, and rows from before the role column of its very spec."""
        if role is None:
            return where, params
        if not self.has_role:
            return f"({where}) AND digest = %s", (*params, role[1])
        return f"({where}) AND (role = %s OR (role IS NULL AND digest = %s))", (*params, *role)

    # --- dialect hooks -------------------------------------------------------------------
    def _q(self, template: str, **idents: str) -> Any:
        raise NotImplementedError

    def _exec(self, query: Any, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    # --- helpers ---------------------------------------------------------------------------
    def _select(self, table: str, where: str, params: tuple, order: str = "id DESC", limit: int | None = None) -> list[dict[str, Any]]:
        cols = tuple(c for c in _COLUMNS[table]
                     if (c != "role" or self.has_role) and (table != "runs" or c != RUN_ROLES or self.has_run_roles))
        if table != "checkpoints":          # checkpoints hang off a soak, which is scoped
            where, params = self._scoped(where, params)
        text = f"SELECT {', '.join(cols)} FROM {{t}} WHERE {where} ORDER BY {order}" + (f" LIMIT {int(limit)}" if limit else "")
        rows = self._exec(self._q(text, t=table), params)
        out = []
        for row in rows:
            item = dict(zip(cols, row))
            for key in ("detail", "data", "details"):
                if key in item and isinstance(item[key], str):
                    try:
                        item[key] = json.loads(item[key])
                    except ValueError:
                        item[key] = {"unreadable": True}
            for key in ("late", "forced"):
                if key in item:
                    item[key] = bool(item[key])
            if table == "runs" and RUN_ROLES in item:
                roles = _names(item.pop(RUN_ROLES))
                if roles is not None:          # a `role:` project's runs read back as they always did
                    item[RUN_ROLES] = roles
            out.append(item)
        return out

    def _insert(self, table: str, values: dict[str, Any]) -> int:
        if table != "checkpoints":
            values = {**values, "app": self.app}
        cols = list(values)
        text = f"INSERT INTO {{t}} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) RETURNING id"
        return int(self._exec(self._q(text, t=table), tuple(values.values()))[0][0])

    # --- StateStore ------------------------------------------------------------------------
    def journal(self, env: str, run_id: int | None, role: str | None = None) -> RunJournal:
        return RunJournal(self, env, run_id, role)

    def begin(self, env: str, command: str, digest: str, detail: dict[str, Any] | None = None,
              roles: list[str] | None = None) -> int:
        """`roles`: the roles a several-roles run covers (None: a `role:` project, as always)."""
        return self._insert("runs", {
            "env": env, "command": command, "status": "running", "actor": redact(actor()), "host": host(),
            "pid": os.getpid(), "started_at": time.time(), "digest": digest, "detail": _json(detail),
            **({RUN_ROLES: json.dumps(list(roles))} if roles is not None else {}),
        })

    def event(self, run_id: int | None, env: str, step: str, kind: str, summary: str, data: Any = None,
              role: str | None = None) -> None:
        self._insert("events", {"run_id": run_id, "env": env, "at": time.time(), "step": step, "kind": kind,
                                "summary": redact(summary), "data": _json(data),
                                **({"role": role} if role is not None else {})})

    def event_many(self, rows: list[tuple[int | None, str, str, str, str, Any]]) -> None:
        """Several `event(run_id, env, step, kind, summary, data)` rows in one statement per 100: for
        records already durable elsewhere (the local journal's), never for an intent still ahead of
        its side effect."""
        now = time.time()
        for start in range(0, len(rows), 100):
            chunk = rows[start:start + 100]
            params = tuple(v for run_id, env, step, kind, summary, data in chunk
                           for v in (run_id, env, now, step, kind, redact(summary), _json(data), self.app))
            text = ("INSERT INTO {t} (run_id, env, at, step, kind, summary, data, app) VALUES "
                    + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(chunk)))
            self._exec(self._q(text, t="events"), params)

    def finish(self, run_id: int, status: str, detail: dict[str, Any] | None = None) -> None:
        where, params = self._scoped("id = %s", (run_id,))
        self._exec(self._q(f"UPDATE {{t}} SET status = %s, finished_at = %s, detail = %s WHERE {where}", t="runs"),
                   (status, time.time(), _json(detail), *params))

    def interrupted(self, env: str, current: int) -> list[dict[str, Any]]:
        """Runs still marked running whose process is gone (we hold the lock, so it must be)."""
        stale = self._select("runs", "env = %s AND status = 'running' AND id <> %s", (env, current))
        for run in stale:
            self._exec(self._q("UPDATE {t} SET status = 'interrupted', finished_at = %s WHERE id = %s", t="runs"),
                       (time.time(), run["id"]))      # an id we just read through the app's scope
            events = self._select("events", "run_id = %s", (run["id"],), order="id DESC", limit=200)
            results = {(e["step"]) for e in events if e["kind"] in ("result", "error")}
            run["dangling"] = [e for e in events if e["kind"] == "intent" and e["step"] not in results]
        return stale

    def runs(self, env: str | None, limit: int = 50, role: str | None = None) -> list[dict[str, Any]]:
        """The latest runs; with `role`, those that covered it (a run without `roles` covered every
        role the project had then, so it counts for each)."""
        where, params = ("1 = 1", ()) if env is None else ("env = %s", (env,))
        if role is not None and self.has_run_roles:
            where, params = f"({where}) AND (roles IS NULL OR roles LIKE %s ESCAPE '!')", (*params, _contains(role))
        return self._select("runs", where, params, limit=limit)

    def events(self, env: str | None, run_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        if run_id is not None:
            return self._select("events", "run_id = %s", (run_id,), order="id", limit=limit)
        if env is None:
            return list(reversed(self._select("events", "1 = 1", (), limit=limit)))
        return list(reversed(self._select("events", "env = %s", (env,), limit=limit)))

    def open_soak(self, env: str, role: RoleScope | None = None) -> dict[str, Any] | None:
        rows = self._select("soaks", *self._role_scoped("env = %s AND status = 'running'", (env,), role), limit=1)
        return rows[0] if rows else None

    def latest_soak(self, env: str, role: RoleScope | None = None) -> dict[str, Any] | None:
        rows = self._select("soaks", *self._role_scoped("env = %s", (env,), role), limit=1)
        return rows[0] if rows else None

    def start_soak(self, env: str, digest: str, run_id: int | None, at: float, role: RoleScope | None = None) -> int:
        where, params = self._scoped(*self._role_scoped("env = %s AND status = 'running'", (env,), role))
        self._exec(self._q(f"UPDATE {{t}} SET status = 'superseded', ended_at = %s, end_reason = %s WHERE {where}",
                           t="soaks"), (at, "a new soak started", *params))
        return self._insert("soaks", {"env": env, "digest": digest, "run_id": run_id, "started_at": at, "status": "running",
                                      **({"role": role[0]} if role is not None else {})})

    def end_soak(self, env: str, status: str, reason: str, at: float, *, include_passed: bool = False,
                 role: RoleScope | None = None) -> bool:
        """End the running soak (and, for a rollback, void a passed one too). True if one changed."""
        states = "('running', 'passed')" if include_passed else "('running')"
        latest, latest_params = self._scoped(*self._role_scoped("env = %s", (env,), role))
        rows = self._exec(self._q("UPDATE {t} SET status = %s, ended_at = %s, end_reason = %s "
                                  f"WHERE env = %s AND status IN {states} "
                                  f"AND id = (SELECT max(id) FROM {{t}} WHERE {latest}) RETURNING id", t="soaks"),
                          (status, at, redact(reason), env, *latest_params))
        return bool(rows)

    def checkpoints(self, soak_id: int) -> list[dict[str, Any]]:
        return self._select("checkpoints", "soak_id = %s", (soak_id,), order="offset_s")

    def record_checkpoint(self, soak_id: int, offset_s: float, at: float, late: bool, status: str, details: Any) -> bool:
        text = ("INSERT INTO {t} (soak_id, offset_s, at, late, status, details) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (soak_id, offset_s) DO NOTHING RETURNING id")
        return bool(self._exec(self._q(text, t="checkpoints"), (soak_id, offset_s, at, late, status, _json(details))))

    def approve(self, env: str, from_env: str | None, soak_id: int | None, digest: str, sign_off: str,
                forced: bool, reason: str | None, role: str | None = None) -> int:
        return self._insert("approvals", {
            "env": env, "from_env": from_env, "soak_id": soak_id, "digest": digest, "sign_off": redact(sign_off),
            "actor": redact(actor()), "host": host(), "at": time.time(), "forced": forced,
            "reason": redact(reason) if reason else None, **({"role": role} if role is not None else {}),
        })

    def last_approval(self, env: str, role: str) -> dict[str, Any] | None:
        """The latest promotion of `env` that took `role` (several roles: one approval row each)."""
        if not self.has_role:
            return None         # a journal from before the role column never recorded one
        rows = self._select("approvals", "env = %s AND role = %s", (env, role), limit=1)
        return rows[0] if rows else None

    def approvals(self, env: str | None, limit: int = 50) -> list[dict[str, Any]]:
        if env is None:
            return self._select("approvals", "1 = 1", (), limit=limit)
        return self._select("approvals", "env = %s", (env,), limit=limit)

    def turn_events(self, env: str, role: str | None, logins: tuple[str, ...],
                    converted: str | None = None) -> list[dict[str, Any]]:
        """What an alternating role's rotation state rests on, however old (runbook/alternating.py):
        the latest result naming one of `logins` as `current_login`, the latest naming one as
        `rotating_to`, the latest URL write of the role (whichever login it names) and, given
        `converted`, the latest result saying that credential was being converted (`converting_from`), oldest first:
        exactly the events whose replay gives what replaying the whole journal would. `role` None: a `role:`
        project's rows (no role); else that role's and rows from before the role column."""
        if not self.has_role:      # a file from before the role column: every row is the shorthand's
            scope, scope_params = "1 = 1", ()
        elif role is None:
            scope, scope_params = "role IS NULL", ()
        else:
            scope, scope_params = "(role = %s OR role IS NULL)", (role,)
        base = f"env = %s AND kind = 'result' AND {scope}"
        named = "(" + " OR ".join(["data LIKE %s ESCAPE '!'"] * len(logins)) + ")"
        probes = [(named, tuple(_contains(f"{key}\": \"{login}") for login in logins))
                  for key in ("current_login", "rotating_to")]
        if converted is not None:
            probes.append(("data LIKE %s ESCAPE '!'", (_contains(f"converting_from\": \"{converted}"),)))
        probes.append(("step = 'url' AND data LIKE %s ESCAPE '!'", (_contains("url_digest"),)))
        found: dict[int, dict[str, Any]] = {}
        for where, patterns in probes:      # the latest row of each
            for row in self._select("events", f"{base} AND {where}", (env, *scope_params, *patterns), limit=1):
                found[row["id"]] = row
        return [found[i] for i in sorted(found)]


def _names(value: Any) -> list[str] | None:
    """`runs.roles` as written (a JSON list of role names); None for NULL or anything else."""
    if not isinstance(value, str):
        return None
    try:
        names = json.loads(value)
    except ValueError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _contains(text: str) -> str:
    """A LIKE pattern (ESCAPE '!') for `"text"` anywhere in a JSON text: role names (plain
    identifiers, written as they are) hold `_`, a LIKE wildcard."""
    escaped = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f'%"{escaped}"%'


class PostgresStore(_SqlStore):
    """The journal in a `runbook` schema, reached over its own autocommit connection (or one lent
    by a ConnectionPool, which gets it back on close)."""

    def __init__(self, conninfo: str | Secret, *, location: str, connect_timeout: int = 10,
                 pool: ConnectionPool | None = None, app: str | None = None, claim_legacy: bool = False,
                 create: bool = True, session: Callable[[], Any] | None = None) -> None:
        self.location = location
        self.app = app
        self._pool = pool
        self._key = conninfo.reveal() if isinstance(conninfo, Secret) else conninfo
        self._closed = False
        # `session`: the run's own admin session on the same DSN (a journal in the environment's
        # database), asked for on every statement so a reopened session is followed; the run,
        # not the store, closes it. Every write is its own autocommit statement, so nothing the
        # journal writes waits on a step's transaction or dies with it.
        self._session = session
        if session is not None:
            self.prepare(session(), location=location, app=app, claim_legacy=claim_legacy, create=create)
        else:
            self._conn = pool.take(self._key) if pool is not None else None
            if self._conn is None:
                self._conn = self.connect(self._key, location=location, connect_timeout=connect_timeout, app=app,
                                          claim_legacy=claim_legacy, create=create, pool=pool)
                if pool is not None:
                    pool.count_opened()
        if not create:
            # a reader that may not migrate a journal from before `runs.roles` reads runs without it
            self.has_run_roles = "runs" not in _role_unscoped(self.conn)

    @property
    def conn(self) -> Any:
        return self._session() if self._session is not None else self._conn

    @staticmethod
    def connect(conninfo: str, *, location: str, connect_timeout: int = 10, app: str | None = None,
                claim_legacy: bool = False, create: bool = True, pool: ConnectionPool | None = None) -> Any:
        """A new autocommit connection to the store, its schema created if it is not there yet
        (with create=False: JournalMissing instead, and no DDL at all), and refused, before
        anything is written to or read from it, if someone else made or changed it (once per
        fleet: `pool` remembers the journals its connections checked)."""
        import psycopg

        from runbook.context import pin_session

        try:
            # prepare_threshold=None: safe through any pooler (each statement its own transaction)
            conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout,
                                   prepare_threshold=None, application_name="runbook:journal")
        except psycopg.OperationalError as exc:
            raise RunbookError(f"state store {location} unreachable: {redact(str(exc)).strip().splitlines()[0]}") from None
        signature = (conninfo, app, claim_legacy, create)
        try:
            pin_session(conn)
            if pool is None or not pool.prepared(signature):
                PostgresStore.prepare(conn, location=location, app=app, claim_legacy=claim_legacy, create=create)
                if pool is not None:
                    pool.mark_prepared(signature)
        except BaseException:
            close_quietly(conn)
            raise
        return conn

    @staticmethod
    def prepare(conn: Any, *, location: str, app: str | None = None, claim_legacy: bool = False,
                create: bool = True) -> None:
        """The journal on an open, pinned session: created (or JournalMissing with create=False),
        and refused if someone else made or changed it."""
        if create:
            PostgresStore._ensure(conn, location=location, app=app if claim_legacy else None)
        elif not PostgresStore._present(conn):
            raise JournalMissing(location)
        else:
            # a read-only run trusts the journal no more than a writing one (a forged soak
            # row reads as passed), and cannot add the app key to a journal older than it
            refuse_foreign_journal(conn, location, reader=True)
            PostgresStore._upgrade_or_refuse_unkeyed(conn, location, app=app if claim_legacy else None)

    @staticmethod
    def _present(conn: Any) -> bool:
        return conn.execute("SELECT pg_catalog.count(*) FROM pg_catalog.pg_tables WHERE schemaname = %s "
                            "AND tablename = ANY(%s)", (SCHEMA, list(TABLES))).fetchone()[0] == len(TABLES)

    @staticmethod
    def _upgrade_or_refuse_unkeyed(conn: Any, location: str, *, app: str | None) -> None:
        """A journal from before the app key, opened by a read-only run: its owner (the admin
        DSN, run read-only) upgrades it as a writer would; anyone else cannot, and says so."""
        if not _unkeyed(conn) and not [t for t in _role_unscoped(conn) if t != "runs"]:
            return     # only `runs.roles` missing: readable as it is (runs then carry no roles)
        owns = conn.execute("SELECT n.nspowner = r.oid FROM pg_catalog.pg_namespace n, pg_catalog.pg_roles r "
                            "WHERE n.nspname = %s AND r.rolname = CURRENT_USER", (SCHEMA,)).fetchone()
        if owns and owns[0]:
            _migrate(conn, app)
            return
        raise ConfigError(f"the journal at {location} predates the app key, which a read-only run cannot add",
                          hint="run any writing command (provision, soak) once with the admin DSN")

    @staticmethod
    def _ensure(conn: Any, *, location: str = "state store", app: str | None = None) -> None:
        from psycopg import sql

        exists = conn.execute(
            "SELECT pg_catalog.count(*) FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = ANY(%s)",
            (SCHEMA, list(TABLES))).fetchone()[0]
        if conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone():
            refuse_foreign_journal(conn, location)
        if exists != len(TABLES):
            with conn.transaction():
                # serialise first-time creation between concurrent runs
                conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(8675309, 1)")
                for ddl in _PG_DDL:
                    conn.execute(sql.SQL(ddl).format(schema=sql.Identifier(SCHEMA)))
                refuse_foreign_journal(conn, location)
        _migrate(conn, app)

    def _q(self, template: str, **idents: str) -> Any:
        from psycopg import sql

        # %s stays a server-side parameter placeholder; only table names are composed in
        return sql.SQL(template).format(**{k: sql.Identifier(SCHEMA, v) for k, v in idents.items()})

    def _exec(self, query: Any, params: tuple = ()) -> list[tuple]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def close(self) -> None:
        if self._closed:
            return             # a second close must not hand the connection out twice
        self._closed = True
        if self._session is not None:
            return             # the run's admin session: the run closes it
        if self._pool is not None:
            self._pool.give(self._key, self._conn)
        else:
            self._conn.close()


# Whatever in the journal schema could run someone else's code as the tool, or let someone else
# write a row there (a forged "passed" soak would open promotion), found in one read. The tool
# makes the schema and its tables (owned by the session user, no grants), identity sequences,
# plain indexes and one constant default; anything else was put there by someone else.
_FOREIGN_JOURNAL = """
WITH s AS (SELECT n.oid, n.nspowner, n.nspacl FROM pg_catalog.pg_namespace n WHERE n.nspname = %(schema)s),
     me AS (SELECT CASE WHEN %(reader)s THEN (SELECT nspowner FROM s) ELSE r.oid END AS oid
              FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER),
     t AS (SELECT c.oid, c.relname::text AS name, c.relowner, c.relacl, c.relkind, c.relam, c.relrowsecurity
             FROM pg_catalog.pg_class c, s WHERE c.relnamespace = s.oid)
SELECT problem FROM (
  SELECT 1, 'schema ' || %(schema)s || ' is owned by ' || pg_catalog.pg_get_userbyid(s.nspowner) FROM s, me
   WHERE s.nspowner <> me.oid
  UNION ALL
  SELECT 2, 'schema ' || %(schema)s || ' grants ' || a.privilege_type || ' to '
         || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END
    FROM s, pg_catalog.aclexplode(s.nspacl) a WHERE a.grantee <> s.nspowner AND a.privilege_type <> 'USAGE'
  UNION ALL
  SELECT 3, t.name || ' is owned by ' || pg_catalog.pg_get_userbyid(t.relowner) FROM t, me WHERE t.relowner <> me.oid
  UNION ALL
  SELECT 4, t.name || ' grants ' || a.privilege_type || ' to '
         || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END
    FROM t, pg_catalog.aclexplode(t.relacl) a WHERE a.grantee <> t.relowner AND a.privilege_type <> 'SELECT'
  UNION ALL
  SELECT 5, t.name || ' is not a plain table' FROM t WHERE t.name = ANY(%(tables)s) AND t.relkind <> 'r'
  UNION ALL
  SELECT 6, t.name || ' is not a heap table' FROM t WHERE t.relkind = 'r'
     AND t.relam <> (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'heap')
  UNION ALL
  SELECT 7, t.name || ' has row-level security' FROM t WHERE t.relrowsecurity
  UNION ALL
  SELECT 8, 'trigger ' || g.tgname || ' on ' || t.name FROM t JOIN pg_catalog.pg_trigger g ON g.tgrelid = t.oid
  UNION ALL
  SELECT 9, 'rule ' || w.rulename || ' on ' || t.name FROM t JOIN pg_catalog.pg_rewrite w ON w.ev_class = t.oid
  UNION ALL
  SELECT 10, 'policy ' || p.polname || ' on ' || t.name FROM t JOIN pg_catalog.pg_policy p ON p.polrelid = t.oid
  UNION ALL
  SELECT 11, 'a default on ' || t.name || '.' || a.attname
    FROM t JOIN pg_catalog.pg_attrdef d ON d.adrelid = t.oid
    JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.adnum
   WHERE NOT (t.name = 'soaks' AND a.attname = 'status'
              AND pg_catalog.pg_get_expr(d.adbin, d.adrelid) = '''running''::text')
  UNION ALL
  SELECT 12, 'column ' || t.name || '.' || a.attname || ' has a type from outside pg_catalog'
    FROM t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_catalog.pg_type y ON y.oid = a.atttypid
   WHERE t.relkind = 'r' AND y.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace
  UNION ALL
  SELECT 13, 'generated column ' || t.name || '.' || a.attname
    FROM t, LATERAL (SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.oid AND a.attgenerated <> ''
                     OFFSET 0) a
  UNION ALL
  SELECT 14, 'constraint ' || k.conname || ' on ' || t.name FROM t JOIN pg_catalog.pg_constraint k ON k.conrelid = t.oid
   WHERE k.contype NOT IN ('p', 'u', 'n')
  UNION ALL
  SELECT 15, 'index ' || i.indexrelid::pg_catalog.regclass::text
         || ' has expressions, a predicate or a foreign operator class'
    FROM t JOIN pg_catalog.pg_index i ON i.indrelid = t.oid
   WHERE i.indexprs IS NOT NULL OR i.indpred IS NOT NULL
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_opclass o WHERE o.oid = ANY(i.indclass::pg_catalog.oid[])
                 AND o.opcnamespace <> 'pg_catalog'::pg_catalog.regnamespace)
) x(rank, problem) ORDER BY rank, problem
"""


def refuse_foreign_journal(conn: Any, location: str, *, reader: bool = False) -> None:
    """Refuse (exit 2) a journal schema pg-runbook did not make, or one changed behind its back.

    Reading grants (USAGE on the schema, SELECT on its tables: a read-only DSN for CI's drift and
    soak jobs) are allowed; they let nobody write a row or run code. A `reader` (a read-only run,
    which is not the journal's writer) needs everything owned by the schema's owner instead of by
    itself; only writers — the runs that act on a soak's verdict — insist on owning it."""
    from runbook.errors import Refused

    with conn.transaction():
        # the journal's handful of relations, looked up through the catalogs' indexes: hash joins
        # made the planner read all of pg_attribute and pg_attrdef, which grow with every table
        # of the database (a tenth of a no-op provision's server time at 1,000 tables)
        # (and no JIT: the estimates for a whole database's catalogs make it compile for ~60 ms)
        conn.execute("SELECT pg_catalog.set_config('enable_hashjoin', 'off', true), "
                     "pg_catalog.set_config('enable_mergejoin', 'off', true), pg_catalog.set_config('jit', 'off', true)")
        problems = [r[0] for r in conn.execute(_FOREIGN_JOURNAL, {"schema": SCHEMA, "tables": [*TABLES, *BUDGET_TABLES],
                                                                  "reader": reader}).fetchall()]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise Refused(f"state store {location}: {problems[0]}{more}; pg-runbook did not make its journal that way "
                      "and will not use it (others could run code as the admin through it, or forge a passed "
                      f"soak): drop schema {SCHEMA} after review, or use --state")


def _unkeyed(conn: Any) -> list[str]:
    """The journal tables written before the app key existed."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = c.oid AND a.attname = 'app' AND NOT a.attisdropped)", (SCHEMA, list(KEYED))).fetchall()]


def _role_unscoped(conn: Any) -> list[str]:
    """The journal tables written before their role column existed (see ROLE_SCOPED; `runs`:
    before RUN_ROLES)."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = c.oid AND a.attname = CASE WHEN c.relname = 'runs' THEN %s ELSE 'role' END "
        "AND NOT a.attisdropped)", (SCHEMA, [*ROLE_SCOPED, "runs"], RUN_ROLES)).fetchall()]


def _add_role_column(conn: Any) -> None:
    """Old rows keep a NULL role: they are the shorthand role's (see ROLE_SCOPED), and old runs a
    NULL `roles`: they covered the project's roles of their time (see RUN_ROLES)."""
    from psycopg import sql

    missing = _role_unscoped(conn)
    if not missing:
        return
    with conn.transaction():
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(8675309, 1)")
        for table in missing:
            column = RUN_ROLES if table == "runs" else "role"
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(
                sql.Identifier(SCHEMA, table), sql.Identifier(column)))


def _migrate(conn: Any, app: str | None) -> None:
    """Add the app key to a journal written before it existed (see KEYED), and the role column."""
    from psycopg import sql

    _add_role_column(conn)
    missing = _unkeyed(conn)
    if not missing:
        return
    with conn.transaction():
        conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(8675309, 1)")
        for table in missing:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS app text").format(sql.Identifier(SCHEMA, table)))
            if app is not None:
                conn.execute(sql.SQL("UPDATE {} SET app = %s WHERE app IS NULL").format(sql.Identifier(SCHEMA, table)),
                             (app,))


class SqliteStore(_SqlStore):
    def __init__(self, path: Path, *, app: str | None = None, create: bool = True) -> None:
        import sqlite3      # here: a run journalling to PostgreSQL or the local file never loads it

        self.location = f"sqlite:///{path}"
        self.app = app
        try:
            if not create:       # read-only runs: the file as it is, no DDL, no WAL switch
                self.conn = sqlite3.connect(str(path), timeout=15, isolation_level=None, check_same_thread=False)
                self.has_role = all(any(col[1] == "role" for col in self.conn.execute(f"PRAGMA table_info({table})"))
                                    for table in ROLE_SCOPED)
                self.has_run_roles = self._has_run_roles()
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(path), timeout=15, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            for ddl in _SQLITE_DDL:
                self.conn.execute(ddl)
            for table in KEYED:     # a file written before the app key: its rows are this project's
                if not any(col[1] == "app" for col in self.conn.execute(f"PRAGMA table_info({table})")):
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN app TEXT")
                    if app is not None:
                        self.conn.execute(f"UPDATE {table} SET app = ? WHERE app IS NULL", (app,))
            for table in ROLE_SCOPED:     # a file written before the role column: its rows are the shorthand role's
                if not any(col[1] == "role" for col in self.conn.execute(f"PRAGMA table_info({table})")):
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN role TEXT")
            if not self._has_run_roles():     # before runs.roles: old runs covered the project's roles of their time
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN {RUN_ROLES} TEXT")
        except sqlite3.DatabaseError as exc:
            raise RunbookError(f"state store {self.location} unusable: {exc}") from None

    def _has_run_roles(self) -> bool:
        return any(col[1] == RUN_ROLES for col in self.conn.execute("PRAGMA table_info(runs)"))

    def _q(self, template: str, **idents: str) -> Any:
        text = template
        for key, value in idents.items():
            text = text.replace("{" + key + "}", value)
        return text.replace("%s", "?")

    def _exec(self, query: Any, params: tuple = ()) -> list[tuple]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def close(self) -> None:
        self.conn.close()


class JournalMissing(RunbookError):
    """A read-only run found no journal (open_store(create=False)): nothing was ever recorded there."""

    def __init__(self, location: str) -> None:
        super().__init__(f"no journal at {location} yet")
        self.location = location


def open_store(url: str | None, *, admin_dsn: Secret | None, base_dir: Path, env: str, connect_timeout: int = 10,
               app: str | None = None, create: bool = True, pool: ConnectionPool | None = None,
               admin_session: Callable[[], Any] | None = None) -> StateStore:
    """`None`: the env database's `runbook` schema. `sqlite:///path` or `postgresql://…` otherwise.
    `app` scopes every read and write to that project (None: a script reading every app's rows).
    `create=False` (read-only runs) never creates the journal and raises JournalMissing instead.
    `pool` (a fleet's, from its runtime) lends a central PostgreSQL store its connection; a store
    in an environment's own database is never pooled: no other environment could reuse it; it
    runs on `admin_session` (the run's admin session on `admin_dsn`) when one is given."""
    if url is None or url in ("", "database"):
        if admin_dsn is None:
            raise ConfigError("no state store: the environment's database is not reachable and no --state was given")
        return PostgresStore(admin_dsn, location=f"schema {SCHEMA} in {env}'s database", connect_timeout=connect_timeout,
                             app=app, claim_legacy=True, create=create, session=admin_session)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            path = base_dir / path
        if not create and not path.exists():
            raise JournalMissing(f"sqlite:///{path}")
        return SqliteStore(path, app=app, create=create)
    if url.startswith("sqlite://"):
        # sqlite:////abs/path is the absolute form; sqlite://rel is a common typo
        raise ConfigError(f"state URL {url!r}: write sqlite:///relative/path or sqlite:////absolute/path")
    if url.startswith(("postgresql://", "postgres://")):
        from runbook.secret import mask_url

        return PostgresStore(Secret(url), location=mask_url(url), connect_timeout=connect_timeout, pool=pool, app=app,
                             create=create)
    if url.startswith("env:"):
        value = os.environ.get(url[4:])
        if not value:
            raise ConfigError(f"state URL {url!r}: environment variable {url[4:]} is not set")
        return open_store(value, admin_dsn=admin_dsn, base_dir=base_dir, env=env, connect_timeout=connect_timeout,
                          app=app, create=create, pool=pool)
    raise ConfigError(f"state URL {url!r} must be sqlite:///path, postgresql://… or env:VAR")
