"""One function per verb (alembic's command.py): the CLI parses and renders; these do the work
and can be scripted from Python. Each returns a Result; errors are raised as RunbookError. The
run's lifecycle (lock, journal, preview → confirm → apply) is runbook.run's; what a verb is
handed travels there as one Invocation."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
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


def _playbook(run: Run, name: str, journal: Callable[..., None], result: Result, role: str | None = None) -> None:
    """`name` applied for each selected role in turn, in one run (one lock, one journal run)."""
    started = False
    selected = run.project.select(role)
    if len(selected) > 1:
        # every role's plan first: a refusal of any role (its preflight, a hostile name) comes
        # before the first role changes anything, and a person sees the whole run and answers once
        previews: list[Any] = []
        for _ in run.for_each_role(role):
            previews += run.preview(_steps_for(run, name))
        if not run.confirm_whole(previews, f"{name} {run.env} (roles {', '.join(m.name for m in selected)})", result):
            return
        states = _apply_roles(run, role, lambda: _steps_for(run, name), journal, result)
        started = any(state.soak_started for state in states)
    else:
        for managed in run.for_each_role(role):
            what = f"{name} {run.env}" + (f" (role {managed.name})" if run.project.several else "")
            if not run.confirmed_apply(_steps_for(run, name), journal, result, what):
                return
            started = started or run.state.soak_started
    if started:
        result.data["soak_started"] = True
    changed = any(s.status == "applied" for s in result.steps)
    result.status = "ok" if changed else "unchanged"
    if not changed:
        result.say(f"{run.env} already matches the spec; nothing changed")


def _apply_roles(run: Run, role: str | None, steps_for: Callable[[], list[Any]], journal: Callable[..., None],
                 result: Result, *, before: Callable[[], None] | None = None,
                 keep: Callable[[Any], bool] = lambda managed: True) -> list[Any]:
    """The playbook for each selected role. Where a restart starts processes that read every
    role's URL (the app platform's `restart_reads_every_url`: ECS fails a deployment whose task
    definition references a secret without its URL by circuit breaker), in two parts: every
    role's steps up to the restart first (each role's URL written), then the restart and what
    follows it, role by role, one restart carrying every role's change (a later role's restart is
    owed only for what it changed since). Elsewhere, and for a playbook without a restart, each
    role's playbook runs whole, in turn. `before`: called before each role's
    first step; `keep`: which of the selected roles take part. Returns each role's RunState."""
    from runbook.context import RunState

    parts: list[tuple[Any, list[Any], RunState]] = []
    for managed in run.for_each_role(role):
        if not keep(managed):
            continue
        steps = steps_for()
        # elsewhere (dotenv, Heroku, Supabase) each role's playbook runs whole, its output grouped
        split = run.ctx.app.restart_reads_every_url
        at = next((i for i, step in enumerate(steps) if step.kind == "restart"), len(steps)) if split else len(steps)
        state = RunState()
        if before is not None:
            before()
        result.steps += run.apply(steps[:at], journal, state=state)
        parts.append((managed, steps[at:], state))
    restarted = False
    for managed, rest, state in parts:
        if not rest:
            continue
        run.ctx.select_role(managed)
        if restarted:
            state.app_changed = False     # the restart that just ran carried this role's change too
        reports = run.apply(rest, journal, state=state)
        result.steps += reports
        restarted = restarted or any(r.step == rest[0].name and r.status == "applied" for r in reports)
    return [state for _, _, state in parts]


def _steps_for(run: Run, name: str) -> list[Any]:
    """The playbook's steps for the selected role: a role with member_of gets its memberships
    right after the role step (a role without one, and every `role:` project, runs the playbook
    exactly as written)."""
    steps = playbooks.load(name, run.project).steps
    if not run.ctx.managed.member_of:
        return steps
    from runbook.steps.membership import Memberships

    at = next((i + 1 for i, step in enumerate(steps) if step.kind == "role"), None)
    return steps if at is None else [*steps[:at], Memberships(), *steps[at:]]


def _tag_checks(checks: list[CheckResult], name: str) -> list[CheckResult]:
    return [dataclasses.replace(check, role=name) for check in checks]


