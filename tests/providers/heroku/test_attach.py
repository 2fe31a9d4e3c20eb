"""Attaching the role's URL without overwriting what is not ours (issue 22 item 1).

The Platform API answers a name whose variable is taken with 423 confirmation_required, and
`confirm` replaces the holder. The tool confirms only when the holder is provably its own; every
other holder is refused before any change, from the side of whoever set it."""

from __future__ import annotations

import httpx
import pytest

from providers.base import Credential
from runbook.errors import Refused
from runbook.secret import Secret
from tests.providers.heroku.conftest import ADDON, APP, URL_VAR
from tests.providers.heroku.fake_heroku import ACCEPT

NAME = URL_VAR.removesuffix("_URL")
HOST = "ec2-1-2-3-4.compute-1.amazonaws.com"     # what bare_fake advertises


def _cred(name="raxx_app", password="pw-of-raxx-app"):
    return Credential(name=name, user=name, host=HOST, port=5432, database="d1abc", password=Secret(password))


def _post(fake, body):
    return httpx.post(f"{fake.platform_url}/addon-attachments", json=body,
                      headers={"Accept": ACCEPT, "Authorization": f"Bearer {fake.token}"})


def _unchanged(fake, before_vars, before_attachments):
    assert fake.mutating() == []
    assert fake.config_vars(APP) == before_vars
    assert fake.attachments(APP) == before_attachments


# -- the fake answers as the real API does ----------------------------------------------------


def test_the_fake_asks_for_confirmation_of_a_taken_name_and_replaces_with_it(bare_fake):
    bare_fake.create_credential(ADDON, "raxx_app", "pw-of-raxx-app")
    bare_fake.set_config_var(APP, URL_VAR, "postgres://someone:else@elsewhere/db")
    body = {"addon": {"name": ADDON}, "app": {"name": APP}, "name": NAME, "namespace": "credential:raxx_app"}

    r = _post(bare_fake, body)
    assert r.status_code == 423
    assert r.json() == {"id": "confirmation_required",
                        "message": f"Adding {NAME} to app {APP} would overwrite existing vars {URL_VAR}."}
    assert bare_fake.config_vars(APP)[URL_VAR] == "postgres://someone:else@elsewhere/db"

    r = _post(bare_fake, {**body, "confirm": APP})
    assert r.status_code == 201 and r.json()["namespace"] == "credential:raxx_app"
    assert bare_fake.config_vars(APP)[URL_VAR].startswith("postgres://raxx_app:pw-of-raxx-app@")


def test_the_fake_includes_config_vars_and_plans_only_when_asked(bare_fake):
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {bare_fake.token}"}
    url = f"{bare_fake.platform_url}/apps/{APP}/addon-attachments"
    plain = httpx.get(url, headers=headers).json()
    assert "config_vars" not in plain[0] and "plan" not in plain[0]["addon"]
    full = httpx.get(url, headers={**headers, "Accept-Inclusion": "addon:plan,config_vars"}).json()
    assert full[0]["config_vars"] == ["DATABASE_URL"]
    assert full[0]["addon"]["plan"]["name"] == "heroku-postgresql:standard-0"


def test_the_fake_pages_releases_as_the_cli_reads_them(bare_fake):
    headers = {"Accept": ACCEPT, "Authorization": f"Bearer {bare_fake.token}"}
    url = f"{bare_fake.platform_url}/apps/{APP}/releases"
    bare_fake.set_config_var(APP, "X", "1")
    httpx.patch(f"{bare_fake.platform_url}/apps/{APP}/config-vars", json={"Y": "2"}, headers=headers)
    r = httpx.get(url, headers={**headers, "Range": "version ..; max=1, order=desc"})
    assert r.status_code == 206 and [v["version"] for v in r.json()] == [2]
    assert r.headers["Next-Range"] == "version 2..; max=1, order=desc"
    r = httpx.get(url, headers=headers)
    assert r.status_code == 200 and [v["version"] for v in r.json()] == [1, 2]
    assert httpx.get(url, headers={**headers, "Range": "id ..; max=x"}).status_code == 400


# -- what the tool does about a taken name ----------------------------------------------------


def test_a_var_held_by_another_addons_attachment_is_refused_and_nothing_changes(bare_fake, open_app):
    bare_fake.create_credential(ADDON, "raxx_app")
    other = bare_fake.add_addon("other-app", owner="u9other", name="postgresql-other-999", attachment="DATABASE")
    bare_fake.attach(APP, other, NAME)
    before_vars, before_attachments = bare_fake.config_vars(APP), bare_fake.attachments(APP)
    bare_fake.clear()

    with pytest.raises(Refused) as err:
        open_app(bare_fake).attach_url(_cred(), URL_VAR)

    assert err.value.exit_code == 2
    assert err.value.message == (
        f"heroku: {URL_VAR} on {APP} is set by attachment {NAME} of another add-on, postgresql-other-999; "
        f"pg-runbook replaces only its own attachment of credential raxx_app. Choose another url_var, or detach "
        f"it first: heroku addons:detach {NAME} -a {APP}")
    _unchanged(bare_fake, before_vars, before_attachments)


