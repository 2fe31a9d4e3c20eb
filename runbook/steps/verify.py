"""The last word of a provision: log in the way the app will, and check from the role's own
session that it reaches exactly what the spec says and no more."""

from __future__ import annotations

from dataclasses import dataclass

from runbook import catalog, grants
from runbook.alternating import alternating, current_turn, expected_login
from runbook.app_url import WRITE_ONLY_PROOF, url_in_hand
from runbook.changes import Change
from runbook.context import StepContext
from runbook.engine import Step, Verdict
from runbook.login import connect_as_app, login_route
from runbook.probe import step_verdict as future_tables
from runbook.rls import check as rls_check
from runbook.secret import Secret


@dataclass(frozen=True)
class RlsPreview:
    blocked: Verdict | None            # a preview: what verify will refuse once provision has run


class VerifyFromApp(Step[RlsPreview]):
    kind = "verify"
    mutates = False

    def observe(self, ctx: StepContext) -> RlsPreview:
        # nothing to change here, but what verify will refuse is worth seeing before provision runs
        return RlsPreview(rls_verdict(ctx, planned=True) if ctx.plan_only else None)

    def plan(self, ctx: StepContext, observed: RlsPreview) -> list[Change]:
        if observed.blocked is not None:
            ctx.note(f"verify will fail: {observed.blocked.detail}; fix: {observed.blocked.fix}")
        return []

    def verify(self, ctx: StepContext) -> Verdict:
        state = ctx.url_state()        # read afresh after any apply (engine), else this run's one login
        if state.logs_in is False:
            return Verdict("fail", state.reason, fix=f"runbook provision --env {ctx.env.name}")
        login = Secret(state.value) if state.logs_in and isinstance(state.value, str) else url_in_hand(ctx.state.written, state)
        if login is None:
            # cannot log in from here (write-only store or IAM): check from the admin side instead
            snap = catalog.snapshot(ctx.admin(), ctx.role, ctx.owner)
            left = grants.findings(ctx.role, snap)
            if left:
                return Verdict("fail", left[0].summary())
            blocked = rls_verdict(ctx)
            if blocked is not None:
                return blocked
            probed = future_tables(ctx)
            if probed.status != "pass":
                return probed
            from providers.base import Digest

            if isinstance(state.value, Digest):
                return Verdict("inconclusive", f"privileges as specified; login not proved ({state.reason})",
                               fix=WRITE_ONLY_PROOF.format(var=ctx.url_var, env=ctx.env.name))
            return Verdict.ok(f"privileges as specified; login not tried ({state.reason})")
        user = ctx.role.name
        if alternating(ctx.role):
            user = expected_login(ctx.role, login.reveal())
            want = ctx.state.login or current_turn(ctx).current or user
            if user != want or user not in ctx.role.logins:
                return Verdict("fail", f"{ctx.url_var} logs in as {user}, not the current login {want} of {ctx.role.name}",
                               fix=f"runbook provision --env {ctx.env.name}")
        # the app's URL (or, write-only, the one this run wrote), over the tool's endpoint where the app's is not here
        # the session url_state logged in with, when this is the URL it proved and nothing changed since
        kept = ctx.session.take_app_session(state) if state.logs_in else None
        with kept or connect_as_app(login, ctx.expected_endpoint(user), timeout=10,
                                    application_name="runbook:verify", route=login_route(ctx.db)) as conn:
            # alternating on platform credentials: the login itself holds the grants (no group role)
            checked = ctx.role.model_copy(update={"name": user}) if ctx.api_credentials and alternating(ctx.role) \
                else ctx.role
            snap = catalog.snapshot(conn, checked, ctx.owner)
            owner_reach = conn.execute(
                "SELECT pg_has_role(current_user, %s, 'MEMBER')", (ctx.owner,)).fetchone()[0] \
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ctx.owner,)).fetchone() else False
        left = grants.verified(checked, snap)
        if owner_reach and ctx.owner not in ctx.managed.member_of:     # member_of the owner: the spec's own path
            return Verdict("fail", f"{ctx.role.name} can SET ROLE to the owner {ctx.owner}")
        if left:
            return Verdict("fail", "; ".join(f.summary() for f in left[:3]), fix=f"runbook drift --env {ctx.env.name} --fix")
        blocked = rls_verdict(ctx)
        if blocked is not None:
            return blocked
        probed = future_tables(ctx)       # default privileges proved on a table made and rolled back
        if probed.status != "pass":
            return probed
        through = f" (current login of {ctx.role.name})" if user != ctx.role.name else ""
        return Verdict.ok(f"logged in as {user}{through}; {len(snap.relations)} relations reachable exactly as specified")


def rls_verdict(ctx: StepContext, *, planned: bool = False) -> Verdict | None:
    """runbook/rls.py's judgement of the role's row-level security, as a Verdict (None: nothing blocks)."""
    found: Verdict | None = rls_check(ctx, planned=planned)
    return found
