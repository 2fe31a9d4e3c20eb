"""Default privileges proved on real PostgreSQL (18 and 15), with a superuser admin and with a
CREATEROLE admin that is a member of the owner: the future-table probe passes on a correct setup,
fails naming the schema and the creator when default privileges are removed behind the tool's
back, and leaves the catalog as it found it; a second creator's tables reach the role; every
migration tool's bookkeeping table is denied; and plans settle after someone else's grants."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from runbook import commands, probe
from runbook.errors import CheckFailed, Refused
from tests.projects import spec_dict, write_project

from runbook.project import DENY_PRESETS


def provision(env):
    return commands.provision(env.project(), "staging", yes=True, environ=env.environ)


def drift(env, **kw):
    return commands.drift(env.project(), "staging", environ=env.environ, **kw)


def planned(env) -> list[str]:
    res = commands.plan(env.project(), "staging", environ=env.environ)
    return [c.summary for s in res.steps for c in s.changes]


def run_probe(env):
    spec = env.project().role
    with psycopg.connect(env.admin_dsn, autocommit=True) as conn:
        return probe.probe(conn, spec, env.owner, lock_timeout_ms=2000)


def catalog_state(env) -> tuple:
    """What the probe must not change: pg_class and pg_default_acl, counts and every ACL."""
    with env.pg.connect() as conn:
        return (
            conn.execute("SELECT count(*) FROM pg_class").fetchone(),
            conn.execute("SELECT count(*) FROM pg_default_acl").fetchone(),
            conn.execute("SELECT defaclrole, defaclnamespace, defaclobjtype, defaclacl::text FROM pg_default_acl "
                         "ORDER BY 1, 2, 3").fetchall(),
            conn.execute("SELECT c.oid, c.relname, c.relacl::text FROM pg_class c "
                         "JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1").fetchall(),
            conn.execute("SELECT count(*) FROM pg_depend").fetchone(),
        )


def as_su(env, *statements: str) -> None:
    for statement in statements:
        env.pg.execute(statement.format(role=env.role, owner=env.owner))


def test_the_probe_passes_on_a_provisioned_role_and_leaves_the_catalog_as_it_was(env):
    provision(env)
    before = catalog_state(env)
    results = run_probe(env)
    assert [(r.creator, r.schema, r.status) for r in results] == [(env.owner, "public", "pass")]
    assert results[0].deny_gap == "schema_migrations"   # alembic_version exists; the next free denied name
    assert catalog_state(env) == before
    res = drift(env)
    assert res.exit_code == 0
    assert res.data["probe"]["status"] == "pass"
    assert catalog_state(env) == before


def test_default_privileges_removed_behind_the_tools_back_fail_naming_schema_and_creator(env):
    provision(env)
    as_su(env, "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public REVOKE INSERT ON TABLES FROM {role}")
    before = catalog_state(env)
    status, detail, fix = probe.verdict(run_probe(env), "staging")
    assert status == "fail"
    assert f"a table {env.owner} creates in public: {env.role} lacks INSERT on table" in detail
    assert catalog_state(env) == before
    res = drift(env)
    assert res.exit_code == 4
    assert any(f"future tables in public created by {env.owner} will not be granted to {env.role}" in c.detail
               for c in res.checks)
    fixed = drift(env, fix=True, yes=True)
    assert fixed.exit_code == 0
    assert [r.status for r in run_probe(env)] == ["pass"]


def test_the_probe_catches_what_the_catalog_comparison_does_not(env):
    """A default privilege to PUBLIC makes every future table, deny-listed or not, reachable:
    the role's own default ACL looks right, the probe shows otherwise."""
    provision(env)
    as_su(env, "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC")
    res = drift(env)
    assert res.exit_code == 4
    (check,) = [c for c in res.checks if c.name == "probe"]
    assert check.status == "fail"
    assert f"a table {env.owner} creates in public" in check.detail
    assert "deny-listed schema_migrations would be reachable" in check.detail and "PUBLIC" in check.detail


def test_provision_verify_fails_with_exit_4_when_the_probe_fails(env, monkeypatch):
    provision(env)
    # a setup the catalog comparison passes but the probe does not: PUBLIC defaults to deny-listed names
    as_su(env, "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC")
    with pytest.raises(CheckFailed) as err:
        provision(env)
    assert err.value.exit_code == 4
    assert "future-table probe" in err.value.message and f"{env.owner} creates in public" in err.value.message


