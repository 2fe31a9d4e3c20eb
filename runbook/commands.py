"""One function per verb (alembic's command.py): the CLI parses and renders; these do the work
and can be scripted from Python. Each returns a Result; errors are raised as RunbookError."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook import engine, playbook as playbooks
from runbook.checks import CheckResult
from runbook.context import Context, connect, project_dir
from runbook.errors import CheckFailed, ConfigError, GateClosed, NotRecorded, RunbookError
from runbook.pooler import PoolerRefused
from runbook.project import Project
from runbook.secret import redact
from runbook.steps.app_config import ROLLBACK_MARK

Confirm = Callable[[str, list[engine.StepReport]], bool]


@dataclass
class Result:
    command: str
    env: str | None
    status: str = "ok"                   # ok | unchanged | planned | failed | waiting | check-failed
    exit_code: int = 0
    steps: list[engine.StepReport] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.messages.append(redact(text))

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command, "env": self.env, "status": self.status, "exit_code": self.exit_code,
            "steps": [s.to_json() for s in self.steps], "checks": [c.to_json() for c in self.checks],
            "messages": [redact(m) for m in self.messages], "data": self.data,
        }


def _context(project: Project, env_name: str, command: str, environ: Mapping[str, str] | None,
             transport: Any = None, plan_only: bool = False) -> Context:
    env = project.env(env_name)
    return Context(project=project, env=env, command=command,
                   environ=dict(os.environ) if environ is None else dict(environ),
                   plan_only=plan_only, http_transport=transport)


def _state_url(ctx: Context, state: str | None) -> str | None:
    return state or ctx.env.spec.state


def _open_store(ctx: Context, state: str | None, *, timeout: int = 10, read_only: bool = False):
    """The journal; `read_only` runs never create it (runbook.readonly: an absent one reads empty)."""
    from functools import partial

    from runbook.state import open_store

    url = _state_url(ctx, state)
    dsn = ctx.db.admin_dsn() if url in (None, "", "database") else None
    opener = partial(open_store, url, admin_dsn=dsn, base_dir=ctx.project.base_dir, env=ctx.env.name,
                     connect_timeout=timeout, app=ctx.project.spec.app)
    if read_only:
        from runbook.readonly import open_journal

        return open_journal(opener)
    return opener()


def _journal(ctx: Context) -> engine.Journal:
    def write(step: str, kind: str, summary: str, data: Any) -> None:
        if ctx.store is not None:
            ctx.store.event(ctx.run_id, ctx.env.name, step, kind, summary, data)
    return write


@contextmanager
def _mutating_run(ctx: Context, command: str, state: str | None, result: Result) -> Iterator[None]:
    """Lock the environment, open the journal, record the run; finish it whatever happens."""
    from runbook.locks import EnvLock, label
    from runbook.local_journal import LocalJournal

    ctx.info   # the platform's own refusal (plan tier, state) comes before we touch anything
    lock = EnvLock(ctx.db.admin_dsn(), app=ctx.project.spec.app, env=ctx.env.name,
                   label=label(ctx.project.spec.app, command),
                   connect=lambda dsn, name: connect(dsn, ctx, purpose=name))
    lock.acquire()
    ctx.run_started_at = time.time()
    _say_pooler(ctx, result)
    try:
        ctx.store = _open_store(ctx, state)
        try:
            ctx.run_id = ctx.store.begin(ctx.env.name, command, ctx.digest)
            for stale in ctx.store.interrupted(ctx.env.name, ctx.run_id):
                dangling = stale.get("dangling") or []
                what = f"; it died during: {dangling[0]['step']} ({dangling[0]['summary']})" if dangling else ""
                msg = f"run #{stale['id']} ({stale['command']}) was interrupted{what}; re-observing everything"
                result.say(msg)
                ctx.store.event(ctx.run_id, ctx.env.name, "resume", "info", msg, {"interrupted_run": stale["id"]})
            moved = LocalJournal(project_dir(ctx.project) / "journal.jsonl").drain_into(ctx.store, ctx.env.name)
            if moved:
                result.say(f"imported {moved} locally journalled record(s) into the state store")
            status = "failed"
            try:
                yield
                status = "ok"
            except GateClosed:
                status = "waiting"
                raise
            except CheckFailed:
                status = "check-failed"
                raise
            finally:
                ctx.store.finish(ctx.run_id, status, {"result": result.status})
        finally:
            ctx.store.close()
    finally:
        lock.release()


def _say_pooler(ctx: Context, result: Result) -> None:
    """What the tool's session goes through and what it does about it (runbook/pooler.py)."""
    if ctx.pooler is not None and "pooler" not in result.data:
        result.say(ctx.pooler.describe())
        result.data["pooler"] = ctx.pooler.to_json()


