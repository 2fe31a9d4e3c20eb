"""Two endpoints on Heroku: `connect` (a tunnel on loopback) is where the tool connects; the app's
URL, which Heroku's attachment writes, names the endpoint Heroku reports. The login the tool
proves goes through the tunnel, with exactly the URL the app was given."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from runbook.login import login_route, try_login
from runbook.secret import Secret
from tests.providers.heroku.conftest import ADDON, APP, URL_VAR
from tests.providers.heroku.fake_heroku import FakeHeroku
from tests.providers.rds.server_world import Tunnel

pytestmark = pytest.mark.pg
PLATFORM_HOST = "ec2-34-9-8-7.compute-1.amazonaws.com"     # what Heroku reports; not reachable from here


def test_a_tunnel_is_the_tools_and_the_app_url_keeps_herokus_endpoint(pg, open_db, open_app):
    tunnel = Tunnel(pg.port)
    fake = FakeHeroku(admin_dsn=pg.admin_dsn, database=pg.dbname, port=pg.port,
                      advertised_host=PLATFORM_HOST, advertised_port=5432).start()
    try:
        fake.add_addon(APP, owner=pg.role("owner"), name=ADDON)
        db = open_db(fake, connect={"host": "127.0.0.1", "port": tunnel.port})
        with psycopg.connect(db.admin_dsn().reveal()) as conn:      # the tool goes through the tunnel
            assert conn.info.port == tunnel.port
        role = pg.role("raxx_app")
        cred = db.create_credential(role)
        assert (cred.host, cred.port) == ("127.0.0.1", tunnel.port)
        assert (cred.as_app().host, cred.as_app().port) == (PLATFORM_HOST, 5432)
        assert (db.credential_for(role, None).host, db.credential_for(role, None).port) == (PLATFORM_HOST, 5432)
        app = open_app(fake)
        assert app.attach_url(cred, URL_VAR)
        url = app.received_url()
        assert isinstance(url, str) and conninfo_to_dict(url)["host"] == PLATFORM_HOST
        # proven as the app would log in, through the tunnel (the platform's host does not resolve here)
        assert try_login(Secret(url), role, cred.as_app(), route=login_route(db)) == (True, "")
        tunnel.close()
        ok, why = try_login(Secret(url), role, cred.as_app(), route=login_route(db))
        assert not ok       # the login really went through the tunnel
    finally:
        tunnel.close()
        fake.stop()
    assert fake.errors == []


def test_without_a_tunnel_nothing_is_rerouted(fake, open_db):
    db = open_db(fake)
    assert login_route(db) is None
    assert db.connect is None


def test_one_heroku_api_object_per_environment(fake, tmp_path):
    from tests.providers.heroku.conftest import app_config, context, database_config

    ctx = context(fake, tmp_path)
    db, app = database_config().open(ctx), app_config().open(ctx)
    try:
        assert db.api is app.api        # one client pair, one token, one rate budget for both sides
        other = database_config().open(context(fake, tmp_path))
        assert other.api is not db.api  # another environment (another OpenContext) has its own
        other.close()
        db.close()
        assert app.api.closed and database_config().open(ctx).api is not db.api   # a closed one is not handed out
    finally:
        app.close()
