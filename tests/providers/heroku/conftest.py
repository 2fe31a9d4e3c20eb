"""Fixtures for the Heroku provider: the contract fake (with and without PostgreSQL behind it),
an OpenContext pointing at it, and providers opened with a recording, non-sleeping `sleep`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import OpenContext, RetryPolicy
from providers.heroku import HerokuApp, HerokuAppConfig, HerokuDatabase, HerokuDatabaseConfig
from providers.http import RateBudget
from tests.providers.heroku.fake_heroku import FakeHeroku, start_fake

APP = "raxx-api-staging"
ADDON = "postgresql-fluffy-12345"
URL_VAR = "RAPTOR_APP_DATABASE_URL"
FLAG = "RAPTOR_APP_ROLE_ENABLED"
RETRY = RetryPolicy(attempts=4, total_seconds=10, timeout_seconds=1, max_backoff_seconds=0.2)


class Sleeps(list):
    """Stands in for time.sleep: records what the provider chose to wait, waits nothing."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _finish(fake: FakeHeroku) -> None:
    fake.stop()
    assert fake.errors == [], "the fake itself failed"


@pytest.fixture
def fake(pg) -> Iterator[FakeHeroku]:
    """The fake over a real database: one app, one standard-0 add-on attached as DATABASE."""
    f = start_fake(pg, app=APP, addon_name=ADDON)
    yield f
    _finish(f)


@pytest.fixture
def bare_fake() -> Iterator[FakeHeroku]:
    """The fake without PostgreSQL behind it, for HTTP-only behaviour (runs once, not per version)."""
    f = FakeHeroku(admin_dsn=None, database="d1abc", port=5432, advertised_host="ec2-1-2-3-4.compute-1.amazonaws.com").start()
    f.add_addon(APP, owner="u1owner", name=ADDON)
    yield f
    _finish(f)


def context(fake: FakeHeroku, tmp_path: Path, **extra: str) -> OpenContext:
    environ = {**fake.environ(), "HOME": str(tmp_path), **extra}
    return OpenContext(env_name="staging", app_name="raxx", base_dir=tmp_path, environ=environ, retry=RETRY,
                       url_var=URL_VAR, flag_name=FLAG)


def database_config(**block) -> HerokuDatabaseConfig:
    return HerokuDatabaseConfig.model_validate({"addon": "DATABASE", "sslmode": "disable", **block},
                                               context={"env": "staging", "app": {"name": APP}})


def app_config(**database) -> HerokuAppConfig:
    return HerokuAppConfig.model_validate(
        {"name": APP}, context={"env": "staging", "database": {"provider": "heroku", "addon": "DATABASE", **database}})


def quick_budget() -> RateBudget:
    # the shared budget pauses ~8 s after a 429 (time.sleep, not injectable); tests refill it fast
    return RateBudget(refill_per_second=1e6)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def open_db(tmp_path, sleeps):
    opened: list[HerokuDatabase] = []

    def make(fake: FakeHeroku, **block) -> HerokuDatabase:
        db = HerokuDatabase(database_config(**block), context(fake, tmp_path), budget=quick_budget(), sleep=sleeps)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


@pytest.fixture
def open_app(tmp_path, sleeps):
    opened: list[HerokuApp] = []

    def make(fake: FakeHeroku, config: HerokuAppConfig | None = None) -> HerokuApp:
        app = HerokuApp(config or app_config(), context(fake, tmp_path), budget=quick_budget(), sleep=sleeps)
        opened.append(app)
        return app

    yield make
    for app in opened:
        app.close()