def _refuse_transaction_pooler(ctx: Context) -> None:
    """A transaction pooler in front of the tool is refused (exit 2), not reported as a failed
    check; an unreachable database is left for the checks to report."""
    try:
        ctx.admin()
    except PoolerRefused:
        raise
    except RunbookError:
        pass


def _need_yes(yes: bool, confirm: Confirm | None, command: str) -> None:
    if not yes and confirm is None:
        raise ConfigError(f"{command} changes things; pass --yes (no terminal to confirm on)")


def _run_playbook(ctx: Context, name: str, result: Result, *, yes: bool, confirm: Confirm | None,
                  on_step: Callable[[engine.StepReport], None] | None = None) -> None:
    book = playbooks.load(name, ctx.project)
    if not yes:
        ctx.plan_only = True
        preview = engine.run(book.steps, ctx, plan_only=True, journal=lambda *a: None)
        ctx.plan_only = False
        _reset_run_state(ctx)
        if not any(s.changes for s in preview):
            result.say("nothing to change")
        elif not confirm(f"{name} {ctx.env.name}", preview):
            result.status, result.steps = "cancelled", preview
            result.say("cancelled; nothing was changed")
            return
    result.steps = engine.run(book.steps, ctx, plan_only=False, journal=_journal(ctx), on_step=on_step)
    changed = any(s.status == "applied" for s in result.steps)
    result.status = "ok" if changed else "unchanged"
    if not changed:
        result.say(f"{ctx.env.name} already matches the spec; nothing changed")


def _reset_run_state(ctx: Context) -> None:
    ctx.new_password = None
    ctx.credential = None
    ctx.credential_created = False
    ctx.pending_credential = None
    ctx.app_changed = ctx.app_change_planned = False
    ctx.url_state = None


# --- verbs ---------------------------------------------------------------------------------

def plan(project: Project, env: str, *, environ=None, transport=None, playbook: str = "provision", **_: Any) -> Result:
    """What `provision` (or another playbook) would change. Read-only: no lock, no journal."""
    ctx = _context(project, env, "plan", environ, transport, plan_only=True)
    result = Result("plan", env)
    try:
        book = playbooks.load(playbook, project)
        result.steps = engine.run(book.steps, ctx, plan_only=True, journal=lambda *a: None)
        result.status = "planned" if any(s.changes for s in result.steps) else "unchanged"
        if result.status == "unchanged":
            result.say(f"{env} already matches the spec; provision would change nothing")
        result.data["sql"] = [c.sql_text(ctx.admin() if ctx._admin is not None else None)
                              for s in result.steps for c in s.changes if c.statement is not None]
        _say_pooler(ctx, result)
    finally:
        ctx.close()
    return result


def provision(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None, environ=None,
              state: str | None = None, transport=None, on_step=None, playbook: str = "provision") -> Result:
    _need_yes(yes, confirm, "provision")
    ctx = _context(project, env, playbook, environ, transport)
    result = Result(playbook, env)
    try:
        with _mutating_run(ctx, playbook, state, result):
            _run_playbook(ctx, playbook, result, yes=yes, confirm=confirm, on_step=on_step)
            if ctx.soak_started:
                result.data["soak_started"] = True
    finally:
        ctx.close()
    return result


def rotate(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None, environ=None,
           state: str | None = None, transport=None, on_step=None) -> Result:
    return provision(project, env, yes=yes, confirm=confirm, environ=environ, state=state, transport=transport,
                     on_step=on_step, playbook="rotate")


def retire(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None, environ=None,
           state: str | None = None, transport=None, on_step=None) -> Result:
    _need_yes(yes, confirm, "retire")
    ctx = _context(project, env, "retire", environ, transport)
    result = Result("retire", env)
    try:
        with _mutating_run(ctx, "retire", state, result):
            _run_playbook(ctx, "retire", result, yes=yes, confirm=confirm, on_step=on_step)
    finally:
        ctx.close()
    return result


