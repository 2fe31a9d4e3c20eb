"""`member_of:` — the memberships a role's spec gives it, as SET ROLE paths (runbook.membership).
Run after the role step for a role with member_of (and by `drift --fix`); the role step revokes a
membership the spec no longer names."""

from __future__ import annotations

from runbook import membership, roles
from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.engine import Step, Verdict


class Memberships(Step[membership.Held | None]):
    kind = "memberships"

    def observe(self, ctx: StepContext) -> membership.Held | None:
        if ctx.api_credentials or not ctx.managed.member_of:
            return None
        conn = ctx.admin()
        membership.refuse_unsafe(conn, ctx.role.name, ctx.managed.member_of)
        return membership.held(conn, ctx.role.name)

    def plan(self, ctx: StepContext, observed: membership.Held | None) -> list[Change]:
        if observed is None:
            return []
        return membership.changes(ctx.role.name, ctx.managed.member_of, observed)

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        roles.apply_all(ctx.admin(), changes)

    def verify(self, ctx: StepContext) -> Verdict:
        if ctx.api_credentials or not ctx.managed.member_of:
            return Verdict.ok()
        left = membership.findings(ctx.admin(), ctx.role.name, ctx.managed.member_of)
        return Verdict("fail", left[0].detail) if left else Verdict.ok(
            f"{ctx.role.name}: SET ROLE {', '.join(ctx.managed.member_of)} (not inherited)")
