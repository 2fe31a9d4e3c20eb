"""Where the tool must do what the Heroku CLI (npm `heroku` 11.10.0) does (issue 22 items 2-4):
credential readiness, the auth scheme per Data API call, and the CLI's host variables."""

from __future__ import annotations

import base64
import logging
from dataclasses import replace

import httpx
import pytest

from providers.base import Progress
from providers.heroku import DATA_API_URL, PLATFORM_API_URL, HerokuDatabase, api_urls
from runbook.errors import ConfigError, ProviderError
from tests.providers.conftest import RETRY, quick_budget
from tests.providers.heroku.conftest import ADDON, APP, context, database_config
from tests.providers.heroku.fake_heroku import ACCEPT


def _basic(token: str) -> str:
    return "Basic " + base64.b64encode(f":{token}".encode()).decode()


def _open(fake, tmp_path, sleeps, events):
    ctx = replace(context(fake, tmp_path), progress=events.append)
    return HerokuDatabase(database_config(), ctx, budget=quick_budget(), sleep=sleeps)


# -- item 2: a credential is usable once one of its users is active ---------------------------


def test_a_credential_in_state_created_with_an_active_user_is_used_at_once(fake, pg, tmp_path, sleeps):
    # the CLI's fixture (test/unit/commands/pg/credentials/url.unit.test.ts): state `created`, user active
    fake.provision_polls, fake.ready_state = 0, "created"
    events: list[Progress] = []
    db = _open(fake, tmp_path, sleeps, events)
    role = pg.role("raxx_app")
    try:
        cred = db.create_credential(role)
    finally:
        db.close()
    assert sleeps == []                                       # no wait at all
    got = [r for r in fake.requests if r.api == "data" and r.method == "GET"]
    assert got[-1].status == 200
    assert (cred.user, cred.port) == (role, pg.port)
    assert events == [Progress(f"heroku credential {role}", f"created ({role}: active)", done=True)]


def test_a_user_active_before_the_credentials_state_says_so_ends_the_wait(fake, pg, tmp_path, sleeps):
    fake.provision_polls, fake.store_lag = 1, 50              # the store stays `provisioning` for 50 more looks
    events: list[Progress] = []
    db = _open(fake, tmp_path, sleeps, events)
    role = pg.role("raxx_app")
    try:
        cred = db.create_credential(role)
    finally:
        db.close()
    assert sleeps == [0.1]
    assert cred.user == role
    # each state change reported once, the remaining budget counting down, the last one done
    assert [(e.state, e.done) for e in events] == [
        (f"provisioning ({role}: enabling)", False), (f"provisioning ({role}: active)", True)]
    assert events[0].remaining == pytest.approx(RETRY.total_seconds, abs=1) and events[1].remaining is None


def test_the_timeout_and_its_message_stay_and_every_look_is_reported_once(fake, pg, tmp_path, sleeps):
    fake.provision_polls = 10_000
    events: list[Progress] = []
    db = _open(fake, tmp_path, sleeps, events)
    role = pg.role("raxx_app")
    try:
        with pytest.raises(ProviderError) as err:
            db.create_credential(role)
    finally:
        db.close()
    assert err.value.message == (
        f"heroku data: credential {role} on {ADDON} is still 'provisioning' after {RETRY.total_seconds:.0f}s; "
        f"see `heroku pg:credentials {ADDON} -a {APP}` and run again")
    assert [e.state for e in events] == [f"provisioning ({role}: enabling)"]   # one state, one event
    assert sum(sleeps) == pytest.approx(RETRY.total_seconds, abs=0.3)


def test_destroy_reports_its_wait_until_gone(fake, pg, tmp_path, sleeps):
    role = pg.role("raxx_app")
    fake.create_credential(ADDON, role)
    events: list[Progress] = []
    db = _open(fake, tmp_path, sleeps, events)
    try:
        db.destroy(role)
    finally:
        db.close()
    assert [(e.what, e.state, e.done) for e in events] == [
        (f"heroku credential {role} removal", f"revoking ({role}: revoking)", False),
        (f"heroku credential {role} removal", "gone", True)]


