"""The core lifecycle on real PostgreSQL (18 embedded, 15 Debian), with a superuser admin and
with a CREATEROLE admin that is a member of the owner."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from runbook import commands
from runbook.errors import CheckFailed, Locked
from runbook.locks import lock_key
from tests.projects import dotenv


def provision(env, **kw):
    return commands.provision(env.project(), "staging", yes=True, environ=env.environ, **kw)


def test_provision_creates_a_working_restricted_role(env):
    res = provision(env)
    assert res.status == "ok"
    assert [s.status for s in res.steps] == ["unchanged", "applied", "applied", "applied", "applied", "unchanged", "unchanged"]
    values = dotenv(env.dir)
    assert values["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "1"
    assert (env.dir / ".runbook" / "staging.env").stat().st_mode & 0o777 == 0o600
    with env.app_conn() as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == env.role
        conn.execute("INSERT INTO orders (total) VALUES (42)")           # needs the sequence too
        conn.execute("INSERT INTO customers (name) VALUES ('a')")
        assert conn.execute("SELECT count(*) FROM big_orders").fetchone()[0] == 0
        conn.execute("UPDATE orders SET total = 43")
        conn.execute("DELETE FROM orders")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM alembic_version")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE orders")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE sneaky (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(env.owner)))


def test_second_run_changes_nothing_and_says_so(env):
    provision(env)
    before = dotenv(env.dir)
    again = provision(env)
    assert again.status == "unchanged"
    assert all(s.status == "unchanged" for s in again.steps)
    assert any("nothing changed" in m for m in again.messages)
    assert dotenv(env.dir) == before          # the password was not rotated


def test_plan_changes_nothing(env):
    res = commands.plan(env.project(), "staging", environ=env.environ)
    assert res.status == "planned"
    assert any("CREATE ROLE" in s for s in res.data["sql"])
    assert all("PASSWORD '****'" in s for s in res.data["sql"] if "PASSWORD" in s)
    assert not env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (env.role,))
    assert dotenv(env.dir) == {}


def test_future_tables_are_reachable_through_default_privileges(env):
    provision(env)
    env.as_owner("CREATE TABLE invoices (id serial PRIMARY KEY, amount int)")
    with env.app_conn() as conn:
        conn.execute("INSERT INTO invoices (amount) VALUES (1)")
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 1
    drift = commands.drift(env.project(), "staging", environ=env.environ)
    assert drift.status == "ok", drift.data["findings"]


def test_deny_list_created_later_is_caught_and_fixed(env):
    provision(env)
    # a later migration tool creates its bookkeeping table; default privileges grant it: drift must see it
    env.as_owner("CREATE TABLE schema_migrations (version text)")
    found = commands.drift(env.project(), "staging", environ=env.environ)
    assert found.exit_code == CheckFailed.exit_code
    assert any(f["kind"] == "denied-reachable" for f in found.data["findings"])
    fixed = commands.drift(env.project(), "staging", fix=True, yes=True, environ=env.environ)
    assert fixed.status == "ok"
    with env.app_conn() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM schema_migrations")


def test_missing_deny_listed_table_is_fine(su_env):
    su_env.pg.execute("DROP TABLE alembic_version")
    assert provision(su_env).status == "ok"


def test_drift_after_migration_in_schema_without_default_privileges(env):
    provision(env)
    # the migration runs as another role: the owner's default privileges do not cover its tables
    migrator = env.pg.role("migrator")
    env.pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(migrator)))
    env.pg.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(migrator)))
    env.pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(migrator), sql.Identifier(env.owner)))
    with env.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(migrator)))
        conn.execute("CREATE TABLE shipments (id serial PRIMARY KEY)")
    res = commands.drift(env.project(), "staging", environ=env.environ)
    assert res.exit_code == 4
    unreachable = [f for f in res.data["findings"] if f["kind"] == "unreachable"]
    assert any("public.shipments" in f["objects"] for f in unreachable)
    assert any("public.shipments_id_seq" in f["objects"] for f in unreachable)
    fixed = commands.drift(env.project(), "staging", fix=True, yes=True, environ=env.environ)
    assert fixed.status == "ok", fixed.checks
    with env.app_conn() as conn:
        conn.execute("INSERT INTO shipments DEFAULT VALUES")


def test_new_schema_in_spec_is_granted_on_rerun(su_env):
    provision(su_env)
    su_env.pg.execute(sql.SQL("CREATE SCHEMA billing AUTHORIZATION {}").format(sql.Identifier(su_env.owner)))
    su_env.as_owner("CREATE TABLE billing.ledger (id int)")
    su_env.rewrite(schemas={"public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"], "sequences": ["USAGE", "SELECT"]},
                            "billing": {"tables": ["SELECT"]}})
    res = provision(su_env)
    assert res.status == "ok"
    with su_env.app_conn() as conn:
        conn.execute("SELECT * FROM billing.ledger")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO billing.ledger VALUES (1)")


def test_extra_privileges_are_revoked(su_env):
    provision(su_env)
    su_env.pg.execute(sql.SQL("GRANT TRUNCATE ON orders TO {}").format(sql.Identifier(su_env.role)))
    found = commands.drift(su_env.project(), "staging", environ=su_env.environ)
    assert any(f["kind"] == "extra-privilege" for f in found.data["findings"])
    assert provision(su_env).status == "ok"
    with su_env.app_conn() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("TRUNCATE orders")


def test_broken_url_is_repaired_with_a_new_password(su_env):
    provision(su_env)
    path = su_env.dir / ".runbook" / "staging.env"
    path.write_text(path.read_text().replace("RAPTOR_APP_DATABASE_URL=", "#RAPTOR_APP_DATABASE_URL="))
    diag = commands.diagnose(su_env.project(), "staging", environ=su_env.environ)
    assert [c.status for c in diag.checks] == ["pass", "pass", "fail", "pass"]
    res = provision(su_env)
    assert res.steps[1].changes and "new password" in res.steps[1].changes[0].summary
    with su_env.app_conn() as conn:
        conn.execute("SELECT 1")


def test_diagnose_four_checks_in_order_with_fixes(su_env):
    before = commands.diagnose(su_env.project(), "staging", environ=su_env.environ)
    assert [c.name for c in before.checks] == ["role", "grants", "url", "flag"]
    assert before.exit_code == 4
    assert all(c.fix for c in before.checks if c.status == "fail")
    provision(su_env)
    after = commands.diagnose(su_env.project(), "staging", environ=su_env.environ)
    assert [c.status for c in after.checks] == ["pass"] * 4, after.checks
    assert "****" in after.checks[2].detail


def test_rollback_flips_the_flag_and_keeps_role_and_grants(su_env):
    provision(su_env)
    res = commands.rollback(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert res.status == "ok"
    assert dotenv(su_env.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
    with su_env.app_conn() as conn:          # role and grants stay: roll-forward is one flag
        conn.execute("SELECT * FROM orders")
    again = commands.rollback(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert again.status == "unchanged"


def test_lock_held_by_another_session_exits_5_naming_holder(su_env):
    holder = psycopg.connect(su_env.admin_dsn, autocommit=True, application_name="runbook:provision alice@ops-1 pid 4242")
    try:
        assert holder.execute("SELECT pg_try_advisory_lock(%s)", (lock_key("raptor", "staging"),)).fetchone()[0]
        with pytest.raises(Locked) as info:
            provision(su_env)
        assert info.value.exit_code == 5
        assert "alice@ops-1" in info.value.message
        assert not su_env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (su_env.role,))
    finally:
        holder.close()
    assert provision(su_env).status == "ok"      # the lock went with the session


def test_retire_removes_url_sessions_and_role(env):
    provision(env)
    app = env.app_conn()
    res = commands.retire(env.project(), "staging", yes=True, environ=env.environ)
    assert res.status == "ok", res.steps
    assert "RAPTOR_APP_DATABASE_URL" not in dotenv(env.dir)
    assert not env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (env.role,))
    assert not env.pg.execute("SELECT 1 FROM pg_default_acl d, aclexplode(d.defaclacl) a WHERE a.grantee = 0")
    with pytest.raises(psycopg.OperationalError):
        app.execute("SELECT 1")
    again = commands.retire(env.project(), "staging", yes=True, environ=env.environ)
    assert again.status == "unchanged"


def test_sqlite_state_store(su_env, tmp_path):
    res = provision(su_env, state="sqlite:///state/journal.db")
    assert res.status == "ok"
    assert (su_env.dir / "state" / "journal.db").exists()
    hist = commands.history(su_env.project(), "staging", environ=su_env.environ, state="sqlite:///state/journal.db")
    kinds = [(e["step"], e["kind"]) for e in hist.data["events"]]
    assert ("role", "intent") in kinds and ("role", "result") in kinds
    # nothing went to the database's runbook schema
    assert not su_env.pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'runbook'")


def test_journal_records_intent_before_result_and_app_role_cannot_read_it(su_env):
    provision(su_env)
    rows = su_env.pg.execute("SELECT step, kind FROM runbook.events ORDER BY id")
    steps = [r for r in rows if r[0] == "grants"]
    assert steps[0][1] == "intent" and steps[1][1] == "result"
    with su_env.app_conn() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM runbook.events")


def test_hardened_database_without_public_connect(su_env):
    su_env.pg.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(su_env.pg.dbname)))
    assert provision(su_env).status == "ok"
    with su_env.app_conn() as conn:
        conn.execute("SELECT count(*) FROM orders")
    assert commands.drift(su_env.project(), "staging", environ=su_env.environ).status == "ok"
