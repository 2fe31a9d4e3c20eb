"""The run lifecycle: what one verb on one environment goes through, whichever verb it is.

A mutating run takes the environment's lock, opens the state store, records itself (`begin`),
marks the runs it finds still running as interrupted, imports the local journal, and whatever
happens records how it ended (`finish`), closes the store and drops the lock. `rollback` runs
local-first instead: no lock, its records go to `.runbook/journal.jsonl` first (the store may be
what is down) and then, best effort and bounded, to the store.

Everything a verb is handed travels as one Invocation; what the runs of one process share (a
fleet's store connections, the local journal's drain registry) is a Runtime passed in on it.
Every call into the step engine and every reach into the Context's internals is in this module,
so that a change of either has one place to follow.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runbook import engine
from runbook.context import RunState
from runbook.errors import CheckFailed, ConfigError, GateClosed, NotRecorded, RunbookError
from runbook.local_journal import LocalJournal, Registry
from runbook.pool import ConnectionPool
from runbook.secret import Secret, redact

if TYPE_CHECKING:
    from runbook.checks import CheckResult
    from runbook.context import Context
    from runbook.journal import StateStore
    from runbook.project import ManagedRole, Project

Confirm = Callable[[str, list[engine.StepReport]], bool]
StepSink = Callable[[engine.StepReport], None]
Record = dict[str, Any]

# A result's status and the exit code it ends with: the typed error's own code, the one channel
# (errors.py); every other status exits 0, and a failure is raised, never returned.
_STATUS_ERRORS: dict[str, type[RunbookError]] = {
    "waiting": GateClosed, "check-failed": CheckFailed, "not-recorded": NotRecorded}


@dataclass
class Result:
    command: str
    env: str | None
    status: str = "ok"      # ok | unchanged | planned | cancelled | waiting | check-failed | not-recorded
    steps: list[engine.StepReport] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        error = _STATUS_ERRORS.get(self.status)
        return error.exit_code if error is not None else 0

    def say(self, text: str) -> None:
        self.messages.append(redact(text))

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command, "env": self.env, "status": self.status, "exit_code": self.exit_code,
            "steps": [s.to_json() for s in self.steps], "checks": [c.to_json() for c in self.checks],
            "messages": [redact(m) for m in self.messages], "data": self.data,
        }


class Runtime:
    """What the runs of one process share, passed in rather than kept in module globals: the
    idle connections to a central store (a fleet's; None for a single run, which has nothing to
    share them with) and the local journal's in-process drain registry."""

    def __init__(self, *, pool: ConnectionPool | None = None) -> None:
        from providers.base import ProviderRuntime

        self.pool = pool
        self.local = Registry()
        self.providers = ProviderRuntime()   # rate budgets, write counts, a fleet's HTTP clients
        self.notes: list[str] = []           # one-line notes said on stderr (each once)
        self.rate_store: Any = None          # runbook.rate_store.CentralBudgets when a fleet shares its budgets

    @classmethod
    @contextmanager
    def shared(cls) -> Iterator[Runtime]:
        """A runtime whose central-store connections are pooled (a fleet); idle ones close on the way out."""
        runtime = cls(pool=ConnectionPool())
        try:
            yield runtime
        finally:
            runtime.close()

    def local_journal(self, project: Project) -> LocalJournal:
        return LocalJournal(project.base_dir / ".runbook" / "journal.jsonl", registry=self.local)

    def share_rate_budgets(self, state_url: str | None) -> None:
        """A fleet journalling to a central PostgreSQL store keeps each platform account's rate
        budget there too (runbook.rate_store), so the fleet's shards in other processes draw on
        the same one. Other stores (SQLite, each environment's own database) keep it in-process."""
        from runbook.pool import pooled_conninfo

        conninfo = pooled_conninfo(state_url)
        if conninfo is None or self.rate_store is not None:
            return
        from runbook.rate_store import CentralBudgets

        self.providers.budget_store = self.rate_store = CentralBudgets(conninfo)
        self.providers.note = self.note

    def note(self, line: str) -> None:
        import sys

        line = redact(line)
        if line not in self.notes:
            self.notes.append(line)
            sys.stderr.write(f"note: {line}\n")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.rate_store is not None:
            self.rate_store.close()


