"""Close the environment's soak (retire): a soak of a role that no longer exists proves nothing."""

from __future__ import annotations

import time

from runbook.changes import Change
from runbook.engine import Step


class EndSoak(Step):
    kind = "end_soak"

    def observe(self, ctx):
        return ctx.store.open_soak(ctx.env.name) if ctx.store is not None else None

    def plan(self, ctx, soak):
        if not soak:
            return []
        return [Change(f"end the soak started {time.strftime('%Y-%m-%d %H:%M', time.gmtime(soak['started_at']))} UTC")]

    def apply(self, ctx, changes):
        ctx.store.end_soak(ctx.env.name, str(self.params.get("status", "ended")), f"ended by {ctx.command}", time.time())
