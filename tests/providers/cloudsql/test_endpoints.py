"""Two endpoints on Cloud SQL: `connect` (a tunnel or Auth Proxy on loopback) is where the tool
connects; the app's URL names the instance's reported address with the app's sslmode, never the
tunnel's port or sslmode, unless app_host/app_port say otherwise. The tool proves the app's login
over its own endpoint."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from runbook.login import login_route, try_login
from runbook.secret import Secret
from tests.logins import create_login
from tests.providers.cloudsql.conftest import PASSWORD_ENV
from tests.providers.cloudsql.fake_google import PUBLIC_IP
from tests.providers.conftest import new_login
from tests.providers.rds.server_world import Tunnel

pytestmark = pytest.mark.pg


def test_a_tunnel_is_the_tools_and_the_app_url_keeps_the_instances_address(pg, fake, open_db, canary_password):
    tunnel = Tunnel(pg.port)
    try:
        admin = new_login(pg, "cloudsql_admin", canary_password + "-admin", "CREATEROLE")
        role = pg.role("raptor_app")
        create_login(pg, role, canary_password)
        db = open_db(fake, environ={PASSWORD_ENV: admin.password}, admin_user=admin.name, database=pg.dbname,
                     connect={"host": "127.0.0.1", "port": tunnel.port}, sslmode="disable")
        with psycopg.connect(db.admin_dsn().reveal()) as conn:       # the tool goes through the tunnel
            assert conn.info.port == tunnel.port
        cred = db.credential_for(role, Secret(canary_password))
        assert (cred.host, cred.port, cred.sslmode) == (PUBLIC_IP, 5432, "require")
        expected = db.credential_for(role, None)
        # the login is moved to the tunnel before anything is sent (the instance's address is not ours)
        assert conninfo_to_dict(db.login_route(cred.url()).reveal())["host"] == "127.0.0.1"
        assert try_login(cred.url(), role, expected, route=login_route(db)) == (True, "")
        tunnel.close()
        assert not try_login(cred.url(), role, expected, route=login_route(db))[0]
        over = open_db(fake, environ={PASSWORD_ENV: admin.password}, connect={"host": "127.0.0.1", "port": tunnel.port},
                       app_host="10.1.2.3", app_port=6432)
        assert (over.credential_for(role, None).host, over.credential_for(role, None).port) == ("10.1.2.3", 6432)
    finally:
        tunnel.close()