# the status of a verb over several roles: the one that says most (its exit code wins)
_WORST = ("check-failed", "not-recorded", "waiting", "cancelled", "planned", "ok", "unchanged")


def _worst(statuses: list[str]) -> str:
    return min(statuses, key=lambda s: _WORST.index(s) if s in _WORST else 0) if statuses else "ok"


# --- verbs ---------------------------------------------------------------------------------

def plan(project: Project, env: str, *, playbook: str = "provision", environ: Mapping[str, str] | None = None,
         transport: Any = None, runtime: Runtime | None = None, role: str | None = None) -> Result:
    """What `provision` (or another playbook) would change. Read-only: no lock, no journal."""
    result = Result("plan", env)
    project.select(role)
    with Run(project, env, "plan", _invocation(environ=environ, transport=transport, runtime=runtime),
             ) as run:
        for _ in run.for_each_role(role):
            result.steps += run.preview(playbooks.load(playbook, project).steps)
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
              on_step: StepSink | None = None, runtime: Runtime | None = None, playbook: str = "provision",
              role: str | None = None) -> Result:
    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, on_step=on_step,
                      runtime=runtime)
    inv.need_yes("provision")
    project.select(role)
    result = Result(playbook, env)
    with Run(project, env, playbook, inv) as run:
        run.roles(role)
        with mutating(run, result) as journal:
            _playbook(run, playbook, journal, result, role)
    return result


def rotate(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None,
           environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
           on_step: StepSink | None = None, runtime: Runtime | None = None, role: str | None = None,
           drain_timeout: timedelta | None = None) -> Result:
    if drain_timeout is not None:      # `rotate --drain-timeout`: this run's wait, over settings.drain_timeout
        settings = project.spec.settings.model_copy(update={"drain_timeout": drain_timeout})
        project = Project(project.spec.model_copy(update={"settings": settings}), project.path, project.environments)
    return provision(project, env, yes=yes, confirm=confirm, environ=environ, state=state, transport=transport,
                     on_step=on_step, runtime=runtime, playbook="rotate", role=role)


def retire(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None,
           environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
           on_step: StepSink | None = None, runtime: Runtime | None = None, role: str | None = None) -> Result:
    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, on_step=on_step,
                      runtime=runtime)
    inv.need_yes("retire")
    project.select(role)
    result = Result("retire", env)
    with Run(project, env, "retire", inv) as run:
        run.roles(role)
        with mutating(run, result) as journal:
            _playbook(run, "retire", journal, result, role)
    return result


def diagnose(project: Project, env: str, *, environ: Mapping[str, str] | None = None, transport: Any = None,
             state: str | None = None, runtime: Runtime | None = None, role: str | None = None) -> Result:
    """The runbook's four checks, in order, each with its fix, for each selected role. Read-only."""
    from runbook.checks import diagnose as run_checks

    project.select(role)
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
            for managed in run.for_each_role(role):
                result.checks += _tag_checks(run_checks(ctx), managed.name)
        finally:
            if ctx.store is not None:
                ctx.store.close()
    result.status = "check-failed" if any(c.status != "pass" for c in result.checks) else "ok"
    return result


def drift(project: Project, env: str, *, fix: bool = False, yes: bool = False, confirm: Confirm | None = None,
          environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
          runtime: Runtime | None = None, role: str | None = None) -> Result:
    """Tables, sequences and functions each selected role should reach but cannot, and denied ones it can."""
    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, runtime=runtime)
    if fix:
        inv.need_yes("drift --fix")
    selected = project.select(role)
    result = Result("drift", env)
    with Run(project, env, "drift", inv) as run:
        drifted: list[str] = []        # roles whose findings --fix converges
        statuses: list[str] = []
        for managed in run.for_each_role(role):
            found = _drift_role(run, result, env)
            if found is None:
                statuses.append(result.status)
            else:
                drifted.append(managed.name)
        if drifted and fix:
            _drift_fix(run, result, env, drifted)
            statuses.append(result.status)
        elif drifted:
            statuses.append("check-failed")
        result.status = _worst(statuses)
        if len(selected) > 1 or project.several:
            result.data["roles"] = {m.name: ("drift" if m.name in drifted else "ok") for m in selected}
    return result


