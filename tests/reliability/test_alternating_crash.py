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
