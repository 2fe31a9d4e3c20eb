"""Fixtures for the cloudsql and cloudrun providers: the Google fakes (with and without
PostgreSQL behind them), contexts pointing at them, and a Cloud SQL-like admin in the test DB.

The PostgreSQL behind them is laid out as Cloud SQL lays it out: a cluster per version whose
bootstrap superuser is `cloudsqladmin` (initdb -U cloudsqladmin: the customer never gets a
superuser), `cloudsqlsuperuser` NOLOGIN CREATEROLE CREATEDB, the IAM groups
`cloudsqliamserviceaccount` / `cloudsqliamuser`, and an admin that is NOSUPERUSER CREATEROLE
CREATEDB in cloudsqlsuperuser, as `postgres` is there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import errors, sql

from providers.base import OpenContext
from tests.conftest import VERSIONS, _clusters, _retire_cluster, _start
from providers.cloudrun import CloudRunApp, CloudRunAppConfig
from providers.cloudsql import CloudSqlDatabase, CloudSqlDatabaseConfig
from tests.logins import create_login
from tests.providers.cloudsql.fake_google import INSTANCE, PROJECT, REGION, SERVICE, FakeGoogle
from tests.providers.conftest import FLAG, URL_VAR  # noqa: F401 (tests import them from here)
from tests.providers.conftest import Login, closing_all, fake_context, new_login, quick_budget, serving

PASSWORD_ENV = "RAPTOR_PG_ADMIN_PASSWORD"


@pytest.fixture
def fake(pg) -> Iterator[FakeGoogle]:
    """The Google fakes over a real database (users.delete drops real roles)."""
    yield from serving(FakeGoogle(admin_dsn=pg.admin_dsn).start())


@pytest.fixture
def bare_fake() -> Iterator[FakeGoogle]:
    """The fakes without PostgreSQL, for HTTP-only behaviour (runs once, not per PG version)."""
    yield from serving(FakeGoogle().start())


def context(fake: FakeGoogle, tmp_path: Path, **extra: str) -> OpenContext:
    return fake_context({**fake.environ(), **extra}, tmp_path)


def database_config(**block) -> CloudSqlDatabaseConfig:
    return CloudSqlDatabaseConfig.model_validate(
        {"project": PROJECT, "instance": INSTANCE, "admin_password_env": PASSWORD_ENV, "poll_interval": "10ms",
         **block}, context={"env": "staging", "app": {"platform": "cloudrun"}})


def app_config(**block) -> CloudRunAppConfig:
    return CloudRunAppConfig.model_validate(
        {"region": REGION, "service": SERVICE, "url_secret": "raptor-database-url", "poll_interval": "10ms", **block},
        context={"env": "staging", "database": {"provider": "cloudsql", "project": PROJECT, "instance": INSTANCE}})


@pytest.fixture
def open_db(tmp_path, sleeps):
    def open_one(fake: FakeGoogle, environ: dict[str, str] | None = None, **block) -> CloudSqlDatabase:
        return CloudSqlDatabase(database_config(**block), context(fake, tmp_path, **(environ or {})),
                                sleep=sleeps, budget=quick_budget())

    yield from closing_all(open_one)


@pytest.fixture
def open_app(tmp_path, sleeps):
    def open_one(fake: FakeGoogle, **block) -> CloudRunApp:
        return CloudRunApp(app_config(**block), context(fake, tmp_path), sleep=sleeps, budget=quick_budget())

    yield from closing_all(open_one)


# -- a Cloud SQL-like cluster: cloudsqlsuperuser and a non-superuser admin --------------------------

GROUP = "cloudsqlsuperuser"
BOOTSTRAP = "cloudsqladmin"
LAYOUT = """
DO $layout$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudsqlsuperuser') THEN
    CREATE ROLE cloudsqlsuperuser NOLOGIN CREATEROLE CREATEDB;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudsqliamserviceaccount') THEN
    CREATE ROLE cloudsqliamserviceaccount NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudsqliamuser') THEN
    CREATE ROLE cloudsqliamuser NOLOGIN;
  END IF;
END $layout$
"""


@pytest.fixture(scope="session", params=[v[0] for v in VERSIONS])
def cluster(request: pytest.FixtureRequest, cluster_base):
    """Overrides tests/conftest.py's: one Cloud SQL-like cluster per version and worker."""
    label = f"cloudsql-{request.param}"
    if label not in _clusters:
        import psycopg

        rc = _clusters[label] = _start(label, dict(VERSIONS)[request.param], cluster_base, admin_user=BOOTSTRAP)
        with psycopg.connect(rc.admin(), autocommit=True) as conn:
            conn.execute(LAYOUT)
        request.addfinalizer(lambda: _retire_cluster(label))
    yield _clusters[label]


def ensure_group(pg) -> None:
    """cloudsqlsuperuser exists once per cluster (roles are cluster-wide; the name is fixed)."""
    try:
        pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE CREATEDB").format(sql.Identifier(GROUP)))
    except errors.DuplicateObject:
        pass


@pytest.fixture
def admin(pg, canary_password) -> Login:
    """Like Cloud SQL's postgres: LOGIN CREATEROLE CREATEDB, member of cloudsqlsuperuser, no SUPERUSER.
    From PG 16 it also holds ADMIN OPTION on the group (so it can pass membership on)."""
    ensure_group(pg)
    admin = new_login(pg, "postgres", canary_password, "NOSUPERUSER CREATEROLE CREATEDB")
    ident = sql.Identifier(admin.name)
    with_admin = sql.SQL(" WITH ADMIN OPTION") if pg.major >= 16 else sql.SQL("")
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP), ident) + with_admin)
    pg.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
    return admin


def api_created_user(pg, name: str, password: str, *, grantor: str | None = None) -> None:
    """A user as the Cloud SQL API creates it: LOGIN CREATEROLE CREATEDB, in cloudsqlsuperuser.
    `grantor`: who granted the membership (PG 16+; default the bootstrap superuser, as Cloud SQL's
    own cloudsqladmin does, which the admin cannot revoke)."""
    ensure_group(pg)
    create_login(pg, name, password, "CREATEROLE CREATEDB")
    grant = sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP), sql.Identifier(name))
    if grantor and pg.major >= 16:
        grant += sql.SQL(" GRANTED BY {}").format(sql.Identifier(grantor))
    pg.execute(grant)


def role_state(pg, name: str) -> tuple[bool, bool, bool] | None:
    rows = pg.execute(
        """SELECT r.rolcreaterole, r.rolcreatedb,
                  EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                          WHERE m.member = r.oid AND g.rolname = %s)
             FROM pg_roles r WHERE r.rolname = %s""", (GROUP, name))
    return tuple(rows[0]) if rows else None   # type: ignore[return-value]