def test_a_rotation_waits_past_the_temporary_rotation_user(bare_fake, tmp_path, sleeps):
    # the CLI's fixture: state `rotating`, {name} revoking, {name}-rotating active
    bare_fake.rotation_user, bare_fake.rotation_polls = True, 2
    bare_fake.create_credential(ADDON, "raxx_app", "pw-before")
    events: list[Progress] = []
    db = _open(bare_fake, tmp_path, sleeps, events)
    try:
        cred = db.rotate("raxx_app")
    finally:
        db.close()
    assert cred.user == "raxx_app" and cred.password.reveal() not in ("pw-before", "")
    assert [e.state for e in events] == [
        "rotating (raxx_app: revoking, raxx_app-rotating: active)", "active (raxx_app: active)"]
    assert sleeps == [0.1, 0.2]


# -- item 3: the auth scheme per Data API call -------------------------------------------------


def test_each_data_api_call_carries_the_clis_scheme(fake, pg, open_db):
    db = open_db(fake)
    role = pg.role("raxx_app")
    db.create_credential(role)
    db.rotate(role)
    db.destroy(role)
    basic, bearer = _basic(fake.token), f"Bearer {fake.token}"
    seen = {(r.method, r.path.rsplit("/", 1)[-1] if r.path.endswith("rotation") else r.path.count("/"),
             r.header("Authorization")) for r in fake.requests if r.api == "data"}
    assert seen == {
        ("POST", 5, bearer),                              # create: pg/credentials/create.js (default client)
        ("GET", 6, basic),                                # one credential: pg/credentials/url.js
        ("POST", "credentials_rotation", basic),          # rotate: pg/credentials/rotate.js
        ("DELETE", 6, bearer),                            # destroy: pg/credentials/destroy.js
    }
    assert fake.auth_rejections == []
    assert all(r.header("Authorization") == bearer for r in fake.requests if r.api == "platform")


@pytest.mark.parametrize("method, path, wrong", [
    ("GET", "/credentials", "bearer"), ("GET", "/credentials/raxx_app", "bearer"),
    ("POST", "/credentials/raxx_app/credentials_rotation", "bearer"),
    ("POST", "/credentials", "basic"), ("DELETE", "/credentials/raxx_app", "basic"),
])
def test_the_fake_rejects_the_other_scheme(bare_fake, method, path, wrong):
    bare_fake.create_credential(ADDON, "raxx_app")
    auth = _basic(bare_fake.token) if wrong == "basic" else f"Bearer {bare_fake.token}"
    r = httpx.request(method, f"{bare_fake.data_url}/postgres/v0/databases/{ADDON}{path}",
                      json={"name": "raxx_new"} if method == "POST" else None,
                      headers={"Accept": ACCEPT, "Authorization": auth})
    assert r.status_code == 401
    assert len(bare_fake.auth_rejections) == 1 and bare_fake.auth_rejections[0].startswith(f"{method} ")
    assert set(bare_fake._find_addon(ADDON).credentials) == {"raxx_app"}      # nothing created or destroyed


# -- item 4: HEROKU_HOST and HEROKU_DATA_HOST with the CLI's meaning ----------------------------


