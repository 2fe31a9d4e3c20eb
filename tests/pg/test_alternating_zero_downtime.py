"""Zero downtime, measured (issue 18 item 4): an app-like client connects with the URL from its
dotenv file every 50 ms and holds one long session, across `rotate` on the local platform with a
restart command the client answers (tests/app_client.py). `alternating`: no attempt fails and the
long session never errs. `single`: every attempt with the old URL after the password changed
fails, and the count is reported."""

from __future__ import annotations

from runbook import commands
from tests.app_client import RESTART, AppClient
from tests.pg.conftest import make_env
from tests.pg.test_alternating import _logins_dropped_first, alternate  # noqa: F401


def rotate(env):
    res = commands.rotate(env.project(), "staging", yes=True, environ=env.environ)
    assert res.status == "ok", res.messages
    return res


def test_alternating_rotate_fails_no_connection_attempt(pg, tmp_path):
    env = make_env(pg, tmp_path, admin="createrole")
    alternate(env)
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    alternate(env, restart=RESTART)          # the app runs from here on, and answers its restart
    a, b = f"{env.role}_a", f"{env.role}_b"
    with AppClient(env.dir) as app:
        rotate(env)
        rotate(env)
    assert app.failures == []
    assert app.long_errors == []
    assert app.long_users == [a, b, a]
    assert {x.generation for x in app.attempts} == {0, 1, 2}
    # the old worker's last request after each restart request was served on the old login
    assert [x.user for x in app.attempts if x.generation == 0][-1] == a


def test_single_rotate_cuts_off_every_attempt_with_the_old_url(pg, tmp_path, record_property, capsys):
    env = make_env(pg, tmp_path, admin="createrole")
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    env.rewrite(restart=RESTART)             # the app runs from here on, and answers its restart
    with AppClient(env.dir) as app:
        rotate(env)
    old = [x for x in app.attempts if x.generation == 0]
    new = [x for x in app.attempts if x.generation == 1]
    failed = app.failures
    record_property("single_rotation_failed_attempts", len(failed))
    with capsys.disabled():
        print(f"\nsingle rotation: {len(failed)} of {len(app.attempts)} connection attempts failed")
    # what single implies: once the password changed, every attempt with the old URL fails (at
    # least the old worker's last one, made after the restart was asked for), and none after
    assert failed and all(x.generation == 0 and "password authentication failed" in x.error for x in failed)
    first = old.index(failed[0])
    assert all(x.error is not None for x in old[first:])
    assert new and all(x.error is None for x in new)
    assert app.long_errors == []            # the open session outlives the password change
