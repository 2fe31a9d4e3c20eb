"""Every command through a real PgBouncer, on PostgreSQL 18 and 15, at PgBouncer's defaults and
with `ignore_startup_parameters = options`.

Session pooling (and the admin on session pooling with the app's URL on transaction pooling):
everything works, and the app logs in through exactly the URL it was given. Transaction pooling
for the tool's own session: every command that needs that session is refused with exit 2
before any change; rollback, which needs only the app side and the journal, works.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

from runbook import commands
from runbook.pooler import PoolerRefused
from tests.pooler.bouncer import POOL_ADMIN, POOL_ADMIN_PASSWORD
from tests.pooler.conftest import bouncer_for, make_pooled_env
from tests.projects import dotenv

SETTINGS = pytest.mark.parametrize("ignore_options", [False, True], ids=["defaults", "ignore-options"])
FLAG = "FLAG_RAPTOR_APP_ROLE_SEPARATION"


def cli(env, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env.environ, "NO_COLOR": "1", "CI": "true"}
    return subprocess.run([sys.executable, "-m", "runbook.cli", *args], cwd=env.dir, env=environ,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def logs_in_as(url: str) -> str:
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        who = conn.execute("SELECT current_user").fetchone()[0]
        # a pooler answered, not the server: the connection's cancel key is the pooler's own
        assert conn.info.backend_pid != conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        return who


def role_count(env) -> int:
    return env.pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (env.role,))[0][0]


@SETTINGS
@pytest.mark.parametrize("mode", ["session", "mixed"])
def test_every_command_works_through_a_session_pooler(pg, tmp_path, bouncer_pool, mode, ignore_options):
    b = bouncer_for(bouncer_pool, pg.rc, mode, ignore_options=ignore_options)
    env = make_pooled_env(pg, tmp_path, b)
    project, environ = env.project(), env.environ

    planned = commands.plan(project, "staging", environ=environ)
    assert planned.status == "planned"
    assert planned.data["pooler"]["mode"] == "session", planned.data
    assert any(m.startswith("pooler: session mode (probe:") for m in planned.messages), planned.messages

    done = commands.provision(project, "staging", yes=True, environ=environ)
    assert (done.exit_code, done.status) == (0, "ok"), done.messages
    assert done.data["pooler"]["mode"] == "session"
    url = env.url()
    assert f"@127.0.0.1:{b.port}/" in url           # the app's URL goes through the bouncer too
    assert logs_in_as(url) == env.role               # on `mixed`, through its transaction pool
    assert env.advisory_locks() == []                # released explicitly, not left to the pooler

    assert commands.diagnose(project, "staging", environ=environ).exit_code == 0
    assert commands.drift(project, "staging", environ=environ).status == "ok"
    env.pg.execute(sql.SQL("REVOKE INSERT ON orders FROM {}").format(sql.Identifier(env.role)))
    assert commands.drift(project, "staging", environ=environ).exit_code == 4
    fixed = commands.drift(project, "staging", fix=True, yes=True, environ=environ)
    assert fixed.exit_code == 0, fixed.messages
    assert env.pg.execute("SELECT has_table_privilege(%s, 'orders', 'INSERT')", (env.role,))[0][0]

    rotated = commands.rotate(project, "staging", yes=True, environ=environ)
    assert rotated.exit_code == 0, rotated.messages
    assert env.url() != url and logs_in_as(env.url()) == env.role
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, prepare_threshold=None).close()   # the old password is gone

    rolled = commands.rollback(project, "staging", yes=True, environ=environ)
    assert rolled.exit_code == 0 and dotenv(env.dir)[FLAG] == "0"
    assert not rolled.data["journal"].startswith("local:")

    retired = commands.retire(project, "staging", yes=True, environ=environ)
    assert retired.exit_code == 0, retired.messages
    assert role_count(env) == 0
    assert env.advisory_locks() == []
    runs = env.pg.execute("SELECT command, status FROM runbook.runs ORDER BY id")
    assert "interrupted" not in [status for _, status in runs], runs


@SETTINGS
def test_a_transaction_pooler_is_refused_for_the_tools_session_before_any_change(pg, tmp_path, bouncer_pool,
                                                                                 ignore_options):
    b = bouncer_for(bouncer_pool, pg.rc, "transaction", ignore_options=ignore_options)
    env = make_pooled_env(pg, tmp_path, b)
    project, environ = env.project(), env.environ
    calls = {
        "plan": lambda: commands.plan(project, "staging", environ=environ),
        "provision": lambda: commands.provision(project, "staging", yes=True, environ=environ),
        "diagnose": lambda: commands.diagnose(project, "staging", environ=environ),
        "drift": lambda: commands.drift(project, "staging", environ=environ),
        "drift --fix": lambda: commands.drift(project, "staging", fix=True, yes=True, environ=environ),
        "rotate": lambda: commands.rotate(project, "staging", yes=True, environ=environ),
        "retire": lambda: commands.retire(project, "staging", yes=True, environ=environ),
    }
    for name, call in calls.items():
        with pytest.raises(PoolerRefused) as refused:
            call()
        text = refused.value.message
        assert refused.value.exit_code == 2, name
        assert "\n" not in text
        assert "transaction-mode pooler (probe:" in text and "direct or session-mode DSN" in text, (name, text)
    # nothing was changed: no role, no journal, no app config, no lock
    assert role_count(env) == 0
    assert env.pg.execute("SELECT to_regnamespace('runbook')")[0][0] is None
    assert dotenv(env.dir) == {}
    assert env.advisory_locks() == []

    # the command line: one line, exit 2
    out = cli(env, "provision", "--env", "staging", "--yes")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "transaction-mode pooler" in out.stderr
    assert "Traceback" not in out.stderr

    # rollback needs no lock and no admin session: the flag goes off, and the journal (one
    # autocommit statement per transaction, nothing prepared) reaches the store through the pooler
    rolled = commands.rollback(project, "staging", yes=True, environ=environ)
    assert rolled.exit_code == 0 and dotenv(env.dir)[FLAG] == "0"
    assert not rolled.data["journal"].startswith("local:"), rolled.data
    assert env.pg.execute("SELECT command, status FROM runbook.runs") == [("rollback", "ok")]


def test_a_declared_session_pooler_that_pools_transactions_is_still_refused(pg, tmp_path, bouncer_pool):
    b = bouncer_for(bouncer_pool, pg.rc, "transaction")
    env = make_pooled_env(pg, tmp_path, b, database={"pooler": "session"})
    with pytest.raises(PoolerRefused, match=r"\(probe: "):
        commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert role_count(env) == 0


def test_a_declared_transaction_pooler_is_refused_without_a_probe(pg, tmp_path, bouncer_pool):
    b = bouncer_for(bouncer_pool, pg.rc, "session")
    env = make_pooled_env(pg, tmp_path, b, database={"pooler": "transaction"})
    with pytest.raises(PoolerRefused, match=r"\(database\.pooler: transaction\)"):
        commands.plan(env.project(), "staging", environ=env.environ)


def test_a_direct_connection_is_told_apart(pg, tmp_path, bouncer_pool):
    b = bouncer_for(bouncer_pool, pg.rc, "session")
    env = make_pooled_env(pg, tmp_path, b)
    environ = {**env.environ, "RB_TEST_ADMIN_DSN": pg.admin_dsn}
    planned = commands.plan(env.project(), "staging", environ=environ)
    assert planned.data["pooler"]["mode"] == "none", planned.data
    assert any(m.startswith("pooler: none (probe:") for m in planned.messages)


def test_verify_fails_with_the_fix_when_the_pooler_refuses_the_new_role(pg, tmp_path, bouncer_pool):
    # a bouncer whose auth_file knows only the admin, and no auth_query: the new role cannot log in

    b = bouncer_for(bouncer_pool, pg.rc, "mixed", auth_file_users={POOL_ADMIN: POOL_ADMIN_PASSWORD})
    env = make_pooled_env(pg, tmp_path, b)
    out = cli(env, "provision", "--env", "staging", "--yes")
    assert out.returncode not in (0, 2, 5), out.stderr
    assert f"the pooler at 127.0.0.1:{b.port} does not accept {env.role}" in out.stderr, out.stderr
    assert "auth_file" in out.stderr
    assert "Traceback" not in out.stderr
    # the role itself is fine (PostgreSQL accepts it directly); it is the pooler that refuses
    password = psycopg.conninfo.conninfo_to_dict(env.url())["password"]
    with psycopg.connect(pg.tcp_dsn(env.role, password)) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == env.role
    diagnosed = commands.diagnose(env.project(), "staging", environ=env.environ)
    assert diagnosed.exit_code == 4
    assert any("does not accept" in c.detail for c in diagnosed.checks if c.status != "pass"), diagnosed.checks


def test_a_due_soak_checkpoint_through_a_transaction_pooler_is_refused_not_failed(pg, tmp_path, bouncer_pool):
    session = bouncer_for(bouncer_pool, pg.rc, "session")
    env = make_pooled_env(pg, tmp_path, session)
    env.rewrite(soak={"duration": "1h", "checkpoints": ["1s"], "checks": ["diagnose", "drift"]})
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).exit_code == 0
    env.pg.execute("UPDATE runbook.soaks SET started_at = started_at - 60 WHERE status = 'running'")
    transaction = bouncer_for(bouncer_pool, pg.rc, "transaction")
    environ = {**env.environ, "RB_TEST_ADMIN_DSN": transaction.dsn(POOL_ADMIN, POOL_ADMIN_PASSWORD, pg.dbname)}
    with pytest.raises(PoolerRefused):
        commands.soak(env.project(), "staging", environ=environ)
    assert env.pg.execute("SELECT count(*) FROM runbook.checkpoints")[0][0] == 0
    assert env.pg.execute("SELECT status FROM runbook.soaks") == [("running",)]