def test_a_soak_drift_check_runs_the_probe(env):
    from runbook.checks import soak_check
    from runbook.context import Context
    from runbook.project import CheckSpec

    provision(env)
    as_su(env, "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC")
    from runbook.run import Invocation, context

    ctx = context(env.project(), "staging", "soak", Invocation(environ=env.environ))
    try:
        r = soak_check(ctx, CheckSpec(kind="drift"))
    finally:
        ctx.close()
    assert isinstance(ctx, Context)
    assert r.status == "fail" and "future-table probe" in r.detail


def test_a_creator_the_admin_cannot_set_role_to_is_inconclusive_with_the_fix(env):
    provision(env)
    stranger = env.pg.role("stranger")
    env.pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(stranger)))
    spec = env.project().role.model_copy(update={"creators": [stranger]})
    with psycopg.connect(env.admin_dsn, autocommit=True) as conn:
        results = probe.probe(conn, spec, env.owner, lock_timeout_ms=2000)
    if env.admin_dsn == env.pg.admin_dsn:          # a superuser may SET ROLE anyone
        assert [r.status for r in results] == ["pass", "skipped"]   # the stranger has no CREATE in public
        return
    bad = [r for r in results if r.creator == stranger]
    assert [r.status for r in bad] == ["inconclusive"]
    assert f"cannot SET ROLE {stranger}" in bad[0].detail and f"GRANT {stranger} TO" in bad[0].fix
    status, _, _ = probe.verdict(results, "staging")
    assert status == "inconclusive"


def test_an_event_trigger_someone_else_can_rewrite_makes_the_probe_inconclusive(su_env):
    env = su_env
    provision(env)
    env.pg.execute(sql.SQL("""
        CREATE FUNCTION public.planted() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN RESET ROLE; END $$;
        ALTER FUNCTION public.planted() OWNER TO {};
        CREATE EVENT TRIGGER planted ON ddl_command_end EXECUTE FUNCTION public.planted();
    """).format(sql.Identifier(env.owner)))
    try:
        before = catalog_state(env)
        results = run_probe(env)
        assert [r.status for r in results] == ["inconclusive"]
        assert f"planted (function owned by {env.owner})" in results[0].detail
        assert catalog_state(env) == before
        # a superuser's event trigger is the admin's or the platform's code: the probe runs under it
        env.pg.execute("ALTER FUNCTION public.planted() OWNER TO CURRENT_USER")
        assert [r.status for r in run_probe(env)] == ["pass"]
    finally:
        env.pg.execute("DROP EVENT TRIGGER planted")


def test_the_deny_guard_event_trigger_closes_the_gap_and_the_probe_proves_it(su_env):
    env = su_env
    provision(env)
    assert run_probe(env)[0].deny_gap == "schema_migrations"
    env.pg.execute(sql.SQL("""
        CREATE FUNCTION public.runbook_deny_guard() RETURNS event_trigger LANGUAGE plpgsql
        SET search_path = pg_catalog AS $$
        DECLARE obj record;
        BEGIN
          FOR obj IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
            IF obj.object_identity ~ '(^|\\.)(alembic_version|schema_migrations)$' THEN
              EXECUTE format('REVOKE ALL ON TABLE %s FROM {}', obj.object_identity);
            END IF;
          END LOOP;
        END $$;
        CREATE EVENT TRIGGER runbook_deny_guard ON ddl_command_end
          WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS') EXECUTE FUNCTION public.runbook_deny_guard();
    """).format(sql.Identifier(env.role)))
    try:
        (result,) = run_probe(env)
        assert (result.status, result.deny_gap) == ("pass", None)
    finally:
        env.pg.execute("DROP EVENT TRIGGER runbook_deny_guard")


# --- creators: -------------------------------------------------------------------------------

def _migrator(env, *, grant_to_admin: bool = True) -> str:
    migrator = env.pg.role("migrator")
    env.pg.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'migrator-pw-0123456789'").format(sql.Identifier(migrator)))
    env.pg.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(migrator)))
    if grant_to_admin and env.admin_dsn != env.pg.admin_dsn:
        admin = psycopg.conninfo.conninfo_to_dict(env.admin_dsn)["user"]
        env.pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(migrator), sql.Identifier(admin)))
    return migrator


def with_creators(env, *creators: str) -> None:
    data = spec_dict(env.role, owner=env.owner)
    data["role"]["creators"] = list(creators)
    write_project(env.dir, data)


