"""Heroku's connection pooling for the tool's credential (issue 13 item 5, Heroku's part).

`heroku pg:connection-pooling:attach` is one Data API call (dist/commands/pg/connection-pooling/
attach.js: POST /client/v11/databases/{name}/connection-pooling {app, credential, name}); the
CLI 11.10.0 always sends credential "default", the API takes a credential's name. With
`connection_pooling: true` the tool makes that call for its own credential, and verify logs in
through exactly the pooled URL the app receives: here a real PgBouncer in front of the cluster."""

from __future__ import annotations

import logging

import pytest

from providers.base import Credential
from providers.heroku import HerokuAppConfig
from runbook import commands
from runbook import project as projects
from runbook.errors import CheckFailed
from runbook.secret import Secret
from tests.providers.conftest import as_login, assert_not_shown, diagnosed_clean, serving, write_project
from tests.providers.heroku.bouncer import Bouncer, login_through
from tests.providers.heroku.conftest import ADDON, APP, FLAG, URL_VAR, app_config
from tests.providers.heroku.fake_heroku import FakeHeroku, start_fake

NAME = URL_VAR.removesuffix("_URL")
HOST = "ec2-1-2-3-4.compute-1.amazonaws.com"
POOLER = ("ec2-1-2-3-4.compute-1.amazonaws.com", 5433)


def _cred(name="raxx_app"):
    return Credential(name=name, user=name, host=HOST, port=5432, database="d1abc", password=Secret("pw-123456"))


def _pooled():
    return app_config(), HerokuAppConfig.model_validate(
        {"name": APP, "connection_pooling": True}, context={"database": {"provider": "heroku", "addon": "DATABASE"}})


@pytest.fixture
def pool_fake():
    f = FakeHeroku(admin_dsn=None, database="d1abc", port=5432, advertised_host=HOST, pooler=POOLER).start()
    f.add_addon(APP, owner="u1owner", name=ADDON)
    yield from serving(f)


# -- the API calls ------------------------------------------------------------------------------


def test_pooling_attaches_the_credential_through_the_data_api(pool_fake, open_app):
    pool_fake.create_credential(ADDON, "raxx_app", "pw-of-raxx-app")
    app = open_app(pool_fake, _pooled()[1])
    pool_fake.clear()

    assert app.attach_url(_cred(), URL_VAR) is True

    assert [(r.api, r.method, r.path, r.body) for r in pool_fake.mutating()] == [
        ("data", "POST", f"/client/v11/databases/{ADDON}/connection-pooling",
         {"app": APP, "credential": "raxx_app", "name": NAME})]
    assert pool_fake.mutating()[0].header("Authorization") == f"Bearer {pool_fake.token}"   # as the CLI sends it
    assert pool_fake.auth_rejections == []
    assert pool_fake.config_vars(APP)[URL_VAR] == f"postgres://raxx_app:pw-of-raxx-app@{POOLER[0]}:{POOLER[1]}/d1abc"
    held = next(a for a in pool_fake.attachments(APP) if a["name"] == NAME)
    assert held["namespace"] == "connection-pooling:raxx_app"
    # attached already: nothing more
    pool_fake.clear()
    assert app.attach_url(_cred(), URL_VAR) is True
    assert pool_fake.mutating() == []


def test_turning_pooling_on_and_off_replaces_only_the_tools_own_attachment(pool_fake, open_app):
    pool_fake.create_credential(ADDON, "raxx_app", "pw-of-raxx-app")
    direct, pooled = _pooled()
    assert open_app(pool_fake, direct).attach_url(_cred(), URL_VAR)
    direct_id = next(a["id"] for a in pool_fake.attachments(APP) if a["name"] == NAME)
    pool_fake.clear()

    # on: the Data API call takes no confirm, so the tool's own direct attachment goes first
    assert open_app(pool_fake, pooled).attach_url(_cred(), URL_VAR)
    assert [(r.method, r.path) for r in pool_fake.mutating()] == [
        ("DELETE", f"/addon-attachments/{direct_id}"), ("POST", f"/client/v11/databases/{ADDON}/connection-pooling")]
    assert f"@{POOLER[0]}:{POOLER[1]}/" in pool_fake.config_vars(APP)[URL_VAR]
    pool_fake.clear()

    # off: one confirmed POST over the tool's own pooled attachment
    assert open_app(pool_fake, direct).attach_url(_cred(), URL_VAR)
    assert [(r.method, r.path, r.body.get("confirm")) for r in pool_fake.mutating()] == [
        ("POST", "/addon-attachments", APP)]
    assert f"@{HOST}:5432/" in pool_fake.config_vars(APP)[URL_VAR]


