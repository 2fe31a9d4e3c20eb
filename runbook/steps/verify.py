"""The last word of a provision: log in the way the app will, and check from the role's own
session that it reaches exactly what the spec says and no more."""

from __future__ import annotations

from runbook import catalog, grants
from runbook.engine import Step, Verdict
from runbook.login import login_url
from runbook.steps.app_config import url_state


class VerifyFromApp(Step):
    kind = "verify"
    mutates = False

    def verify(self, ctx):
        state = url_state(ctx, refresh=True)
        if state.logs_in is False:
            return Verdict("fail", state.reason, fix=f"runbook provision --env {ctx.env.name}")
        if state.logs_in is None:
            # cannot log in from here (write-only store or IAM): check from the admin side instead
            snap = catalog.snapshot(ctx.admin(), ctx.role, ctx.owner)
            left = grants.findings(ctx.role, snap)
            if left:
                return Verdict("fail", left[0].summary())
            return Verdict.ok(f"privileges as specified; login not tried ({state.reason})")
        import psycopg

        with psycopg.connect(login_url(ctx.db, state.value).reveal(), autocommit=True, connect_timeout=10,
                             application_name="runbook:verify") as conn:
            snap = catalog.snapshot(conn, ctx.role, ctx.owner)
            owner_reach = conn.execute(
                "SELECT pg_has_role(current_user, %s, 'MEMBER')", (ctx.owner,)).fetchone()[0] \
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ctx.owner,)).fetchone() else False
        left = [f for f in grants.findings(ctx.role, snap) if f.kind != "schema-missing"]
        if owner_reach:
            return Verdict("fail", f"{ctx.role.name} can SET ROLE to the owner {ctx.owner}")
        if left:
            return Verdict("fail", "; ".join(f.summary() for f in left[:3]), fix=f"runbook drift --env {ctx.env.name} --fix")
        return Verdict.ok(f"logged in as {ctx.role.name}; {len(snap.relations)} relations reachable exactly as specified")
