"""`member_of:` for `drift --fix`: grant the memberships the spec gives and the role lacks (the
role step grants them on provision and revokes those the spec no longer names)."""

from __future__ import annotations

from runbook import membership, roles
from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.engine import Step, Verdict


class Memberships(Step[tuple[str, ...]]):
    kind = "memberships"

    def observe(self, ctx: StepContext) -> tuple[str, ...]:
        if ctx.api_credentials or not ctx.managed.member_of:
            return ()
        conn = ctx.admin()
        membership.refuse_unsafe(conn, ctx.role.name, ctx.managed.member_of)
        return tuple(membership.missing(conn, ctx.role.name, ctx.managed.member_of))

    def plan(self, ctx: StepContext, observed: tuple[str, ...]) -> list[Change]:
        return membership.grants(ctx.role.name, observed)

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        roles.apply_all(ctx.admin(), changes)

    def verify(self, ctx: StepContext) -> Verdict:
        if ctx.api_credentials or not ctx.managed.member_of:
            return Verdict.ok()
        left = membership.missing(ctx.admin(), ctx.role.name, ctx.managed.member_of)
        return Verdict("fail", f"{ctx.role.name} is still not a member of {left[0]}") if left else Verdict.ok()
