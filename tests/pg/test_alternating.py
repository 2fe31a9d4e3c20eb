"""Alternating rotation (`role.rotation: alternating`) on real PostgreSQL (18 embedded, 15 Debian):
a NOLOGIN group role holds the grants, two marked logins take turns, and the old login is
invalidated only once the app's sessions on it have ended."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from runbook import commands
from runbook.errors import DrainTimeout, Refused
from tests.pg.conftest import make_env
from tests.projects import dotenv, spec_dict, write_project


def alternating_env(pg, tmp_path, *, admin: str = "superuser", **kw):
    env = make_env(pg, tmp_path, admin=admin, **kw)
    alternate(env, **kw)
    return env


def alternate(env, **kw) -> None:
    data = spec_dict(env.role, owner=env.owner, **kw)
    data["role"]["rotation"] = "alternating"
    data["role"]["connection_limit"] = 20
    write_project(env.dir, data)


def run(env, verb: str, **kw):
    return getattr(commands, verb)(env.project(), "staging", yes=True, environ=env.environ, **kw)


def login_state(env) -> dict[str, tuple[bool, bool]]:
    """role → (can log in, has members) for the group and both logins."""
    rows = env.pg.execute(
        "SELECT r.rolname, r.rolcanlogin, r.rolconnlimit FROM pg_roles r WHERE r.rolname IN (%s, %s, %s) ORDER BY 1",
        (env.role, f"{env.role}_a", f"{env.role}_b"))
    return {name: (login, limit) for name, login, limit in rows}


def app_user(env) -> str:
    with env.app_conn() as conn:
        conn.execute("INSERT INTO orders (total) VALUES (1)")
        return conn.execute("SELECT current_user").fetchone()[0]


@pytest.fixture(autouse=True)
def _logins_dropped_first(pg):
    # the logins' memberships in the group were granted by the test's CREATEROLE admin: drop the
    # logins before the pg fixture drops roles in name order (the admin would come first)
    yield
    for (name,) in pg.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s OR rolname LIKE %s",
                              (f"%\\_{pg.suffix}\\_a", f"%\\_{pg.suffix}\\_b")):
        pg.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture(params=["superuser", "createrole"])
def alt_env(request, pg, tmp_path):
    return alternating_env(pg, tmp_path, admin=request.param)


def test_provision_makes_the_group_and_one_current_login(alt_env):
    env = alt_env
    res = run(env, "provision")
    assert res.status == "ok", res.messages
    a, b = f"{env.role}_a", f"{env.role}_b"
    assert login_state(env) == {env.role: (False, -1), a: (True, 20)}
    assert app_user(env) == a
    members = env.pg.execute("SELECT m.rolname FROM pg_auth_members x JOIN pg_roles g ON g.oid = x.roleid "
                             "JOIN pg_roles m ON m.oid = x.member WHERE g.rolname = %s", (env.role,))
    assert (a,) in members
    # grants stay on the group: nothing names the login
    grantees = {r[0] for r in env.pg.execute(
        "SELECT DISTINCT grantee FROM information_schema.role_table_grants WHERE table_name = 'orders'")}
    assert env.role in grantees and a not in grantees
    assert run(env, "provision").status == "unchanged"


def test_rotate_twice_moves_a_to_b_to_a_and_verifies_from_the_app(alt_env):
    env = alt_env
    run(env, "provision")
    a, b = f"{env.role}_a", f"{env.role}_b"
    first = run(env, "rotate")
    assert first.status == "ok", first.messages
    assert app_user(env) == b
    assert login_state(env) == {env.role: (False, -1), a: (False, 20), b: (True, 20)}
    verify = next(s for s in first.steps if s.step == "verify")
    assert verify.verdict.status == "pass" and b in verify.verdict.detail
    second = run(env, "rotate")
    assert second.status == "ok", second.messages
    assert app_user(env) == a
    assert login_state(env)[b][0] is False and login_state(env)[a][0] is True
    # the journal says which login is current
    events = env.pg.execute("SELECT data::jsonb->>'current_login' FROM runbook.events WHERE step = 'drain' "
                            "AND kind = 'result' ORDER BY id")
    assert [e[0] for e in events] == [a, b, a]
    assert run(env, "drift").status == "ok"
    diag = commands.diagnose(env.project(), "staging", environ=env.environ)
    assert diag.status == "ok", [c.detail for c in diag.checks]
    assert any(a in c.detail for c in diag.checks if c.name == "role")


def test_a_session_on_the_old_login_holds_the_rotation_half_way(pg, tmp_path):
    env = alternating_env(pg, tmp_path)
    data = spec_dict(env.role, owner=env.owner)
    data["role"]["rotation"] = "alternating"
    data["settings"] = {"drain_timeout": "1s"}
    write_project(env.dir, data)
    run(env, "provision")
    a, b = f"{env.role}_a", f"{env.role}_b"
    held = env.app_conn()          # an app process that has not let go of the old login
    try:
        with pytest.raises(DrainTimeout) as stopped:
            run(env, "rotate")
        assert "half-way" in stopped.value.message and a in stopped.value.message
        assert stopped.value.exit_code == 3
        assert dotenv(env.dir)["RAPTOR_APP_DATABASE_URL"].startswith(f"postgresql://{b}:")
        assert login_state(env)[a][0] is True            # the old login keeps its password
        held.execute("SELECT 1")                          # and its session is untouched
        with psycopg.connect(env.pg.tcp_dsn(a, "x"), autocommit=True) if False else env.app_conn() as fresh:
            assert fresh.execute("SELECT current_user").fetchone()[0] == b
    finally:
        held.close()
    again = run(env, "rotate")          # converges: finishes this rotation, does not start another
    assert again.status == "ok", again.messages
    assert app_user(env) == b
    assert login_state(env)[a][0] is False and login_state(env)[b][0] is True


def test_single_role_converts_to_alternating_without_cutting_the_app_off(pg, tmp_path):
    env = make_env(pg, tmp_path, admin="createrole")
    assert run(env, "provision").status == "ok"
    assert app_user(env) == env.role
    alternate(env)
    res = run(env, "provision")
    assert res.status == "ok", res.messages
    a = f"{env.role}_a"
    assert app_user(env) == a
    assert login_state(env) == {env.role: (False, -1), a: (True, 20)}
    assert run(env, "provision").status == "unchanged"
    assert run(env, "rotate").status == "ok"
    assert app_user(env) == f"{env.role}_b"


def test_retire_removes_both_logins_and_the_group(alt_env):
    env = alt_env
    run(env, "provision")
    run(env, "rotate")
    env.as_owner("SELECT 1")
    res = run(env, "retire")
    assert res.status == "ok", res.messages
    assert login_state(env) == {}


def test_an_unmarked_login_name_is_refused_changing_nothing(pg, tmp_path):
    env = alternating_env(pg, tmp_path)
    run(env, "provision")
    b = f"{env.role}_b"
    env.pg.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'planted-pw-123'").format(sql.Identifier(b)))
    before = dotenv(env.dir)
    with pytest.raises(Refused) as refused:
        run(env, "rotate")
    assert b in refused.value.message and "did not create" in refused.value.message
    assert "\n" not in refused.value.message
    assert dotenv(env.dir) == before
    assert login_state(env)[f"{env.role}_a"][0] is True


def test_a_login_the_owner_made_a_member_of_something_is_refused(pg, tmp_path):
    env = alternating_env(pg, tmp_path)
    run(env, "provision")
    a = f"{env.role}_a"
    env.pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(env.owner), sql.Identifier(a)))
    before = dotenv(env.dir)
    with pytest.raises(Refused) as refused:
        run(env, "rotate")
    assert env.owner in refused.value.message and a in refused.value.message
    assert dotenv(env.dir) == before
    assert login_state(env)[f"{env.role}_b"] if f"{env.role}_b" in login_state(env) else True
    assert f"{env.role}_b" not in login_state(env)


def test_rotation_is_left_out_of_the_digest(pg, tmp_path):
    env = make_env(pg, tmp_path)
    before = env.project().role.digest()
    alternate(env)
    data = spec_dict(env.role, owner=env.owner)
    data["role"]["connection_limit"] = 20
    write_project(env.dir, data)
    single_limit = env.project().role.digest()
    alternate(env)
    assert env.project().role.digest() == single_limit
    assert before != single_limit       # the connection limit is part of what the role may do


def test_drift_sees_the_idle_login_and_fix_repairs_it(alt_env):
    env = alt_env
    run(env, "provision")
    run(env, "rotate")                      # a is idle now, b current
    a = f"{env.role}_a"
    (grantor,) = env.pg.execute("SELECT m.grantor::regrole::text FROM pg_auth_members m WHERE m.roleid = %s::regrole "
                                "AND m.member = %s::regrole", (env.role, a))[0]
    env.pg.execute(sql.SQL("REVOKE {} FROM {} GRANTED BY {}").format(
        sql.Identifier(env.role), sql.Identifier(a), sql.SQL(grantor)))
    env.pg.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 3").format(sql.Identifier(a)))
    found = commands.drift(env.project(), "staging", environ=env.environ)
    assert found.status != "ok"
    details = " ".join(f["detail"] for f in found.data["findings"])
    assert f"login {a} is not a member of {env.role}" in details and "CONNECTION LIMIT 3" in details
    diag = commands.diagnose(env.project(), "staging", environ=env.environ)
    assert any(c.status == "fail" and a in c.detail for c in diag.checks)
    fixed = commands.drift(env.project(), "staging", fix=True, yes=True, environ=env.environ)
    assert fixed.exit_code == 0, fixed.messages
    assert commands.drift(env.project(), "staging", environ=env.environ).status == "ok"
    assert login_state(env)[a] == (False, 20)           # still idle: fixed, not logged in
    assert run(env, "rotate").status == "ok"
    assert app_user(env) == a


def test_plan_shows_the_group_the_logins_and_the_drain(alt_env):
    env = alt_env
    planned = commands.plan(env.project(), "staging", environ=env.environ)
    text = [c.summary for s in planned.steps for c in s.changes]
    assert any(t.startswith(f"create group role {env.role} ") for t in text)
    assert any(t.startswith(f"create login role {env.role}_a") for t in text)
    assert not env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (env.role,))
    run(env, "provision")
    rotation = commands.plan(env.project(), "staging", environ=env.environ, playbook="rotate")
    text = [c.summary for s in rotation.steps for c in s.changes]
    assert any(t.startswith(f"set a new password for {env.role}_b") or t.startswith(f"create login role {env.role}_b")
               for t in text), text
    assert any(t.startswith(f"invalidate {env.role}_a's password") for t in text), text
    assert login_state(env)[f"{env.role}_a"][0] is True and f"{env.role}_b" not in login_state(env)


def test_status_names_the_current_login(pg, tmp_path):
    env = alternating_env(pg, tmp_path)
    run(env, "provision")
    run(env, "rotate")
    rows = commands.status(env.project(), environ=env.environ).data["environments"]
    assert rows[0]["role"] == f"present (current login {env.role}_b)"
