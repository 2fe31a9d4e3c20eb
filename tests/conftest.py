"""Shared fixtures: real PostgreSQL clusters, one per available major version.

Each xdist worker starts its own clusters once per session (a second or so each); every test
gets a fresh database cloned from a template, and role names unique to the test, because roles
are cluster-wide.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from providers.embedded import ADMIN_USER, Cluster, embedded_bin_dir

DEBIAN_PG15 = Path("/usr/lib/postgresql/15/bin")

# A recognisable password for every credential a test can choose; the canary check fails the
# session if it shows up anywhere it should not.
CANARY = "CanaryPw-7f3c9e1d-do-not-leak"


def _versions() -> list[tuple[str, Path]]:
    found = [("pg18", embedded_bin_dir())]
    if (DEBIAN_PG15 / "postgres").exists() and os.environ.get("RUNBOOK_TEST_SKIP_PG15") != "1":
        found.append(("pg15", DEBIAN_PG15))
    return found


VERSIONS = _versions()


@dataclass
class RunningCluster:
    label: str
    cluster: Cluster
    major: int

    def admin(self, dbname: str = "postgres") -> str:
        return self.cluster.admin_conninfo(dbname)

    @property
    def port(self) -> int:
        return self.cluster.port


_clusters: dict[str, RunningCluster] = {}


def _start(label: str, bin_dir: Path, base: Path, admin_user: str = ADMIN_USER) -> RunningCluster:
    cluster = Cluster(bin_dir, base / label, admin_user)
    cluster.start(settings={"log_statement": "all", "log_min_messages": "warning"})
    cluster.wait_ready()
    rc = RunningCluster(label, cluster, cluster.version())
    with psycopg.connect(rc.admin(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE rb_template")
    return rc


@pytest.fixture(scope="session")
def cluster_base() -> Iterator[Path]:
    # not under pytest's basetemp: another pytest session on the machine prunes old basetemps,
    # which would pull the data directory out from under a running server
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="rb-clusters-"))
    base.chmod(0o755)
    yield base
    if os.environ.get("RUNBOOK_TEST_KEEP_CLUSTERS") != "1":
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session", params=[v[0] for v in VERSIONS])
def cluster(request: pytest.FixtureRequest, cluster_base: Path) -> Iterator[RunningCluster]:
    label = request.param
    if label not in _clusters:
        bin_dir = dict(VERSIONS)[label]
        _clusters[label] = _start(label, bin_dir, cluster_base)
        request.addfinalizer(lambda: _retire_cluster(label))
    yield _clusters[label]


@dataclass
class PgTarget:
    """A fresh database on a real cluster, with helpers for the roles a test creates."""

    rc: RunningCluster
    dbname: str
    suffix: str
    roles: list[str] = field(default_factory=list)

    @property
    def major(self) -> int:
        return self.rc.major

    @property
    def port(self) -> int:
        return self.rc.port

    @property
    def admin_dsn(self) -> str:
        return self.rc.admin(self.dbname)

    def role(self, base: str) -> str:
        """A role name unique to this test (roles are cluster-wide)."""
        name = f"{base}_{self.suffix}"
        self.roles.append(name)
        return name

    def connect(self, **kw) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True, **kw)

    def tcp_dsn(self, user: str, password: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=str(self.port), user=user, password=password, dbname=self.dbname,
            sslmode="disable")

    def execute(self, statement: str | sql.Composable, params=None) -> list[tuple]:
        with self.connect() as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []


def _retire_cluster(label: str) -> None:
    """Session-wide canary check, then teardown: no test's canary password reached the server
    log (log_statement = all), whatever test put it there."""
    rc = _clusters.pop(label)
    try:
        text = rc.cluster.log_file.read_text(errors="replace")
    except OSError:
        text = ""
    if os.environ.get("RUNBOOK_TEST_KEEP_CLUSTERS") != "1":
        rc.cluster.destroy()
    assert CANARY not in text, f"canary password found in the {label} server log"


@pytest.fixture
def pg(cluster: RunningCluster) -> Iterator[PgTarget]:
    suffix = uuid.uuid4().hex[:8]
    dbname = f"t_{suffix}"
    with psycopg.connect(cluster.admin(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE rb_template").format(sql.Identifier(dbname)))
    target = PgTarget(cluster, dbname, suffix)
    yield target
    with psycopg.connect(cluster.admin(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        # the test's roles, and those named after them (an alternating role's NAME_a and NAME_b)
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"%\\_{suffix}%",)).fetchall()
        for (role,) in rows:
            # anything the role still owns elsewhere went with the database; shared objects first
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def prod_cluster() -> Iterator[Cluster]:
    """A second cluster for promotion tests, prod beside the test cluster's staging (roles are
    cluster-wide, as they are across real environments); one per module and worker. Not under
    pytest's basetemp (see cluster_base), and reachable by the server's own user, which the
    CLI's `pg_ctl status` runs as."""
    base = Path(tempfile.mkdtemp(prefix="rb-prod-"))
    base.chmod(0o755)
    cluster = Cluster(embedded_bin_dir(), base / "pg")
    cluster.start(settings={"log_statement": "all"})
    cluster.wait_ready()
    yield cluster
    cluster.destroy()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def canary_password() -> str:
    return CANARY + "-" + secrets.token_hex(2)


def empty_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """runbook.secret as a new process has it: no secret known, no pattern, no prefilter heads (so
    that what hundreds of earlier tests registered is carried through neither this one's patterns
    nor its prefilter)."""
    from runbook import secret

    monkeypatch.setattr(secret, "_known", set())
    monkeypatch.setattr(secret, "_pending", [])
    monkeypatch.setattr(secret, "_pattern", None)
    monkeypatch.setattr(secret, "_heads", frozenset())


@pytest.fixture
def fresh_redactor(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """An empty redactor (empty_redactor), and the number of values of each pattern it compiles."""
    from runbook import secret

    empty_redactor(monkeypatch)
    compiled: list[int] = []
    real = secret._compile
    monkeypatch.setattr(secret, "_compile", lambda values: compiled.append(len(values)) or real(values))
    return compiled