@dataclass(frozen=True)
class Invocation:
    """Everything a verb is handed besides the project and the environment's name."""

    environ: Mapping[str, str] | None = None     # None: this process's environment
    transport: Any = None                        # an httpx transport for providers' APIs (tests' fakes)
    state: str | None = None                     # --state; None: the environment's own `state:`
    yes: bool = False
    confirm: Confirm | None = None               # asks a person; None: --yes is required to change anything
    on_step: StepSink | None = None              # each step's report as it finishes (the CLI's live lines)
    runtime: Runtime = field(default_factory=Runtime)

    def need_yes(self, command: str) -> None:
        if not self.yes and self.confirm is None:
            raise ConfigError(f"{command} changes things; pass --yes (no terminal to confirm on)")


def context(project: Project, env: str, command: str, invocation: Invocation) -> Context:
    from runbook.context import Context

    environ = dict(os.environ) if invocation.environ is None else dict(invocation.environ)
    return Context(project=project, env=project.env(env), command=command, environ=environ,
                   http_transport=invocation.transport, providers=invocation.runtime.providers)


class Run:
    """One verb on one environment: its Context, its admin DSN (fetched at most once: a provider
    may read it from a secret manager or a platform API), its store and journal."""

    def __init__(self, project: Project, env: str, command: str, invocation: Invocation) -> None:
        self.project = project
        self.invocation = invocation
        self.command = command
        self.ctx = context(project, env, command, invocation)
        self.state = RunState()          # what the applied steps produced (engine.run fills it)
        self._dsn: Secret | None = None
        self.covered: list[ManagedRole] | None = None    # the roles this run selected (`roles()`)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ctx.close()

    @property
    def env(self) -> str:
        return str(self.ctx.env.name)

    @property
    def state_url(self) -> str | None:
        url = self.invocation.state or self.ctx.env.spec.state
        return None if url is None else str(url)

    @property
    def in_database(self) -> bool:
        """The journal lives in the environment's own database (no --state, no `state:`)."""
        return self.state_url in (None, "", "database")

    def admin_dsn(self) -> Secret:
        return self.ctx.admin_dsn()       # cached on the run's Context: steps and checks ask it too

    def admin(self) -> Any:
        """The admin session (the Context's, opened with the run's one DSN; the steps reuse it)."""
        return self.ctx.admin()

    def open_store(self, *, timeout: int = 10, read_only: bool = False) -> StateStore:
        """The journal; `read_only` runs never create it (runbook.readonly: an absent one reads empty)."""
        from functools import partial

        from runbook.journal import open_store

        # a journal in the environment's database shares the run's admin session (same DSN): no second login
        opener = partial(open_store, self.state_url, admin_dsn=self.admin_dsn() if self.in_database else None,
                         base_dir=self.project.base_dir, env=self.env, connect_timeout=timeout,
                         app=self.project.spec.app, pool=self.invocation.runtime.pool,
                         admin_session=self.ctx.admin if self.in_database else None)
        if read_only:
            from runbook.readonly import open_journal

            store: StateStore = open_journal(opener)
            return store
        return opener()

    def local_journal(self) -> LocalJournal:
        return self.invocation.runtime.local_journal(self.project)

    # --- the roles: one run, the playbook applied for each selected role in turn --------------
    def for_each_role(self, name: str | None) -> Iterator[ManagedRole]:
        """Select each role `--role` names (None: every role, in file order) on the run's Context
        in turn; the lock, the admin session and the journal are the run's, shared by all."""
        for managed in self.roles(name):
            self.ctx.select_role(managed)
            yield managed

    def roles(self, name: str | None) -> list[ManagedRole]:
        """`--role NAME` (None: every role), refused before any change where the app platform
        cannot give each of the project's several roles its own URL setting."""
        selected = self.project.select(name)
        several = list(self.project.roles.values())
        problem = self.ctx.app.several_urls([m.url_var for m in several]) if len(several) > 1 else None
        if problem:
            # a second role's URL would overwrite the first's in the platform's one setting
            raise ConfigError(f"{self.env}: {problem}; a roles: project with {len(several)} roles cannot run there yet")
        self.covered = selected
        return selected

    def journalled_roles(self, covered: list[ManagedRole] | None = None) -> tuple[str, list[str] | None, dict[str, Any]]:
        """What the run's `runs` row says about its roles: (digest, roles, detail).

        A `role:` project: its role's digest and no roles, exactly as always. Several roles: the
        names the run covered, in file order, and as digest the spec the run applied: one role's
        own digest (so a one-role run compares with that role's soaks), or for more than one a
        digest of the name → digest map, which changes when any covered role's spec does and
        matches no single role's soak; each role's own digest is on its events and in `detail`."""
        if not self.project.several:
            return str(self.ctx.digest), None, {}
        chosen = covered if covered is not None else self.covered or self.project.select(None)
        digests = {m.name: m.digest() for m in chosen}
        if len(digests) == 1:
            digest = next(iter(digests.values()))
        else:
            import hashlib
            import json

            body = json.dumps(digests, sort_keys=True, separators=(",", ":"))
            digest = "roles:" + hashlib.sha256(body.encode()).hexdigest()[:16]
        return digest, list(digests), {"digests": digests}

    def role_journal(self, journal: engine.Journal) -> engine.Journal:
        """The run's journal with the selected role on each record (several roles only: a
        `role:` project writes exactly what it always wrote)."""
        for_role = getattr(journal, "for_role", None)
        if not self.project.several or for_role is None:
            return journal
        scoped: engine.Journal = for_role(self.ctx.role.name)
        return scoped

    def _tag(self, reports: list[engine.StepReport]) -> list[engine.StepReport]:
        for report in reports:
            report.role = self.ctx.role.name
        return reports

    # --- the step engine: every call into it ------------------------------------------------
    def preview(self, steps: list[engine.Step[Any]]) -> list[engine.StepReport]:
        """What `steps` would change, with nothing journalled. Plans are pure and a preview runs on
        a RunState of its own, so nothing it learns reaches the apply that follows."""
        return self._tag(engine.run(steps, self.ctx, plan_only=True, journal=_nowhere))

    def apply(self, steps: list[engine.Step[Any]], journal: engine.Journal, *,
              state: RunState | None = None) -> list[engine.StepReport]:
        """`steps` applied for the selected role; `state`: carry on the RunState of the same role's
        earlier steps (a playbook applied in two parts), else a fresh one."""
        self.state = RunState() if state is None else state
        sink, role = self.invocation.on_step, self.ctx.role.name

        def on_step(report: engine.StepReport) -> None:
            report.role = role
            if sink is not None:
                sink(report)

        return self._tag(engine.run(steps, self.ctx, plan_only=False, journal=self.role_journal(journal),
                                    on_step=on_step, state=self.state))

    @property
    def asks(self) -> bool:
        """A person confirms before anything changes (no --yes, a confirm callback)."""
        return not self.invocation.yes and self.invocation.confirm is not None

    def confirm_whole(self, previews: list[engine.StepReport], what: str, result: Result) -> bool:
        """One question for a run over several roles: every role's preview (each report carries its
        role, so the CLI groups them under it), answered once. False, and `result` says so, if a
        person said no; nothing was changed then."""
        confirm = self.invocation.confirm
        if not self.asks or confirm is None:
            return True
        if not any(s.changes for s in previews):
            result.say("nothing to change")
            return True
        if confirm(what, previews):
            return True
        result.status = "cancelled"
        result.steps += previews
        result.say("cancelled; nothing was changed")
        return False

    def confirmed_apply(self, steps: list[engine.Step[Any]], journal: engine.Journal, result: Result, what: str, *,
                        before: Callable[[], None] | None = None) -> bool:
        """Preview → confirm → (`before`) → apply; no preview with --yes. False, and `result` says
        so, if a person said no."""
        confirm = self.invocation.confirm
        if not self.invocation.yes and confirm is not None:
            preview = self.preview(steps)
            if not any(s.changes for s in preview):
                result.say("nothing to change")
            elif not confirm(what, preview):
                earlier = any(s.status == "applied" for s in result.steps)    # another role's, this run
                result.status = "cancelled"
                result.steps += preview
                result.say(f"cancelled at role {self.ctx.role.name}; nothing more was changed" if earlier
                           else "cancelled; nothing was changed")
                return False
        if before is not None:
            before()
        result.steps += self.apply(steps, journal)
        return True


