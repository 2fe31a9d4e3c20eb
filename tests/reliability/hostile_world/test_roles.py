"""Items 1, 2, 3 and 7 of issue 12: the tool manages only a role it made (or was told to adopt),
never the owner, the admin, a superuser or a role with members, and never another environment's."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from runbook import commands
from runbook.errors import ConfigError, Refused
from runbook.project import load
from tests.logins import create_login
from tests.projects import dotenv, spec_dict, write_project
from tests.reliability.hostile_world.conftest import admin_user, seed, world


def _provision(env, **kw):
    return commands.provision(env.project(), "staging", yes=True, environ=env.environ, **kw)


def _retire(env):
    return commands.retire(env.project(), "staging", yes=True, environ=env.environ)


def _one_line(exc) -> str:
    assert "\n" not in exc.message
    return exc.message


def test_role_named_as_the_owner_is_refused_by_the_file(env):
    """Item 1: role.name equal to role.owner cannot even be loaded."""
    write_project(env.dir, spec_dict(env.owner, owner=env.owner))
    with pytest.raises(ConfigError) as err:
        load(env.path)
    assert "is the owner" in _one_line(err.value)


def test_retire_of_the_owner_drops_nothing(env):
    """Item 1 as reproduced: the owner named as the role, the owner left to default. retire is
    refused before any statement; the schema, the tables and their rows are all still there."""
    seed(env)
    data = spec_dict(env.owner)           # no role.owner: the tool cannot tell from the file
    write_project(env.dir, data)
    before = world(env.pg)
    with pytest.raises(Refused) as err:
        _retire(env)
    assert env.owner in _one_line(err.value) and "did not create" in err.value.message
    assert world(env.pg) == before


@pytest.mark.parametrize("kind", ["plain", "owner-default", "superuser", "has-members", "admin"])
def test_provision_never_takes_over_a_role_it_did_not_make(env, kind, canary_password):
    """Item 2: an existing role of the spec's name is refused, with or without role.adopt, unless
    it is a plain role adopted on purpose; its password verifier, attributes and memberships stay."""
    seed(env)
    adopt = kind != "plain"               # adopt: true must not help in any of the others
    name = env.role
    if kind == "plain":
        create_login(env.pg, name, canary_password)
    elif kind == "owner-default":
        name = env.owner
    elif kind == "superuser":
        create_login(env.pg, name, canary_password, "SUPERUSER")
    elif kind == "has-members":
        create_login(env.pg, name, canary_password)
        member = env.pg.role("analyst")
        create_login(env.pg, member, canary_password)
        env.pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(name), sql.Identifier(member)))
    elif kind == "admin":
        name = admin_user(env)
    data = spec_dict(name, owner=None if kind == "owner-default" else env.owner)
    if kind == "owner-default":
        # the owner defaults to the admin; the owner role itself is the one named
        data["role"].pop("owner", None)
    data["role"]["adopt"] = adopt
    write_project(env.dir, data)
    if name == "postgres":                # the superuser admin's name is refused by the file already
        with pytest.raises(ConfigError, match="reserved"):
            load(env.path)
        return
    before = world(env.pg, name)
    with pytest.raises(Refused) as err:
        _provision(env)
    message = _one_line(err.value)
    expected = {"plain": "role.adopt: true", "owner-default": "it is an owner", "superuser": "superuser",
                "has-members": "is granted to", "admin": "admin user"}[kind]
    assert name in message and expected in message, message
    assert world(env.pg, name) == before
    assert dotenv(env.dir).get("RAPTOR_APP_DATABASE_URL") is None


def test_adopt_takes_over_a_plain_role_and_marks_it(env, canary_password):
    """role.adopt: true on a plain login: password reset, privileges to the spec, and the role
    carries the mark from then on (so rotate and retire accept it)."""
    create_login(env.pg, env.role, canary_password)
    admin = admin_user(env)
    data = spec_dict(env.role, owner=env.owner)
    data["role"]["adopt"] = True
    write_project(env.dir, data)
    if env.pg.major >= 16 and "admin" in admin:
        # PostgreSQL 16+: a CREATEROLE admin alters only roles it has ADMIN OPTION on; refused first, one line
        with pytest.raises(Refused) as err:
            _provision(env)
        assert "WITH ADMIN OPTION" in _one_line(err.value)
        env.pg.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE").format(
            sql.Identifier(env.role), sql.Identifier(admin)))
    write_project(env.dir, data)
    res = _provision(env)
    assert res.status == "ok"
    comment = env.pg.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                             (env.role,))[0][0]
    assert comment.startswith("pg-runbook managed role ") and '"env":"staging"' in comment
    with env.app_conn() as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == env.role
    assert _retire(env).status == "ok"
    assert not env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (env.role,))


def test_a_second_environment_on_the_same_database_is_refused(env):
    """Item 3: qa points at staging's database with the same role section; its provision is
    refused naming the holder, and staging's role, password and URL are untouched."""
    data = spec_dict(env.role, owner=env.owner, extra_envs={
        "qa": {"provider": "local", "database": {"dsn_env": "RB_TEST_ADMIN_DSN"}, "app": {"dotenv": ".runbook/qa.env"}}})
    write_project(env.dir, data)
    _provision(env)
    before = world(env.pg)
    with pytest.raises(Refused) as err:
        commands.provision(env.project(), "qa", yes=True, environ=env.environ)
    assert "belongs to app raptor, environment staging" in _one_line(err.value)
    assert world(env.pg) == before
    with env.app_conn() as conn:          # staging's app still logs in with its URL
        assert conn.execute("SELECT current_user").fetchone()[0] == env.role
    with pytest.raises(Refused):
        commands.retire(env.project(), "qa", yes=True, environ=env.environ)
    assert world(env.pg) == before


