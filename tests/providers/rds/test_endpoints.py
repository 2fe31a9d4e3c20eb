"""The two endpoints of a database: where the tool connects (`connect`: a tunnel, bastion or
port-forward) and what the app's URL names (the platform's endpoint, or app_host/app_port).
The shared shape lives in providers.local.AppAddress; here the local provider, on the real
PostgreSQL, through a real port-forward."""

from __future__ import annotations

import pytest

from providers.local import AppAddress, LocalDatabaseConfig
from runbook.secret import Secret
from tests.providers.conftest import fake_context, new_login
from tests.providers.rds.server_world import Tunnel

pytestmark = pytest.mark.pg


def test_the_shape_defaults_to_the_reported_endpoint():
    assert AppAddress().tool_address(("db.example", 5432)) == ("db.example", 5432)
    assert AppAddress().app_address(("db.example", 5432)) == ("db.example", 5432)
    split = AppAddress.model_validate({"connect": {"host": "127.0.0.1", "port": 15432}, "app_port": 6432})
    assert split.tool_address(("db.example", 5432)) == ("127.0.0.1", 15432)
    assert split.app_address(("db.example", 5432)) == ("db.example", 6432)
    with pytest.raises(ValueError):
        AppAddress.model_validate({"app_port": 0})


def test_local_connect_is_the_tools_and_app_host_port_the_apps(pg, tmp_path, canary_password):
    import psycopg

    tunnel = Tunnel(pg.port)
    try:
        admin = new_login(pg, "admin", canary_password, "CREATEROLE")
        ctx = fake_context({"ADMIN_DSN": pg.tcp_dsn(admin.name, admin.password)}, tmp_path)
        db = LocalDatabaseConfig.model_validate(
            {"dsn_env": "ADMIN_DSN", "connect": {"host": "127.0.0.1", "port": tunnel.port}}).open(ctx)
        # the tool goes through the port-forward …
        with psycopg.connect(db.admin_dsn().reveal()) as conn:
            assert conn.info.port == tunnel.port
        # … the app's URL names the server itself, never the forward
        cred = db.credential_for("raptor_app", Secret(canary_password))
        assert (cred.host, cred.port, cred.database) == ("127.0.0.1", pg.port, pg.dbname)
        over = LocalDatabaseConfig.model_validate(
            {"dsn_env": "ADMIN_DSN", "connect": {"host": "127.0.0.1", "port": tunnel.port},
             "app_host": "db.internal", "app_port": 6432}).open(ctx)
        cred = over.credential_for("raptor_app", Secret(canary_password))
        assert (cred.host, cred.port) == ("db.internal", 6432)
    finally:
        tunnel.close()