def diagnose(project: Project, env: str, *, environ=None, transport=None, state: str | None = None, **_: Any) -> Result:
    """The runbook's four checks, in order, each with its fix. Read-only."""
    from runbook.checks import diagnose as run_checks

    ctx = _context(project, env, "diagnose", environ, transport)
    result = Result("diagnose", env)
    try:
        ctx.require_extras()      # a missing library is bad configuration (exit 2), not four inconclusive checks
        try:
            ctx.info
        except RunbookError as exc:
            result.say(exc.message)
        _refuse_transaction_pooler(ctx)
        try:
            ctx.store = _open_store(ctx, state, timeout=5, read_only=True)
        except RunbookError:
            ctx.store = None     # diagnose works without a journal (write-only URL stores read as unknown)
        result.checks = run_checks(ctx)
    finally:
        if ctx.store is not None:
            ctx.store.close()
        ctx.close()
    bad = [c for c in result.checks if c.status != "pass"]
    result.status = "check-failed" if bad else "ok"
    result.exit_code = CheckFailed.exit_code if bad else 0
    return result


def drift(project: Project, env: str, *, fix: bool = False, yes: bool = False, confirm: Confirm | None = None,
          environ=None, state: str | None = None, transport=None, **_: Any) -> Result:
    """Tables, sequences and functions the role should reach but cannot, and denied ones it can."""
    from runbook import catalog, grants, roles
    from runbook.steps.privileges import Grants
    from runbook.steps.role import RoleDrift

    def role_drift() -> list:
        if ctx.api_credentials:
            return []
        return roles.drift_findings(ctx.role, roles.facts(ctx.admin(), ctx.role.name), ctx.info.role_grants)

    if fix:
        _need_yes(yes, confirm, "drift --fix")
    ctx = _context(project, env, "drift", environ, transport, plan_only=not fix)
    result = Result("drift", env)
    try:
        started = time.perf_counter()
        snap = catalog.snapshot(ctx.admin(), ctx.role, ctx.owner)
        found = grants.findings(ctx.role, snap)
        if snap.role_exists:
            found = role_drift() + found
        result.data["catalog_seconds"] = round(time.perf_counter() - started, 4)
        result.data["relations"] = len(snap.relations)
        result.data["routines"] = len(snap.routines)
        result.data["findings"] = [{"kind": f.kind, "schema": f.schema, "detail": f.detail, "objects": list(f.objects)}
                                   for f in found]
        result.checks = [CheckResult("drift", "fail", f.summary(), f"runbook drift --env {env} --fix") for f in found]
        if not snap.role_exists:
            raise ConfigError(f"role {ctx.role.name} does not exist in {env}; run `runbook provision --env {env}`")
        from runbook import rls

        every = rls.findings(ctx.role, rls.read(ctx.admin(), ctx.role))
        result.data["rls"] = [{"table": f.table, "who": f.who, "commands": list(f.commands)} for f in every]
        blocked = [f for f in every if f.who == ctx.role.name]
        result.checks += [CheckResult("rls", "fail", f.summary(), rls.fix(ctx.role, [f], ctx.admin())) for f in blocked]
        for f in every:
            if f.who != ctx.role.name:
                result.say(f.summary())
        if snap.role_exists and not found:
            from runbook import probe      # the catalog agrees: prove it on a future table too

            status, detail, fix_line = probe.check(ctx)
            result.data["probe"] = {"status": status, "detail": detail}
            if status != "pass":
                result.checks.append(CheckResult("probe", status, detail, fix_line))
            if status == "fail":
                result.status, result.exit_code = "check-failed", CheckFailed.exit_code
                return result
            if status == "inconclusive":
                # a catalog-only DSN (a CI drift check) cannot create the probe's table: said, not passed
                result.say(f"{detail} (fix: {fix_line})" if fix_line else detail)
        if blocked and not found:
            # a policy is the operator's rule to write: --fix has nothing to grant
            result.status, result.exit_code = "check-failed", CheckFailed.exit_code
            return result
        if not found:
            result.say(f"no drift: {len(snap.relations)} relations and {len(snap.routines)} routines as specified")
            result.status = "ok"
            return result
        if not fix:
            result.status, result.exit_code = "check-failed", CheckFailed.exit_code
            return result
        ctx.plan_only = False
        with _mutating_run(ctx, "drift --fix", state, result):
            if not yes:
                preview = engine.run([RoleDrift(), Grants()], ctx, plan_only=True, journal=lambda *a: None)
                if not confirm(f"drift --fix {env}", preview):
                    result.status = "cancelled"
                    return result
            result.steps = engine.run([RoleDrift(), Grants()], ctx, plan_only=False, journal=_journal(ctx))
        # the grants step's verify just read the catalog after the fix; no second read
        left = role_drift() + grants.findings(ctx.role, ctx.last_snapshot or catalog.snapshot(ctx.admin(), ctx.role, ctx.owner))
        result.checks = [CheckResult("drift", "fail", f.summary()) for f in left] + [
            c for c in result.checks if c.name == "rls"]
        result.status = "ok" if not left and not blocked else "check-failed"
        result.exit_code = 0 if not left and not blocked else CheckFailed.exit_code
        result.say("drift fixed" if not left else "drift remains after --fix (see above)")
    finally:
        ctx.close()
    return result


