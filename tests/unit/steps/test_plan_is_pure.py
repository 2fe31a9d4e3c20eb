"""plan() of every step kind is pure: run it twice on the same facts and the context (the session
and the run's state) is unchanged, and the two plans are equal but for the generated secrets."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from providers.base import Credential, Digest
from runbook import roles
from runbook.app_url import UrlState
from runbook.changes import PasswordChange
from runbook.context import RunState
from runbook.engine import Step
from runbook.secret import Secret
from runbook.steps import KINDS, step_class
from runbook.steps.custom import SqlDone
from runbook.steps.drain import DrainObserved
from runbook.steps.flag import FlagObserved
from runbook.steps.grants import Grants
from runbook.steps.preflight import AdminFacts, PreflightFacts
from runbook.steps.restart import RestartNeed
from runbook.steps.retire import RetireFacts
from runbook.steps.role import RoleDrift, RoleObserved, RotateObserved
from runbook.steps.soak_clock import OpenSoak
from runbook.steps.url import ConfiguredUrl, UrlObserved
from runbook.steps.verify import RlsPreview
from tests.unit.steps.conftest import OWNER, ROLE, World
from tests.unit.steps.test_database_steps import _snapshot

IDENT = roles.Identity("raptor", "staging", "raptor")
BROKEN = UrlState("postgresql://raptor_app:old@db.internal/raptor", False, "does not log in")
NEW = Credential(ROLE, ROLE, "db.internal", 5432, "raptor", Secret("fresh-password"))

# per kind: parameters and facts that make the step plan something (a plan of nothing proves little)
FACTS: dict[str, tuple[dict[str, Any], Any]] = {
    "preflight": ({}, PreflightFacts(AdminFacts("admin", 180001, True, True, True, True), ())),
    "role": ({}, RoleObserved(facts=roles.RoleFacts(ROLE, True, can_login=True, createdb=True, comment=IDENT.marker()),
                              identity=IDENT, url=BROKEN)),
    "rotate_password": ({}, RotateObserved(facts=roles.RoleFacts(ROLE, True, can_login=True))),
    "grants": ({}, _snapshot(frozenset({"SELECT"}))),
    "url": ({}, UrlObserved(BROKEN, fresh=True, credential=NEW)),
    "flag": ({"value": "on"}, FlagObserved("0", soak_start="flag on")),
    "restart": ({}, RestartNeed(owed={"run_id": 3, "step": "flag on"})),
    "unset_url": ({}, ConfiguredUrl(Digest.of("postgresql://x"))),
    "verify": ({}, RlsPreview(None)),
    "drop_role": ({}, RetireFacts(exists=True, owned=1, sessions=1, can_act=True)),
    "end_soak": ({"status": "retired"}, OpenSoak({"started_at": 0.0, "status": "running"})),
    "sql": ({"run": "SELECT 1", "unless": "SELECT false"}, SqlDone(False)),
    "command": ({"run": "true"}, None),
    "http_check": ({"url": "http://127.0.0.1:1/"}, None),
    "drain": ({}, DrainObserved(f"{ROLE}_b", ((f"{ROLE}_a", 2),), record=True)),
}


def _session_snapshot(world: World) -> dict[str, Any]:
    # notes are the plan's output (compared between the two plans below), not state
    return {k: v for k, v in vars(world.session).items() if k != "notes"}


def _copied(value: Any) -> Any:
    return value.copy() if isinstance(value, (list, dict)) else value


def test_every_step_kind_has_facts_here():
    assert set(FACTS) == set(KINDS)


def _mask(changes: list[Any]) -> list[Any]:
    # the generated passwords differ and are excluded from a Change's equality; prove that they do differ
    return [(c, c.sql_text()) for c in changes]


@pytest.mark.parametrize("plan_only", [False, True], ids=["run", "preview"])
@pytest.mark.parametrize("kind", sorted(FACTS))
def test_plan_twice_leaves_the_context_unchanged_and_plans_the_same(world: World, kind: str, plan_only: bool):
    params, observed = FACTS[kind]
    steps: list[Step[Any]] = [step_class(kind)(params)]
    if kind == "role":
        steps.append(RoleDrift())
        observed_for = {id(steps[1]): observed.facts}
    else:
        observed_for = {}
    for step in steps:
        facts = observed_for.get(id(step), observed)
        state = RunState(new_password=Secret("from-an-earlier-step"), changed=["role"])
        ctx = world.ctx(plan_only=plan_only, state=state)
        # a Secret refuses to be copied: containers are copied, the (immutable) rest kept as is
        before_state = RunState(**{f.name: _copied(getattr(state, f.name)) for f in dataclasses.fields(state)})
        before_session = _session_snapshot(world)
        first = step.plan(ctx, facts)
        first_notes = world.session.take_notes()
        second = step.plan(ctx, facts)
        second_notes = world.session.take_notes()
        assert state == before_state
        assert _session_snapshot(world) == before_session
        assert _mask(first) == _mask(second)
        assert first_notes == second_notes
        if kind != "verify" and kind != "http_check" and kind != "preflight":
            assert first, f"{kind}: these facts should plan a change"
        secrets = [(a.password, b.password) for a, b in zip(first, second) if isinstance(a, PasswordChange)]
        for one, other in secrets:
            assert one is not None and other is not None and one.reveal() != other.reveal()


def test_grants_plan_is_the_same_for_a_preview_and_a_run_but_for_notes(world: World):
    snap = _snapshot(frozenset())
    assert Grants().plan(world.ctx(), snap) == Grants().plan(world.ctx(plan_only=True), snap)
