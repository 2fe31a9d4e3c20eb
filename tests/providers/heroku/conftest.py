"""Fixtures for the Heroku provider: the contract fake (with and without PostgreSQL behind it),
an OpenContext pointing at it, and providers opened with a recording, non-sleeping `sleep`."""

from __future__ import annotations

import dataclasses

from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import OpenContext, ProviderRuntime
from providers.heroku import HerokuApp, HerokuAppConfig, HerokuDatabase, HerokuDatabaseConfig
from tests.providers.conftest import as_login, closing_all, fake_context, quick_budget, serving
from tests.providers.heroku.fake_heroku import FakeHeroku, start_fake

APP = "raxx-api-staging"
ADDON = "postgresql-fluffy-12345"
URL_VAR = "RAPTOR_APP_DATABASE_URL"
FLAG = "RAPTOR_APP_ROLE_ENABLED"


@pytest.fixture
def fake(pg) -> Iterator[FakeHeroku]:
    """The fake over a real database: one app, one standard-0 add-on attached as DATABASE."""
    yield from serving(start_fake(pg, app=APP, addon_name=ADDON))


# a `roles:` project on the fake (tests/providers/three_roles.py writes it)
ROLES_ENV = {"provider": "heroku", "database": {"addon": ADDON, "sslmode": "disable"}, "app": {"name": APP}}
ROLES_SETTINGS = {"http_attempts": 4, "http_timeout": "2s", "retry_budget": "20s"}


@pytest.fixture
def three_roles(fake, pg) -> tuple[str, str, str]:
    """orders and alembic_version made with the owner credential; the app, readonly and ci role
    names (the credentials the fake makes for them are dropped with the test's roles)."""
    as_login(fake.owner_url(ADDON), "CREATE TABLE orders (id bigserial PRIMARY KEY, total int)",
             "CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
    return pg.role("raxx_app"), pg.role("raxx_ro"), pg.role("raxx_ci")


@pytest.fixture
def bare_fake() -> Iterator[FakeHeroku]:
    """The fake without PostgreSQL behind it, for HTTP-only behaviour (runs once, not per version)."""
    f = FakeHeroku(admin_dsn=None, database="d1abc", port=5432, advertised_host="ec2-1-2-3-4.compute-1.amazonaws.com").start()
    f.add_addon(APP, owner="u1owner", name=ADDON)
    yield from serving(f)


# one ProviderRuntime per test, as the database and app sides of one run share theirs
_RUNTIMES: dict[Path, ProviderRuntime] = {}


def context(fake: FakeHeroku, tmp_path: Path, **extra: str) -> OpenContext:
    ctx = fake_context({**fake.environ(), "HOME": str(tmp_path), **extra}, tmp_path, app_name="raxx",
                       url_var=URL_VAR, flag=FLAG)
    return dataclasses.replace(ctx, runtime=_RUNTIMES.setdefault(tmp_path, ProviderRuntime()))


def database_config(**block) -> HerokuDatabaseConfig:
    return HerokuDatabaseConfig.model_validate({"addon": "DATABASE", "sslmode": "disable", **block},
                                               context={"env": "staging", "app": {"name": APP}})


def app_config(**database) -> HerokuAppConfig:
    return HerokuAppConfig.model_validate(
        {"name": APP}, context={"env": "staging", "database": {"provider": "heroku", "addon": "DATABASE", **database}})


@pytest.fixture
def open_db(tmp_path, sleeps):
    def open_one(fake: FakeHeroku, **block) -> HerokuDatabase:
        return HerokuDatabase(database_config(**block), context(fake, tmp_path), budget=quick_budget(), sleep=sleeps)

    yield from closing_all(open_one)


@pytest.fixture
def open_app(tmp_path, sleeps):
    def open_one(fake: FakeHeroku, config: HerokuAppConfig | None = None) -> HerokuApp:
        return HerokuApp(config or app_config(), context(fake, tmp_path), budget=quick_budget(), sleep=sleeps)

    yield from closing_all(open_one)
