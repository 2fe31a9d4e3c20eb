"""SIGKILL after each side effect of an alternating rotate (before its result is journalled):
the rerun converges with exactly one current login, the one the app's URL names."""

from __future__ import annotations

import signal

import pytest

from runbook.engine import fault_environ
from tests.pg.conftest import make_env
from tests.pg.test_alternating import _logins_dropped_first, alternate, app_user, login_state  # noqa: F401
from tests.projects import dotenv
from tests.reliability.test_crash_and_locks import cli

ROTATE_STEPS = ["rotate_password", "url", "restart", "drain"]


@pytest.mark.parametrize("step", ROTATE_STEPS)
def test_alternating_rotate_killed_after_each_side_effect_converges(pg, tmp_path, step):
    env = make_env(pg, tmp_path, admin="createrole", restart="true")
    alternate(env, restart="true")
    assert cli(env, "provision", "--env", "staging", "--yes").returncode == 0
    a, b = f"{env.role}_a", f"{env.role}_b"
    died = cli(env, "rotate", "--env", "staging", "--yes", extra=fault_environ(step))
    assert died.returncode == -signal.SIGKILL
    rerun = cli(env, "rotate", "--env", "staging", "--yes")
    assert rerun.returncode == 0, rerun.stderr
    state = login_state(env)
    live = [name for name in (env.role, a, b) if state.get(name, (False,))[0]]
    assert live == [b]                        # one current login, and the rotation was finished, not restarted
    assert app_user(env) == b
    assert dotenv(env.dir)["RAPTOR_APP_DATABASE_URL"].startswith(f"postgresql://{b}:")
    assert cli(env, "drift", "--env", "staging").returncode == 0
    # the journal ends the story with b current
    last = env.pg.execute("SELECT data::jsonb->>'current_login' FROM runbook.events WHERE kind = 'result' "
                          "AND data::jsonb ? 'current_login' ORDER BY id DESC LIMIT 1")
    assert last == [(b,)]


def test_cli_drain_timeout_is_one_line_exit_3_with_progress_and_the_rerun_finishes(pg, tmp_path):
    env = make_env(pg, tmp_path, admin="superuser")
    alternate(env)
    assert cli(env, "provision", "--env", "staging", "--yes").returncode == 0
    a, b = f"{env.role}_a", f"{env.role}_b"
    held = env.app_conn()                  # a worker nobody restarted, still on the old login
    try:
        out = cli(env, "rotate", "--env", "staging", "--yes", "--drain-timeout", "1s")
        assert out.returncode == 3, out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "half-way" in errors[0] and f"1 session(s) of {a} still open" in errors[0]
        assert f"staging: sessions of {a}: 1 open" in out.stderr          # the progress display, plain
        assert "Traceback" not in out.stderr
        diag = cli(env, "diagnose", "--env", "staging")
        said = " ".join((diag.stderr + diag.stdout).split())       # the display wraps long lines
        assert f"a rotation to {b} is half-way" in said, said
        held.execute("SELECT 1")
    finally:
        held.close()
    rerun = cli(env, "rotate", "--env", "staging", "--yes", "--output", "json")
    assert rerun.returncode == 0, rerun.stderr
    assert app_user(env) == b and login_state(env)[a][0] is False
    assert cli(env, "rotate", "--env", "staging", "--yes", "--drain-timeout", "soon").returncode == 2
