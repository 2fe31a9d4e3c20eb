"""Row-level security on real PostgreSQL (18 and 15), with a superuser admin and with a CREATEROLE
admin: an RLS table the role reaches without a policy fails provision (before the URL and the
flag), plan shows it, drift reports it; a policy by name, through an inherited role or PUBLIC
passes; `rls: bypass` passes where the admin may give BYPASSRLS and is refused where it may not."""

from __future__ import annotations

import pytest
from psycopg import sql

from runbook import commands, rls
from runbook.errors import CheckFailed, Refused
from runbook.project import RoleSpec
from tests.projects import dotenv, spec_dict, write_project

FLAG = "FLAG_RAPTOR_APP_ROLE_SEPARATION"


def provision(env):
    return commands.provision(env.project(), "staging", yes=True, environ=env.environ)


def with_rls(env, *statements: str) -> None:
    env.as_owner("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
    for statement in statements:
        env.as_owner(statement)


def test_an_rls_table_without_a_policy_fails_provision_before_the_flag(env):
    with_rls(env)
    planned = commands.plan(env.project(), "staging", environ=env.environ)
    notes = " ".join(n for s in planned.steps for n in s.notes)
    assert f"public.orders has row-level security and no policy for {env.role}" in notes
    with pytest.raises(CheckFailed) as err:
        provision(env)
    assert err.value.exit_code == 4
    assert err.value.message.startswith(f"grants: public.orders has row-level security and no policy for {env.role} "
                                        "(SELECT, INSERT, UPDATE, DELETE): reads return no rows, writes fail")
    assert f'CREATE POLICY "{env.role}_select" ON "public"."orders" FOR SELECT TO "{env.role}" USING (<rule>)' in err.value.hint
    assert "rls: bypass" in err.value.hint
    assert FLAG not in dotenv(env.dir)          # the app was not switched to a role that sees nothing

    found = commands.drift(env.project(), "staging", environ=env.environ)
    assert found.exit_code == 4
    assert [(c.name, c.status) for c in found.checks] == [("rls", "fail")]
    assert found.data["rls"] == [{"table": "public.orders", "who": env.role,
                                  "commands": ["SELECT", "INSERT", "UPDATE", "DELETE"]}]


def test_a_policy_for_the_role_passes_and_the_app_sees_its_rows(env):
    provision(env)
    with_rls(env, f"CREATE POLICY mine ON orders TO {env.role} USING (total > 0) WITH CHECK (total > 0)")
    res = provision(env)
    assert res.exit_code == 0
    assert commands.drift(env.project(), "staging", environ=env.environ).exit_code == 0
    with env.app_conn() as conn:
        conn.execute("INSERT INTO orders (total) VALUES (5)")
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1


@pytest.mark.parametrize("policies, missing", [
    (["CREATE POLICY r ON orders FOR SELECT TO {role} USING (true)"], ["INSERT", "UPDATE", "DELETE"]),
    (["CREATE POLICY everyone ON orders USING (true)"], []),                                   # PUBLIC
    (["CREATE POLICY grp ON orders TO {group} USING (true)"], []),                             # inherited
    (["CREATE POLICY strict ON orders AS RESTRICTIVE TO {role} USING (true)"], ["SELECT", "INSERT", "UPDATE", "DELETE"]),
    (["CREATE POLICY s ON orders FOR SELECT USING (true)", "CREATE POLICY i ON orders FOR INSERT TO {role} WITH CHECK (true)",
      "CREATE POLICY u ON orders FOR UPDATE TO {group} USING (true)"], ["DELETE"]),
], ids=["select-only", "public", "inherited", "restrictive-only", "per-command"])
def test_which_policies_apply_to_the_role(env, policies, missing):
    provision(env)
    group = env.pg.role("readers")
    env.pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
    env.pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(env.role)))
    with_rls(env, *(p.format(role=env.role, group=group) for p in policies))
    with env.pg.connect() as conn:
        found = rls.findings(env.project().role, rls.read(conn, env.project().role))
    assert [list(f.commands) for f in found] == ([missing] if missing else [])


