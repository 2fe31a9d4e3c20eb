"""The hostile world: the owner of the app's objects (what a compromised app process runs as)
prepares the database, the app's config or the journal, then the operator runs the tool.

The environments are tests/pg/conftest.py's: an owner that owns the app's tables, and an admin
that is either the superuser or a CREATEROLE user that is a member of the owner (the managed
platforms' shape); every test runs on PostgreSQL 18 and 15. `world()` reads everything a refusal
must leave alone, as the superuser sees it, so a test can assert that nothing changed. The
tool's own journal (schema `runbook`, which records the refused run) is left out of it."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from tests.pg.conftest import env, su_env  # noqa: F401  (the same realistic environments)


def world(pg, *extra_roles: str) -> dict[str, Any]:
    """Roles of this test (attributes, password verifiers, comments, settings), memberships,
    relations with owners and ACLs, row counts of the app's tables, database settings."""
    like = f"%\\_{pg.suffix}"
    with pg.connect() as conn:
        roles = conn.execute(
            """SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls,
                      rolconnlimit, rolpassword, rolvaliduntil, shobj_description(oid, 'pg_authid')
               FROM pg_authid WHERE rolname LIKE %s OR rolname = ANY(%s) ORDER BY 1""", (like, list(extra_roles))).fetchall()
        members = conn.execute(
            """SELECT g.rolname, u.rolname, m.admin_option FROM pg_auth_members m
               JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
               WHERE g.rolname LIKE %s OR u.rolname LIKE %s ORDER BY 1, 2""", (like, like)).fetchall()
        relations = conn.execute(
            """SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'runbook') ORDER BY 1, 2""").fetchall()
        schemas = conn.execute(
            """SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace
               WHERE nspname NOT LIKE 'pg\\_%' AND nspname NOT IN ('information_schema', 'runbook') ORDER BY 1""").fetchall()
        defaults = conn.execute("SELECT defaclrole::regrole::text, defaclnamespace, defaclobjtype, defaclacl::text "
                                "FROM pg_default_acl ORDER BY 1, 2, 3").fetchall()
        counts = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", t))).fetchone()[0]
                  for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        settings = conn.execute("SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2").fetchall()
    return {"roles": roles, "members": members, "relations": relations, "schemas": schemas,
            "defaults": defaults, "rows": counts, "settings": settings}


def admin_user(env) -> str:
    with psycopg_connect(env.admin_dsn) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def psycopg_connect(dsn: str):
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def seed(env) -> None:
    """Rows in the owner's tables, so that a drop or a truncate shows."""
    env.as_owner("INSERT INTO orders (total) SELECT g FROM generate_series(1, 5) g")
    env.as_owner("INSERT INTO customers (name) VALUES ('ada'), ('grace')")
    env.as_owner("INSERT INTO alembic_version VALUES ('abc123')")
