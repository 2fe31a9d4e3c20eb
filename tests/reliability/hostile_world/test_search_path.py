"""Item 4 of issue 12: the owner owns the database, so it can `ALTER DATABASE … SET search_path`
to a schema of its own ahead of pg_catalog and plant look-alikes of the built-ins the tool calls.
Every session the tool opens (admin, lock, journal, the app-side login and verify) pins
search_path first, so none of them ever runs: the owner gains nothing."""

from __future__ import annotations

from psycopg import sql

from runbook import commands

# (signature, return type, the real call) of built-ins the tool's SQL uses
SHADOWS = [
    ("pg_try_advisory_lock(bigint)", "boolean", "pg_catalog.pg_try_advisory_lock($1)"),
    ("pg_advisory_xact_lock(integer, integer)", "void", "pg_catalog.pg_advisory_xact_lock($1, $2)"),
    ("pg_has_role(name, name, text)", "boolean", "pg_catalog.pg_has_role($1, $2, $3)"),
    ("pg_has_role(name, text, text)", "boolean", "pg_catalog.pg_has_role($1, $2, $3)"),
    ("has_table_privilege(oid, oid, text)", "boolean", "pg_catalog.has_table_privilege($1, $2, $3)"),
    ("has_schema_privilege(oid, oid, text)", "boolean", "pg_catalog.has_schema_privilege($1, $2, $3)"),
    ("pg_get_userbyid(oid)", "name", "pg_catalog.pg_get_userbyid($1)"),
    ("shobj_description(oid, name)", "text", "pg_catalog.shobj_description($1, $2)"),
    ("current_setting(text)", "text", "pg_catalog.current_setting($1)"),
    ("current_database()", "name", "pg_catalog.current_database()"),
    ("now()", "timestamptz", "pg_catalog.now()"),
    ("pg_terminate_backend(integer)", "boolean", "pg_catalog.pg_terminate_backend($1)"),
]


def plant(env) -> None:
    """What the owner does, as the owner: a schema of look-alikes that record who called them and
    try to give the owner CREATEROLE with the caller's powers, first on the database's search_path."""
    pg = env.pg
    pg.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(pg.dbname), sql.Identifier(env.owner)))
    env.as_owner("CREATE SCHEMA evil")
    env.as_owner("CREATE TABLE evil.calls (who text, fn text)")
    env.as_owner("GRANT USAGE ON SCHEMA evil TO PUBLIC")
    env.as_owner("GRANT INSERT ON evil.calls TO PUBLIC")
    grab = sql.SQL("ALTER ROLE {} CREATEROLE").format(sql.Identifier(env.owner)).as_string(None)
    for signature, returns, real in SHADOWS:
        name = signature.split("(")[0]
        env.as_owner(f"""
            CREATE FUNCTION evil.{signature} RETURNS {returns} LANGUAGE plpgsql AS $body$
            BEGIN
              INSERT INTO evil.calls VALUES (current_user, '{name}');
              BEGIN EXECUTE '{grab.replace("'", "''")}'; EXCEPTION WHEN OTHERS THEN NULL; END;
              {"PERFORM " + real + "; RETURN" if returns == "void" else "RETURN " + real};
            END $body$""")
    env.as_owner(sql.SQL("ALTER DATABASE {} SET search_path = evil, pg_catalog, public").format(
        sql.Identifier(pg.dbname)).as_string(None))


def test_the_owners_search_path_runs_none_of_its_functions(env):
    plant(env)
    project = env.project()
    assert commands.provision(project, "staging", yes=True, environ=env.environ).status == "ok"
    assert commands.diagnose(project, "staging", environ=env.environ).exit_code == 0
    assert commands.drift(project, "staging", environ=env.environ).exit_code == 0
    commands.soak(project, "staging", environ=env.environ)
    assert commands.rotate(project, "staging", yes=True, environ=env.environ).status == "ok"
    assert commands.retire(project, "staging", yes=True, environ=env.environ).status == "ok"

    calls = env.pg.execute("SELECT who, fn FROM evil.calls")
    createrole = env.pg.execute("SELECT rolcreaterole FROM pg_roles WHERE rolname = %s", (env.owner,))[0][0]
    assert (calls, createrole) == ([], False)


def test_the_planted_functions_would_run_without_the_pin(env):
    """The trap is real: a session that does not pin search_path calls the owner's look-alike."""
    import psycopg

    plant(env)
    with psycopg.connect(env.admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_try_advisory_lock(%s)", (2 ** 40,))
    assert env.pg.execute("SELECT fn FROM evil.calls") == [("pg_try_advisory_lock",)]
