"""Zero downtime through a real PgBouncer in session mode (issue 18 item 4): the app's URL goes
through the bouncer, as does the tool's own session. PgBouncer keeps a server connection of the
old login in its pool after the app's client left, until server_idle_timeout: the drain counts
it (it is a live session of the old login), so the bouncer here closes idle ones after 1 s."""

from __future__ import annotations

import pytest

from runbook import commands
from tests.app_client import RESTART, AppClient
from tests.pg.test_alternating import _logins_dropped_first  # noqa: F401
from tests.pooler.conftest import bouncer_for, make_pooled_env
from tests.projects import spec_dict, write_project

IDLE = {"server_idle_timeout": "1"}


def configure(env, *, rotation: str, restart: str | None = None) -> None:
    data = spec_dict(env.role, owner=env.owner, restart=restart)
    data["role"]["rotation"] = rotation
    data["settings"] = {"drain_timeout": "2m"}
    write_project(env.dir, data)


def rotate(env):
    res = commands.rotate(env.project(), "staging", yes=True, environ=env.environ)
    assert res.status == "ok", res.messages
    return res


@pytest.mark.parametrize("rotation", ["alternating", "single"])
def test_rotation_through_a_session_pooler(pg, tmp_path, bouncer_pool, rotation):
    b = bouncer_for(bouncer_pool, pg.rc, "session", settings=IDLE)
    env = make_pooled_env(pg, tmp_path, b)
    configure(env, rotation=rotation)
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    configure(env, rotation=rotation, restart=RESTART)
    with AppClient(env.dir) as app:
        assert f":{b.port}/" in app.url         # the app goes through the bouncer
        rotate(env)
        if rotation == "alternating":
            rotate(env)
    if rotation == "alternating":
        assert app.failures == [] and app.long_errors == []
        assert app.long_users == [f"{env.role}_a", f"{env.role}_b", f"{env.role}_a"]
    else:
        failed = app.failures
        assert failed and all(x.generation == 0 for x in failed)
        assert all(x.error is None for x in app.attempts if x.generation == 1)
        print(f"\nsingle rotation through pgbouncer: {len(failed)} of {len(app.attempts)} attempts failed")