def _role_drift(run: Run) -> list[Any]:
    from runbook import membership, roles

    ctx = run.ctx
    if ctx.api_credentials:
        return []
    return [*roles.role_findings(run.admin(), ctx.role, ctx.role_grants),
            *membership.findings(run.admin(), ctx.role.name, ctx.managed.member_of)]


def _drift_role(run: Run, result: Result, env: str) -> list[Any] | None:
    """One role's drift into `result` (its checks tagged with the role): the findings --fix would
    converge, or None when there are none (result.status then says how the role stands)."""
    from runbook import catalog, grants, rls

    ctx = run.ctx
    name = ctx.role.name
    several = run.project.several
    started = time.perf_counter()
    from runbook.alternating import grant_specs

    # alternating on platform credentials: each login holds the grants (no group role), the idle one too
    snaps = [(spec, catalog.snapshot(run.admin(), spec, ctx.owner)) for spec in grant_specs(ctx)]
    snap = snaps[0][1]
    found = [f for spec, each in snaps for f in grants.findings(spec, each)]
    if snap.role_exists:
        found = _role_drift(run) + found
    data = result.data.setdefault("by_role", {}).setdefault(name, {}) if several else result.data
    data["catalog_seconds"] = round(time.perf_counter() - started, 4)
    data["relations"] = len(snap.relations)
    data["routines"] = len(snap.routines)
    findings = [{"kind": f.kind, "schema": f.schema, "detail": f.detail, "objects": list(f.objects),
                 **({"role": name} if several else {})} for f in found]
    result.data.setdefault("findings", []).extend(findings)
    result.checks += _tag_checks([CheckResult("drift", "fail", f.summary(), f"runbook drift --env {env}"
                                              + (f" --role {name}" if several else "") + " --fix") for f in found], name)
    if not snap.role_exists:
        raise ConfigError(f"role {name} does not exist in {env}; run `runbook provision --env {env}`")
    every = rls.role_findings(run.admin(), ctx)
    data["rls"] = [{"table": f.table, "who": f.who, "commands": list(f.commands)} for f in every]
    to = rls.grantees(ctx)     # both logins of an alternating role on platform credentials
    blocked = [f for f in every if f.who in to]
    result.checks += _tag_checks([CheckResult("rls", "fail", f.summary(), rls.fix(ctx.role, [f], run.admin(), to=to))
                                  for f in blocked], name)
    for f in every:
        if f.who not in to:
            result.say(f.summary())
    if snap.role_exists and not found:
        from runbook import probe      # the catalog agrees: prove it on a future table too

        status, detail, fix_line = probe.check(ctx)
        data["probe"] = {"status": status, "detail": detail}
        if status != "pass":
            result.checks += _tag_checks([CheckResult("probe", status, detail, fix_line)], name)
        if status == "fail":
            result.status = "check-failed"
            return None
        if status == "inconclusive":
            # a catalog-only DSN (a CI drift check) cannot create the probe's table: said, not passed
            result.say(f"{detail} (fix: {fix_line})" if fix_line else detail)
    if not found:
        # a blocking policy is the operator's rule to write: --fix has nothing to grant
        result.status = "check-failed" if blocked else "ok"
        if not blocked:
            result.say(f"no drift{f' for {name}' if several else ''}: {len(snap.relations)} relations and "
                       f"{len(snap.routines)} routines as specified")
        return None
    result.status = "check-failed"
    return found


def _drift_fix(run: Run, result: Result, env: str, drifted: list[str]) -> None:
    """--fix: the role and grants steps (and memberships) for the drifted roles only, in one run."""
    from runbook import catalog, grants
    from runbook.steps.grants import Grants
    from runbook.steps.membership import Memberships
    from runbook.steps.role import RoleDrift

    ctx = run.ctx
    with mutating(run, result) as journal:
        left_all: list[CheckResult] = []
        for name in drifted:
            run.ctx.select_role(run.project.roles[name])
            if not run.confirmed_apply([RoleDrift(), Memberships(), Grants()], journal, result,
                                       f"drift --fix {env}" + (f" (role {name})" if run.project.several else "")):
                return
            # the grants step's verify just read the catalog after the fix; no second read
            left = _role_drift(run) + grants.findings(
                ctx.role, run.state.verified.get("grants") or catalog.snapshot(run.admin(), ctx.role, ctx.owner))
            left_all += _tag_checks([CheckResult("drift", "fail", f.summary()) for f in left], name)
        result.checks = left_all + [c for c in result.checks if c.name == "rls" or c.role not in drifted]
        failed = any(c.status == "fail" for c in result.checks)
        result.status = "check-failed" if failed else "ok"
        result.say("drift fixed" if not left_all else "drift remains after --fix (see above)")


