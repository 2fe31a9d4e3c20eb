"""Resolving the add-on, the tier check and the owner's URL, against the fake (HTTP only)."""

from __future__ import annotations

import pytest

from runbook.errors import ConfigError, ProviderError, Refused
from tests.providers.heroku.conftest import ADDON, APP
from tests.providers.heroku.fake_heroku import ACCEPT


def _paths(fake):
    return [(r.api, r.method, r.path) for r in fake.requests]


def test_describe_by_attachment_name_with_exact_requests_and_headers(bare_fake, open_db):
    addon_id = bare_fake.addon(ADDON)["id"]
    info = open_db(bare_fake).describe()
    assert info.engine == "postgres"
    assert info.plan == "heroku-postgresql:standard-0"
    assert info.credentials == "api"
    assert info.details["addon"] == ADDON
    assert info.details["owner url"] == "DATABASE_URL"
    assert _paths(bare_fake) == [
        # the add-on endpoint takes add-on names and ids; DATABASE is an attachment name
        ("platform", "GET", f"/apps/{APP}/addons/DATABASE"),
        ("platform", "GET", f"/apps/{APP}/addon-attachments/DATABASE"),
        ("platform", "GET", f"/addons/{addon_id}"),
    ]
    for request in bare_fake.requests:
        assert request.header("Accept") == "application/vnd.heroku+json; version=3" == ACCEPT
        assert request.header("Authorization") == f"Bearer {bare_fake.token}"
        assert request.body is None


def test_describe_by_add_on_name(bare_fake, open_db):
    info = open_db(bare_fake, addon=ADDON).describe()
    assert info.details["owner url"] == "DATABASE_URL"
    assert _paths(bare_fake) == [
        ("platform", "GET", f"/apps/{APP}/addons/{ADDON}"),
        # the owner's var is the default (credential-less) attachment's
        ("platform", "GET", f"/apps/{APP}/addon-attachments"),
    ]


def test_admin_dsn_is_the_default_attachments_url_as_a_secret(bare_fake, open_db):
    dsn = open_db(bare_fake).admin_dsn()
    assert str(dsn) == "****"
    owner_url = bare_fake.owner_url(ADDON)
    password = owner_url.split(":")[2].split("@")[0]
    assert f"password={password}" in dsn.reveal()
    assert "host=ec2-1-2-3-4.compute-1.amazonaws.com" in dsn.reveal()
    assert "sslmode=disable" in dsn.reveal()
    assert _paths(bare_fake)[-1] == ("platform", "GET", f"/apps/{APP}/config-vars")


def test_admin_dsn_requires_ssl_by_default_and_honours_connect(bare_fake, open_db):
    dsn = open_db(bare_fake, sslmode="require", connect={"host": "127.0.0.1", "port": 6543}).admin_dsn().reveal()
    assert "sslmode=require" in dsn
    assert "host=127.0.0.1" in dsn and "port=6543" in dsn


def test_a_credential_attachment_is_not_the_owner(bare_fake, open_db):
    bare_fake.create_credential(ADDON, "reporting")
    bare_fake._attach(bare_fake._find_addon(ADDON), APP, "REPORTING_DATABASE", "credential:reporting")
    with pytest.raises(ConfigError, match="carries credential:reporting, not the owner"):
        open_db(bare_fake, addon="REPORTING_DATABASE").admin_dsn()


LOW_PLANS = ["essential-0", "essential-1", "mini", "basic", "hobby-dev", "hobby-basic", "dev"]


@pytest.mark.parametrize("tier", LOW_PLANS)
def test_essential_tier_is_refused_before_any_change(bare_fake, open_db, tier):
    bare_fake.add_addon(APP, owner="u2tiny", plan=f"heroku-postgresql:{tier}", name="postgresql-tiny-1",
                        attachment="TINY_DATABASE")
    bare_fake.clear()
    db = open_db(bare_fake, addon="TINY_DATABASE")
    with pytest.raises(Refused) as err:
        db.describe()
    assert err.value.message == (
        f"heroku: TINY_DATABASE on {APP} is on plan heroku-postgresql:{tier}, an Essential-tier plan without named "
        f"credentials; upgrade it first: heroku addons:upgrade TINY_DATABASE heroku-postgresql:standard-0 -a {APP}")
    # the credential calls refuse too, whatever the caller does after describe()
    for call in (db.create_credential, db.rotate, db.destroy, db.credential):
        with pytest.raises(Refused):
            call("raxx_app")
    assert bare_fake.mutating() == []
    assert all(r.api == "platform" for r in bare_fake.requests)


@pytest.mark.parametrize("tier", ["advanced", "performance-beta"])
def test_advanced_tier_is_refused_clearly(bare_fake, open_db, tier):
    bare_fake.add_addon(APP, owner="u3adv", plan=f"heroku-postgresql:{tier}", name="postgresql-big-1",
                        attachment="BIG_DATABASE")
    db = open_db(bare_fake, addon="postgresql-big-1")
    with pytest.raises(Refused, match="Advanced-tier database"):
        db.describe()
    with pytest.raises(Refused):
        db.create_credential("raxx_app")
    assert bare_fake.mutating() == []


def test_not_heroku_postgres(bare_fake, open_db):
    bare_fake.add_addon(APP, owner="u4", plan="heroku-redis:premium-0", name="redis-shaped-1", attachment="REDIS")
    with pytest.raises(ConfigError, match="is heroku-redis:premium-0, not Heroku Postgres"):
        open_db(bare_fake, addon="REDIS").describe()


def test_an_add_on_still_provisioning_is_refused(bare_fake, open_db):
    bare_fake.add_addon(APP, owner="u5", name="postgresql-new-1", attachment="NEW_DATABASE", state="provisioning")
    with pytest.raises(Refused, match="is provisioning, not provisioned yet; wait with `heroku addons:wait postgresql-new-1"):
        open_db(bare_fake, addon="NEW_DATABASE").describe()


def test_an_unknown_add_on_quotes_heroku(bare_fake, open_db):
    with pytest.raises(ConfigError) as err:
        open_db(bare_fake, addon="NOPE").describe()
    assert err.value.message == (
        f"heroku: app {APP} has no add-on or attachment named 'NOPE' (HTTP 404 not_found: Couldn't find that add on "
        f"attachment.); `heroku addons -a {APP}` lists them")


def test_a_4xx_is_one_line_with_herokus_id_and_message(bare_fake, open_db):
    bare_fake.inject("error", status=403, error_id="forbidden", message="You do not have access to the app raxx-api-staging.")
    with pytest.raises(ProviderError) as err:
        open_db(bare_fake).describe()
    assert err.value.message == (
        f"heroku: GET /apps/{APP}/addons/DATABASE failed: HTTP 403 forbidden: "
        "You do not have access to the app raxx-api-staging.")
    assert len(bare_fake.requests) == 1   # 4xx is not retried


def test_a_wrong_token_is_one_line(bare_fake, open_db):
    bare_fake.tokens = {"another"}
    with pytest.raises(ProviderError, match=r"failed: HTTP 401 unauthorized: Invalid credentials provided\.$"):
        open_db(bare_fake).describe()
