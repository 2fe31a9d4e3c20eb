"""One function per verb (alembic's command.py): the CLI parses and renders; these do the work
and can be scripted from Python. Each returns a Result; errors are raised as RunbookError. The
run's lifecycle (lock, journal, preview → confirm → apply) is runbook.run's; what a verb is
handed travels there as one Invocation."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from runbook import playbook as playbooks
from runbook.checks import CheckResult
from runbook.errors import ConfigError, GateClosed, RunbookError
from runbook.pooler import PoolerRefused
from runbook.project import Project
from runbook.run import Confirm, Invocation, LocalFirst, Result, Run, Runtime, StepSink, mutating, say_pooler, to_store

__all__ = ["Confirm", "Result", "VERBS", "diagnose", "drift", "history", "plan", "promote", "provision", "retire",
           "rollback", "rotate", "soak", "status"]


def _invocation(*, environ: Mapping[str, str] | None, transport: Any, state: str | None = None, yes: bool = False,
                confirm: Confirm | None = None, on_step: StepSink | None = None,
                runtime: Runtime | None = None) -> Invocation:
    return Invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, on_step=on_step,
                      runtime=runtime if runtime is not None else Runtime())


def _refuse_transaction_pooler(run: Run) -> None:
    """A transaction pooler in front of the tool is refused (exit 2), not reported as a failed
    check; an unreachable database is left for the checks to report."""
    try:
        run.admin()
    except PoolerRefused:
        raise
    except RunbookError:
        pass


def _playbook(run: Run, name: str, journal: Callable[..., None], result: Result) -> None:
    if not run.confirmed_apply(playbooks.load(name, run.project).steps, journal, result, f"{name} {run.env}"):
        return
    changed = any(s.status == "applied" for s in result.steps)
    result.status = "ok" if changed else "unchanged"
    if not changed:
        result.say(f"{run.env} already matches the spec; nothing changed")


# --- verbs ---------------------------------------------------------------------------------

def plan(project: Project, env: str, *, playbook: str = "provision", environ: Mapping[str, str] | None = None,
         transport: Any = None, runtime: Runtime | None = None) -> Result:
    """What `provision` (or another playbook) would change. Read-only: no lock, no journal."""
    result = Result("plan", env)
    with Run(project, env, "plan", _invocation(environ=environ, transport=transport, runtime=runtime),
             ) as run:
        result.steps = run.preview(playbooks.load(playbook, project).steps)
        result.status = "planned" if any(s.changes for s in result.steps) else "unchanged"
        if result.status == "unchanged":
            result.say(f"{env} already matches the spec; provision would change nothing")
        # the SQL as the admin session quotes it, if the plan opened one
        admin = run.admin() if run.ctx._admin is not None else None
        result.data["sql"] = [c.sql_text(admin) for s in result.steps for c in s.changes if c.statement is not None]
        say_pooler(run.ctx, result)
    return result


def provision(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None,
              environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
              on_step: StepSink | None = None, runtime: Runtime | None = None, playbook: str = "provision") -> Result:
    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, on_step=on_step,
                      runtime=runtime)
    inv.need_yes("provision")
    result = Result(playbook, env)
    with Run(project, env, playbook, inv) as run, mutating(run, result) as journal:
        _playbook(run, playbook, journal, result)
        if run.state.soak_started:
            result.data["soak_started"] = True
    return result


def rotate(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None,
           environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
           on_step: StepSink | None = None, runtime: Runtime | None = None) -> Result:
    return provision(project, env, yes=yes, confirm=confirm, environ=environ, state=state, transport=transport,
                     on_step=on_step, runtime=runtime, playbook="rotate")


def retire(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None,
           environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
           on_step: StepSink | None = None, runtime: Runtime | None = None) -> Result:
    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, on_step=on_step,
                      runtime=runtime)
    inv.need_yes("retire")
    result = Result("retire", env)
    with Run(project, env, "retire", inv) as run, mutating(run, result) as journal:
        _playbook(run, "retire", journal, result)
    return result


def diagnose(project: Project, env: str, *, environ: Mapping[str, str] | None = None, transport: Any = None,
             state: str | None = None, runtime: Runtime | None = None) -> Result:
    """The runbook's four checks, in order, each with its fix. Read-only."""
    from runbook.checks import diagnose as run_checks

    result = Result("diagnose", env)
    with Run(project, env, "diagnose", _invocation(environ=environ, transport=transport, state=state,
                                                   runtime=runtime)) as run:
        ctx = run.ctx
        ctx.require_extras()      # a missing library is bad configuration (exit 2), not four inconclusive checks
        try:
            ctx.info
        except RunbookError as exc:
            result.say(exc.message)
        _refuse_transaction_pooler(run)
        try:
            ctx.store = run.open_store(timeout=5, read_only=True)
        except RunbookError:
            ctx.store = None     # diagnose works without a journal (write-only URL stores read as unknown)
        try:
            result.checks = run_checks(ctx)
        finally:
            if ctx.store is not None:
                ctx.store.close()
    result.status = "check-failed" if any(c.status != "pass" for c in result.checks) else "ok"
    return result


