"""Credentials through the Data API, against the fake backed by real PostgreSQL (both versions)."""

from __future__ import annotations

import base64

import httpx
import psycopg
import pytest
from psycopg import sql

from providers.heroku import HerokuApp
from runbook.errors import ProviderError, Refused
from tests.providers.conftest import RETRY, quick_budget
from tests.providers.heroku.conftest import ADDON, APP, URL_VAR, context
from tests.providers.heroku.fake_heroku import FakeHeroku


def _data(fake, method=None):
    return [(r.method, r.path, r.body) for r in fake.requests if r.api == "data" and (method is None or r.method == method)]


def _login(dsn: str) -> str:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def test_owner_url_logs_in_as_the_database_owner(fake, open_db, pg):
    db = open_db(fake)
    db.describe()
    owner = _login(db.admin_dsn().reveal())
    assert owner.startswith("owner_")
    assert pg.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (pg.dbname,)) == [(owner,)]
    with psycopg.connect(db.admin_dsn().reveal()) as conn:
        assert db.preflight_sql(conn) == []


def test_preflight_names_a_non_owner_admin_connection(fake, open_db, pg):
    db = open_db(fake)
    fake.create_credential(ADDON, pg.role("other"), "other-password-123")
    with psycopg.connect(pg.tcp_dsn(pg.roles[-1], "other-password-123")) as conn:
        problems = db.preflight_sql(conn)
    assert len(problems) == 1 and "database.addon" in problems[0]


def test_create_polls_until_active_and_the_login_is_real(fake, open_db, pg, canary_password, sleeps):
    fake.provision_polls = 2
    db = open_db(fake)
    info = db.describe()
    role = pg.role("raxx_app")
    addon_id = fake.addon(ADDON)["id"]
    assert db.credential(role) is None
    fake.passwords.append(canary_password)

    cred = db.create_credential(role)

    base = f"/postgres/v0/databases/{addon_id}/credentials"
    assert _data(fake, "POST") == [("POST", base, {"name": role})]
    gets = [path for method, path, _ in _data(fake) if method == "GET"]
    # credential(), then 3 polls: the look before the POST takes credential()'s answer (nothing written since)
    assert gets == [f"{base}/{role}"] * 4
    assert sleeps == [0.1, 0.2]
    # the CLI's scheme per call: Bearer on the Platform API and for the create, Basic :token for reads
    basic = "Basic " + base64.b64encode(f":{fake.token}".encode()).decode()
    for r in fake.requests:
        wanted = basic if (r.api, r.method) == ("data", "GET") else f"Bearer {fake.token}"
        assert r.header("Authorization") == wanted, (r.method, r.path)
        assert r.header("Accept") == "application/vnd.heroku+json; version=3"
    assert fake.auth_rejections == []
    assert (cred.name, cred.user, cred.host, cred.port, cred.database) == (role, role, "127.0.0.1", pg.port, pg.dbname)
    assert cred.password.reveal() == canary_password and str(cred.password) == "****"
    assert cred.sslmode == "disable"
    assert _login(cred.url().reveal()) == role
    assert info.credentials == "api"
    # a real login role, not a superuser, and (like Heroku's) without USAGE on public yet
    assert pg.execute(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, has_schema_privilege(rolname, 'public', 'USAGE')"
        " FROM pg_roles WHERE rolname = %s", (role,)) == [(True, False, False, False)]
    assert db.credential(role) == cred


def test_sslmode_defaults_to_require(fake, tmp_path, pg, sleeps):
    from providers.heroku import HerokuDatabase, HerokuDatabaseConfig

    config = HerokuDatabaseConfig.model_validate({"addon": "DATABASE"}, context={"app": {"name": APP}})
    db = HerokuDatabase(config, context(fake, tmp_path), budget=quick_budget(), sleep=sleeps)
    try:
        cred = db.create_credential(pg.role("raxx_app"))
    finally:
        db.close()
    assert cred.sslmode == "require"
    assert cred.url().reveal().endswith("?sslmode=require")


def test_an_existing_credential_is_adopted(fake, open_db, pg, canary_password):
    role = pg.role("raxx_app")
    fake.create_credential(ADDON, role, canary_password)
    cred = open_db(fake).create_credential(role)
    assert _data(fake, "POST") == []
    assert cred.password.reveal() == canary_password
    assert _login(cred.url().reveal()) == role


def test_a_post_that_landed_before_its_timeout_is_adopted_not_duplicated(fake, open_db, pg, canary_password):
    role = pg.role("raxx_app")
    fake.passwords.append(canary_password)
    # the first POST takes effect, then answers after the client's 1 s read timeout
    fake.inject("slow", method="POST", path=r"/credentials$", delay=1.5, when="after")
    cred = open_db(fake).create_credential(role)
    posts = [r for r in fake.requests if r.method == "POST"]
    assert [r.fault for r in posts] == ["slow", None]
    assert posts[1].status == 422      # "already exists": adopted
    assert _login(cred.url().reveal()) == role
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)]


def test_a_credential_that_never_activates_fails_within_the_budget(fake, open_db, pg, sleeps):
    fake.provision_polls = 10_000
    role = pg.role("raxx_app")
    with pytest.raises(ProviderError) as err:
        open_db(fake).create_credential(role)
    assert err.value.message == (
        f"heroku data: credential {role} on {ADDON} is still 'provisioning' after {RETRY.total_seconds:.0f}s; "
        f"see `heroku pg:credentials {ADDON} -a {APP}` and run again")
    # doubling pauses, the last one cut to what is left of the budget
    assert sleeps[:7] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, pytest.approx(3.7, abs=0.3)]
    assert sum(sleeps) == pytest.approx(RETRY.total_seconds, abs=0.3)


