"""Close the environment's soak (retire): a soak of a role that no longer exists proves nothing.
(The flag step starts and ends soaks as changes of its own: runbook/steps/flag.py.)"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.engine import Step


@dataclass(frozen=True)
class OpenSoak:
    soak: dict[str, Any] | None        # the soak this step ends, as the journal holds it


class EndSoak(Step[OpenSoak]):
    kind = "end_soak"

    @property
    def status(self) -> str:
        return str(self.params.get("status", "ended"))

    def observe(self, ctx: StepContext) -> OpenSoak:
        if ctx.store is None:
            return OpenSoak(None)
        soak = ctx.store.open_soak(ctx.env.name)
        if soak is None and self.status == "rolled-back":
            latest = ctx.store.latest_soak(ctx.env.name)
            soak = latest if latest and latest.get("status") == "passed" else None
        return OpenSoak(soak)

    def plan(self, ctx: StepContext, observed: OpenSoak) -> list[Change]:
        if not observed.soak:
            return []
        started = time.strftime('%Y-%m-%d %H:%M', time.gmtime(observed.soak['started_at']))
        return [Change(f"end the soak started {started} UTC")]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        from runbook import soak

        assert ctx.store is not None       # observe plans nothing without one
        soak.end(ctx.store, ctx.env.name, self.status, f"ended by {ctx.command}")