@pytest.mark.parametrize("environ, platform, data", [
    ({}, PLATFORM_API_URL, DATA_API_URL),
    # a bare host: api.{host} over https (@heroku-cli/command lib/vars.js)
    ({"HEROKU_HOST": "staging.herokudev.com"}, "https://api.staging.herokudev.com", DATA_API_URL),
    # an http(s):// value is the Platform base itself
    ({"HEROKU_HOST": "http://127.0.0.1:5000"}, "http://127.0.0.1:5000", DATA_API_URL),
    # the Data API host takes HEROKU_HOST's scheme and port (@heroku/http-call replaces only the host)
    ({"HEROKU_HOST": "http://127.0.0.1:5000", "HEROKU_DATA_HOST": "localhost"},
     "http://127.0.0.1:5000", "http://localhost:5000"),
    ({"HEROKU_DATA_HOST": "postgres-api.herokudev.com"}, PLATFORM_API_URL, "https://postgres-api.herokudev.com"),
    ({"HEROKU_POSTGRESQL_HOST": "pg.herokudev.com"}, PLATFORM_API_URL, "https://pg.herokudev.com"),
    ({"HEROKU_DATA_HOST": "a.herokudev.com", "HEROKU_POSTGRESQL_HOST": "b.herokudev.com"},
     PLATFORM_API_URL, "https://a.herokudev.com"),
    # the tool's own full URLs win over the CLI's variables
    ({"HEROKU_HOST": "staging.herokudev.com", "HEROKU_API_URL": "http://127.0.0.1:7000",
      "HEROKU_DATA_HOST": "x.herokudev.com", "HEROKU_DATA_API_URL": "http://127.0.0.1:7001"},
     "http://127.0.0.1:7000", "http://127.0.0.1:7001"),
    # HEROKU_API_URL alone does not lend its scheme/port to HEROKU_DATA_HOST: the CLI takes them from HEROKU_HOST
    ({"HEROKU_API_URL": "http://127.0.0.1:7000", "HEROKU_DATA_HOST": "d.herokudev.com"},
     "http://127.0.0.1:7000", "https://d.herokudev.com"),
])
def test_base_urls_follow_the_documented_precedence(environ, platform, data):
    assert api_urls(environ) == (platform, data)


@pytest.mark.parametrize("host", ["evil.example.net", "http://localhost.evil.example.net:80", "heroku.com.evil.net"])
def test_a_heroku_host_outside_herokus_domains_is_ignored_as_the_cli_does(caplog, host):
    caplog.set_level(logging.WARNING, logger="providers.heroku")
    assert api_urls({"HEROKU_HOST": host}) == (PLATFORM_API_URL, DATA_API_URL)
    assert f"HEROKU_HOST={host} is not a Heroku domain; using heroku.com" in caplog.text


@pytest.mark.parametrize("environ, message", [
    ({"HEROKU_HOST": "http://api.herokudev.com"}, "HEROKU_HOST=http://api.herokudev.com: plain http is allowed only on loopback"),
    ({"HEROKU_DATA_HOST": "127.0.0.1:5001"}, "HEROKU_DATA_HOST='127.0.0.1:5001' is not a host name"),
    ({"HEROKU_HOST": "http://127.0.0.1:5000", "HEROKU_DATA_HOST": "data.example.net"},
     "HEROKU_DATA_HOST=http://data.example.net:5000: plain http is allowed only on loopback"),
    ({"HEROKU_DATA_API_URL": "ftp://x"}, "HEROKU_DATA_API_URL='ftp://x' is not an http(s) URL"),
])
def test_unsafe_or_malformed_hosts_are_refused(environ, message):
    with pytest.raises(ConfigError) as err:
        api_urls(environ)
    assert err.value.message.startswith(message)


def test_the_clis_variables_alone_reach_the_fake(tmp_path, sleeps):
    """HEROKU_HOST and HEROKU_DATA_HOST exactly as the Heroku CLI is pointed at this fake (both APIs
    on HEROKU_HOST's port): the tool reaches both APIs, each with its own scheme of auth."""
    from tests.providers.conftest import fake_context
    from tests.providers.heroku.fake_heroku import FakeHeroku

    fake = FakeHeroku(admin_dsn=None, database="d1abc", port=5432, shared_port=True).start()
    try:
        fake.add_addon(APP, owner="u1owner", name=ADDON)
        fake.create_credential(ADDON, "raxx_app")
        environ = {**fake.cli_environ(), "HOME": str(tmp_path)}
        assert set(environ) == {"HEROKU_API_KEY", "HEROKU_HOST", "HEROKU_DATA_HOST", "HOME"}
        db = HerokuDatabase(database_config(), fake_context(environ, tmp_path, app_name="raxx"),
                            budget=quick_budget(), sleep=sleeps)
        try:
            assert db.describe().plan == "heroku-postgresql:standard-0"
            assert db.credential("raxx_app").user == "raxx_app"
        finally:
            db.close()
        assert {r.api for r in fake.requests} == {"platform", "data"}
        assert fake.auth_rejections == [] and fake.errors == []
    finally:
        fake.stop()
