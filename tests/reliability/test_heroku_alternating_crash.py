"""SIGKILL (a real `runbook` subprocess) after each side effect of a Heroku alternating rotate, and
of the conversion of a `single` credential to the pair, before the result is journalled; the rerun
converges with exactly one current login: the app's attachment names a credential whose password
works, the journal says so, and the old credential is rotated (or, converted, destroyed) only
after its sessions drained. Against the contract fake (tests/providers/heroku/fake_heroku.py) and
the real PostgreSQL behind it.

Steps whose plan is empty on Heroku make no side effect to die after: `restart` (the attachment's
release restarts the dynos) and, converting, `flag` (already on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest
import yaml

from runbook import commands
from runbook import project as projects
from runbook.engine import fault_environ
from tests.logins import login_fails
from tests.providers.heroku.conftest import ADDON, APP, URL_VAR, fake  # noqa: F401
from tests.providers.heroku.test_engine_e2e import project  # noqa: F401

# the crash is in the tool, not in PostgreSQL: one version is enough (tests/providers runs both)
pytestmark = pytest.mark.parametrize("cluster", ["pg18"], indirect=True)

ROTATE_STEPS = ["rotate_password", "url", "drain"]
CONVERT_STEPS = ["role", "grants", "url", "drain"]


def cli(path, environ, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, **environ, "NO_COLOR": "1", "CI": "true", **(extra or {})}
    return subprocess.run([sys.executable, "-m", "runbook.cli", *args], cwd=path.parent, env=run_env,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def _alternating(path) -> None:
    data = yaml.safe_load(path.read_text())
    data["role"]["rotation"] = "alternating"
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _app_user(fake) -> str:
    """Log in with exactly what the app receives; a write proves the grants."""
    with psycopg.connect(fake.config_vars(APP)[URL_VAR], autocommit=True, connect_timeout=5) as conn:
        conn.execute("INSERT INTO orders (total) VALUES (1)")
        return conn.execute("SELECT current_user").fetchone()[0]


def _current(pg) -> str:
    rows = pg.execute("SELECT data::jsonb->>'current_login' FROM runbook.events WHERE kind = 'result' "
                      "AND data::jsonb ? 'current_login' ORDER BY id DESC LIMIT 1")
    return rows[0][0]


def _calls(fake) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in fake.mutating()]


@pytest.fixture
def setup(fake, pg, tmp_path, project):
    role, path = project
    environ = {**fake.environ(), "HOME": str(tmp_path)}
    pg.roles.extend([f"{role}_a", f"{role}_b"])        # the fake makes them as real roles: dropped after the test
    credentials = f"/postgres/v0/databases/{fake.addon(ADDON)['id']}/credentials"
    return role, path, environ, credentials


@pytest.mark.parametrize("step", ROTATE_STEPS)
def test_heroku_alternating_rotate_killed_after_each_side_effect_converges(fake, pg, setup, step):
    role, path, environ, credentials = setup
    a, b = f"{role}_a", f"{role}_b"
    _alternating(path)
    assert cli(path, environ, "provision", "--env", "staging", "--yes").returncode == 0
    old_url = fake.config_vars(APP)[URL_VAR]
    fake.clear()
    died = cli(path, environ, "rotate", "--env", "staging", "--yes", extra=fault_environ(step))
    assert died.returncode == -signal.SIGKILL, died.stderr
    rerun = cli(path, environ, "rotate", "--env", "staging", "--yes")
    assert rerun.returncode == 0, rerun.stderr

    assert _app_user(fake) == b                # the attachment names b, and b's password works
    assert login_fails(old_url)                # a was invalidated (rotated through the API)
    assert _current(pg) == b                   # the journal ends the story with b current
    calls = _calls(fake)
    attach = calls.index(("POST", "/addon-attachments"))
    rotations = [i for i, c in enumerate(calls) if c[1].endswith("/credentials_rotation")]
    assert rotations and all(calls[i] == ("POST", f"{credentials}/{a}/credentials_rotation") for i in rotations)
    assert min(rotations) > attach             # never before the app was moved off it
    # one attachment of the role, and it is b's
    mine = [x for x in fake.attachments(APP) if (x.get("namespace") or "").startswith("credential:")]
    assert [x["namespace"] for x in mine] == [f"credential:{b}"]
    assert cli(path, environ, "drift", "--env", "staging").returncode == 0
    fake.clear()
    assert cli(path, environ, "provision", "--env", "staging", "--yes").returncode == 0
    assert fake.mutating() == []               # converged: nothing left to do


@pytest.mark.parametrize("step", CONVERT_STEPS)
def test_heroku_conversion_killed_after_each_side_effect_converges(fake, pg, setup, step):
    role, path, environ, credentials = setup
    a, b = f"{role}_a", f"{role}_b"
    assert cli(path, environ, "provision", "--env", "staging", "--yes").returncode == 0
    single_url = fake.config_vars(APP)[URL_VAR]
    _alternating(path)
    fake.clear()
    died = cli(path, environ, "provision", "--env", "staging", "--yes", extra=fault_environ(step))
    assert died.returncode == -signal.SIGKILL, died.stderr
    # whatever the kill left, the app's URL still logs in
    assert _app_user(fake) in (role, a)
    rerun = cli(path, environ, "provision", "--env", "staging", "--yes")
    assert rerun.returncode == 0, rerun.stderr

    assert _app_user(fake) == a
    assert login_fails(single_url)             # the single credential is gone
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(0,)]
    assert _current(pg) == a
    calls = _calls(fake)
    attach = calls.index(("POST", "/addon-attachments"))
    assert calls.index(("DELETE", f"{credentials}/{role}")) > attach
    assert not any(p.endswith("/credentials_rotation") for _, p in calls)
    assert [x["namespace"] for x in fake.attachments(APP)
            if (x.get("namespace") or "").startswith("credential:")] == [f"credential:{a}"]
    with psycopg.connect(pg.tcp_dsn(b, fake.credential_password(ADDON, b)), autocommit=True) as idle:
        assert idle.execute("SELECT count(*) FROM orders").fetchone()[0] >= 1     # the idle one holds the grants
    assert commands.drift(projects.load(path), "staging", environ=environ).status == "ok"
    fake.clear()
    assert cli(path, environ, "provision", "--env", "staging", "--yes").returncode == 0
    assert fake.mutating() == []
    # and the next rotation moves the app to b
    assert cli(path, environ, "rotate", "--env", "staging", "--yes").returncode == 0
    assert _app_user(fake) == b
