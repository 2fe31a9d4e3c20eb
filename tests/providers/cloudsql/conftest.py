"""Fixtures for the cloudsql and cloudrun providers: the Google fakes (with and without
PostgreSQL behind them), contexts pointing at them, and a Cloud SQL-like admin in the test DB."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import errors, sql

from providers.base import OpenContext, RetryPolicy
from providers.cloudrun import CloudRunApp, CloudRunAppConfig
from providers.cloudsql import CloudSqlDatabase, CloudSqlDatabaseConfig
from providers.http import RateBudget
from tests.providers.cloudsql.fake_google import INSTANCE, PROJECT, REGION, SERVICE, FakeGoogle
from tests.logins import create_login

URL_VAR = "RAPTOR_DATABASE_URL"
FLAG = "RAPTOR_NEW_ROLE"
PASSWORD_ENV = "RAPTOR_PG_ADMIN_PASSWORD"
RETRY = RetryPolicy(attempts=4, total_seconds=10, timeout_seconds=1, max_backoff_seconds=0.2)


class Sleeps(list):
    """Stands in for time.sleep between operation polls: records, waits nothing."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def quick_budget() -> RateBudget:
    # the shared budget would pause ~8 s after a 429 (plain time.sleep); tests refill it at once
    return RateBudget(refill_per_second=1e6)


def _finish(fake: FakeGoogle) -> None:
    fake.stop()
    assert fake.errors == [], "the fake itself failed:\n" + "\n".join(fake.errors)


@pytest.fixture
def fake(pg) -> Iterator[FakeGoogle]:
    """The Google fakes over a real database (users.delete drops real roles)."""
    f = FakeGoogle(admin_dsn=pg.admin_dsn).start()
    yield f
    _finish(f)


@pytest.fixture
def bare_fake() -> Iterator[FakeGoogle]:
    """The fakes without PostgreSQL, for HTTP-only behaviour (runs once, not per PG version)."""
    f = FakeGoogle().start()
    yield f
    _finish(f)


def context(fake: FakeGoogle, tmp_path: Path, **extra: str) -> OpenContext:
    return OpenContext(env_name="staging", app_name="raptor", base_dir=tmp_path,
                       environ={**fake.environ(), **extra}, retry=RETRY, url_var=URL_VAR, flag_name=FLAG)


def database_config(**block) -> CloudSqlDatabaseConfig:
    return CloudSqlDatabaseConfig.model_validate(
        {"project": PROJECT, "instance": INSTANCE, "admin_password_env": PASSWORD_ENV, "poll_interval": "10ms",
         **block}, context={"env": "staging", "app": {"platform": "cloudrun"}})


def app_config(**block) -> CloudRunAppConfig:
    return CloudRunAppConfig.model_validate(
        {"region": REGION, "service": SERVICE, "url_secret": "raptor-database-url", "poll_interval": "10ms", **block},
        context={"env": "staging", "database": {"provider": "cloudsql", "project": PROJECT, "instance": INSTANCE}})


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def open_db(tmp_path, sleeps):
    opened: list[CloudSqlDatabase] = []

    def make(fake: FakeGoogle, environ: dict[str, str] | None = None, **block) -> CloudSqlDatabase:
        db = CloudSqlDatabase(database_config(**block), context(fake, tmp_path, **(environ or {})),
                              sleep=sleeps, budget=quick_budget())
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


@pytest.fixture
def open_app(tmp_path, sleeps):
    opened: list[CloudRunApp] = []

    def make(fake: FakeGoogle, **block) -> CloudRunApp:
        app = CloudRunApp(app_config(**block), context(fake, tmp_path), sleep=sleeps, budget=quick_budget())
        opened.append(app)
        return app

    yield make
    for app in opened:
        app.close()


# -- a Cloud SQL-like cluster: cloudsqlsuperuser and a non-superuser admin --------------------------

GROUP = "cloudsqlsuperuser"


def ensure_group(pg) -> None:
    """cloudsqlsuperuser exists once per cluster (roles are cluster-wide; the name is fixed)."""
    try:
        pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE CREATEDB").format(sql.Identifier(GROUP)))
    except errors.DuplicateObject:
        pass


@dataclass
class Admin:
    name: str
    password: str


@pytest.fixture
def admin(pg, canary_password) -> Admin:
    """Like Cloud SQL's postgres: LOGIN CREATEROLE CREATEDB, member of cloudsqlsuperuser, no SUPERUSER.
    From PG 16 it also holds ADMIN OPTION on the group (so it can pass membership on)."""
    ensure_group(pg)
    name = pg.role("csadmin")
    create_login(pg, name, canary_password, "CREATEROLE CREATEDB")
    with_admin = sql.SQL(" WITH ADMIN OPTION") if pg.major >= 16 else sql.SQL("")
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP), sql.Identifier(name)) + with_admin)
    pg.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(name)))
    return Admin(name, canary_password)


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