def test_a_table_a_second_creator_makes_reaches_the_role(env):
    migrator = _migrator(env)
    with_creators(env, env.owner, migrator)
    assert any(f"future tables in public by {migrator} get" in s for s in planned(env))
    assert provision(env).exit_code == 0
    assert planned(env) == []
    with env.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(migrator)))
        conn.execute("CREATE TABLE invoices (id serial PRIMARY KEY, total int)")
    with env.app_conn() as conn:
        conn.execute("INSERT INTO invoices (total) VALUES (3)")
        assert conn.execute("SELECT total FROM invoices").fetchall() == [(3,)]
    res = drift(env)
    assert res.exit_code == 0, [c.detail for c in res.checks]
    assert {(r.creator, r.status) for r in run_probe(env)} == {(env.owner, "pass"), (migrator, "pass")}

    as_su(env, f"ALTER DEFAULT PRIVILEGES FOR ROLE {migrator} IN SCHEMA public REVOKE ALL ON TABLES FROM {{role}}")
    res = drift(env)
    assert res.exit_code == 4
    assert any(f"future tables in public created by {migrator}" in c.detail for c in res.checks)
    bad = [r for r in run_probe(env) if r.status == "fail"]
    assert [(r.creator, r.schema) for r in bad] == [(migrator, "public")]
    assert drift(env, fix=True, yes=True).exit_code == 0
    assert drift(env).exit_code == 0


def test_a_creator_the_admin_cannot_act_for_is_refused_with_the_fix(env):
    if env.admin_dsn == env.pg.admin_dsn:
        pytest.skip("a superuser acts for every role")
    migrator = _migrator(env, grant_to_admin=False)
    with_creators(env, migrator)
    res = commands.plan(env.project(), "staging", environ=env.environ)
    notes = " ".join(n for s in res.steps for n in s.notes)
    assert f"cannot ALTER DEFAULT PRIVILEGES FOR ROLE {migrator}" in notes and f"GRANT {migrator} TO" in notes
    with pytest.raises(Refused) as err:
        provision(env)
    assert err.value.exit_code == 2 and f"GRANT {migrator} TO" in err.value.message


def test_old_files_keep_their_digest_and_a_written_creators_changes_it(env):
    old = env.project().role.digest()
    with_creators(env)                                    # creators: [] is the default, written
    assert env.project().role.digest() == old
    with_creators(env, env.owner, "migrator")
    assert env.project().role.digest() != old


# --- deny_presets: ---------------------------------------------------------------------------

def test_every_preset_migration_table_is_denied_and_typeorm_only_when_named(env):
    names = [n for n in DENY_PRESETS["migrations"] if n != "alembic_version"] + ["migrations"]
    for name in names:
        env.as_owner(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(name)).as_string(None))
    res = commands.plan(env.project(), "staging", environ=env.environ)
    notes = " ".join(n for s in res.steps for n in s.notes)
    assert "deny presets (migrations) found and deny: " in notes
    assert 'public.SequelizeMeta' in notes and "public.knex_migrations_lock" in notes
    assert "public.migrations" not in notes
    provision(env)
    with env.app_conn() as conn:
        held = dict(conn.execute(
            "SELECT c.relname, has_table_privilege(c.oid, 'SELECT') OR has_table_privilege(c.oid, 'INSERT') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r'").fetchall())
        for name in DENY_PRESETS["migrations"]:
            assert held[name] is False, name
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(name)))
        assert held["migrations"] is True and held["orders"] is True       # TypeORM's name: the app's own data
    assert drift(env).exit_code == 0

    data = spec_dict(env.role, owner=env.owner, deny=["alembic_version", "migrations"])
    write_project(env.dir, data)
    provision(env)
    with env.app_conn() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM migrations")

    data["role"]["deny_presets"] = []
    write_project(env.dir, data)
    provision(env)
    with env.app_conn() as conn:
        assert conn.execute('SELECT count(*) FROM "SequelizeMeta"').fetchone() == (0,)   # presets off: reachable


# --- plans that settle -----------------------------------------------------------------------

def settled(env) -> None:
    assert planned(env) == []
    res = drift(env)
    assert res.exit_code == 0, [c.detail for c in res.checks]


