"""Crashes between a side effect and its journal entry, runs at the same time, and a lock
holder that was killed: all with real processes on real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runbook import commands
from runbook.engine import fault_environ
from tests.pg.conftest import make_env
from tests.projects import dotenv

PROVISION_STEPS = ["role", "grants", "url", "flag on", "restart"]


def cli(env, *args: str, extra: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env.environ, "NO_COLOR": "1", "CI": "true", **(extra or {})}
    return subprocess.run([sys.executable, "-m", "runbook.cli", *args], cwd=env.dir, env=environ,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def end_state(env) -> dict:
    roles = env.pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (env.role,))[0][0]
    drift = commands.drift(env.project(), "staging", environ=env.environ)
    values = dotenv(env.dir)
    with env.app_conn() as conn:
        who = conn.execute("SELECT current_user").fetchone()[0]
    return {"roles": roles, "drift": drift.status, "flag": values.get("FLAG_RAPTOR_APP_ROLE_SEPARATION"),
            "login_as": who, "url_lines": (env.dir / ".runbook" / "staging.env").read_text().count("RAPTOR_APP_DATABASE_URL=")}


EXPECTED = lambda env: {"roles": 1, "drift": "ok", "flag": "1", "login_as": env.role, "url_lines": 1}


@pytest.mark.parametrize("step", PROVISION_STEPS)
def test_provision_killed_after_each_side_effect_converges_on_rerun(pg, tmp_path, step):
    env = make_env(pg, tmp_path, admin="createrole", restart="true")
    died = cli(env, "provision", "--env", "staging", "--yes", extra=fault_environ(step))
    assert died.returncode == -signal.SIGKILL
    rerun = cli(env, "provision", "--env", "staging", "--yes", "--output", "json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert any("was interrupted" in m and step in m for m in report["messages"]), report["messages"]
    assert end_state(env) == EXPECTED(env)
    # the journal tells the story: the dead run is marked interrupted, its intent has no result
    runs = env.pg.execute("SELECT id, status FROM runbook.runs ORDER BY id")
    assert [r[1] for r in runs] == ["interrupted", "ok"]
    dead = env.pg.execute("SELECT step, kind FROM runbook.events WHERE run_id = %s ORDER BY id", (runs[0][0],))
    assert dead[-1] == (step, "intent")


@pytest.mark.parametrize("step", ["rotate_password", "url"])
def test_rotate_killed_midway_converges(pg, tmp_path, step):
    env = make_env(pg, tmp_path, admin="superuser")
    assert cli(env, "provision", "--env", "staging", "--yes").returncode == 0
    died = cli(env, "rotate", "--env", "staging", "--yes", extra=fault_environ(step))
    assert died.returncode == -signal.SIGKILL
    # after a kill between password change and URL write, the app's URL no longer logs in: the next
    # provision (or rotate) must notice and repair it, not assume
    again = cli(env, "provision", "--env", "staging", "--yes")
    assert again.returncode == 0, again.stderr
    assert end_state(env) == EXPECTED(env)


@pytest.mark.parametrize("step", ["unset_url", "drop_role"])
def test_retire_killed_midway_converges(pg, tmp_path, step):
    env = make_env(pg, tmp_path, admin="createrole")
    assert cli(env, "provision", "--env", "staging", "--yes").returncode == 0
    died = cli(env, "retire", "--env", "staging", "--yes", extra=fault_environ(step))
    assert died.returncode == -signal.SIGKILL
    again = cli(env, "retire", "--env", "staging", "--yes")
    assert again.returncode == 0, again.stderr
    assert not env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (env.role,))
    assert "RAPTOR_APP_DATABASE_URL" not in dotenv(env.dir)


def test_five_concurrent_provisions_one_works_others_exit_5(pg, tmp_path):
    # the restart command holds the winner inside its run until the others have ended (or 60 s),
    # so however loaded the machine, every loser meets the lock rather than a finished run
    release = tmp_path / "release"
    env = make_env(pg, tmp_path, admin="superuser",
                   restart=f"for i in $(seq 1200); do [ -f '{release}' ] && break; sleep 0.05; done")
    environ = {**os.environ, **env.environ, "NO_COLOR": "1", "CI": "true"}
    procs = [subprocess.Popen([sys.executable, "-m", "runbook.cli", "provision", "--env", "staging", "--yes"],
                              cwd=env.dir, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(5)]
    ended: dict[int, float] = {}
    while len(ended) < len(procs):
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.monotonic()
        if len(ended) >= len(procs) - 1:
            release.touch()
        time.sleep(0.02)
    codes = [p.returncode for p in procs]
    errs = [p.stderr.read() for p in procs]
    assert sorted(codes) == [0, 5, 5, 5, 5], (codes, errs)
    winner = codes.index(0)
    for i, code in enumerate(codes):
        if code == 5:
            assert "locked by another run" in errs[i] and "runbook:provision" in errs[i], errs[i]
            assert ended[i] < ended[winner]           # they did not queue behind the lock
    assert env.pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (env.role,))[0][0] == 1


def test_lock_of_a_killed_process_is_freed_by_the_server(pg, tmp_path):
    env = make_env(pg, tmp_path, admin="superuser", restart="sleep 60")
    environ = {**os.environ, **env.environ, "NO_COLOR": "1", "CI": "true"}
    holder = subprocess.Popen([sys.executable, "-m", "runbook.cli", "provision", "--env", "staging", "--yes"],
                              cwd=env.dir, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not env.pg.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"):
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        blocked = cli(env, "provision", "--env", "staging", "--yes")
        assert blocked.returncode == 5
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 30
    while env.pg.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"):
        assert time.monotonic() < deadline, "the server kept a dead session's lock"
        time.sleep(0.1)
    env.rewrite(restart="true")
    rerun = cli(env, "provision", "--env", "staging", "--yes")
    assert rerun.returncode == 0, rerun.stderr
    assert end_state(env) == EXPECTED(env)
