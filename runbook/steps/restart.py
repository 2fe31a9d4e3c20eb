"""The app's restart, when its config changed and the platform did not restart it already: in
this run, or in an earlier run that died or failed before its restart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.engine import Step


@dataclass(frozen=True)
class RestartNeed:
    now: bool = False                      # this run changed (preview: would change) the app's config
    owed: dict[str, Any] | None = None     # else: the journal event of a change no restart followed


def owed_restart(ctx: StepContext) -> dict[str, Any] | None:
    """The journal event of an app-config change that no restart has followed yet, if any.

    A run that changed the config and died (or failed) before restarting leaves its intent in the
    journal; the next run must pay that restart even though it finds nothing left to change.
    """
    owed = None
    for event in ctx.journal_history():
        step, kind, data = event.get("step"), event.get("kind"), event.get("data")
        if kind == "info" and isinstance(data, dict) and "kind" in data:
            # a record imported from the local journal keeps its own step/kind/data inside
            step, kind, data = data.get("step"), data.get("kind"), data.get("data")
        if step == "restart" and kind == "result":
            owed = None
        elif kind == "intent" and isinstance(data, dict) and data.get("app"):
            owed = event
    return owed


class Restart(Step[RestartNeed]):
    """Restart the app (`always: true`: even when nothing changed)."""

    kind = "restart"

    def observe(self, ctx: StepContext) -> RestartNeed:
        if ctx.state.app_changed or self.params.get("always"):
            return RestartNeed(now=True)
        if ctx.plan_only and ctx.store is None:
            return RestartNeed()
        return RestartNeed(owed=owed_restart(ctx))

    def plan(self, ctx: StepContext, observed: RestartNeed) -> list[Change]:
        if not observed.now and not observed.owed:
            return []
        owed = observed.owed if not observed.now else None
        if ctx.app.config_change_restarts and not self.params.get("always"):
            if not owed:      # an owed one was paid by the platform when the config changed
                ctx.note(f"{ctx.app.key} restarts the app itself when its config changes; no second restart")
            return []
        if not ctx.app.can_restart:
            if not owed:      # said when the change was made; not again on every later run
                ctx.note("no restart command configured (app.restart); restart the app yourself to pick up the change")
            return []
        if owed:
            run = owed.get("run_id")
            by = f"run #{run}" if run else "an earlier run"
            return [Change(f"restart the app ({ctx.app.key}): {by} changed its config ({owed.get('step')}) "
                           "and did not restart it", reversible=False)]
        return [Change(f"restart the app ({ctx.app.key})", reversible=False)]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        ctx.app.restart()
