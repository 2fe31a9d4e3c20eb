"""`roles:` with three roles, each `rotation: alternating`, on Heroku against the fake Platform and
Data APIs backed by real PostgreSQL: every role is a pair of credentials attached under its own
URL variable. Provisioned, verified from each role's side through the config var the app receives,
rotated one role at a time, drift per role, retired. A migrator (`member_of`) cannot be expressed
with credentials (Heroku makes and grants a credential's role; migrations run as the add-on's
default credential, the owner) and is refused at plan time whatever the rotation."""

from __future__ import annotations

import psycopg
import pytest

from runbook import commands
from runbook import project as projects
from runbook.errors import Refused
from tests.logins import login_fails
from tests.providers.heroku.conftest import ADDON, APP, FLAG, ROLES_ENV, ROLES_SETTINGS
from tests.providers.three_roles import (
    APP_URL, CI_URL, RO_URL, check_app, check_catalog_only, check_readonly, diagnosed_clean_roles, login,
    roles_block, write_roles_project,
)



def _alternating(block):
    return {name: {**entry, "rotation": "alternating"} for name, entry in block.items()}


def _user(url: str) -> str:
    with login(url) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def test_three_alternating_roles_as_three_pairs_of_credentials(fake, pg, tmp_path, three_roles):
    app, ro, ci = three_roles
    path = write_roles_project(tmp_path, _alternating(roles_block(app, ro, flag=FLAG, ci=ci)), ROLES_ENV, app="raxx",
                               settings=ROLES_SETTINGS)
    environ = {**fake.environ(), "HOME": str(tmp_path)}
    addon_id = fake.addon(ADDON)["id"]
    credentials = f"/postgres/v0/databases/{addon_id}/credentials"
    kinds = ((app, APP_URL, check_app), (ro, RO_URL, check_readonly), (ci, CI_URL, check_catalog_only))

    res = commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    assert res.status == "ok", res.messages
    posts = [(r.method, r.path, r.body) for r in fake.mutating()]
    config = fake.config_vars(APP)
    for role, var, check in kinds:
        for login_name in (f"{role}_a", f"{role}_b"):
            assert ("POST", credentials, {"name": login_name}) in posts
        assert ("POST", "/addon-attachments", {"addon": addon_id, "app": APP, "name": var.removesuffix("_URL"),
                                               "namespace": f"credential:{role}_a"}) in posts
        check(config[var], f"{role}_a")               # from the role's side, with what the app receives
        # the idle login of each role holds exactly its role's grants too
        check(pg.tcp_dsn(f"{role}_b", fake.credential_password(ADDON, f"{role}_b")), f"{role}_b")
    assert config[FLAG] == "1"
    diagnosed_clean_roles(commands.diagnose(projects.load(path), "staging", environ=environ),
                          {app: True, ro: False, ci: False})
    assert commands.drift(projects.load(path), "staging", environ=environ).status == "ok"

    # rotate each role in turn: only its attachment moves, its old credential stops working
    for role, var, check in kinds:
        before = fake.config_vars(APP)
        fake.clear()
        rot = commands.rotate(projects.load(path), "staging", yes=True, environ=environ, role=role)
        assert rot.status == "ok", (rot.messages, [(s.step, s.status, s.verdict) for s in rot.steps])
        after = fake.config_vars(APP)
        check(after[var], f"{role}_b")
        assert login_fails(before[var])
        assert {k: v for k, v in after.items() if k != var} == {k: v for k, v in before.items() if k != var}
        rotated = [r.path for r in fake.mutating() if r.path.endswith("/credentials_rotation")]
        assert rotated == [f"{credentials}/{role}_a/credentials_rotation"]
    status = commands.status(projects.load(path), environ=environ)
    for role in (app, ro, ci):
        assert f"current login {role}_b" in str(status.data), status.data

    # drift per role: a grant taken from one role's idle login shows up for that role only
    pg.execute(f'REVOKE SELECT ON orders FROM "{ro}_a"')
    found = commands.drift(projects.load(path), "staging", environ=environ, role=ro)
    assert found.status == "check-failed"
    assert any(f"{ro}_a" in f["detail"] for f in found.data["findings"]), found.data["findings"]
    assert commands.drift(projects.load(path), "staging", environ=environ, role=app).status == "ok"
    assert commands.drift(projects.load(path), "staging", environ=environ, role=ci).status == "ok"
    fixed = commands.drift(projects.load(path), "staging", fix=True, yes=True, environ=environ, role=ro)
    assert fixed.status == "ok", fixed.messages
    assert commands.drift(projects.load(path), "staging", environ=environ).status == "ok"

    # retire every role: both credentials of each go, with their attachments
    fake.clear()
    ret = commands.retire(projects.load(path), "staging", yes=True, environ=environ)
    assert ret.status == "ok", ret.messages
    deleted = {r.path for r in fake.mutating() if r.method == "DELETE" and r.path.startswith(credentials)}
    assert deleted == {f"{credentials}/{r}_{x}" for r in (app, ro, ci) for x in "ab"}
    left = fake.config_vars(APP)
    assert not {APP_URL, RO_URL, CI_URL} & set(left)
    logins = [f"{r}_{x}" for r in (app, ro, ci) for x in "ab"]
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (logins,)) == [(0,)]


def test_an_alternating_migrator_is_refused_at_plan_time_changing_nothing(fake, pg, tmp_path, three_roles):
    app, ro, _ = three_roles
    mig = pg.role("raxx_mig")
    owner = psycopg.conninfo.conninfo_to_dict(fake.owner_url(ADDON))["user"]
    block = _alternating(roles_block(app, ro, flag=FLAG, migrator=mig, member_of=owner))
    path = write_roles_project(tmp_path, block, ROLES_ENV, app="raxx", settings=ROLES_SETTINGS)
    environ = {**fake.environ(), "HOME": str(tmp_path)}
    fake.clear()
    for verb in (commands.plan, commands.provision):
        with pytest.raises(Refused) as err:
            verb(projects.load(path), "staging", **({"yes": True} if verb is commands.provision else {}),
                 environ=environ)
        assert "member_of needs SQL roles" in err.value.message and "owner credential" in err.value.message
        assert "\n" not in err.value.message
    assert fake.mutating() == []
    made = [app, ro, mig, *(f"{n}_{x}" for n in (app, ro, mig) for x in "ab")]
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (made,)) == [(0,)]
