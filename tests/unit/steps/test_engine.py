"""The engine holds "plan only" once, gives each run a fresh RunState, and journals a restart as
owed only for changes that touch the app's config."""

from __future__ import annotations

from typing import Any

from runbook import engine
from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.engine import Step, Verdict
from tests.unit.steps.conftest import World


class Hands(Step[bool]):
    """Hands a value on through `state` in apply; reads what the step before it handed on."""

    kind = "hands"
    touches_app = True

    def observe(self, ctx: StepContext) -> bool:
        return ctx.plan_only

    def plan(self, ctx: StepContext, observed: bool) -> list[Change]:
        seen = "soak" if self.params.get("soak_only") else "app"
        return [Change(f"change ({'preview' if observed else 'run'}, after {ctx.state.changed})",
                       touches_app=seen == "app", data={"n": 1})]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        state.soak_started = True

    def verify(self, ctx: StepContext) -> Verdict:
        return Verdict.ok("seen").with_evidence({"state": ctx.state.soak_started})


def _run(world: World, steps: list[Step[Any]], *, plan_only: bool, state: RunState | None = None) -> list[tuple]:
    written: list[tuple] = []
    engine.run(steps, world.session, plan_only=plan_only, journal=lambda *event: written.append(event), state=state)
    return written


def test_a_preview_journals_nothing_and_hands_nothing_to_the_run(world: World):
    preview = RunState()
    assert _run(world, [Hands(), Hands()], plan_only=True, state=preview) == []
    assert preview.changed == ["hands", "hands"] and preview.app_changed and not preview.soak_started
    run = RunState()
    events = _run(world, [Hands()], plan_only=False, state=run)
    assert [e[1] for e in events] == ["intent", "result"]
    assert events[0][3] == {"changes": [{"summary": "change (run, after [])", "reversible": True, "count": 1}], "app": True}
    assert events[1][3]["n"] == 1
    assert run.soak_started and run.verified == {"hands": {"state": True}}


def test_a_change_that_leaves_the_app_alone_owes_no_restart(world: World):
    run = RunState()
    events = _run(world, [Hands({"soak_only": True})], plan_only=False, state=run)
    assert "app" not in events[0][3] and not run.app_changed
