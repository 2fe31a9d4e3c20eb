"""A realistic local environment on the test cluster: an owner role that owns the app's
tables (including migration bookkeeping), and an admin that is either the superuser or a
CREATEROLE user that is a member of the owner (what managed platforms give you)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.projects import spec_dict, write_project
from runbook import project as projects


@dataclass
class Env:
    pg: object
    dir: Path
    role: str
    owner: str
    admin_dsn: str
    environ: dict[str, str]
    path: Path

    def project(self) -> projects.Project:
        return projects.load(self.path)

    def as_owner(self, statement: str) -> None:
        with self.pg.connect() as conn:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.owner)))
            conn.execute(statement)

    def app_conn(self) -> psycopg.Connection:
        from tests.projects import dotenv

        url = dotenv(self.dir)["RAPTOR_APP_DATABASE_URL"]
        return psycopg.connect(url, autocommit=True)

    def rewrite(self, **kw) -> None:
        write_project(self.dir, spec_dict(self.role, owner=self.owner, **kw))


def make_env(pg, tmp_path: Path, *, admin: str = "superuser", **spec_kw) -> Env:
    owner = pg.role("app_owner")
    role = pg.role("raptor_app")
    pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
    pg.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
    with pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, total int)")
        conn.execute("CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)")
        conn.execute("CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
        conn.execute("CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100")
    if admin == "superuser":
        dsn = pg.admin_dsn
    else:
        name = pg.role("admin")
        password = "admin-pw-0123456789"
        pg.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(name)))
        pg.execute(sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(sql.Identifier(pg.dbname), sql.Identifier(name)))
        dsn = pg.tcp_dsn(name, password)
    path = write_project(tmp_path, spec_dict(role, owner=owner, **spec_kw))
    return Env(pg, tmp_path, role, owner, dsn, {"RB_TEST_ADMIN_DSN": dsn, "PATH": "/usr/bin:/bin"}, path)


@pytest.fixture(params=["superuser", "createrole"])
def env(request, pg, tmp_path) -> Env:
    return make_env(pg, tmp_path, admin=request.param)


@pytest.fixture
def su_env(pg, tmp_path) -> Env:
    return make_env(pg, tmp_path, admin="superuser")


@contextmanager
def prod_database(cluster, env: Env, *tables: str) -> Iterator[str]:
    """A fresh database on `cluster` (see prod_cluster) whose `tables` belong to env's owner, as
    staging's do; dropped afterwards with the owner and app roles the test created there."""
    dbname = f"prod_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(env.owner)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    with psycopg.connect(cluster.admin_conninfo(dbname), autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(env.owner)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(env.owner)))
        for table in tables:
            conn.execute(table)
    try:
        yield dbname
    finally:
        with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            for role in (env.role, env.owner):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
