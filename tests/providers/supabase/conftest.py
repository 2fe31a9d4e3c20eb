"""Fixtures for the supabase providers: the Management API fake (with and without PostgreSQL
behind it), the Supavisor-like front door, contexts pointing at them, and the test database laid
out like a hosted Supabase project: `supabase_admin` a superuser; `postgres` NOSUPERUSER
CREATEDB CREATEROLE BYPASSRLS, owner of the database and member of anon, authenticated and
service_role (each name suffixed per test: roles are cluster-wide)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from providers.base import OpenContext
from providers.supabase import SupabaseApp, SupabaseAppConfig, SupabaseDatabase, SupabaseDatabaseConfig
from tests.providers.conftest import FLAG, URL_VAR  # noqa: F401 (tests import them from here)
from tests.providers.conftest import Login, closing_all, fake_context, new_login, quick_budget, serving
from tests.providers.supabase.fake_supabase import REF, FakeSupabase
from tests.providers.supabase.supavisor import FrontDoor

PASSWORD_ENV = "RAPTOR_SUPABASE_DB_PASSWORD"


@pytest.fixture
def fake(pg) -> Iterator[FakeSupabase]:
    yield from serving(FakeSupabase(admin_dsn=pg.admin_dsn).start())


@pytest.fixture
def bare_fake() -> Iterator[FakeSupabase]:
    """Without PostgreSQL, for HTTP-only behaviour (runs once, not per PG version)."""
    yield from serving(FakeSupabase().start())


def context(fake: FakeSupabase, tmp_path: Path, **extra: str) -> OpenContext:
    return fake_context({**fake.environ(), **extra}, tmp_path)


def database_config(**block) -> SupabaseDatabaseConfig:
    return SupabaseDatabaseConfig.model_validate(
        {"project_ref": REF, "password_env": PASSWORD_ENV, **block},
        context={"env": "staging", "app": {"platform": "supabase"}})


def app_config(**block) -> SupabaseAppConfig:
    return SupabaseAppConfig.model_validate(
        block, context={"env": "staging", "database": {"provider": "supabase", "project_ref": REF}})


@pytest.fixture
def open_db(tmp_path):
    def open_one(fake: FakeSupabase, environ: dict[str, str] | None = None, **block) -> SupabaseDatabase:
        return SupabaseDatabase(database_config(**block), context(fake, tmp_path, **(environ or {})),
                                budget=quick_budget())

    yield from closing_all(open_one)


@pytest.fixture
def open_app(tmp_path):
    def open_one(fake: FakeSupabase, environ: dict[str, str] | None = None, **block) -> SupabaseApp:
        return SupabaseApp(app_config(**block), context(fake, tmp_path, **(environ or {})), budget=quick_budget())

    yield from closing_all(open_one)


@pytest.fixture
def supavisor(fake, pg) -> Iterator[FrontDoor]:
    door = FrontDoor(fake, pg.port).start()
    yield door
    door.stop()
    assert door.errors == [], door.errors


@pytest.fixture
def platform_roles(pg) -> dict[str, str]:
    """supabase_admin (superuser) and the NOLOGIN API roles, as a hosted project has them."""
    names = {base: pg.role(base) for base in ("supabase_admin", "anon", "authenticated", "service_role")}
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(names["supabase_admin"])))
    for base in ("anon", "authenticated", "service_role"):
        pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(names[base])))
    return names


@pytest.fixture
def admin(pg, canary_password, platform_roles) -> Login:
    """Like Supabase's postgres: NOSUPERUSER CREATEDB CREATEROLE BYPASSRLS, owner of the database,
    member of anon, authenticated and service_role."""
    admin = new_login(pg, "sbpostgres", canary_password, "NOSUPERUSER CREATEROLE CREATEDB BYPASSRLS")
    pg.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(pg.dbname), sql.Identifier(admin.name)))
    for base in ("anon", "authenticated", "service_role"):
        pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(platform_roles[base]), sql.Identifier(admin.name)))
    return admin
