"""Several roles on Heroku against the fake Platform and Data APIs backed by real PostgreSQL: each
role is a credential of the add-on, attached under its own URL variable; member_of cannot be
expressed (Heroku makes and grants a credential's role) and is refused at plan time."""

from __future__ import annotations

import psycopg
import pytest

from runbook import commands
from runbook import project as projects
from runbook.errors import Refused
from tests.providers.heroku.conftest import ADDON, APP, FLAG, ROLES_ENV, ROLES_SETTINGS
from tests.providers.three_roles import (
    APP_URL, CI_URL, RO_URL, check_app, check_catalog_only, check_readonly, diagnosed_clean_roles, login,
    roles_block, write_roles_project,
)



def test_three_roles_as_three_credentials(fake, pg, tmp_path, three_roles):
    app, ro, ci = three_roles
    path = write_roles_project(tmp_path, roles_block(app, ro, flag=FLAG, ci=ci), ROLES_ENV, app="raxx",
                               settings=ROLES_SETTINGS)
    environ = {**fake.environ(), "HOME": str(tmp_path)}
    addon_id = fake.addon(ADDON)["id"]
    credentials = f"/postgres/v0/databases/{addon_id}/credentials"

    res = commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    assert res.status == "ok", res.messages
    posts = [(r.method, r.path, r.body) for r in fake.mutating()]
    for role, var in ((app, APP_URL), (ro, RO_URL), (ci, CI_URL)):
        assert ("POST", credentials, {"name": role}) in posts
        assert ("POST", "/addon-attachments", {"addon": addon_id, "app": APP, "name": var.removesuffix("_URL"),
                                               "namespace": f"credential:{role}"}) in posts
    config = fake.config_vars(APP)
    assert config[FLAG] == "1"
    check_app(config[APP_URL], app)
    check_readonly(config[RO_URL], ro)
    check_catalog_only(config[CI_URL], ci)
    diagnosed_clean_roles(commands.diagnose(projects.load(path), "staging", environ=environ),
                          {app: True, ro: False, ci: False})
    assert commands.drift(projects.load(path), "staging", environ=environ).status == "ok"

    # rotate one role: only its credential turns over
    before = fake.config_vars(APP)
    rot = commands.rotate(projects.load(path), "staging", yes=True, environ=environ, role=ro)
    assert rot.status == "ok"
    after = fake.config_vars(APP)
    assert after[RO_URL] != before[RO_URL] and after[APP_URL] == before[APP_URL]
    check_readonly(after[RO_URL], ro)

    # rollback: the app role's flag, in one PATCH
    fake.clear()
    commands.rollback(projects.load(path), "staging", yes=True, environ=environ)
    assert [(r.method, r.path, r.body) for r in fake.mutating()] == [("PATCH", f"/apps/{APP}/config-vars", {FLAG: "0"})]

    # retire one role: its attachment and credential go, the others stay
    fake.clear()
    ret = commands.retire(projects.load(path), "staging", yes=True, environ=environ, role=ci)
    assert ret.status == "ok"
    assert ("DELETE", f"{credentials}/{ci}") in [(r.method, r.path) for r in fake.mutating()]
    assert CI_URL not in fake.config_vars(APP) and RO_URL in fake.config_vars(APP)
    with login(fake.config_vars(APP)[RO_URL]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == ro


def test_member_of_is_refused_at_plan_time_changing_nothing(fake, pg, tmp_path, three_roles):
    app, ro, _ = three_roles
    mig = pg.role("raxx_mig")
    owner = psycopg.conninfo.conninfo_to_dict(fake.owner_url(ADDON))["user"]
    roles = roles_block(app, ro, flag=FLAG, migrator=mig, member_of=owner)
    path = write_roles_project(tmp_path, roles, ROLES_ENV, app="raxx", settings=ROLES_SETTINGS)
    environ = {**fake.environ(), "HOME": str(tmp_path)}
    fake.clear()
    with pytest.raises(Refused) as err:
        commands.plan(projects.load(path), "staging", environ=environ)
    assert "member_of needs SQL roles" in err.value.message and "\n" not in err.value.message
    with pytest.raises(Refused):
        commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    assert fake.mutating() == []
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", ([app, ro, mig],)) == [(0,)]
