"""Item 10 of issue 12: default privileges cannot exclude a name, so a deny-listed table created
after provision (the first `schema_migrations`, typically) is reachable through them. plan says
so; drift, diagnose, re-provision's verify and the soak report it as soon as it exists; `drift
--fix` revokes it, proven from the app's side."""

from __future__ import annotations

import psycopg
import pytest

from runbook import commands
from runbook.errors import CheckFailed

SHORT = {"duration": "3s", "checkpoints": ["1s", "2s", "3s"], "valid_for": "1h", "checks": ["diagnose", "drift"]}


def _app_can_write(env) -> bool:
    with env.app_conn() as conn:
        try:
            with conn.transaction():
                conn.execute("INSERT INTO schema_migrations VALUES ('x')")
                raise psycopg.Rollback()
        except psycopg.errors.InsufficientPrivilege:
            return False
    return True


def test_plan_says_default_privileges_cannot_exclude_a_name(env):
    plan = commands.plan(env.project(), "staging", environ=env.environ)
    notes = [n for s in plan.steps for n in s.notes if s.step == "grants"]
    assert any("default privileges cannot exclude a name" in n and "drift" in n for n in notes), notes


def test_a_deny_listed_table_created_later_is_caught_and_fixed(env):
    env.rewrite(soak=SHORT)
    project = env.project()
    commands.provision(project, "staging", yes=True, environ=env.environ)
    env.as_owner("CREATE TABLE schema_migrations (version text PRIMARY KEY)")     # a later migration tool
    assert _app_can_write(env)                  # the gap is real: default privileges granted it

    drift = commands.drift(project, "staging", environ=env.environ)
    assert drift.exit_code == 4
    assert any(f["kind"] == "denied-reachable" and "public.schema_migrations" in f["objects"]
               for f in drift.data["findings"])
    diag = commands.diagnose(project, "staging", environ=env.environ)
    assert diag.exit_code == 4 and any("schema_migrations" in c.detail for c in diag.checks)

    env.pg.execute("UPDATE runbook.soaks SET started_at = started_at - 1.5 WHERE status = 'running'")
    soak = commands.soak(project, "staging", environ=env.environ)
    assert soak.exit_code == 4 and soak.data["soak"]["state"] == "failed"

    fixed = commands.drift(project, "staging", fix=True, yes=True, environ=env.environ)
    assert fixed.exit_code == 0, [c.detail for c in fixed.checks]
    assert not _app_can_write(env)
    assert commands.drift(project, "staging", environ=env.environ).exit_code == 0


def test_reprovision_revokes_it_and_verify_would_have_caught_it(env):
    project = env.project()
    commands.provision(project, "staging", yes=True, environ=env.environ)
    env.as_owner("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
    res = commands.provision(project, "staging", yes=True, environ=env.environ)
    grants = next(s for s in res.steps if s.step == "grants")
    assert any("schema_migrations" in c.summary for c in grants.changes)
    assert not _app_can_write(env)


def test_the_readme_event_trigger_closes_the_gap(su_env):
    """The optional recipe of README's security section, as written there (superuser admin)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    recipe = re.search(r"```sql\n(CREATE FUNCTION public.runbook_deny_guard.*?)```", readme, re.S).group(1)
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    with su_env.pg.connect() as conn:
        conn.execute(recipe.replace("raptor_app", su_env.role))
    try:
        su_env.as_owner("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
        assert not _app_can_write(su_env)
        assert commands.drift(su_env.project(), "staging", environ=su_env.environ).exit_code == 0
    finally:
        su_env.pg.execute("DROP EVENT TRIGGER runbook_deny_guard")