def rollback(project: Project, env: str, *, yes: bool = False, confirm: Confirm | None = None,
             environ: Mapping[str, str] | None = None, state: str | None = None, transport: Any = None,
             runtime: Runtime | None = None, role: str | None = None) -> Result:
    """Flag off (+ restart) for each selected role that has a flag. No lock, no state store
    needed; the database may be down."""
    from runbook import soak as soaks
    from runbook.context import role_store
    from runbook.steps.flag import ROLLBACK_MARK

    inv = _invocation(environ=environ, transport=transport, state=state, yes=yes, confirm=confirm, runtime=runtime)
    inv.need_yes("rollback")
    selected = project.select(role)
    flagged = [m for m in selected if m.flag is not None]
    if not flagged:
        raise ConfigError(f"{', '.join(m.name for m in selected)} ha{'s' if len(selected) == 1 else 've'} no flag: "
                          "rollback turns a flag off, and there is none to turn (retire takes a role out)")
    result = Result("rollback", env)
    with Run(project, env, "rollback", inv) as run:
        journal = LocalFirst(run)

        def mark() -> None:
            # before the flag goes off: a provision that started earlier and reaches its flag-on step
            # later (rollback takes no lock) finds this and leaves the flag off (steps/flag.py). Each
            # role its own marker: rolling back one role holds back no other role's flag
            run.role_journal(journal)("rollback", "marker",
                                      "rolled back: runs started before now must not turn the flag on again",
                                      {ROLLBACK_MARK: time.time()})

        steps = playbooks.load("rollback", project).steps
        if len(flagged) > 1:
            if run.asks:     # --yes previews nothing: a rollback goes ahead whatever else is down
                previews: list[Any] = []
                for managed in run.for_each_role(role):
                    if managed.flag is not None:
                        previews += run.preview(steps)
                if not run.confirm_whole(previews, f"rollback {env} (roles {', '.join(m.name for m in flagged)})",
                                         result):
                    return result
            _apply_roles(run, role, lambda: steps, journal, result, before=mark,
                         keep=lambda managed: managed.flag is not None)
        else:
            for managed in run.for_each_role(role):
                if managed.flag is None:
                    continue
                if not run.confirmed_apply(steps, journal, result,
                                           f"rollback {env}" + (f" (role {managed.name})" if project.several else ""),
                                           before=mark):
                    return result
        run.covered = flagged       # the roles this rollback journals (a role without a flag had nothing to undo)
        changed = any(s.status == "applied" for s in result.steps)
        result.status = "ok" if changed else "unchanged"
        flags = ", ".join(f"{m.flag.name}={m.flag.off_value!r}" for m in flagged if m.flag is not None)
        result.say(f"{flags}: the app is back on its previous URL" + ("" if changed else " (it already was)"))

        def end_soaks(store: Any, name: str) -> bool:
            ended = [soaks.end_by_rollback(role_store(store, project, m), name) for m in flagged]
            return any(ended)

        result.data["journal"] = to_store(run, journal, result, end_soak=end_soaks)
    return result


def history(project: Project, env: str | None, *, environ: Mapping[str, str] | None = None, state: str | None = None,
            limit: int = 50, transport: Any = None, runtime: Runtime | None = None, role: str | None = None) -> Result:
    from runbook.context import role_store

    selected = project.select(role)
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
                result.data.setdefault("runs", []).extend(store.runs(name, limit, role=role))
                events = store.events(name, limit=limit * 4)
                if role is not None:     # the role's own records and the run's (which name no role)
                    events = [e for e in events if e.get("role") in (None, role)]
                result.data.setdefault("events", []).extend(events)
                result.data.setdefault("approvals", []).extend(store.approvals(name, limit))
                for managed in selected:
                    soak = role_store(store, project, managed).latest_soak(name)
                    if soak:
                        result.data.setdefault("soaks", []).append(soak)
            finally:
                store.close()
    local = [r for r in inv.runtime.local_journal(project).records() if (env is None or r.get("env") == env)
             and (role is None or r.get("role") in (None, role))]
    if local:
        result.data["local"] = local
        result.say(f"{len(local)} record(s) only in the local journal (imported on the next run that reaches the store)")
    return result