def _nowhere(step: str, kind: str, summary: str, data: Any) -> None:
    """A preview's journal: nothing it plans happened."""


def say_pooler(ctx: Context, result: Result) -> None:
    """What the tool's session goes through and what it does about it (runbook/pooler.py)."""
    if ctx.pooler is not None and "pooler" not in result.data:
        result.say(ctx.pooler.describe())
        result.data["pooler"] = ctx.pooler.to_json()


# --- the lifecycle ---------------------------------------------------------------------------

@contextmanager
def mutating(run: Run, result: Result) -> Iterator[engine.Journal]:
    """Lock the environment, open the journal, record the run; finish it whatever happens.
    Yields the run's journal (its environment and run id bound)."""
    from runbook.locks import EnvLock, label

    ctx = run.ctx
    ctx.info   # the platform's own refusal (plan tier, state) comes before we touch anything
    # one admin session for the lock, the steps and an in-database journal: the lock is a session
    # lock, so it lives as long as that session; its label is the session's application_name
    ctx.label_admin(label(run.project.spec.app, run.command))
    lock = EnvLock(run.admin_dsn(), app=run.project.spec.app, env=run.env, label=str(ctx.admin_label),
                   session=run.admin())
    lock.acquire()
    ctx.lock = lock
    ctx.run_started_at = time.time()
    try:
        say_pooler(ctx, result)
        store = ctx.store = run.open_store()
        try:
            run_id, detail = _begin(run, store)
            ctx.run_id = run_id
            journal = store.journal(run.env, run_id)
            for stale in store.interrupted(run.env, run_id):
                dangling = stale.get("dangling") or []
                what = f"; it died during: {dangling[0]['step']} ({dangling[0]['summary']})" if dangling else ""
                msg = f"run #{stale['id']} ({stale['command']}) was interrupted{what}; re-observing everything"
                result.say(msg)
                journal("resume", "info", msg, {"interrupted_run": stale["id"]})
            moved = run.local_journal().drain_into(store, run.env)
            if moved:
                result.say(f"imported {moved} locally journalled record(s) into the state store")
            status = "failed"
            try:
                yield journal
                status = "ok"
            except GateClosed:
                status = "waiting"
                raise
            except CheckFailed:
                status = "check-failed"
                raise
            finally:
                store.finish(run_id, status, {"result": result.status, **detail})
        finally:
            store.close()
    finally:
        ctx.lock = None
        lock.release()