@pytest.mark.parametrize("credential", [None, "someone_else"], ids=["owner", "other-credential"])
def test_a_var_held_by_this_addon_for_another_credential_is_refused(bare_fake, open_app, credential):
    bare_fake.create_credential(ADDON, "raxx_app")
    if credential:
        bare_fake.create_credential(ADDON, credential)
    bare_fake.attach(APP, ADDON, NAME, credential)
    before_vars, before_attachments = bare_fake.config_vars(APP), bare_fake.attachments(APP)
    bare_fake.clear()

    with pytest.raises(Refused) as err:
        open_app(bare_fake).attach_url(_cred(), URL_VAR)

    whose = f"its credential:{credential}" if credential else "its owner (default) credential"
    assert f"is set by attachment {NAME} of {ADDON} for {whose};" in err.value.message
    assert err.value.message.endswith(f"heroku addons:detach {NAME} -a {APP}")
    _unchanged(bare_fake, before_vars, before_attachments)


def test_a_plain_var_set_by_hand_with_this_roles_url_is_adopted_into_the_attachment(bare_fake, open_app):
    # the hand-run runbook's step 3: `heroku config:set RAPTOR_APP_DATABASE_URL=$(heroku pg:credentials:url …)`
    bare_fake.create_credential(ADDON, "raxx_app", "pw-of-raxx-app")
    bare_fake.set_config_var(APP, URL_VAR, f"postgres://raxx_app:an-older-password@{HOST}:5432/d1abc")
    addon_id = bare_fake.addon(ADDON)["id"]
    bare_fake.clear()

    assert open_app(bare_fake).attach_url(_cred(), URL_VAR) is True

    assert [(r.path, r.body) for r in bare_fake.mutating()] == [("/addon-attachments", {
        "addon": addon_id, "app": APP, "name": NAME, "namespace": "credential:raxx_app", "confirm": APP})]
    assert bare_fake.config_vars(APP)[URL_VAR] == f"postgres://raxx_app:pw-of-raxx-app@{HOST}:5432/d1abc"
    held = next(a for a in bare_fake.attachments(APP) if a["name"] == NAME)
    assert held["namespace"] == "credential:raxx_app" and held["addon"]["id"] == addon_id


@pytest.mark.parametrize("value, what", [
    (f"postgres://owner_of_it:hunter2-secret@{HOST}:5432/d1abc", f"postgres://owner_of_it:****@{HOST}:5432/d1abc"),
    ("postgres://raxx_app:hunter2-secret@evil.example.net:5432/d1abc",
     "postgres://raxx_app:****@evil.example.net:5432/d1abc"),
    (f"postgres://raxx_app:hunter2-secret@{HOST}:5432/another_db", f"postgres://raxx_app:****@{HOST}:5432/another_db"),
    ("hunter2-secret", "not a postgres URL"),
], ids=["other-user", "other-host", "other-database", "not-a-url"])
def test_a_plain_var_that_is_not_this_roles_url_is_refused(bare_fake, open_app, value, what):
    bare_fake.create_credential(ADDON, "raxx_app")
    bare_fake.set_config_var(APP, URL_VAR, value)
    before_vars, before_attachments = bare_fake.config_vars(APP), bare_fake.attachments(APP)
    bare_fake.clear()

    with pytest.raises(Refused) as err:
        open_app(bare_fake).attach_url(_cred(), URL_VAR)

    assert err.value.message == (
        f"heroku: {URL_VAR} on {APP} is a config var set by hand ({what}), not a URL of credential raxx_app on "
        f"{ADDON}; pg-runbook will not overwrite it. Unset it (heroku config:unset {URL_VAR} -a {APP}) or choose "
        f"another url_var")
    assert "hunter2" not in err.value.message
    _unchanged(bare_fake, before_vars, before_attachments)


def test_a_name_taken_between_the_look_and_the_post_is_refused_not_confirmed(bare_fake, open_app):
    bare_fake.create_credential(ADDON, "raxx_app")
    bare_fake.inject("error", method="POST", path="^/addon-attachments$", status=423, error_id="confirmation_required",
                     message=f"Adding {NAME} to app {APP} would overwrite existing vars {URL_VAR}.")
    with pytest.raises(Refused) as err:
        open_app(bare_fake).attach_url(_cred(), URL_VAR)
    assert "was taken while pg-runbook attached it (HTTP 423 confirmation_required: Adding" in err.value.message
    posts = [r for r in bare_fake.requests if r.method == "POST"]
    assert len(posts) == 1 and "confirm" not in posts[0].body
    assert URL_VAR not in bare_fake.config_vars(APP)


# -- through the whole run: refused in preflight, before the credential is made ------------------


def test_provision_refuses_a_foreign_held_var_before_making_anything(fake, pg, tmp_path):
    from runbook import commands
    from runbook import project as projects
    from tests.providers.conftest import write_project
    from tests.providers.heroku.conftest import FLAG

    other = fake.add_addon("other-app", owner="u9other", name="postgresql-other-999", attachment="DATABASE",
                           elsewhere=True)
    fake.attach(APP, other, NAME)
    role = pg.role("raxx_app")
    path = write_project(tmp_path, role, {"provider": "heroku", "database": {"addon": "DATABASE", "sslmode": "disable"},
                                          "app": {"name": APP}}, url_var=URL_VAR, flag=FLAG, app="raxx")
    before_vars, before_attachments = fake.config_vars(APP), fake.attachments(APP)
    fake.clear()

    with pytest.raises(Refused) as err:
        commands.provision(projects.load(path), "staging", yes=True, environ={**fake.environ(), "HOME": str(tmp_path)})

    assert err.value.exit_code == 2
    assert err.value.message.startswith(
        f"heroku: {URL_VAR} on {APP} is set by attachment {NAME} of another add-on, postgresql-other-999;")
    _unchanged(fake, before_vars, before_attachments)
    assert not any(r.api == "data" and r.method != "GET" for r in fake.requests)
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(0,)]