def drift(project: Project, env: str, *, fix: bool = False, yes: bool = False, confirm: Confirm | None = None,
          environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
          runtime: Runtime | None = None) -> Result:
    """Tables, sequences and functions the role should reach but cannot, and denied ones it can."""
    from runbook import catalog, grants, rls, roles
    from runbook.steps.grants import Grants
    from runbook.steps.role import RoleDrift

    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, runtime=runtime)
    if fix:
        inv.need_yes("drift --fix")
    result = Result("drift", env)
    with Run(project, env, "drift", inv) as run:
        ctx = run.ctx

        def role_drift() -> list[Any]:
            if ctx.api_credentials:
                return []
            return list(roles.drift_findings(ctx.role, roles.facts(run.admin(), ctx.role.name), ctx.info.role_grants))

        started = time.perf_counter()
        snap = catalog.snapshot(run.admin(), ctx.role, ctx.owner)
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
        every = rls.findings(ctx.role, rls.read(run.admin(), ctx.role))
        result.data["rls"] = [{"table": f.table, "who": f.who, "commands": list(f.commands)} for f in every]
        blocked = [f for f in every if f.who == ctx.role.name]
        result.checks += [CheckResult("rls", "fail", f.summary(), rls.fix(ctx.role, [f], run.admin())) for f in blocked]
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
                result.status = "check-failed"
                return result
            if status == "inconclusive":
                # a catalog-only DSN (a CI drift check) cannot create the probe's table: said, not passed
                result.say(f"{detail} (fix: {fix_line})" if fix_line else detail)
        if not found:
            # a blocking policy is the operator's rule to write: --fix has nothing to grant
            result.status = "check-failed" if blocked else "ok"
            if not blocked:
                result.say(f"no drift: {len(snap.relations)} relations and {len(snap.routines)} routines as specified")
            return result
        if not fix:
            result.status = "check-failed"
            return result
        with mutating(run, result) as journal:
            if not run.confirmed_apply([RoleDrift(), Grants()], journal, result, f"drift --fix {env}"):
                return result
        # the grants step's verify just read the catalog after the fix; no second read
        left = role_drift() + grants.findings(ctx.role, run.state.verified.get("grants") or catalog.snapshot(run.admin(), ctx.role,
                                                                                              ctx.owner))
        result.checks = [CheckResult("drift", "fail", f.summary()) for f in left] + [
            c for c in result.checks if c.name == "rls"]
        result.status = "ok" if not left and not blocked else "check-failed"
        result.say("drift fixed" if not left else "drift remains after --fix (see above)")
    return result


def rollback(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None,
             environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
             runtime: Runtime | None = None) -> Result:
    """Flag off (+ restart). No lock, no state store needed; the database may be down."""
    from runbook import soak as soaks
    from runbook.steps.flag import ROLLBACK_MARK

    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, runtime=runtime)
    inv.need_yes("rollback")
    result = Result("rollback", env)
    with Run(project, env, "rollback", inv) as run:
        journal = LocalFirst(run)

        def mark() -> None:
            # before the flag goes off: a provision that started earlier and reaches its flag-on step
            # later (rollback takes no lock) finds this and leaves the flag off (steps/flag.py)
            journal("rollback", "marker", "rolled back: runs started before now must not turn the flag on again",
                    {ROLLBACK_MARK: time.time()})

        if not run.confirmed_apply(playbooks.load("rollback", project).steps, journal, result, f"rollback {env}",
                                   before=mark):
            return result
        changed = any(s.status == "applied" for s in result.steps)
        result.status = "ok" if changed else "unchanged"
        result.say(f"{project.spec.flag.name}={project.spec.flag.off_value!r}: the app is back on its previous URL"
                   + ("" if changed else " (it already was)"))
        result.data["journal"] = to_store(run, journal, result, end_soak=soaks.end_by_rollback)
    return result


def history(project: Project, env: str | None, *, environ: Mapping[str, str] | None = None, state: str | None = None,
            limit: int = 50, transport: Any = None, runtime: Runtime | None = None) -> Result:
    result = Result("history", env)
    inv = _invocation(environ=environ, transport=transport, state=state, runtime=runtime)
    for name in [env] if env else list(project.environments):
        with Run(project, name, "history", inv) as run:
            try:
                store = run.open_store(timeout=5, read_only=True)
            except RunbookError as exc:
                result.say(f"{name}: {exc.message}")
                continue
            try:        # inside the run: an in-database journal reads over the run's admin session
                result.data.setdefault("runs", []).extend(store.runs(name, limit))
                result.data.setdefault("events", []).extend(store.events(name, limit=limit * 4))
                result.data.setdefault("approvals", []).extend(store.approvals(name, limit))
                soak = store.latest_soak(name)
                if soak:
                    result.data.setdefault("soaks", []).append(soak)
            finally:
                store.close()
    local = [r for r in inv.runtime.local_journal(project).records() if env is None or r.get("env") == env]
    if local:
        result.data["local"] = local
        result.say(f"{len(local)} record(s) only in the local journal (imported on the next run that reaches the store)")
    return result