def test_rotation_changes_the_password_and_the_attached_url(fake, open_db, open_app, pg, canary_password):
    db = open_db(fake)
    role = pg.role("raxx_app")
    old = db.create_credential(role)
    app = open_app(fake)
    assert app.attach_url(old, URL_VAR)
    attached = fake.config_vars(APP)[URL_VAR]
    assert _login(attached) == role
    fake.passwords.append(canary_password)
    fake.clear()

    new = db.rotate(role)

    addon_id = fake.addon(ADDON)["id"]
    assert _data(fake, "POST") == [("POST", f"/postgres/v0/databases/{addon_id}/credentials/{role}/credentials_rotation", {})]
    assert new.password.reveal() == canary_password != old.password.reveal()
    assert _login(new.url().reveal()) == role
    with pytest.raises(psycopg.OperationalError):
        _login(pg.tcp_dsn(role, old.password.reveal()))
    # Heroku keeps the attached var current: the app's URL carries the new password
    rotated = fake.config_vars(APP)[URL_VAR]
    assert rotated != attached and canary_password in rotated
    assert _login(rotated) == role


def test_rotating_a_missing_credential_is_an_error(fake, open_db):
    with pytest.raises(ProviderError, match="no credential nobody_here on postgresql-fluffy-12345 to rotate"):
        open_db(fake).rotate("nobody_here")
    assert fake.mutating() == []


def test_destroy_refuses_while_attached_and_works_after_detach(fake, open_db, open_app, pg):
    db = open_db(fake)
    app = open_app(fake)
    role = pg.role("raxx_app")
    cred = db.create_credential(role)
    assert app.attach_url(cred, URL_VAR)
    # the credential owns a table; destroying it hands the table to the owner, as Heroku does
    pg.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    with psycopg.connect(cred.url().reveal(), autocommit=True) as conn:
        conn.execute("CREATE TABLE made_by_app (id int)")
    fake.clear()

    with pytest.raises(Refused) as err:
        db.destroy(role)
    assert err.value.message == (
        f"heroku: credential {role} is still attached (RAPTOR_APP_DATABASE on {APP}); detach it first: "
        f"heroku addons:detach RAPTOR_APP_DATABASE -a {APP}")
    assert fake.mutating() == []

    assert app.detach_url(role, URL_VAR)
    db.destroy(role)
    addon_id = fake.addon(ADDON)["id"]
    assert _data(fake, "DELETE") == [("DELETE", f"/postgres/v0/databases/{addon_id}/credentials/{role}", None)]
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(0,)]
    owner = pg.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_app'")[0][0]
    assert owner.startswith("owner_")
    assert db.credential(role) is None
    db.destroy(role)                     # already gone: nothing to do
    assert len(_data(fake, "DELETE")) == 2


def test_the_data_api_itself_refuses_to_destroy_an_attached_credential(fake, pg):
    role = pg.role("raxx_app")
    fake.create_credential(ADDON, role)
    fake._attach(fake._find_addon(ADDON), APP, "RAPTOR_APP_DATABASE", f"credential:{role}")
    r = httpx.delete(f"{fake.data_url}/postgres/v0/databases/{ADDON}/credentials/{role}",
                     headers={"Authorization": f"Bearer {fake.token}"})
    assert r.status_code == 422
    assert r.json() == {"id": "unprocessable_entity",
                        "message": f"Credential {role} must be detached from the app {APP} before destroying."}
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)]


def test_connect_overrides_what_heroku_reports(pg, open_db, open_app):
    fake = FakeHeroku(admin_dsn=pg.admin_dsn, database=pg.dbname, port=pg.port,
                      advertised_host="ec2-34-1-2-3.compute-1.amazonaws.com", advertised_port=5432).start()
    try:
        fake.add_addon(APP, owner=pg.role("owner"), name=ADDON)
        db = open_db(fake, connect={"host": "127.0.0.1", "port": pg.port})
        assert _login(db.admin_dsn().reveal()).startswith("owner_")
        role = pg.role("raxx_app")
        cred = db.create_credential(role)
        assert (cred.host, cred.port) == ("127.0.0.1", pg.port)
        assert _login(cred.url().reveal()) == role
        # the app's attached URL is Heroku's own, with Heroku's host
        assert open_app(fake).attach_url(cred, URL_VAR)
        assert "@ec2-34-1-2-3.compute-1.amazonaws.com:5432/" in fake.config_vars(APP)[URL_VAR]
    finally:
        fake.stop()
    assert fake.errors == []


def test_attach_then_log_in_with_the_url_heroku_set(fake, open_db, tmp_path, pg, canary_password, sleeps):
    from tests.providers.heroku.conftest import app_config

    db = open_db(fake)
    role = pg.role("raxx_app")
    fake.passwords.append(canary_password)
    cred = db.create_credential(role)
    app = HerokuApp(app_config(), context(fake, tmp_path), budget=quick_budget(), sleep=sleeps)
    try:
        assert app.attach_url(cred, URL_VAR) is True
        url = app.get_config([URL_VAR])[URL_VAR]
    finally:
        app.close()
    assert canary_password in url
    assert _login(url) == role
