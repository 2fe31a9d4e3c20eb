"""The environment lock through PgBouncer: runs started together, a run that was SIGKILLed, and
a pooler that hands a server connection on without resetting it. Real processes throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from runbook.locks import lock_key
from tests.pooler.bouncer import POOL_ADMIN, POOL_ADMIN_PASSWORD
from tests.pooler.conftest import bouncer_for, make_pooled_env

# the restart step holds the run (and its lock) until the test lets it go: no timing involved
HOLD = "sh -c 'touch started; while [ ! -e go ]; do sleep 0.05; done'"


def start(env, *args: str) -> subprocess.Popen:
    environ = {**os.environ, **env.environ, "NO_COLOR": "1", "CI": "true"}
    return subprocess.Popen([sys.executable, "-m", "runbook.cli", *args], cwd=env.dir, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def wait_for(what, done, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_three_concurrent_provisions_through_a_transaction_pooler_are_all_refused(pg, tmp_path, bouncer_pool):
    env = make_pooled_env(pg, tmp_path, bouncer_for(bouncer_pool, pg.rc, "transaction"))
    procs = [start(env, "provision", "--env", "staging", "--yes") for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [2, 2, 2], outs
    for out, err in outs:
        assert "transaction-mode pooler" in err and "interrupted" not in out + err
    assert env.advisory_locks() == []
    assert env.pg.execute("SELECT to_regnamespace('runbook')")[0][0] is None


@pytest.mark.parametrize("mode", ["session", "mixed"])
def test_three_concurrent_provisions_one_works_the_others_exit_5_naming_it(pg, tmp_path, bouncer_pool, mode):
    env = make_pooled_env(pg, tmp_path, bouncer_for(bouncer_pool, pg.rc, mode), restart=HOLD)
    procs = [start(env, "provision", "--env", "staging", "--yes") for _ in range(3)]
    try:
        # two of them must end while the third holds the lock (it waits for `go`)
        wait_for("two runs to give up", lambda: sum(p.poll() is not None for p in procs) == 2, 180)
        assert len([r for r in env.advisory_locks() if r[1]]) == 1
    finally:
        (env.dir / "go").touch()
    outs = [p.communicate(timeout=180) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 5, 5], outs
    for code, (out, err) in zip(codes, outs):
        assert "interrupted" not in out + err
        if code == 5:
            assert "locked by another run" in err and "runbook:provision" in err, err
    assert env.advisory_locks() == []       # released by the winner itself, at once
    assert env.pg.execute("SELECT status FROM runbook.runs") == [("ok",)]


@pytest.mark.parametrize("mode", ["session", "mixed"])
def test_a_sigkilled_run_leaves_no_lock_held(pg, tmp_path, bouncer_pool, mode):
    # mixed: the app's URL goes through the transaction pool, the tool's session through the
    # session pool; PgBouncer resets the dead client's server connection (DISCARD ALL, which
    # includes pg_advisory_unlock_all) or closes it mid-transaction
    env = make_pooled_env(pg, tmp_path, bouncer_for(bouncer_pool, pg.rc, mode), restart=HOLD)
    run = start(env, "provision", "--env", "staging", "--yes")
    try:
        wait_for("the run to reach its restart step", lambda: (env.dir / "started").exists() or run.poll() is not None)
        assert run.poll() is None, run.communicate()
        assert [granted for _, granted in env.advisory_locks()] == [True]
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
    # PgBouncer notices the closed client asynchronously; the server connection stays open
    wait_for("the dead run's lock to go", lambda: env.advisory_locks() == [], 30)
    env.rewrite(restart="true")
    again = start(env, "provision", "--env", "staging", "--yes")
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    assert env.advisory_locks() == []


def _console(b, query: str) -> list[tuple]:
    """PgBouncer's admin console speaks only the simple query protocol: libpq's PQexec."""
    with psycopg.connect(b.dsn(POOL_ADMIN, POOL_ADMIN_PASSWORD, "pgbouncer"), autocommit=True) as conn:
        res = conn.pgconn.exec_(query.encode())
        return [tuple((res.get_value(r, c) or b"").decode() for c in range(res.nfields)) for r in range(res.ntuples)]


def test_a_pooler_that_does_not_reset_server_connections_is_refused_not_shared(pg, tmp_path, bouncer_pool):
    # server_reset_query = '' keeps a departed client's session state, advisory locks included,
    # on the server connection; the lock is re-entrant per server session, so the next run
    # would "take" it on top of the dead one's and both would think they hold it
    b = bouncer_for(bouncer_pool, pg.rc, "session",
                    settings={"server_reset_query": "", "default_pool_size": "2", "admin_users": POOL_ADMIN})
    env = make_pooled_env(pg, tmp_path, b)
    key = lock_key("raptor", "staging")
    spare = psycopg.connect(env.admin_dsn, autocommit=True)
    spare.execute("SELECT 1")
    dead = psycopg.connect(env.admin_dsn, autocommit=True)
    dead.execute("SELECT pg_advisory_lock(%s)", (key,))       # a client that leaves without unlocking
    spare.close()
    dead.close()                       # released last: PgBouncer hands it out first (LIFO)
    wait_for("the bouncer to see both clients go",
             lambda: not [r for r in _console(b, "SHOW CLIENTS") if pg.dbname in r], 30)
    assert [granted for _, granted in env.advisory_locks()] == [True]
    run = start(env, "provision", "--env", "staging", "--yes")
    out, err = run.communicate(timeout=180)
    assert run.returncode == 2, err
    assert "already holds staging's lock" in err and "server_reset_query" in err, err
    assert env.pg.execute("SELECT to_regnamespace('runbook')")[0][0] is None
    assert env.pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (env.role,))[0][0] == 0