def rollback(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None, environ=None,
             state: str | None = None, transport=None, **_: Any) -> Result:
    """Flag off (+ restart). No lock, no state store needed; the database may be down."""
    from runbook.local_journal import LocalJournal

    _need_yes(yes, confirm, "rollback")
    ctx = _context(project, env, "rollback", environ, transport)
    result = Result("rollback", env)
    local = LocalJournal(project_dir(project) / "journal.jsonl")
    records: list[dict[str, Any]] = []

    def journal(step: str, kind: str, summary: str, data: Any) -> None:
        records.append({"env": env, "step": step, "kind": kind, "summary": summary, "data": data})
        local.append(records[-1])      # always local first: the store may be the thing that is down

    try:
        book = playbooks.load("rollback", project)
        if not yes:
            preview = engine.run(book.steps, ctx, plan_only=True, journal=lambda *a: None)
            _reset_run_state(ctx)
            ctx.plan_only = False
            if not confirm(f"rollback {env}", preview):
                result.status = "cancelled"
                return result
        # before the flag goes off: a provision that started earlier and reaches its flag-on step
        # later (rollback takes no lock) finds this and leaves the flag off (steps/app_config.py)
        journal("rollback", "marker", "rolled back: runs started before now must not turn the flag on again",
                {ROLLBACK_MARK: time.time()})
        result.steps = engine.run(book.steps, ctx, plan_only=False, journal=journal)
        changed = any(s.status == "applied" for s in result.steps)
        result.status = "ok" if changed else "unchanged"
        result.say(f"{project.spec.flag.name}={project.spec.flag.off_value!r}: the app is back on its previous URL"
                   + ("" if changed else " (it already was)"))
        result.data["journal"] = _rollback_to_store(ctx, state, records, local, result)
    finally:
        ctx.close()
    return result


def _rollback_to_store(ctx: Context, state: str | None, records: list[dict[str, Any]], local, result: Result) -> str:
    """Best effort, bounded: copy the rollback's records to the store and end the soak there."""
    try:
        url = _state_url(ctx, state)
        if url in (None, "", "database"):
            peek = getattr(ctx.db, "admin_dsn_if_running", None)
            dsn = peek() if callable(peek) else ctx.db.admin_dsn()
            if dsn is None:
                raise RunbookError("the embedded database is not running")
        from runbook.state import open_store

        store = open_store(url, admin_dsn=dsn if url in (None, "", "database") else None,
                           base_dir=ctx.project.base_dir, env=ctx.env.name, connect_timeout=3, app=ctx.project.spec.app)
    except Exception as exc:
        why = exc.message if isinstance(exc, RunbookError) else type(exc).__name__
        result.say(f"state store unreachable ({redact(why)}); journalled locally at {local.path}")
        return f"local:{local.path}"
    drained = False
    try:
        run_id = store.begin(ctx.env.name, "rollback", ctx.digest)
        local.drain_into(store, ctx.env.name, run_id)
        drained = True
        store.finish(run_id, "ok" if result.status in ("ok", "unchanged") else "failed", {"result": result.status})
        if store.end_soak(ctx.env.name, "rolled-back", "flag turned off by rollback", time.time(), include_passed=True):
            result.say("the soak ended (rolled back); a rolled-back soak does not allow promotion")
        return store.location
    except Exception as exc:
        if drained:
            # the records are in the store and gone from the file: saying "journalled locally"
            # would send the operator to an empty file
            result.say(f"state store failed mid-write ({type(exc).__name__}) after the rollback's records reached "
                       f"{store.location}; its soak may still show as running there: `runbook rollback --env "
                       f"{ctx.env.name} --yes` again ends it")
            return store.location
        result.say(f"state store failed mid-write ({type(exc).__name__}); journalled locally at {local.path}")
        return f"local:{local.path}"
    finally:
        store.close()