def test_a_hand_set_url_of_this_role_is_adopted_into_a_pooled_attachment(pool_fake, open_app):
    pool_fake.create_credential(ADDON, "raxx_app", "pw-of-raxx-app")
    pool_fake.set_config_var(APP, URL_VAR, f"postgres://raxx_app:older@{HOST}:5432/d1abc")
    pool_fake.clear()
    assert open_app(pool_fake, _pooled()[1]).attach_url(_cred(), URL_VAR)
    assert [(r.method, r.path, r.body) for r in pool_fake.mutating()] == [
        ("PATCH", f"/apps/{APP}/config-vars", {URL_VAR: None}),
        ("POST", f"/client/v11/databases/{ADDON}/connection-pooling", {"app": APP, "credential": "raxx_app", "name": NAME})]


def test_detach_and_destroy_know_the_pooled_attachment(pool_fake, open_app, open_db):
    from runbook.errors import Refused

    pool_fake.create_credential(ADDON, "raxx_app")
    app = open_app(pool_fake, _pooled()[1])
    assert app.attach_url(_cred(), URL_VAR)
    with pytest.raises(Refused, match=f"credential raxx_app is still attached \\({NAME} on {APP}\\)"):
        open_db(pool_fake).destroy("raxx_app")
    assert app.detach_url("raxx_app", URL_VAR) is True
    assert URL_VAR not in pool_fake.config_vars(APP)
    open_db(pool_fake).destroy("raxx_app")


def test_describe_says_the_url_goes_through_the_pooler(pool_fake, open_app):
    assert open_app(pool_fake, _pooled()[1]).describe()["url"] == (
        "attached through Heroku's connection pooling (PgBouncer, transaction mode)")
    assert "url" not in open_app(pool_fake, _pooled()[0]).describe()


def test_pooling_needs_a_heroku_database():
    with pytest.raises(ValueError, match="connection_pooling is Heroku Postgres's"):
        HerokuAppConfig.model_validate({"name": APP, "connection_pooling": True},
                                       context={"database": {"provider": "rds"}})


# -- through a real PgBouncer -------------------------------------------------------------------


def _project(directory, role):
    return write_project(directory, role, {"provider": "heroku", "database": {"addon": "DATABASE", "sslmode": "disable"},
                                           "app": {"name": APP, "connection_pooling": True}},
                         url_var=URL_VAR, flag=FLAG, app="raxx",
                         settings={"http_attempts": 4, "http_timeout": "2s", "retry_budget": "20s"})


@pytest.fixture
def bouncer(pg):
    b = Bouncer(pg).start()
    yield b
    b.stop()


