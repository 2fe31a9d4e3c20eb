"""A real PgBouncer (Debian's package) on 127.0.0.1 in front of a test cluster.

It authenticates every client with `auth_user` / `auth_query` (the standard SECURITY DEFINER
lookup over pg_authid, created in each database that clients connect to, as PgBouncer 1.18
runs the query in the client's database), so a role the tool has just created can log in
through it, and it logs in to the server with the client's own SCRAM keys (pass-through).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

AUTH_USER = "rb_pgbouncer_auth"
AUTH_PASSWORD = "pgbouncer-auth-pw-0123456789"
# a fixed admin that gets session pooling on a "mixed" bouncer, where everyone else (the app's
# roles, made by the tool) gets transaction pooling: Supabase's and many sidecars' layout
POOL_ADMIN = "rb_pool_admin"
POOL_ADMIN_PASSWORD = "pool-admin-pw-0123456789"


def binary() -> str | None:
    """The pgbouncer executable; RUNBOOK_TEST_PGBOUNCER names another (a missing path: none)."""
    chosen = os.environ.get("RUNBOOK_TEST_PGBOUNCER")
    if chosen is not None:
        return chosen if Path(chosen).is_file() else None
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_auth_function(admin_dsn: str) -> None:
    """The lookup PgBouncer's auth_query calls, in one database (run as a superuser)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pgbouncer")
        conn.execute("""
            CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text)
            RETURNS TABLE (usename name, passwd text) LANGUAGE sql SECURITY DEFINER
            SET search_path = pg_catalog AS
            $$ SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = p_usename AND rolcanlogin $$""")
        conn.execute("REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC")
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pgbouncer TO {}").format(sql.Identifier(AUTH_USER)))
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO {}").format(sql.Identifier(AUTH_USER)))


def install_roles(superuser_dsn: str) -> None:
    """The cluster-wide roles every bouncer of the session uses (once per cluster)."""
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        for name, password, extra in ((AUTH_USER, AUTH_PASSWORD, ""), (POOL_ADMIN, POOL_ADMIN_PASSWORD, " CREATEROLE")):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}" + extra).format(
                    sql.Identifier(name), sql.Literal(password)))


@dataclass
class Bouncer:
    """One PgBouncer process. mode: session | transaction | mixed (POOL_ADMIN session, others
    transaction); ignore_options: `ignore_startup_parameters = options`."""

    server_port: int
    mode: str
    ignore_options: bool = False
    auth_file_users: dict[str, str] = field(default_factory=dict)   # name → password; no auth_query when set
    settings: dict[str, str] = field(default_factory=dict)          # more [pgbouncer] lines
    port: int = 0
    dir: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> "Bouncer":
        exe = binary()
        assert exe, "pgbouncer is not installed"
        self.dir = Path(tempfile.mkdtemp(prefix="rb-bouncer-"))
        self.port = free_port()
        users = {AUTH_USER: AUTH_PASSWORD, **self.auth_file_users}
        if self.mode == "mixed" or self.settings.get("admin_users") == POOL_ADMIN:
            # a user named in [users] is not looked up by auth_query, nor is one logging in to the
            # admin console (there is no `pgbouncer` database to run the query in): give its password
            users[POOL_ADMIN] = POOL_ADMIN_PASSWORD
        (self.dir / "users.txt").write_text("".join(f'"{u}" "{p}"\n' for u, p in users.items()))
        pool_mode = "session" if self.mode == "session" else "transaction"
        lines = [
            "[databases]",
            f"* = host=127.0.0.1 port={self.server_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            f"pidfile = {self.dir}/pgbouncer.pid",
            f"logfile = {self.dir}/pgbouncer.log",
            "auth_type = scram-sha-256",
            f"auth_file = {self.dir}/users.txt",
            f"pool_mode = {pool_mode}",
            *([] if "default_pool_size" in self.settings else ["default_pool_size = 20"]),
            "max_client_conn = 200",
            "server_login_retry = 1",
        ]
        if not self.auth_file_users:
            lines += [f"auth_user = {AUTH_USER}", "auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)"]
        if self.ignore_options:
            lines.append("ignore_startup_parameters = options")
        lines += [f"{k} = {v}" for k, v in self.settings.items()]
        if self.mode == "mixed":
            lines += ["[users]", f"{POOL_ADMIN} = pool_mode=session"]
        (self.dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        args = [exe, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # PgBouncer will not run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            for f in self.dir.iterdir():
                os.chown(f, user.pw_uid, user.pw_gid)
            self.dir.chmod(0o700)
            args[1:1] = ["-u", "postgres"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise RuntimeError(f"pgbouncer did not start: {err}{self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def dsn(self, user: str, password: str, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(host="127.0.0.1", port=str(self.port), user=user, password=password,
                                              dbname=dbname, sslmode="disable")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