def _begin(run: Run, store: StateStore) -> tuple[int, dict[str, Any]]:
    """The run's `runs` row (its roles and digest: `Run.journalled_roles`): its id, and the
    detail its finish repeats."""
    digest, roles, detail = run.journalled_roles()
    return store.begin(run.env, run.command, digest, detail or None, roles=roles), detail


class LocalFirst:
    """A rollback's journal: every record to the local file first (the store may be the thing
    that is down), kept here too so that the store gets them once it answers."""

    def __init__(self, run: Run, *, role: str | None = None, records: list[Record] | None = None) -> None:
        self.env = run.env
        self.file = run.local_journal()
        self.records: list[Record] = [] if records is None else records
        self.role = role          # several roles: the role each record is about (a `role:` project: none)
        self._run = run

    def __call__(self, step: str, kind: str, summary: str, data: Any = None) -> None:
        record = {"env": self.env, "step": step, "kind": kind, "summary": summary, "data": data}
        self.records.append(record if self.role is None else {**record, "role": self.role})
        self.file.append(self.records[-1])

    def for_role(self, role: str | None) -> LocalFirst:
        """The same journal (one list of records, one file), its records about `role`."""
        return LocalFirst(self._run, role=role, records=self.records)


def to_store(run: Run, journal: LocalFirst, result: Result, *, end_soak: Callable[[StateStore, str], bool]) -> str:
    """Best effort, bounded: the local-first run's records into the store, recorded as a run of
    its own, then `end_soak(store, env)`. Returns where the records now are."""
    local = journal.file
    try:
        dsn = None
        if run.in_database:
            # an embedded cluster that is down is not started for this (other providers: admin_dsn)
            dsn = run.ctx.db.admin_dsn_if_running()
            if dsn is None:
                raise RunbookError("the embedded database is not running")
        from runbook.journal import open_store

        store = open_store(run.state_url, admin_dsn=dsn, base_dir=run.project.base_dir, env=run.env,
                           connect_timeout=3, app=run.project.spec.app, pool=run.invocation.runtime.pool)
    except Exception as exc:
        why = exc.message if isinstance(exc, RunbookError) else type(exc).__name__
        result.say(f"state store unreachable ({redact(why)}); journalled locally at {local.path}")
        return f"local:{local.path}"
    drained = False
    try:
        run_id, _ = _begin(run, store)
        local.drain_into(store, run.env, run_id)
        drained = True
        store.finish(run_id, "ok" if result.status in ("ok", "unchanged") else "failed", {"result": result.status})
        if end_soak(store, run.env):
            result.say("the soak ended (rolled back); a rolled-back soak does not allow promotion")
        return str(store.location)
    except Exception as exc:
        if drained:
            # the records are in the store and gone from the file: saying "journalled locally"
            # would send the operator to an empty file
            result.say(f"state store failed mid-write ({type(exc).__name__}) after the rollback's records reached "
                       f"{store.location}; its soak may still show as running there: `runbook rollback --env "
                       f"{run.env} --yes` again ends it")
            return str(store.location)
        result.say(f"state store failed mid-write ({type(exc).__name__}); journalled locally at {local.path}")
        return f"local:{local.path}"
    finally:
        store.close()