def soak(project: Project, env: str, *, environ: Mapping[str, str] | None = None, state: str | None = None,
         transport: Any = None, runtime: Runtime | None = None, role: str | None = None) -> Result:
    """Evaluate the checkpoints that are due, for each selected role's soak; exit 0 passed, 3
    pending, 4 failed (the role that says most decides)."""
    from runbook import soak as soaks
    from runbook.context import role_store

    inv = _invocation(environ=environ, transport=transport, state=state, runtime=runtime)
    selected = project.select(role)
    result = Result("soak", env)
    views: dict[str, Any] = {}
    with Run(project, env, "soak", inv) as run:
        ctx = run.ctx
        # a soak never creates the journal: without one, no soak was ever started here
        store = ctx.store = run.open_store(read_only=True)
        try:
            for managed in run.for_each_role(role):
                views[managed.name] = soaks.evaluate(ctx, role_store(store, project, managed))
        finally:
            store.close()
            ctx.store = None
    several = project.several
    first = next(iter(views.values()))
    result.data["soak"] = first.to_json()
    if several:
        result.data["roles"] = {name: view.to_json() for name, view in views.items()}
    statuses = []
    failed: list[str] = []
    for name, view in views.items():
        prefix = f"{name}: " if several else ""
        if view.message:
            result.say(prefix + view.message)
        status, said = soaks.outcome(view, store.location)
        statuses.append(status)
        for line in said:
            result.say(prefix + line)
        if view.state == "failed" and not any(p.unrecorded for p in view.checkpoints):
            failed.append(name)
    result.status = _worst(statuses)
    flagged_failed = [n for n in failed if project.roles[n].flag is not None]
    if flagged_failed and project.spec.soak.auto_rollback:
        rolled = [rollback(project, env, yes=True, environ=environ, state=state, transport=transport, runtime=runtime,
                           role=name if several else None) for name in flagged_failed]
        for rb in rolled:
            result.steps += rb.steps
        result.say("soak.auto_rollback: rolled back" + (f" {', '.join(flagged_failed)}" if several else ""))
        for rb in rolled:
            result.messages.extend(rb.messages)
    return result


