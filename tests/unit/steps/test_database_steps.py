"""preflight, grants, drop_role, end_soak, sql, command, http_check, verify: facts in, Changes out."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.catalog import Relation, SchemaFacts, Snapshot
from runbook.engine import Verdict
from runbook.errors import ConfigError, Refused
from runbook.steps.custom import CommandStep, HttpCheckStep, SqlDone, SqlStep
from runbook.steps.grants import Grants
from runbook.steps.preflight import AdminFacts, AdminPower, Preflight, PreflightFacts
from runbook.steps.retire import DropRole, RetireFacts
from runbook.steps.soak_clock import EndSoak, OpenSoak
from runbook.steps.verify import RlsPreview, VerifyFromApp
from tests.unit.steps.conftest import OWNER, ROLE, World, make_world

ADMIN = AdminFacts("admin", 180001, superuser=False, createrole=True, owner_exists=True, owner_member=True)


def test_preflight_passes_with_a_summary_note(world: World):
    assert Preflight().plan(world.ctx(), PreflightFacts(ADMIN, (), plan="hobby")) == []
    assert world.session.take_notes() == [f"server 18.1, admin admin, owner {OWNER}, plan hobby"]


def test_preflight_refuses_the_first_problem_and_counts_the_rest(world: World):
    with pytest.raises(Refused, match=r"too old \(and 1 more\)"):
        Preflight().plan(world.ctx(), PreflightFacts(ADMIN, ("PostgreSQL 12 is too old", "schema x missing")))


def test_a_preview_notes_what_the_admin_could_not_do_instead_of_refusing(world: World):
    weak = AdminPower("admin user admin can neither create roles nor is superuser")
    assert Preflight().plan(world.ctx(plan_only=True), PreflightFacts(ADMIN, (weak,))) == []
    assert world.session.take_notes()[0] == f"provision with this DSN would be refused: {weak}"
    with pytest.raises(Refused):
        Preflight().plan(world.ctx(), PreflightFacts(ADMIN, (weak,)))


def _snapshot(held: frozenset[str]) -> Snapshot:
    facts = SchemaFacts("public", True, OWNER, True, False,
                        {"r": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}), "S": frozenset({"USAGE", "SELECT"})})
    return Snapshot(ROLE, True, OWNER, {"public": facts},
                    [Relation("public", "orders", "r", OWNER, held, held)], [])


def test_grants_plan_the_missing_privileges(world: World):
    changes = Grants().plan(world.ctx(), _snapshot(frozenset({"SELECT"})))
    assert [c.sql_text() for c in changes] == [
        'GRANT DELETE, INSERT, SELECT, UPDATE ON ALL TABLES IN SCHEMA "public" TO "raptor_app"']


def test_grants_that_match_plan_nothing_but_a_preview_names_the_deny_gap(world: World):
    full = _snapshot(frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}))
    assert Grants().plan(world.ctx(), full) == []
    assert world.session.take_notes() == []
    assert Grants().plan(world.ctx(plan_only=True), full) == []
    assert "default privileges cannot exclude a name" in world.session.take_notes()[0]


def test_retire_ends_sessions_then_hands_over_then_drops(world: World):
    changes = DropRole().plan(world.ctx(), RetireFacts(exists=True, owned=2, sessions=3, can_act=False))
    assert [c.sql_text() for c in changes] == [
        f'ALTER ROLE "{ROLE}" NOLOGIN', f'GRANT "{ROLE}" TO CURRENT_USER',
        f"SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = '{ROLE}'",
        f'REASSIGN OWNED BY "{ROLE}" TO "{OWNER}"', f'DROP OWNED BY "{ROLE}"', f'DROP ROLE "{ROLE}"']
    assert "end 3 open session(s)" in changes[2].summary and "hand 2 object(s)" in changes[3].summary


def test_retire_of_a_role_that_is_gone_plans_nothing(world: World):
    assert DropRole().plan(world.ctx(), RetireFacts()) == []


def test_end_soak_ends_the_running_one(world: World):
    assert EndSoak().plan(world.ctx(), OpenSoak(None)) == []
    [change] = EndSoak({"status": "retired"}).plan(world.ctx(), OpenSoak({"started_at": 0.0, "status": "running"}))
    assert change.summary == "end the soak started 1970-01-01 00:00 UTC"


def test_sql_step_runs_unless_its_check_says_done(world: World):
    step = SqlStep({"run": "CREATE EXTENSION pgcrypto", "unless": "SELECT true"})
    assert step.plan(world.ctx(), SqlDone(True)) == []
    [change] = step.plan(world.ctx(), SqlDone(False))
    assert change.sql_text() == "CREATE EXTENSION pgcrypto" and not change.reversible
    with pytest.raises(ConfigError, match="needs `run:`"):
        SqlStep({}).plan(world.ctx(), SqlDone(False))


def test_command_step_plans_its_command_and_never_gets_a_secret_variable(world: World):
    assert [c.summary for c in CommandStep({"run": "make migrate"}).plan(world.ctx(), None)] == ["run `make migrate`"]
    with pytest.raises(ConfigError, match="where the tool reads a secret from"):
        CommandStep({"run": "env", "pass_env": ["RB_TEST_ADMIN_DSN"]}).plan(world.ctx(), None)


def test_http_check_changes_nothing(world: World):
    assert HttpCheckStep({"url": "http://127.0.0.1:1/health"}).plan(world.ctx(), None) == []


def test_verify_changes_nothing_and_a_preview_says_what_it_will_refuse(world: World):
    assert VerifyFromApp().plan(world.ctx(), RlsPreview(None)) == []
    blocked = Verdict("fail", "orders has RLS and no policy for raptor_app", fix="CREATE POLICY …")
    assert VerifyFromApp().plan(world.ctx(plan_only=True), RlsPreview(blocked)) == []
    assert world.session.take_notes() == [f"verify will fail: {blocked.detail}; fix: {blocked.fix}"]
