"""The app side: config vars, restart, attachments (HTTP only; the login through an attached URL
is in test_credentials.py)."""

from __future__ import annotations

import pytest

from providers.base import Credential
from providers.heroku import HerokuAppConfig
from runbook.errors import ConfigError, ProviderError
from runbook.secret import Secret
from tests.providers.heroku.conftest import ADDON, APP, FLAG, URL_VAR


def _calls(fake):
    return [(r.method, r.path, r.body) for r in fake.requests]


def _cred(name="raxx_app"):
    return Credential(name=name, user=name, host="h", port=5432, database="d", password=Secret("pw-123456"))


def test_set_get_unset_config_with_exact_bodies(bare_fake, open_app):
    app = open_app(bare_fake)
    assert app.config_change_restarts is True
    app.set_config({FLAG: "1", "OTHER": Secret("s3cret-value")})
    assert app.get_config([FLAG, "OTHER", "MISSING"]) == {FLAG: "1", "OTHER": "s3cret-value", "MISSING": None}
    app.unset_config([FLAG])
    assert app.get_config([FLAG]) == {FLAG: None}
    config_vars = f"/apps/{APP}/config-vars"
    assert _calls(bare_fake) == [
        ("PATCH", config_vars, {FLAG: "1", "OTHER": "s3cret-value"}),
        ("GET", config_vars, None),
        ("PATCH", config_vars, {FLAG: None}),
        ("GET", config_vars, None),
    ]
    for r in bare_fake.requests:
        assert r.header("Accept") == "application/vnd.heroku+json; version=3"
        assert r.header("Authorization") == f"Bearer {bare_fake.token}"
    # each PATCH was a release, and a release restarts the dynos: no separate restart was needed
    assert bare_fake.restarts[APP] == bare_fake.releases[APP] == 3   # the add-on's attachment was the first


def test_empty_changes_send_nothing_and_bad_names_are_refused(bare_fake, open_app):
    app = open_app(bare_fake)
    app.set_config({})
    app.unset_config([])
    with pytest.raises(ConfigError, match="'BAD-NAME' is not a valid config var name"):
        app.set_config({"BAD-NAME": "1"})
    assert bare_fake.requests == []


def test_restart_deletes_the_dynos(bare_fake, open_app):
    before = bare_fake.restarts[APP]
    open_app(bare_fake).restart()
    assert _calls(bare_fake) == [("DELETE", f"/apps/{APP}/dynos", None)]
    assert bare_fake.restarts[APP] == before + 1


def test_overwriting_an_attachment_var_quotes_herokus_error(bare_fake, open_app):
    with pytest.raises(ProviderError) as err:
        open_app(bare_fake).set_config({"DATABASE_URL": "postgres://x:y@h/d"})
    assert err.value.message == (
        f"heroku: PATCH /apps/{APP}/config-vars failed: HTTP 422 invalid_params: "
        "Cannot overwrite attachment values DATABASE_URL.")


def test_attach_url_posts_the_attachment_and_heroku_sets_the_var(bare_fake, open_app):
    bare_fake.create_credential(ADDON, "raxx_app", "pw-of-raxx-app")
    addon_id = bare_fake.addon(ADDON)["id"]
    app = open_app(bare_fake)
    bare_fake.clear()

    assert app.attach_url(_cred(), URL_VAR) is True

    post = [r for r in bare_fake.requests if r.method == "POST"]
    # the name is free: no confirm, so Heroku itself would refuse to replace anything
    assert [(r.path, r.body) for r in post] == [("/addon-attachments", {
        "addon": addon_id, "app": APP, "name": "RAPTOR_APP_DATABASE", "namespace": "credential:raxx_app"})]
    assert bare_fake.config_vars(APP)[URL_VAR] == (
        "postgres://raxx_app:pw-of-raxx-app@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d1abc")
    # the attachments were read with the variables they set, and the release read as the CLI does
    listing = next(r for r in bare_fake.requests if r.path == f"/apps/{APP}/addon-attachments")
    assert listing.header("Accept-Inclusion") == "addon:plan,config_vars"
    release = next(r for r in bare_fake.requests if r.path == f"/apps/{APP}/releases")
    assert release.header("Range") == "version ..; max=1, order=desc" and release.status == 206
    # a second attach adopts the attachment: nothing is posted
    bare_fake.clear()
    assert app.attach_url(_cred(), URL_VAR) is True
    assert bare_fake.mutating() == []
    assert _calls(bare_fake) == [("GET", f"/apps/{APP}/addon-attachments", None)]


def test_detach_url_deletes_that_attachment_only(bare_fake, open_app):
    bare_fake.create_credential(ADDON, "raxx_app")
    app = open_app(bare_fake)
    app.attach_url(_cred(), URL_VAR)
    attachment = next(a for a in bare_fake.attachments(APP) if a["name"] == "RAPTOR_APP_DATABASE")
    assert app.detach_url("some_other_credential", URL_VAR) is False
    bare_fake.clear()

    assert app.detach_url("raxx_app", URL_VAR) is True

    assert bare_fake.mutating()[0].method == "DELETE"
    assert [(r.method, r.path) for r in bare_fake.mutating()] == [("DELETE", f"/addon-attachments/{attachment['id']}")]
    assert URL_VAR not in bare_fake.config_vars(APP)
    assert "DATABASE_URL" in bare_fake.config_vars(APP)
    assert app.detach_url("raxx_app", URL_VAR) is False


def test_a_var_heroku_cannot_name_falls_back_to_set_config(bare_fake, open_app):
    app = open_app(bare_fake)
    assert app.attach_url(_cred(), "RAPTOR_APP_DSN") is False
    assert app.detach_url("raxx_app", "RAPTOR_APP_DSN") is False
    assert bare_fake.requests == []


def test_without_a_heroku_database_nothing_is_attached(bare_fake, open_app):
    config = HerokuAppConfig.model_validate({"name": APP}, context={"database": {"provider": "rds"}})
    assert open_app(bare_fake, config).attach_url(_cred(), URL_VAR) is False
    assert bare_fake.requests == []


def test_describe_says_where_config_lives(bare_fake, open_app):
    described = open_app(bare_fake).describe()
    assert described["heroku app"] == APP
    assert described["config vars"] == f"{bare_fake.platform_url}/apps/{APP}/config-vars"


def test_config_vars_just_read_are_reused_until_a_write_of_the_account(bare_fake, open_app, open_db):
    config_vars = f"/apps/{APP}/config-vars"

    def reads() -> int:
        return sum(1 for r in bare_fake.requests if (r.method, r.path) == ("GET", config_vars))

    app = open_app(bare_fake)
    assert app.get_config([FLAG]) == {FLAG: None}
    assert app.get_config([FLAG, "DATABASE_URL"])[FLAG] is None     # the next step's look: no new request
    assert reads() == 1
    app.set_config({FLAG: "1"})                                      # a write: what was read is stale
    assert app.get_config([FLAG]) == {FLAG: "1"} and reads() == 2
    # a credential change can change the config vars it is attached as: the database side of the
    # same account voids the app side's reads too
    open_db(bare_fake).destroy("raxx_gone")
    assert app.get_config([FLAG]) == {FLAG: "1"} and reads() == 3
