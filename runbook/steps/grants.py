"""Grants: schema USAGE, ON ALL … IN SCHEMA, default privileges FOR ROLE owner, deny-list
revokes — one transaction, under lock_timeout so the app never queues behind us, retried when
another session's transaction got in the way."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from psycopg import errors as pg_errors, sql

from runbook import catalog, grants, roles
from runbook.alternating import grant_specs
from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.engine import Step, Verdict
from runbook.errors import Refused, RunbookError
from runbook.project import RoleSpec


def _contended(exc: BaseException) -> str | None:
    """Why a grant transaction lost to another session, if it did; None for real errors.

    GRANT rewrites each object's pg_class row, so it waits for any open transaction that changed
    the same row (a migration's ALTER TABLE, another GRANT). If that wait outlasts lock_timeout
    we get 55P03; if the other session commits first, PostgreSQL ends ours with XX000 "tuple
    concurrently updated". Both, and deadlocks, succeed on a retry."""
    if isinstance(exc, pg_errors.LockNotAvailable):
        return "lock_timeout met"
    if isinstance(exc, pg_errors.DeadlockDetected):
        return "deadlock with another session"
    if getattr(exc, "sqlstate", None) == "XX000" and "concurrently" in str(exc):
        return "another session changed the same objects and committed while we waited"
    return None


def _backoff(attempt: int) -> float:
    return min(2.0 * attempt, 10.0)


_sleep: Callable[[float], None] = time.sleep     # tests replace it to skip the backoff


def apply_statements(ctx: StepContext, statements: list[sql.SQL | sql.Composed]) -> None:
    """Run the statements in one transaction with SET LOCAL lock_timeout; retry lock contention."""
    conn = ctx.admin()
    settings = ctx.settings
    lock_ms = int(settings.lock_timeout.total_seconds() * 1000)
    attempts = settings.lock_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_ms}ms")))
                for statement in statements:
                    conn.execute(statement)
            return
        except pg_errors.Error as exc:
            why = _contended(exc)
            if why is None:
                raise
            if attempt == attempts:
                raise RunbookError(
                    f"grants gave up after {attempts} attempt(s): another session held a conflicting lock "
                    f"(lock_timeout {lock_ms} ms; last: {why}); nothing was changed. Retry when the database is "
                    "quieter, or raise settings.lock_timeout") from None
            ctx.note(f"{why} (attempt {attempt}/{attempts}); retrying")
            _sleep(_backoff(attempt))


def deny_gap_note(ctx: StepContext) -> str:
    # ALTER DEFAULT PRIVILEGES has no "except these names": PostgreSQL grants every future table
    shown = ", ".join(ctx.role.denied[:3]) + (", …" if len(ctx.role.denied) > 3 else "")
    return (f"default privileges cannot exclude a name: a deny-listed table ({shown}) created after this run "
            f"is reachable by {ctx.role.name} until `runbook drift --env {ctx.env.name} --fix` revokes it; "
            "verify, diagnose, drift and every soak checkpoint report it (README: an event trigger closes the gap)")


class Grants(Step[catalog.Snapshot]):
    kind = "grants"

    def observe(self, ctx: StepContext) -> catalog.Snapshot:
        if not ctx.api_credentials:
            # grants and revokes go only to a role pg-runbook manages: with the owner's name the
            # "privileges beyond the spec" revokes would strip the owner's own tables
            roles.refuse_unless_managed(roles.facts(ctx.admin(), ctx.role.name), roles.identity(ctx), owner=ctx.owner,
                                        action="change the privileges of", adopting=ctx.plan_only and ctx.role.adopt)
        specs = grant_specs(ctx)
        snaps = [catalog.snapshot(ctx.admin(), spec, ctx.owner) for spec in specs]
        for spec, snap in zip(specs, snaps):
            if any(not c.can_alter for c in snap.creators.values()):
                # read here, not in plan: a creator whose future tables would stay out of reach
                for finding in grants.refused_creators(spec, snap, ctx.admin().info.user):
                    if not ctx.plan_only:
                        raise Refused(finding.detail)
                    ctx.note(finding.detail)
        if len(snaps) > 1:
            # alternating on platform credentials: the others' snapshots ride along on the first
            return replace(snaps[0], more=tuple(zip(specs[1:], snaps[1:])))
        return snaps[0]

    def plan(self, ctx: StepContext, observed: catalog.Snapshot) -> list[Change]:
        for finding in grants.unfixable(ctx.role, observed):
            ctx.note(finding.detail)
        changes = [c for spec, snap in _each(ctx, observed) for c in grants.plan(spec, snap)]
        found = grants.presets_found(ctx.role, observed)
        if ctx.plan_only and found:
            ctx.note(f"deny presets ({', '.join(ctx.role.deny_presets)}) found and deny: " + ", ".join(found))
        if ctx.role.denied and any(g.tables for g in ctx.role.schemas.values()) and (
                ctx.plan_only or any(c.summary.startswith("default privileges:") for c in changes)):
            ctx.note(deny_gap_note(ctx))
        return changes

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        apply_statements(ctx, [c.statement for c in changes if c.statement is not None])

    def verify(self, ctx: StepContext) -> Verdict:
        return self._judge(ctx, [(spec, catalog.snapshot(ctx.admin(), spec, ctx.owner)) for spec in grant_specs(ctx)])

    def verify_unchanged(self, ctx: StepContext, observed: catalog.Snapshot) -> Verdict:
        # nothing was granted or revoked since observe's snapshots: judge those, not a second read
        return self._judge(ctx, _each(ctx, observed))

    def _judge(self, ctx: StepContext, snaps: list[tuple[RoleSpec, catalog.Snapshot]]) -> Verdict:
        snap = snaps[0][1]
        left = [f for spec, each in snaps for f in grants.verified(spec, each)]
        if left:
            return Verdict("fail", "; ".join(f.summary() for f in left[:3]),
                           fix=f"runbook drift --env {ctx.env.name}", evidence=snap)
        from runbook.rls import check as rls_check

        blocked: Verdict | None = rls_check(ctx)     # before the URL and the flag: the app must not switch to empty tables
        if blocked is not None:
            return Verdict(blocked.status, blocked.detail, blocked.fix, evidence=snap)
        return Verdict.ok(f"{len(snap.relations)} relations, {len(snap.routines)} routines as specified") \
            .with_evidence(snap)


def _each(ctx: StepContext, snap: catalog.Snapshot) -> list[tuple[RoleSpec, catalog.Snapshot]]:
    first = grant_specs(ctx)[0]
    return [(first, replace(snap, more=())), *snap.more]