def soak(project: Project, env: str, *, environ: Mapping[str, str] | None = None, state: str | None = None,
         transport: Any = None, runtime: Runtime | None = None) -> Result:
    """Evaluate the checkpoints that are due; exit 0 passed, 3 pending, 4 failed."""
    from runbook import soak as soaks

    inv = _invocation(environ=environ, transport=transport, state=state, runtime=runtime)
    result = Result("soak", env)
    with Run(project, env, "soak", inv) as run:
        ctx = run.ctx
        # a soak never creates the journal: without one, no soak was ever started here
        store = ctx.store = run.open_store(read_only=True)
        try:
            view = soaks.evaluate(ctx, store)
        finally:
            store.close()
            ctx.store = None
    result.data["soak"] = view.to_json()
    if view.message:
        result.say(view.message)
    result.status, said = soaks.outcome(view, store.location)
    for line in said:
        result.say(line)
    if view.state == "failed" and project.spec.soak.auto_rollback and not any(p.unrecorded for p in view.checkpoints):
        rb = rollback(project, env, yes=True, environ=environ, state=state, transport=transport, runtime=runtime)
        result.steps = rb.steps
        result.say("soak.auto_rollback: rolled back")
        result.messages.extend(rb.messages)
    return result


def promote(project: Project, env: str, *, sign_off: str | None, force: bool = False, reason: str | None = None,
            yes: bool = False, confirm: Confirm | None = None, environ: Mapping[str, str] | None = None,
            state: str | None = None, transport: Any = None, on_step: StepSink | None = None,
            runtime: Runtime | None = None) -> Result:
    """Provision `env` only once its promote_from environment has a passed, current soak."""
    from runbook import soak as soaks

    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, on_step=on_step,
                      runtime=runtime)
    inv.need_yes("promote")
    source = project.env(env).promote_from
    if not sign_off or not sign_off.strip():
        raise ConfigError("promote needs --sign-off NAME (who approved this promotion)")
    if force and not (reason and reason.strip()):
        raise ConfigError("--force needs --reason TEXT; both are journalled")
    if source is None:
        raise ConfigError(f"{env} has no promote_from in runbook.yaml; promote is for environments promoted from another")
    with Run(project, source, "promote-gate", inv) as gate:
        src_store = gate.open_store()
        try:    # inside the run: an in-database journal reads over the run's admin session
            passed, why = soaks.passed_soak(src_store, source, project.role.digest(), project.spec.soak.valid_for)
        finally:
            src_store.close()
    if passed is None and not force:
        raise GateClosed(f"promotion of {env} is not allowed yet: {why}")
    result = Result("promote", env)
    with Run(project, env, "promote", inv) as run, mutating(run, result) as journal:
        run.ctx.store.approve(env, source, passed["id"] if passed else None, run.ctx.digest, sign_off.strip(), force,
                              reason.strip() if force and reason else None)
        msg = (f"promotion of {env} signed off by {sign_off.strip()}" +
               (f"; FORCED past the gate ({why}): {reason.strip()}" if passed is None and reason
                else f"; {source}'s soak passed"))
        journal("gate", "info", msg, {"forced": passed is None, "from": source})
        result.say(msg)
        _playbook(run, "promote", journal, result)
    return result


def status(project: Project, *, environ: Mapping[str, str] | None = None, state: str | None = None,
           transport: Any = None, runtime: Runtime | None = None) -> Result:
    """Every environment at a glance: role present, flag value, soak state, last run."""
    from runbook import roles, soak as soaks

    inv = _invocation(environ=environ, transport=transport, state=state, runtime=runtime)
    result = Result("status", None)
    rows = []
    flag = project.spec.flag
    for name in project.environments:
        row: dict[str, Any] = {"env": name}
        with Run(project, name, "status", inv) as run:
            ctx = run.ctx
            try:
                value = ctx.app.received_flag()
                row["flag"] = ("on" if value == flag.on_value else "off" if value == flag.off_value
                               else ("unset" if value is None else "other"))
            except RunbookError as exc:
                row["flag"] = f"? ({exc.message})"
            try:
                if ctx.api_credentials:
                    row["role"] = "present" if ctx.db.credential(project.role.name) else "absent"
                else:
                    row["role"] = "present" if roles.facts(run.admin(), project.role.name).exists else "absent"
                store = run.open_store(timeout=5, read_only=True)
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
        rows.append(row)
    result.data["environments"] = rows
    return result


# The verbs that run on one environment, by name: what the CLI and runbook.fleet dispatch through.
Verb = Callable[..., Result]
VERBS: dict[str, Verb] = {
    "plan": plan, "provision": provision, "diagnose": diagnose, "drift": drift, "rollback": rollback,
    "rotate": rotate, "retire": retire, "soak": soak, "promote": promote,
}


def embedded_cluster(project: Project, env: str) -> Any:
    """The embedded cluster behind a `local` environment without a DSN."""
    from runbook.run import context

    ctx = context(project, env, "embedded", Invocation())
    cluster = ctx.db.embedded_server()
    if cluster is None:
        raise ConfigError(f"{env} does not use an embedded PostgreSQL (it has a DSN or another provider)")
    return cluster