def test_a_deny_listed_rls_table_is_not_the_roles_concern(env):
    env.as_owner("ALTER TABLE alembic_version ENABLE ROW LEVEL SECURITY")
    assert provision(env).exit_code == 0


def test_rls_bypass_gives_bypassrls_where_the_admin_may(env, request):
    with_rls(env)
    write_project(env.dir, {**spec_dict(env.role, owner=env.owner)} | {
        "role": {**spec_dict(env.role, owner=env.owner)["role"], "rls": "bypass"}})
    with env.pg.connect() as conn:
        may, _ = rls.admin_may_bypass(conn)          # the test cluster's superuser
    assert may
    if "createrole" in request.node.callspec.id:
        # a CREATEROLE admin without BYPASSRLS of its own (and any non-superuser on 15) may not
        with pytest.raises(Refused) as err:
            provision(env)
        assert err.value.exit_code == 2 and "role.rls: bypass" in err.value.message
        assert "CREATE POLICY" in err.value.message
        assert not env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (env.role,))
        return
    assert provision(env).exit_code == 0
    assert env.pg.execute("SELECT rolbypassrls FROM pg_roles WHERE rolname = %s", (env.role,)) == [(True,)]
    with env.app_conn() as conn:
        conn.execute("INSERT INTO orders (total) VALUES (1)")
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    assert provision(env).status == "unchanged"          # BYPASSRLS is wanted now: nothing to take away
    diag = commands.diagnose(env.project(), "staging", environ=env.environ)
    assert [(c.name, c.status) for c in diag.checks][:2] == [("role", "pass"), ("grants", "pass")]


def test_force_row_level_security_is_called_out_for_the_owner(env):
    provision(env)
    with_rls(env, f"CREATE POLICY mine ON orders TO {env.role} USING (true)",
             "ALTER TABLE orders FORCE ROW LEVEL SECURITY")
    res = provision(env)
    notes = " ".join(n for s in res.steps for n in s.notes)
    assert f"public.orders has FORCE ROW LEVEL SECURITY and no policy for its owner {env.owner}" in notes
    drift = commands.drift(env.project(), "staging", environ=env.environ)
    assert drift.exit_code == 0 and any("FORCE ROW LEVEL SECURITY" in m for m in drift.messages)


def test_findings_are_a_pure_comparison():
    spec = RoleSpec.model_validate({"name": "app", "schemas": {"public": {"tables": ["SELECT"]}}, "deny": ["secret"]})
    table = rls.RlsTable("public", "t", "owner", False, frozenset(), frozenset(), frozenset(), False)
    facts = rls.RlsFacts(True, False, [table, table._replace(name="secret"),
                                       table._replace(name="held", held=frozenset({"UPDATE"}))])
    assert [(f.table, f.commands) for f in rls.findings(spec, facts)] == [
        ("public.t", ("SELECT",)), ("public.held", ("SELECT", "UPDATE"))]
    assert rls.findings(spec, rls.RlsFacts(True, True, facts.tables)) == []          # BYPASSRLS
    assert rls.findings(spec, facts, bypass=True) == []                               # rls: bypass, planned


def test_a_partition_is_judged_by_its_parents_policies(su_env):
    su_env.as_owner("CREATE TABLE events (id int, at date) PARTITION BY RANGE (at)")
    su_env.as_owner("CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
    provision(su_env)
    for table in ("events", "events_2026"):
        su_env.as_owner(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    su_env.as_owner(f"CREATE POLICY mine ON events TO {su_env.role} USING (true) WITH CHECK (true)")
    with su_env.pg.connect() as conn:
        found = rls.findings(su_env.project().role, rls.read(conn, su_env.project().role))
    assert found == []          # the app reaches events_2026 through events, whose policy applies