def promote(project: Project, env: str, *, sign_off: str | None, force: bool = False, reason: str | None = None,
            yes: bool = False, confirm: Confirm | None = None, environ: Mapping[str, str] | None = None,
            state: str | None = None, transport: Any = None, on_step: StepSink | None = None,
            runtime: Runtime | None = None, role: str | None = None) -> Result:
    """Provision `env` only once its promote_from environment has a passed, current soak of each
    selected role's spec. Several roles: a role whose spec `env` was last promoted with needs none."""
    from runbook import soak as soaks
    from runbook.context import role_store

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
    selected = project.select(role)
    several = project.several
    # role → (the passed soak or None, why not, needs no soak: the target took this very spec last)
    gates: dict[str, tuple[dict[str, Any] | None, str, bool]] = {}
    with Run(project, source, "promote-gate", inv) as gate:
        src_store = gate.open_store()
        try:    # inside the run: an in-database journal reads over the run's admin session
            for managed in selected:
                passed, why = soaks.passed_soak(role_store(src_store, project, managed), source, managed.digest(),
                                                project.spec.soak.valid_for)
                gates[managed.name] = (passed, why, False)
        finally:
            src_store.close()
    if several and any(p is None for p, _, _ in gates.values()):
        with Run(project, env, "promote-gate", inv) as target:
            tgt_store = target.open_store(timeout=5, read_only=True)
            try:
                for managed in selected:
                    passed, why, _ = gates[managed.name]
                    last = tgt_store.last_approval(env, managed.name) if passed is None else None
                    if last is not None and last["digest"] == managed.digest():
                        gates[managed.name] = (None, f"{managed.name}'s spec is unchanged since {env} last took it", True)
            finally:
                tgt_store.close()
    closed = [(name, why) for name, (passed, why, same) in gates.items() if passed is None and not same]
    if closed and not force:
        what = "; ".join(f"{name}: {why}" for name, why in closed) if several else closed[0][1]
        raise GateClosed(f"promotion of {env} is not allowed yet: {what}")
    result = Result("promote", env)
    with Run(project, env, "promote", inv) as run:
        run.roles(role)
    with Run(project, env, "promote", inv) as run, mutating(run, result) as journal:
        store = run.ctx.store
        clean = reason.strip() if force and reason else None
        if several:
            for managed in selected:
                passed, _, _ = gates[managed.name]
                store.approve(env, source, passed["id"] if passed else None, managed.digest(), sign_off.strip(),
                              force and managed.name in dict(closed), clean if managed.name in dict(closed) else None,
                              role=managed.name)
        else:
            passed = gates[selected[0].name][0]
            store.approve(env, source, passed["id"] if passed else None, run.ctx.digest, sign_off.strip(), force, clean)
        forced_past = "; ".join(why for _, why in closed)
        unchanged = [name for name, (_, _, same) in gates.items() if same]
        msg = (f"promotion of {env} signed off by {sign_off.strip()}" +
               (f"; FORCED past the gate ({forced_past}): {reason.strip()}" if closed and reason
                else f"; {source}'s soak passed"))
        if unchanged:
            msg += f" ({', '.join(unchanged)} unchanged since {env} last took {'it' if len(unchanged) == 1 else 'them'})"
        journal("gate", "info", msg, {"forced": bool(closed), "from": source,
                                      **({"unchanged": unchanged} if several else {})})
        result.say(msg)
        _playbook(run, "promote", journal, result, role)
    return result


def status(project: Project, *, environ: Mapping[str, str] | None = None, state: str | None = None,
           transport: Any = None, runtime: Runtime | None = None, role: str | None = None) -> Result:
    """Every environment (and, with several roles, every role) at a glance: role present, flag
    value, soak state, last run."""
    from runbook import roles, soak as soaks
    from runbook.context import role_store

    inv = _invocation(environ=environ, transport=transport, state=state, runtime=runtime)
    selected = project.select(role)
    result = Result("status", None)
    rows = []
    for name in project.environments:
        with Run(project, name, "status", inv) as run:
            ctx = run.ctx
            try:
                run.roles(role)
            except RunbookError as exc:     # this environment cannot hold the project's roles: said in its row
                rows.append({"env": name, "role": "?", "flag": "?", "soak": "?", "last_run": f"? ({exc.message})"})
                continue
            for managed in run.for_each_role(role):
                row: dict[str, Any] = {"env": name, **({"role_name": managed.name} if project.several else {})}
                flag = managed.flag
                try:
                    if flag is None:
                        row["flag"] = "none"
                    else:
                        value = ctx.app.received_flag()
                        row["flag"] = ("on" if value == flag.on_value else "off" if value == flag.off_value
                                       else ("unset" if value is None else "other"))
                except RunbookError as exc:
                    row["flag"] = f"? ({exc.message})"
                try:
                    if ctx.api_credentials:
                        row["role"] = "present" if any(ctx.db.credential(n) for n in managed.spec.logins) else "absent"
                    else:
                        row["role"] = "present" if roles.facts(run.admin(), managed.name).exists else "absent"
                    store = run.open_store(timeout=5, read_only=True)
                    try:
                        view = soaks.view(role_store(store, project, managed), name, project.spec.soak, ctx.digest)
                        row["soak"] = view.state + ("" if view.digest_matches else " (old spec)")
                        if managed.spec.rotation == "alternating" and row["role"] == "present":
                            from runbook.alternating import current_turn

                            ctx.store = store
                            try:
                                turn = current_turn(ctx)
                            finally:
                                ctx.store = None
                            row["role"] += f" (current login {turn.current or '?'}" + (
                                f"; rotation to {turn.pending} half-way)" if turn.pending else ")")
                        # the last run that covered this role (a run from before runs.roles covered every role)
                        runs = store.runs(name, 1, role=managed.name if project.several else None)
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
    del selected
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