def history(project: Project, env: str | None, *, environ=None, state: str | None = None, limit: int = 50,
            transport=None, **_: Any) -> Result:
    result = Result("history", env)
    names = [env] if env else list(project.environments)
    for name in names:
        ctx = _context(project, name, "history", environ, transport)
        try:
            store = _open_store(ctx, state, timeout=5, read_only=True)
        except RunbookError as exc:
            result.say(f"{name}: {exc.message}")
            continue
        finally:
            ctx.close()
        try:
            result.data.setdefault("runs", []).extend(store.runs(name, limit))
            result.data.setdefault("events", []).extend(store.events(name, limit=limit * 4))
            result.data.setdefault("approvals", []).extend(store.approvals(name, limit))
            soak = store.latest_soak(name)
            if soak:
                result.data.setdefault("soaks", []).append(soak)
        finally:
            store.close()
    from runbook.local_journal import LocalJournal

    local = [r for r in LocalJournal(project_dir(project) / "journal.jsonl").records() if env is None or r.get("env") == env]
    if local:
        result.data["local"] = local
        result.say(f"{len(local)} record(s) only in the local journal (imported on the next run that reaches the store)")
    return result


def soak(project: Project, env: str, *, environ=None, state: str | None = None, transport=None,
         yes: bool = True, **_: Any) -> Result:
    """Evaluate the checkpoints that are due; exit 0 passed, 3 pending, 4 failed."""
    from runbook import soak as soaks

    ctx = _context(project, env, "soak", environ, transport)
    result = Result("soak", env)
    try:
        # a soak never creates the journal: without one, no soak was ever started here
        ctx.store = _open_store(ctx, state, read_only=True)
        ctx.run_id = None
        view = soaks.evaluate(ctx, ctx.store)
        result.data["soak"] = view.to_json()
        if view.message:
            result.say(view.message)
        unrecorded = [p for p in view.checkpoints if p.unrecorded]
        if unrecorded:
            # evaluated, shown, and not kept: the next run that can write evaluates it again
            from runbook.durations import format_duration

            point = unrecorded[0]
            result.status, result.exit_code = "not-recorded", NotRecorded.exit_code
            result.say(f"checkpoint {format_duration(point.offset)} was due and evaluated ({point.status}) but could "
                       f"not be recorded at {ctx.store.location}: {point.unrecorded}; it is not kept — run "
                       f"`runbook soak --env {env}` with a DSN (or --state) that can write the journal")
        elif view.state in ("none", "superseded", "rolled-back", "retired", "ended") or not view.digest_matches:
            result.status, result.exit_code = "waiting", GateClosed.exit_code
            if view.state in ("rolled-back", "retired", "ended"):
                result.say(f"the last soak of {env} {view.state}; provision again to start a new one")
        elif view.state == "inconclusive":
            result.status, result.exit_code = "check-failed", CheckFailed.exit_code
            result.say(f"the soak is inconclusive (a checkpoint had no data); it cannot pass. Fix the check, then "
                       f"`runbook provision --env {env}` after a rollback, or re-provision with a changed spec, to soak again")
        elif view.state == "failed":
            result.status, result.exit_code = "check-failed", CheckFailed.exit_code
            result.say(f"the soak failed; roll back with: runbook rollback --env {env} --yes")
            if project.spec.soak.auto_rollback:
                ctx.store.close()
                ctx.store = None
                rb = rollback(project, env, yes=True, environ=environ, state=state, transport=transport)
                result.steps = rb.steps
                result.say("soak.auto_rollback: rolled back")
                result.messages.extend(rb.messages)
        elif view.state == "passed":
            result.status = "ok"
            result.say(f"the soak passed; promote with: runbook promote --env <prod> --sign-off NAME")
        else:
            result.status, result.exit_code = "waiting", GateClosed.exit_code
            nxt = next((p for p in view.checkpoints if p.status == "pending"), None)
            if nxt is not None and view.started_at:
                from runbook.durations import format_duration

                due_in = view.started_at + nxt.offset - time.time()
                result.say(f"next checkpoint {format_duration(nxt.offset)} due in {format_duration(max(0, due_in))}")
    finally:
        if ctx.store is not None:
            ctx.store.close()
        ctx.close()
    return result


