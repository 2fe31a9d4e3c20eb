"""Two endpoints on the embedded PostgreSQL (`local` without a DSN): `connect` (a tunnel on
loopback) is where the tool connects; the app's URL names the server itself, unless
app_host/app_port say otherwise; `runbook embedded` reaches the server through the typed
embedded_server() capability."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from providers.local import LocalDatabaseConfig
from runbook.login import login_route
from runbook.secret import Secret
from tests.providers.conftest import fake_context
from tests.providers.rds.server_world import Tunnel

pytestmark = pytest.mark.pg


@pytest.fixture
def project_dir():
    """Outside pytest's basetemp, reachable by the server's own OS user (see tests/conftest.py's
    cluster_base: any pytest session on the machine makes /tmp/pytest-of-<user> 0700 again)."""
    base = Path(tempfile.mkdtemp(prefix="rb-embedded-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_embedded_a_tunnel_is_the_tools_and_the_app_url_names_the_server(project_dir):
    ctx = fake_context({}, project_dir)
    plain = LocalDatabaseConfig.model_validate({"embedded": ".runbook/pg", "database": "raptor"}).open(ctx)
    server = plain.embedded_server()
    assert server is not None
    plain.admin_dsn()                         # initialises and starts it
    tunnel = Tunnel(server.port)
    try:
        db = LocalDatabaseConfig.model_validate(
            {"embedded": ".runbook/pg", "database": "raptor", "connect": {"host": "127.0.0.1", "port": tunnel.port}}
        ).open(ctx)
        # the tool's admin session names the tunnel (the embedded admin logs in over the socket
        # without a password, so a TCP forward is only a DSN here, not a login)
        parts = conninfo_to_dict(db.admin_dsn().reveal())
        assert (parts["host"], parts["port"], parts["dbname"]) == ("127.0.0.1", str(tunnel.port), "raptor")
        with psycopg.connect(plain.admin_dsn().reveal()) as conn:      # the server the tunnel leads to
            assert conn.info.port == server.port
        cred = db.credential_for("raptor_app", Secret("pw-1234567"))
        assert (cred.host, cred.port, cred.database) == ("127.0.0.1", server.port, "raptor")
        assert login_route(db) is not None and login_route(plain) is None
        over = LocalDatabaseConfig.model_validate(
            {"embedded": ".runbook/pg", "database": "raptor", "connect": {"host": "127.0.0.1", "port": tunnel.port},
             "app_host": "db.internal", "app_port": 6432}).open(ctx)
        cred = over.credential_for("raptor_app", None)
        assert (cred.host, cred.port) == ("db.internal", 6432)
    finally:
        tunnel.close()
        server.stop()
    assert not server.running()


def test_a_dsn_means_no_embedded_server(tmp_path):
    ctx = fake_context({"ADMIN_DSN": "postgresql://admin@127.0.0.1:1/x"}, tmp_path)
    assert LocalDatabaseConfig.model_validate({"dsn_env": "ADMIN_DSN"}).open(ctx).embedded_server() is None
