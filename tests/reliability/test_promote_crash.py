"""`promote` killed (SIGKILL, a real subprocess) right after each of its side effects and before
the result is journalled; the rerun must end where an uninterrupted promotion ends, and the
journal and approvals must tell the story: the sign-off, the run that died (its intent without a
result), the run that finished.

Staging is a fresh database on the test cluster whose soak is made to pass by moving its start
back (as tests/pg/test_soak_promote.py does); prod is its own embedded cluster (roles are
cluster-wide, as they are across real environments), one per worker, a fresh database per test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from runbook import commands
from runbook.engine import fault_environ
from tests.pg.conftest import make_env, prod_database
from tests.projects import dotenv

PROMOTE_STEPS = ["role", "grants", "url", "flag on", "restart"]
RESTARTS = "restarts-prod.log"
SHORT_SOAK = {"duration": "3s", "checkpoints": ["1s", "2s", "3s"], "valid_for": "1h", "checks": ["diagnose", "drift"]}
SIGN_OFF = "Ada Lovelace"

# the crash is in the tool, not in PostgreSQL: one version is enough (tests/pg runs both)
pytestmark = pytest.mark.parametrize("cluster", ["pg18"], indirect=True)


@pytest.fixture
def promotable(pg, tmp_path, prod_cluster):
    """Staging provisioned with a passed soak; prod an empty database owned like staging's, on its
    own cluster (prod_cluster in tests/conftest.py)."""
    env = make_env(pg, tmp_path, admin="superuser", soak=SHORT_SOAK)
    with prod_database(prod_cluster, env, "CREATE TABLE orders (id bigserial PRIMARY KEY, total int)",
                       "CREATE TABLE alembic_version (version_num text PRIMARY KEY)") as dbname:
        prod = {"prod": {"provider": "local",
                         "database": {"embedded": str(prod_cluster.data_dir), "database": dbname},
                         "app": {"dotenv": ".runbook/prod.env", "restart": f"echo restarted >> {RESTARTS}"},
                         "promote_from": "staging"}}
        env.rewrite(soak=SHORT_SOAK, extra_envs=prod)
        assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
        pg.execute("UPDATE runbook.soaks SET started_at = started_at - 60 WHERE status = 'running'")
        assert commands.soak(env.project(), "staging", environ=env.environ).exit_code == 0
        yield env, prod_cluster.admin_conninfo(dbname)


def promote(env, *extra: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, **env.environ, "NO_COLOR": "1", "CI": "true", **(environ or {})}
    return subprocess.run([sys.executable, "-m", "runbook.cli", "promote", "--env", "prod", "--sign-off", SIGN_OFF,
                           "--yes", *extra], cwd=env.dir, env=run_env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def prod_state(env, prod_dsn: str) -> dict:
    with psycopg.connect(prod_dsn, autocommit=True) as conn:
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (env.role,)).fetchone()[0]
    values = dotenv(env.dir, "prod")
    url = values.get("RAPTOR_APP_DATABASE_URL")
    with psycopg.connect(url, autocommit=True) as app:
        app.execute("INSERT INTO orders (total) VALUES (1)")
        login_as = app.execute("SELECT current_user").fetchone()[0]
        try:
            app.execute("SELECT * FROM alembic_version")
            deny = "reachable"
        except psycopg.errors.InsufficientPrivilege:
            deny = "denied"
    restarts = Path(env.dir) / RESTARTS
    return {
        "roles": roles, "drift": commands.drift(env.project(), "prod", environ=env.environ).status,
        "restarts": restarts.read_text().count("restarted") if restarts.exists() else 0,
        "flag": values.get("FLAG_RAPTOR_APP_ROLE_SEPARATION"), "login_as": login_as, "deny_list": deny,
        "url_lines": (Path(env.dir) / ".runbook" / "prod.env").read_text().count("RAPTOR_APP_DATABASE_URL="),
    }


def uninterrupted(env) -> dict:
    return {"roles": 1, "drift": "ok", "restarts": 1, "flag": "1", "login_as": env.role, "deny_list": "denied",
            "url_lines": 1}


def journal(prod_dsn: str) -> tuple[list[tuple], list[list[tuple]], list[tuple]]:
    with psycopg.connect(prod_dsn, autocommit=True) as conn:
        runs = conn.execute("SELECT id, command, status FROM runbook.runs ORDER BY id").fetchall()
        events = [conn.execute("SELECT step, kind FROM runbook.events WHERE run_id = %s ORDER BY id", (r[0],)).fetchall()
                  for r in runs]
        approvals = conn.execute("SELECT sign_off, from_env, forced, soak_id IS NOT NULL FROM runbook.approvals "
                                 "ORDER BY id").fetchall()
    return runs, events, approvals


@pytest.mark.parametrize("step", PROMOTE_STEPS)
def test_promote_killed_after_each_side_effect_converges_on_rerun(promotable, step):
    env, prod_dsn = promotable
    died = promote(env, environ=fault_environ(step))
    assert died.returncode == -signal.SIGKILL, died.stderr

    rerun = promote(env, "--output", "json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert any("was interrupted" in m and step in m for m in report["messages"]), report["messages"]

    # the end state of an uninterrupted promotion. Killed after "flag on", the rerun finds nothing
    # left to change yet still owes the restart (the journal holds the config change with no
    # restart after it). Killed after the restart itself, nobody can tell whether it happened: a
    # restart is paid at least once, so that case restarts twice.
    want = uninterrupted(env)
    if step == "restart":
        want["restarts"] = 2
    assert prod_state(env, prod_dsn) == want

    # the story: two sign-offs (one per invocation, each past the same passed soak), the dead run
    # marked interrupted with its last intent unanswered, and the run that finished
    runs, events, approvals = journal(prod_dsn)
    assert [(r[1], r[2]) for r in runs] == [("promote", "interrupted"), ("promote", "ok")]
    assert approvals == [(SIGN_OFF, "staging", False, True)] * 2
    dead, done = events
    assert dead[0] == ("gate", "info") and dead[-1] == (step, "intent")
    assert (step, "result") not in dead
    assert done[:2] == [("resume", "info"), ("gate", "info")]       # it noticed the dead run first
    # what the dead run never reached, the rerun did; the step it died in was re-observed
    later = PROMOTE_STEPS[PROMOTE_STEPS.index(step) + 1:]
    assert all((s, "result") in done for s in later), done
    # the staging soak that opened the gate is untouched by the crash
    assert commands.soak(env.project(), "staging", environ=env.environ).exit_code == 0


def test_uninterrupted_promotion_for_reference(promotable):
    env, prod_dsn = promotable
    done = promote(env)
    assert done.returncode == 0, done.stderr
    assert prod_state(env, prod_dsn) == uninterrupted(env)
    runs, events, approvals = journal(prod_dsn)
    assert [(r[1], r[2]) for r in runs] == [("promote", "ok")] and approvals == [(SIGN_OFF, "staging", False, True)]
    assert [e for e in events[0] if e[1] == "result"] == [(s, "result") for s in PROMOTE_STEPS]


def test_the_app_password_never_reaches_the_prod_server_log(promotable, prod_cluster):
    env, _ = promotable
    assert promote(env, environ=fault_environ("role")).returncode == -signal.SIGKILL
    assert promote(env).returncode == 0
    password = psycopg.conninfo.conninfo_to_dict(dotenv(env.dir, "prod")["RAPTOR_APP_DATABASE_URL"])["password"]
    assert password and password not in prod_cluster.log_file.read_text(errors="replace")