def promote(project: Project, env: str, *, sign_off: str | None, force: bool = False, reason: str | None = None,
            yes: bool = False, confirm: Confirm | None = None, environ=None, state: str | None = None,
            transport=None, on_step=None) -> Result:
    """Provision `env` only once its promote_from environment has a passed, current soak."""
    from runbook import soak as soaks

    _need_yes(yes, confirm, "promote")
    target = project.env(env)
    source = target.promote_from
    if not sign_off or not sign_off.strip():
        raise ConfigError("promote needs --sign-off NAME (who approved this promotion)")
    if force and not (reason and reason.strip()):
        raise ConfigError("--force needs --reason TEXT; both are journalled")
    if source is None:
        raise ConfigError(f"{env} has no promote_from in runbook.yaml; promote is for environments promoted from another")
    src_ctx = _context(project, source, "promote-gate", environ, transport)
    try:
        src_store = _open_store(src_ctx, state)
    finally:
        src_ctx.close()
    try:
        passed, why = soaks.passed_soak(src_store, source, project.role.digest(), project.spec.soak.valid_for)
    finally:
        src_store.close()
    if passed is None and not force:
        raise GateClosed(f"promotion of {env} is not allowed yet: {why}")
    result = Result("promote", env)
    ctx = _context(project, env, "promote", environ, transport)
    try:
        with _mutating_run(ctx, "promote", state, result):
            ctx.store.approve(env, source, passed["id"] if passed else None, ctx.digest, sign_off.strip(), force,
                              reason.strip() if force and reason else None)
            msg = (f"promotion of {env} signed off by {sign_off.strip()}" +
                   (f"; FORCED past the gate ({why}): {reason.strip()}" if passed is None else f"; {source}'s soak passed"))
            ctx.store.event(ctx.run_id, env, "gate", "info", msg, {"forced": passed is None, "from": source})
            result.say(msg)
            _run_playbook(ctx, "promote", result, yes=yes, confirm=confirm, on_step=on_step)
    finally:
        ctx.close()
    return result


def status(project: Project, *, environ=None, state: str | None = None, transport=None, **_: Any) -> Result:
    """Every environment at a glance: role present, flag value, soak state, last run."""
    from runbook import roles, soak as soaks

    result = Result("status", None)
    rows = []
    for name in project.environments:
        ctx = _context(project, name, "status", environ, transport)
        row: dict[str, Any] = {"env": name}
        try:
            try:
                flag = ctx.app.get_config([project.spec.flag.name]).get(project.spec.flag.name)
                row["flag"] = ("on" if flag == project.spec.flag.on_value else "off" if flag == project.spec.flag.off_value
                               else ("unset" if flag is None else "other"))
            except RunbookError as exc:
                row["flag"] = f"? ({exc.message})"
            try:
                if ctx.api_credentials:
                    row["role"] = "present" if ctx.db.credential(project.role.name) else "absent"
                else:
                    row["role"] = "present" if roles.facts(ctx.admin(), project.role.name).exists else "absent"
                store = _open_store(ctx, state, timeout=5, read_only=True)
                try:
                    view = soaks.view(store, name, project.spec.soak, ctx.digest)
                    row["soak"] = view.state + ("" if view.digest_matches else " (old spec)")
                    runs = store.runs(name, 1)
                    row["last_run"] = (f"{runs[0]['command']} {runs[0]['status']} "
                                       f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(runs[0]['started_at']))}") if runs else "-"
                finally:
                    store.close()
            except RunbookError as exc:
                row.setdefault("role", "?")
                row.setdefault("soak", "?")
                row["last_run"] = f"? ({exc.message})"
        finally:
            ctx.close()
        rows.append(row)
    result.data["environments"] = rows
    return result


def embedded_cluster(project: Project, env: str):
    """The embedded cluster behind a `local` environment without a DSN."""
    ctx = _context(project, env, "embedded", None)
    cluster = getattr(ctx.db, "_cluster", None)
    if not callable(cluster) or not getattr(ctx.db, "embedded", False):
        raise ConfigError(f"{env} does not use an embedded PostgreSQL (it has a DSN or another provider)")
    return cluster()
