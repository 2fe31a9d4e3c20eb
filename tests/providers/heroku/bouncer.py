"""A real PgBouncer (Debian's `pgbouncer`) in front of a test cluster, as Heroku's connection
pooling puts one in front of the database: transaction mode, SCRAM, and roles looked up with
`auth_user`/`auth_query` so a credential created after the pooler started can log in through it
(or, with `lookup=False`, only the users of its auth file: a pooler that refuses a new role).

Binds 127.0.0.1 on a free port; as root it runs as the embedded clusters' service user (PgBouncer
refuses root). Missing binary: the test is skipped, except under CI=true, where it fails (.ci/run
installs pgbouncer)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from providers.embedded import _as_root, _ensure_service_user


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pgbouncer is not installed (CI=true: .ci/run must install it)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bouncer:
    def __init__(self, pg, *, lookup: bool = True, pool_mode: str = "transaction") -> None:
        # its own folder, not pytest's tmp_path: the service user must read it, and pytest's
        # basetemp is private to its owner (and pruned by other sessions)
        directory = Path(tempfile.mkdtemp(prefix="rb-bouncer-"))
        directory.chmod(0o755)
        self.pg, self.dir = pg, directory
        self.port = _free_port()
        self.auth_user = pg.role("bouncer_auth")
        password = "bouncer-" + os.urandom(8).hex()
        self.lookup = sql.Identifier(f"bouncer_{self.auth_user}", "lookup")
        with pg.connect() as conn:
            # the lookup role reads pg_shadow through a function in a schema of its own, as
            # PgBouncer's docs advise (public loses PUBLIC's USAGE on Heroku), not as a superuser
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(self.auth_user), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(f"bouncer_{self.auth_user}")))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(f"bouncer_{self.auth_user}"), sql.Identifier(self.auth_user)))
            conn.execute(sql.SQL(
                "CREATE FUNCTION {fn}(p_user text, OUT usename name, OUT passwd text) RETURNS record "
                "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog "
                "AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_user $$").format(fn=self.lookup))
            conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}(text) FROM PUBLIC").format(self.lookup))
            conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {}(text) TO {}").format(
                self.lookup, sql.Identifier(self.auth_user)))
        (directory / "userlist.txt").write_text(f'"{self.auth_user}" "{password}"\n')
        lines = [
            "[databases]",
            f"{pg.dbname} = host=127.0.0.1 port={pg.port} dbname={pg.dbname}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {directory / 'userlist.txt'}",
            f"pool_mode = {pool_mode}",
            f"logfile = {directory / 'pgbouncer.log'}",
            f"pidfile = {directory / 'pgbouncer.pid'}",
            "server_tls_sslmode = disable",
        ]
        if lookup:
            lines += [f"auth_user = {self.auth_user}",
                      f"auth_query = SELECT usename, passwd FROM bouncer_{self.auth_user}.lookup($1)"]
        (directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self._user: dict = {}
        if _as_root():
            uid, gid = _ensure_service_user()
            for path in (directory, *directory.iterdir()):
                os.chown(path, uid, gid)
            self._user = {"user": uid, "group": gid, "extra_groups": []}

    def start(self) -> "Bouncer":
        self.proc = subprocess.Popen([pgbouncer_binary(), str(self.dir / "pgbouncer.ini")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._user)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text() if path.exists() else ""


def login_through(url: str) -> tuple[str, int]:
    """(current_user, the server's port) over `url`: proof of who logged in, and where."""
    with psycopg.connect(url, connect_timeout=5, autocommit=True, prepare_threshold=None) as conn:
        who, port = conn.execute("SELECT current_user, inet_server_port()").fetchone()
    return who, port