def test_provision_verifies_through_the_pooled_url_the_app_receives(pg, tmp_path, bouncer, canary_password, caplog):
    caplog.set_level(logging.DEBUG)
    fake = start_fake(pg, app=APP, addon_name=ADDON, pooler=("127.0.0.1", bouncer.port))
    try:
        as_login(fake.owner_url(ADDON), "CREATE TABLE orders (id bigserial PRIMARY KEY, total int)")
        role = pg.role("raxx_app")
        path = _project(tmp_path, role)
        environ = {**fake.environ(), "HOME": str(tmp_path)}
        fake.passwords.append(canary_password)

        res = commands.provision(projects.load(path), "staging", yes=True, environ=environ)
        assert res.status == "ok", [s.to_json() for s in res.steps]

        url = fake.config_vars(APP)[URL_VAR]
        assert f"@127.0.0.1:{bouncer.port}/" in url                      # the app receives the pooler's URL
        assert f"login attempt: db={pg.dbname} user={role}" in bouncer.log()   # verify's own login went through PgBouncer
        assert login_through(url) == (role, pg.port)
        url_step = next(s for s in res.steps if s.step == "url")
        assert (url_step.status, url_step.verdict.status) == ("applied", "pass"), url_step.to_json()
        diag = diagnosed_clean(projects.load(path), environ)

        # rotation: Heroku keeps the pooled var current, and the new password logs in through the pooler
        rot = commands.rotate(projects.load(path), "staging", yes=True, environ=environ)
        assert rot.status == "ok", [s.to_json() for s in rot.steps]
        rotated = fake.config_vars(APP)[URL_VAR]
        assert rotated != url and f"@127.0.0.1:{bouncer.port}/" in rotated
        assert login_through(rotated) == (role, pg.port)

        ret = commands.retire(projects.load(path), "staging", yes=True, environ=environ)
        assert ret.status == "ok", [s.to_json() for s in ret.steps]
        assert URL_VAR not in fake.config_vars(APP)
        assert fake.auth_rejections == [] and fake.errors == []
        assert_not_shown(caplog, [res, diag, rot, ret], canary_password, fake.token)
    finally:
        fake.stop()


def test_a_pooler_that_refuses_the_new_role_fails_verify(pg, tmp_path):
    strict = Bouncer(pg, lookup=False).start()      # knows only its auth file's users
    fake = start_fake(pg, app=APP, addon_name=ADDON, pooler=("127.0.0.1", strict.port))
    try:
        role = pg.role("raxx_app")
        path = _project(tmp_path, role)
        environ = {**fake.environ(), "HOME": str(tmp_path)}
        with pytest.raises(CheckFailed) as err:
            commands.provision(projects.load(path), "staging", yes=True, environ=environ)
        assert err.value.exit_code == 4
        assert err.value.message.startswith(f"url: {URL_VAR} does not log in: connection failed: ")
        assert "SASL authentication failed" in err.value.message        # PgBouncer's own refusal
        assert f"@127.0.0.1:{strict.port}/" in fake.config_vars(APP)[URL_VAR]
        # the flag never went on over a URL the app cannot use
        assert fake.config_vars(APP).get(FLAG) is None
    finally:
        fake.stop()
        strict.stop()


def test_a_pooling_call_whose_answer_was_lost_is_not_repeated_into_a_failure(pool_fake, open_app):
    # the attachment is made, then the connection drops: the retry meets the name taken by our own
    pool_fake.create_credential(ADDON, "raxx_app")
    pool_fake.inject("reset", api="data", method="POST", path="/connection-pooling$", when="after")
    assert open_app(pool_fake, _pooled()[1]).attach_url(_cred(), URL_VAR) is True
    posts = [r for r in pool_fake.requests if r.api == "data" and r.method == "POST"]
    assert [(r.fault, r.status) for r in posts] == [("reset", None), (None, 423)]
    assert [a["namespace"] for a in pool_fake.attachments(APP) if a["name"] == NAME] == ["connection-pooling:raxx_app"]


def test_a_database_without_pooling_fails_with_the_fix(bare_fake, open_app):
    from runbook.errors import ProviderError

    bare_fake.create_credential(ADDON, "raxx_app")         # bare_fake has no pooler
    with pytest.raises(ProviderError) as err:
        open_app(bare_fake, _pooled()[1]).attach_url(_cred(), URL_VAR)
    assert err.value.message == (
        f"heroku data: POST /client/v11/databases/{ADDON}/connection-pooling failed: HTTP 422 unprocessable_entity: "
        f"Connection pooling is not available for {ADDON}.; check `heroku pg:info {ADDON} -a {APP}` (Connection "
        f"Pooling: Available), or set connection_pooling: false in the app block")
    assert URL_VAR not in bare_fake.config_vars(APP)
