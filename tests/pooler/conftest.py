"""PgBouncer in front of the session's real clusters, and environments laid out behind it.

One bouncer per (cluster, mode, settings) for the whole session, started on first use:
- session:     pool_mode = session for everyone;
- transaction: pool_mode = transaction for everyone (the tool refuses it for its own session);
- mixed:       the admin on session pooling, every other role (the app's, made by the tool) on
               transaction pooling: the tool's session and the app's URL on one pooler address,
               as on Supabase (5432 / 6543) or a sidecar with per-user pool modes.
Each at PgBouncer's defaults, or with `ignore_startup_parameters = options`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import sql

from tests.pooler import bouncer as bouncers
from tests.pooler.bouncer import POOL_ADMIN, POOL_ADMIN_PASSWORD, Bouncer
from tests.pg.conftest import Env
from tests.projects import dotenv, spec_dict, write_project
from runbook.locks import lock_key


@pytest.fixture(scope="session")
def pgbouncer_binary() -> str:
    exe = bouncers.binary()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pgbouncer is not installed (Debian's `pgbouncer` package; .ci/run installs it)")
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer)")
    return exe


_running: dict[tuple, Bouncer] = {}
_roles_made: set[str] = set()


@pytest.fixture(scope="session")
def bouncer_pool(pgbouncer_binary, request) -> dict[tuple, Bouncer]:
    def stop_all() -> None:
        for b in _running.values():
            b.stop()
        _running.clear()
    request.addfinalizer(stop_all)
    return _running


def bouncer_for(pool: dict[tuple, Bouncer], cluster, mode: str, *, ignore_options: bool = False,
                settings: dict[str, str] | None = None, auth_file_users: dict[str, str] | None = None) -> Bouncer:
    if cluster.label not in _roles_made:
        bouncers.install_roles(cluster.admin())
        _roles_made.add(cluster.label)
    key = (cluster.label, mode, ignore_options, tuple(sorted((settings or {}).items())),
           tuple(sorted((auth_file_users or {}).items())))
    if key not in pool:
        pool[key] = Bouncer(cluster.port, mode, ignore_options=ignore_options, settings=dict(settings or {}),
                            auth_file_users=dict(auth_file_users or {})).start()
    return pool[key]


@dataclass
class PooledEnv(Env):
    """tests/pg's Env, its admin reaching the database through `bouncer`."""

    bouncer: Bouncer | None = None

    def url(self) -> str:
        return dotenv(self.dir)["RAPTOR_APP_DATABASE_URL"]

    def rewrite(self, **kw) -> None:
        database = kw.pop("database", None)
        data = spec_dict(self.role, owner=self.owner, **kw)
        if database:
            data["environments"]["staging"]["database"].update(database)
        write_project(self.dir, data)

    def advisory_locks(self) -> list[tuple]:
        """Every advisory lock on the cluster for this environment's key, whoever holds it."""
        unsigned = lock_key("raptor", "staging") & 0xFFFFFFFFFFFFFFFF
        return self.pg.execute(
            "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND objid = %s::oid",
            (str(unsigned >> 32), str(unsigned & 0xFFFFFFFF)))


def make_pooled_env(pg, tmp_path: Path, b: Bouncer, *, restart: str | None = None, database: dict | None = None,
                    tables: int = 0) -> PooledEnv:
    """The owner's tables in the test database; the admin (a CREATEROLE member of the owner, as
    managed platforms give you) reaching it through the bouncer; the app's URL built by the tool
    from that address, so it goes through the same bouncer (on `mixed`, in transaction mode)."""
    owner = pg.role("app_owner")
    role = pg.role("raptor_app")
    bouncers.install_auth_function(pg.admin_dsn)
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(POOL_ADMIN)))
        conn.execute(sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(pg.dbname), sql.Identifier(POOL_ADMIN)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, total int)")
        conn.execute("CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)")
        conn.execute("CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
        if tables:
            conn.execute(sql.SQL("""
                DO $$ BEGIN
                  FOR i IN 1..{} LOOP EXECUTE format('CREATE TABLE t_%s (id int)', i); END LOOP;
                END $$""").format(sql.Literal(tables)))
    dsn = b.dsn(POOL_ADMIN, POOL_ADMIN_PASSWORD, pg.dbname)
    data = spec_dict(role, owner=owner, restart=restart)
    if database:
        data["environments"]["staging"]["database"].update(database)
    path = write_project(tmp_path, data)
    return PooledEnv(pg, tmp_path, role, owner, dsn, {"RB_TEST_ADMIN_DSN": dsn, "PATH": "/usr/bin:/bin"}, path,
                     bouncer=b)
