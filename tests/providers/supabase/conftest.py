"""Fixtures for the supabase providers: the Management API fake (with and without PostgreSQL
behind it), contexts pointing at it, and a Supabase-like `postgres` admin in the test DB."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import sql

from providers.base import OpenContext, RetryPolicy
from providers.http import RateBudget
from providers.supabase import SupabaseApp, SupabaseAppConfig, SupabaseDatabase, SupabaseDatabaseConfig
from tests.logins import create_login
from tests.providers.supabase.fake_supabase import REF, FakeSupabase

URL_VAR = "RAPTOR_DATABASE_URL"
FLAG = "RAPTOR_NEW_ROLE"
PASSWORD_ENV = "RAPTOR_SUPABASE_DB_PASSWORD"
RETRY = RetryPolicy(attempts=4, total_seconds=10, timeout_seconds=1, max_backoff_seconds=0.2)


def quick_budget() -> RateBudget:
    # the shared budget would pause ~8 s after a 429 (plain time.sleep); tests refill it at once
    return RateBudget(refill_per_second=1e6)


def _finish(fake: FakeSupabase) -> None:
    fake.stop()
    assert fake.errors == [], "the fake itself failed:\n" + "\n".join(fake.errors)


@pytest.fixture
def fake(pg) -> Iterator[FakeSupabase]:
    f = FakeSupabase(admin_dsn=pg.admin_dsn).start()
    yield f
    _finish(f)


@pytest.fixture
def bare_fake() -> Iterator[FakeSupabase]:
    """Without PostgreSQL, for HTTP-only behaviour (runs once, not per PG version)."""
    f = FakeSupabase().start()
    yield f
    _finish(f)


def context(fake: FakeSupabase, tmp_path: Path, **extra: str) -> OpenContext:
    return OpenContext(env_name="staging", app_name="raptor", base_dir=tmp_path,
                       environ={**fake.environ(), **extra}, retry=RETRY, url_var=URL_VAR, flag_name=FLAG)


def database_config(**block) -> SupabaseDatabaseConfig:
    return SupabaseDatabaseConfig.model_validate(
        {"project_ref": REF, "password_env": PASSWORD_ENV, **block},
        context={"env": "staging", "app": {"platform": "supabase"}})


def app_config(**block) -> SupabaseAppConfig:
    return SupabaseAppConfig.model_validate(
        block, context={"env": "staging", "database": {"provider": "supabase", "project_ref": REF}})


@pytest.fixture
def open_db(tmp_path):
    opened: list[SupabaseDatabase] = []

    def make(fake: FakeSupabase, environ: dict[str, str] | None = None, **block) -> SupabaseDatabase:
        db = SupabaseDatabase(database_config(**block), context(fake, tmp_path, **(environ or {})),
                              budget=quick_budget())
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


@pytest.fixture
def open_app(tmp_path):
    opened: list[SupabaseApp] = []

    def make(fake: FakeSupabase, environ: dict[str, str] | None = None, **block) -> SupabaseApp:
        app = SupabaseApp(app_config(**block), context(fake, tmp_path, **(environ or {})), budget=quick_budget())
        opened.append(app)
        return app

    yield make
    for app in opened:
        app.close()


@dataclass
class Admin:
    name: str
    password: str


@pytest.fixture
def admin(pg, canary_password) -> Admin:
    """Like Supabase's postgres: LOGIN CREATEROLE CREATEDB, not a superuser, owner of the database."""
    name = pg.role("sbpostgres")
    create_login(pg, name, canary_password, "CREATEROLE CREATEDB")
    pg.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(pg.dbname), sql.Identifier(name)))
    return Admin(name, canary_password)