def test_settles_after_default_privileges_written_by_someone_else_in_another_order(env):
    provision(env)
    as_su(env,
          "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public REVOKE ALL ON TABLES FROM {role}",
          "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT DELETE ON TABLES TO {role}",
          "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT UPDATE, SELECT, TRUNCATE ON TABLES TO {role}",
          "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT, INSERT ON TABLES TO {role}",
          "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT USAGE ON SEQUENCES TO {role}")
    assert planned(env) != []
    provision(env)
    settled(env)
    with env.pg.connect() as conn:      # nothing left that reaches schemas the spec does not cover
        assert conn.execute(sql.SQL("SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a "
                                    "WHERE d.defaclnamespace = 0 AND a.grantee = {}::regrole")
                            .format(sql.Literal(env.role))).fetchone() == (0,)


def test_settles_after_public_grants(env):
    as_su(env, "GRANT SELECT, TRUNCATE ON orders TO PUBLIC", "GRANT SELECT ON customers TO PUBLIC",
          "GRANT USAGE ON SEQUENCE orders_id_seq TO PUBLIC")
    provision(env)
    settled(env)


def test_settles_after_grants_with_grant_option(env):
    provision(env)
    as_su(env, "GRANT SELECT, INSERT ON orders TO {role} WITH GRANT OPTION",
          "GRANT USAGE ON SEQUENCE orders_id_seq TO {role} WITH GRANT OPTION",
          "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {role} WITH GRANT OPTION")
    res = drift(env)
    assert res.exit_code == 4
    assert any("WITH GRANT OPTION" in c.detail for c in res.checks)
    provision(env)
    settled(env)
    with env.app_conn() as conn:
        assert conn.execute("SELECT has_table_privilege('orders', 'SELECT WITH GRANT OPTION')").fetchone() == (False,)
    assert [r.status for r in run_probe(env)] == ["pass"]


def test_plan_settles_when_another_grantor_gave_the_role_privileges(env):
    """A role holding a grant option grants ours something beyond the spec: the admin's REVOKE
    (as the owner) cannot take it back, so plan must not propose it for ever; drift names the grantor."""
    helper = env.pg.role("helper")
    env.pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(helper)))
    provision(env)
    env.as_owner(f"GRANT SELECT, TRUNCATE ON orders TO {helper} WITH GRANT OPTION")
    env.as_owner(f"GRANT ALL ON alembic_version TO {helper} WITH GRANT OPTION")
    with env.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(helper)))
        conn.execute(sql.SQL("GRANT SELECT, TRUNCATE ON orders, alembic_version TO {}").format(sql.Identifier(env.role)))
    assert planned(env) == []
    res = drift(env)
    assert res.exit_code == 4
    detail = " ".join(c.detail for c in res.checks)
    assert f"public.orders (TRUNCATE; granted by {helper}: revoke as them)" in " ".join(
        o for f in res.data["findings"] for o in f["objects"])
    assert "deny-listed" in detail
    notes = " ".join(n for s in commands.plan(env.project(), "staging", environ=env.environ).steps for n in s.notes)
    assert f"public.alembic_version is reachable by {env.role} granted by {helper}" in notes


def test_plan_settles_with_create_granted_to_public(env):
    as_su(env, "GRANT CREATE ON SCHEMA public TO PUBLIC")
    with pytest.raises(CheckFailed) as err:          # a role that can run DDL is not provisioned
        provision(env)
    assert err.value.exit_code == 4 and "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in err.value.message
    res = commands.plan(env.project(), "staging", environ=env.environ)
    grants_step = [c.summary for s in res.steps if s.step == "grants" for c in s.changes]
    assert grants_step == []         # REVOKE … FROM the role could not take PUBLIC's CREATE away
    res = drift(env)
    assert res.exit_code == 4
    assert any("can CREATE objects in schema public through PUBLIC" in c.detail
               and "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in c.detail for c in res.checks)
    as_su(env, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    provision(env)
    settled(env)


def test_drift_says_what_the_probe_could_not_look_at_and_never_calls_it_a_pass(su_env):
    env = su_env
    provision(env)
    as_su(env, "REVOKE CREATE ON SCHEMA public FROM {owner}")      # the owner can no longer create tables
    res = drift(env)
    assert res.data["probe"]["status"] == "inconclusive"
    assert [(c.name, c.status) for c in res.checks] == [("probe", "inconclusive")]
    assert any("no creator can create tables in any covered schema" in m for m in res.messages)
    assert res.exit_code == 0          # the catalog comparison passed; nothing is drift