def test_retire_never_drops_objects_the_role_came_to_own(env):
    """retire's DROP OWNED runs only after REASSIGN OWNED left the role owning nothing: a table
    handed to the app role behind the tool's back goes to the owner with its rows, not away."""
    seed(env)
    _provision(env)
    env.pg.execute(sql.SQL("ALTER TABLE orders OWNER TO {}").format(sql.Identifier(env.role)))
    assert _retire(env).status == "ok"
    owner, count = env.pg.execute("SELECT pg_get_userbyid(relowner), (SELECT count(*) FROM orders) "
                                  "FROM pg_class WHERE relname = 'orders'")[0]
    assert (owner, count) == (env.owner, 5)


def test_memberships_and_attributes_behind_the_tools_back_are_drift(env):
    """Item 7: the app role made a member of a CREATEROLE role and given CREATEDB: diagnose and
    drift report both (exit 4), and `drift --fix` takes them away (or, where PostgreSQL 16+
    does not let a CREATEROLE admin revoke a membership it does not administer, refuses in one
    line naming the statement, changing nothing)."""
    _provision(env)
    group = env.pg.role("role_makers")
    env.pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(sql.Identifier(group)))
    env.pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(env.role)))
    env.pg.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(env.role)))

    diag = commands.diagnose(env.project(), "staging", environ=env.environ)
    assert diag.exit_code == 4
    assert any(group in c.detail for c in diag.checks if c.status == "fail"), [c.detail for c in diag.checks]
    drift = commands.drift(env.project(), "staging", environ=env.environ)
    assert drift.exit_code == 4
    kinds = {f["kind"] for f in drift.data["findings"]}
    assert {"membership", "role"} <= kinds, drift.data["findings"]

    before = world(env.pg)
    try:
        fixed = commands.drift(env.project(), "staging", fix=True, yes=True, environ=env.environ)
    except Refused as exc:
        # PostgreSQL 16+: a CREATEROLE admin may neither revoke a membership in a role it does not
        # administer nor drop an attribute it does not hold itself
        assert env.pg.major >= 16 and "admin" in env.admin_dsn and "run as a superuser" in _one_line(exc)
        assert world(env.pg) == before
        return
    assert fixed.exit_code == 0, fixed.checks
    member_of, createdb = env.pg.execute(
        "SELECT ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), "
        "rolcreatedb FROM pg_roles r WHERE rolname = %s", (env.role,))[0]
    assert (member_of, createdb) == ([], False)
    assert commands.drift(env.project(), "staging", environ=env.environ).exit_code == 0


def test_reprovision_revokes_a_membership_in_the_owner(env):
    """Item 7, re-provision: a membership granted behind the tool's back is a planned change."""
    _provision(env)
    env.pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(env.owner), sql.Identifier(env.role)))
    plan = commands.plan(env.project(), "staging", environ=env.environ)
    assert any(env.owner in c.summary for s in plan.steps for c in s.changes if s.step == "role")
    before = world(env.pg)
    try:
        assert _provision(env).status == "ok"
    except Refused as exc:
        # PostgreSQL 16+: the CREATEROLE admin is a member of the owner without ADMIN OPTION on it
        assert env.pg.major >= 16 and "admin" in env.admin_dsn and "REVOKE" in _one_line(exc)
        assert world(env.pg) == before
        return
    assert not env.pg.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (env.role, env.owner))[0][0]


def test_retire_of_the_admin_is_refused(env):
    """Item 2: retire with the admin's name would set the admin NOLOGIN; refused, nothing changed.
    (The superuser admin here is `postgres`, a name the file refuses already.)"""
    name = admin_user(env)
    write_project(env.dir, spec_dict(name, owner=env.owner))
    if name == "postgres":
        with pytest.raises(ConfigError, match="reserved"):
            load(env.path)
        return
    before = world(env.pg)
    with pytest.raises(Refused) as err:
        _retire(env)
    assert "admin user" in _one_line(err.value)
    assert world(env.pg) == before
