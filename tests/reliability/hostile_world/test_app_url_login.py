"""Item 6 of issue 12: a URL planted in the app's config must not make the tool send anyone a
password. A login with the app's URL uses only that URL's own password, only to the endpoint the
tool would write, with no password file, no PG* environment and require_auth=scram-sha-256.

The would-be thief is a server on 127.0.0.1 (and 127.0.0.2, on the real server's port) that asks
every client for a cleartext password and keeps what it gets."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from runbook import commands
from runbook.login import try_login
from runbook.secret import Secret
from tests.projects import dotenv
from tests.providers.wire import read_exact


class Thief:
    """Speaks just enough of the protocol: reads a startup packet, answers SSLRequest with 'N',
    sends AuthenticationCleartextPassword, and records any PasswordMessage."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.host, self.port = self.sock.getsockname()
        self.connections = 0
        self.passwords: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            while True:
                (length,) = struct.unpack("!I", read_exact(conn, 4))
                body = read_exact(conn, length - 4)
                if body[:4] in (struct.pack("!I", 80877103), struct.pack("!I", 80877104)):   # SSL / GSS request
                    conn.sendall(b"N")
                    continue
                break
            conn.sendall(b"R" + struct.pack("!II", 8, 3))            # AuthenticationCleartextPassword
            kind = read_exact(conn, 1)
            if kind == b"p":
                (length,) = struct.unpack("!I", read_exact(conn, 4))
                self.passwords.append(read_exact(conn, length - 4))
        except (OSError, struct.error):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def thief() -> Iterator[Thief]:
    t = Thief()
    yield t
    t.close()


def _plant(env, url: str) -> None:
    path = env.dir / ".runbook" / "staging.env"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("RAPTOR_APP_DATABASE_URL=")]
    path.write_text("\n".join([*lines, f"RAPTOR_APP_DATABASE_URL='{url}'"]) + "\n")


def _operator_secrets(env, monkeypatch, tmp_path, canary: str, thief: Thief) -> None:
    """Everything libpq could take on the operator's behalf: PGPASSWORD, a password file that
    matches any host, and PGHOSTADDR pointing at the thief."""
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:*:*:{canary}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSWORD", canary)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".pgpass").write_text(f"*:*:*:*:{canary}\n")
    (tmp_path / ".pgpass").chmod(0o600)


@pytest.mark.parametrize("planted", ["no-password-real-host", "no-password-thief", "thief-with-password",
                                     "hostaddr-to-thief", "passfile-param"])
def test_a_planted_url_gets_no_password_sent_anywhere(env, thief, monkeypatch, tmp_path, canary_password, planted):
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    role, port, db = env.role, env.pg.port, env.pg.dbname
    url = {
        "no-password-real-host": f"postgresql://{role}@127.0.0.1:{port}/{db}?sslmode=disable",
        "no-password-thief": f"postgresql://{role}@127.0.0.1:{thief.port}/{db}?sslmode=disable",
        "thief-with-password": f"postgresql://{role}:guess@127.0.0.1:{thief.port}/{db}?sslmode=disable",
        "hostaddr-to-thief": f"postgresql://{role}:guess@127.0.0.1:{port}/{db}?sslmode=disable&hostaddr=127.0.0.3",
        "passfile-param": f"postgresql://{role}@127.0.0.1:{port}/{db}?sslmode=disable&passfile={tmp_path}/pgpass",
    }[planted]
    _plant(env, url)
    _operator_secrets(env, monkeypatch, tmp_path, canary_password, thief)
    diag = commands.diagnose(env.project(), "staging", environ=env.environ)
    assert diag.exit_code == 4
    url_check = next(c for c in diag.checks if c.name == "url")
    assert url_check.status == "fail" and canary_password not in url_check.detail
    # provision replaces the planted URL with one of its own, still sending nobody anything
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    assert dotenv(env.dir)["RAPTOR_APP_DATABASE_URL"] != url
    assert (thief.connections, thief.passwords) == (0, [])


def test_pghostaddr_cannot_divert_the_login(env, monkeypatch, canary_password):
    """PGHOSTADDR (and PGPASSWORD) in the tool's environment, a thief on the real port of another
    loopback address: the login with the app's URL still reaches the real server, and only it.
    (The admin's own DSN is the operator's to shape with PG* variables; the app's URL is not.)"""
    from providers.base import Credential

    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    try:
        thief = Thief("127.0.0.2", env.pg.port)
    except OSError:
        pytest.skip("127.0.0.2 is not bindable here")
    try:
        monkeypatch.setenv("PGHOSTADDR", "127.0.0.2")
        monkeypatch.setenv("PGPASSWORD", canary_password)
        url = dotenv(env.dir)["RAPTOR_APP_DATABASE_URL"]
        expected = Credential(name=env.role, user=env.role, host="127.0.0.1", port=env.pg.port,
                              database=env.pg.dbname, sslmode="disable")
        assert try_login(Secret(url), env.role, expected) == (True, "")
        assert (thief.connections, thief.passwords) == (0, [])
    finally:
        thief.close()


def test_a_server_asking_for_cleartext_gets_nothing(thief, canary_password):
    """require_auth=scram-sha-256: even at the expected endpoint, a cleartext request is refused
    by libpq before the password leaves the process."""
    from providers.base import Credential

    expected = Credential(name="app", user="app", host="127.0.0.1", port=thief.port, database="db", sslmode="disable")
    ok, why = try_login(Secret(f"postgresql://app:{canary_password}@127.0.0.1:{thief.port}/db?sslmode=disable"),
                        "app", expected)
    assert not ok and canary_password not in why
    assert thief.connections == 1 and thief.passwords == []
