"""Two endpoints on Supabase: `connect` (a tunnel on loopback) is where the tool connects; the
app's URL names the address the form gives (the direct host, or the pooler the Management API
reports), unless app_host/app_port say otherwise. The tool proves the app's login through the tunnel."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from runbook.login import login_route, try_login
from runbook.secret import Secret
from tests.logins import create_login
from tests.providers.conftest import new_login
from tests.providers.rds.server_world import Tunnel
from tests.providers.supabase.conftest import PASSWORD_ENV
from tests.providers.supabase.fake_supabase import REF

pytestmark = pytest.mark.pg


def test_a_tunnel_is_the_tools_and_the_app_url_keeps_the_platforms_endpoint(pg, bare_fake, open_db, canary_password):
    tunnel = Tunnel(pg.port)
    try:
        admin = new_login(pg, "postgres_admin", canary_password + "-admin", "CREATEROLE")
        role = pg.role("raptor_app")
        create_login(pg, role, canary_password)
        db = open_db(bare_fake, environ={PASSWORD_ENV: admin.password}, admin_user=admin.name, url_form="direct",
                     admin_form="direct", connect={"host": "127.0.0.1", "port": tunnel.port}, sslmode="disable",
                     database=pg.dbname)
        with psycopg.connect(db.admin_dsn().reveal()) as conn:       # the tool goes through the tunnel
            assert conn.info.port == tunnel.port
        cred = db.credential_for(role, Secret(canary_password))
        assert (cred.host, cred.port) == (f"db.{REF}.supabase.co", 5432)    # never the tunnel
        assert try_login(cred.url(), role, db.credential_for(role, None), route=login_route(db)) == (True, "")
        tunnel.close()
        assert not try_login(cred.url(), role, db.credential_for(role, None), route=login_route(db))[0]
        over = open_db(bare_fake, environ={PASSWORD_ENV: admin.password}, url_form="direct",
                       connect={"host": "127.0.0.1", "port": tunnel.port}, app_host="db.internal", app_port=6432)
        assert conninfo_to_dict(over.credential_for(role, None).url().reveal())["host"] == "db.internal"
        assert over.credential_for(role, None).port == 6432
    finally:
        tunnel.close()
