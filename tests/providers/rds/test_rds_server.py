"""The RDS-like server the rds tests run on (rds_server.py): its role layout is RDS's, and
rds.restrict_password_commands is enforced, so a tool that forgets rds_password fails here as
it would on RDS."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from providers.rds import RdsDatabase
from runbook import commands, project as projects
from runbook.errors import RunbookError
from tests.logins import create_login
from tests.providers.conftest import new_login, role_exists, write_project
from tests.providers.rds.conftest import (
    FLAG, REGION, URL_VAR, create_instance, create_parameter_group, outside_rds_superuser,
    restrict_password_commands,
)
from tests.providers.rds.rds_server import GUARD, RESTRICTED_MESSAGE, guarded_query, guarded_statement, restricted, statements


# -- which statements the front guards -------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "CREATE ROLE app LOGIN PASSWORD 'SCRAM-SHA-256$4096:x'",
    "create user app with password 'x'",
    "ALTER ROLE app WITH PASSWORD 'x' VALID UNTIL '2030-01-01'",
    'ALTER USER "App" PASSWORD NULL',
    "ALTER ROLE app VALID UNTIL 'infinity'",
    "ALTER GROUP g /* comment */ PASSWORD 'x'",
    "CREATE ROLE app LOGIN IN ROLE rds_iam PASSWORD E'it\\'s'",
])
def test_password_commands_are_restricted(text):
    [(_, words)] = statements(text)
    assert restricted(words)


@pytest.mark.parametrize("text", [
    "CREATE ROLE app NOLOGIN",
    "CREATE ROLE password LOGIN",                          # a role named password
    'ALTER ROLE "x PASSWORD y" NOLOGIN',
    "ALTER ROLE app SET password_encryption = 'scram-sha-256'",
    "ALTER ROLE app IN DATABASE d SET search_path = password",
    "CREATE USER MAPPING FOR app SERVER s OPTIONS (password 'x')",
    "SELECT 'ALTER ROLE app PASSWORD x'",
    "DO $$BEGIN ALTER ROLE app PASSWORD 'x'; END$$",       # inside a body: see the module's docstring
    "-- ALTER ROLE app PASSWORD 'x'\nSELECT 1",
    "COMMENT ON ROLE app IS 'password VALID'",
])
def test_other_statements_pass_untouched(text):
    assert not any(restricted(words) for _, words in statements(text))
    assert guarded_query(text) == text and guarded_statement(text) == text


def test_the_guard_goes_before_each_restricted_statement_of_a_query():
    text = "BEGIN; CREATE ROLE a NOLOGIN; ALTER ROLE a PASSWORD 'x;y'; COMMIT"
    assert guarded_query(text) == f"BEGIN; CREATE ROLE a NOLOGIN;{GUARD}; ALTER ROLE a PASSWORD 'x;y'; COMMIT"


# -- the layout ------------------------------------------------------------------------------------

pg_tests = pytest.mark.pg


@pg_tests
def test_the_layout_is_rds(pg, master):
    assert pg.execute("SELECT rolname FROM pg_roles WHERE rolsuper") == [("rdsadmin",)]   # the only superuser
    assert pg.execute("SELECT rolname FROM pg_roles WHERE oid = 10") == [("rdsadmin",)]  # the bootstrap one
    assert pg.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles WHERE rolname = %s",
        (master.name,)) == [(False, True, True, True)]
    held = pg.execute("""
        SELECT g.rolname, m.admin_option FROM pg_auth_members m
        JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member
        WHERE r.rolname = 'rds_superuser' ORDER BY 1""")
    assert held == [("pg_signal_backend", True), ("rds_iam", True), ("rds_password", True),
                    ("rds_replication", True)]
    assert pg.execute("SELECT pg_has_role(%s, 'rds_superuser', 'MEMBER')", (master.name,)) == [(True,)]


# -- the restriction, through the front --------------------------------------------------------------

def _verifier(conn, name: str) -> str:
    return conn.pgconn.encrypt_password(b"not-a-canary", name.encode(), b"scram-sha-256").decode()


def _create_with_password(dsn: str, name: str, *, prepare: bool = False) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(_verifier(conn, name))), prepare=prepare)


@pg_tests
@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_only_rds_password_members_may_set_passwords(pg, master, prepare):
    restrict_password_commands(pg)
    admin = new_login(pg, "admin", "not-a-canary-pw", "CREATEROLE")        # not in rds_password
    pg.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(pg.dbname), sql.Identifier(admin.name)))

    refused = pg.role("refused")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
        _create_with_password(pg.tcp_dsn(admin.name, admin.password), refused, prepare=prepare)
    assert err.value.diag.message_primary == RESTRICTED_MESSAGE
    assert not role_exists(pg, refused)

    with psycopg.connect(pg.tcp_dsn(admin.name, admin.password), autocommit=True) as conn:
        made = pg.role("nopassword")
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(made)))   # no password: allowed
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL 'infinity'").format(sql.Identifier(made)))

    allowed = pg.role("allowed")
    _create_with_password(pg.tcp_dsn(master.name, master.password), allowed, prepare=prepare)   # rds_superuser
    assert role_exists(pg, allowed)


@pg_tests
def test_the_guard_fails_the_transaction_and_follows_set_role(pg, master):
    restrict_password_commands(pg)
    helper = pg.role("helper")
    pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(sql.Identifier(helper)))
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(helper), sql.Identifier(master.name)))
    target = pg.role("target")
    with psycopg.connect(pg.tcp_dsn(master.name, master.password)) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(helper)))    # current_user: not in rds_password
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("CREATE ROLE {} PASSWORD {}").format(
                sql.Identifier(target), sql.Literal(_verifier(conn, target))))
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")                                            # as a server error does
        conn.rollback()
    assert not role_exists(pg, target)


@pg_tests
def test_unrestricted_servers_let_anyone_with_createrole_set_passwords(pg):
    restrict_password_commands(pg, on=False)
    admin = new_login(pg, "admin", "not-a-canary-pw", "CREATEROLE")
    made = pg.role("made")
    _create_with_password(pg.tcp_dsn(admin.name, admin.password), made)
    assert role_exists(pg, made)


@pg_tests
def test_a_tool_that_forgot_rds_password_fails_on_this_server(aws, pg, master, tmp_path, aws_environ, monkeypatch):
    """Without the tool's own preflight check, provision reaches the server's refusal: the test
    world, not the tool, is what says no."""
    create_parameter_group("raptor-pg", **{"rds.restrict_password_commands": "1"})
    create_instance(parameter_group="raptor-pg", master=master, pg=pg)
    outside_rds_superuser(pg, master)
    monkeypatch.setattr(RdsDatabase, "preflight_sql", lambda self, conn: [])
    role = pg.role("raptor_app")
    project = projects.load(write_project(tmp_path, role, {
        "provider": "rds",
        "database": {"instance": "raptor-staging", "region": REGION, "sslmode": "disable", "database": pg.dbname,
                     "connect": {"host": "127.0.0.1", "port": pg.port}},
        "app": {"cluster": "raptor", "service": "web", "url_store": "ssm", "url_name": "/raptor/staging/url",
                "flag_parameter": "/raptor/staging/flag"},
    }, url_var=URL_VAR, flag=FLAG))
    with pytest.raises(RunbookError) as err:
        commands.provision(project, "staging", yes=True, environ=aws_environ)
    assert RESTRICTED_MESSAGE in str(err.value)
    assert not role_exists(pg, role)
