"""What every provider's contract tests share: fakes started and checked, providers opened and
closed, a `sleep` that records instead of waiting, platform-like admin logins, the database an
end-to-end test starts from, and its project file. Each provider's conftest keeps only what is
specific to that platform."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from providers.base import OpenContext, RetryPolicy
from providers.http import RateBudget
from runbook import commands
from tests.logins import create_login
from tests.projects import write_project as write_yaml

URL_VAR = "RAPTOR_DATABASE_URL"      # the app's variables, unless a provider's tests name their own
FLAG = "RAPTOR_NEW_ROLE"
RETRY = RetryPolicy(attempts=4, total_seconds=10, timeout_seconds=1, max_backoff_seconds=0.2)


class Sleeps(list):
    """Stands in for time.sleep: records what the provider chose to wait, waits nothing."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def quick_budget() -> RateBudget:
    # the shared budget would pause ~8 s after a 429 (plain time.sleep); tests refill it at once
    return RateBudget(refill_per_second=1e6)


def fake_context(environ: dict[str, str], tmp_path: Path, *, url_var: str = URL_VAR, flag: str = FLAG,
                 app_name: str = "raptor", retry: RetryPolicy = RETRY) -> OpenContext:
    return OpenContext(env_name="staging", app_name=app_name, base_dir=tmp_path, environ=environ, retry=retry,
                       url_var=url_var, flag_name=flag)


# -- fixture bodies: `yield from` them ---------------------------------------------------------

T = TypeVar("T")


def serving(fake: Any) -> Iterator[Any]:
    """A started fake for one test, stopped after it; a bug inside the fake fails the test."""
    yield fake
    fake.stop()
    assert fake.errors == [], "the fake itself failed:\n" + "\n".join(fake.errors)


def closing_all(open_one: Callable[..., T]) -> Iterator[Callable[..., T]]:
    """`open_one` for the test; everything it opened is closed after it."""
    opened: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> T:
        provider = open_one(*args, **kwargs)
        opened.append(provider)
        return provider

    yield make
    for provider in opened:
        provider.close()


# -- the database side -------------------------------------------------------------------------

@dataclass
class Login:
    name: str
    password: str


def new_login(pg, base: str, password: str, attributes: str = "") -> Login:
    """A login role unique to the test (`base`_suffix), like a platform's admin user."""
    name = pg.role(base)
    create_login(pg, name, password, attributes)
    return Login(name, password)


ORDERS = "CREATE TABLE public.orders (id bigserial PRIMARY KEY, total numeric)"


def as_login(dsn: str, *statements: str) -> None:
    """Run `statements` as the login in `dsn`, the way the app's migrations would."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def owned_database(pg, admin: Login) -> None:
    """Where an end-to-end test starts: `admin` owns the database and a table in it, as on a
    fresh managed instance the app's migrations have run on."""
    pg.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(pg.dbname), sql.Identifier(admin.name)))
    as_login(pg.tcp_dsn(admin.name, admin.password), ORDERS)


def role_exists(pg, role: str) -> bool:
    return bool(pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)))


def free_port() -> int:
    """A loopback port nothing listens on: the database, unreachable."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the project file --------------------------------------------------------------------------

def write_project(directory: Path, role: str, environment: dict[str, Any], *, url_var: str = URL_VAR,
                  flag: str = FLAG, app: str = "raptor", settings: dict[str, Any] | None = None) -> Path:
    """runbook.yaml with one `staging` environment: read/write on public's tables and sequences,
    the URL variable and a "1"/"0" flag."""
    data: dict[str, Any] = {
        "version": 1,
        "app": app,
        "role": {"name": role, "schemas": {"public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"],
                                                      "sequences": ["USAGE", "SELECT"]}}},
        "config": {"url_var": url_var},
        "flag": {"name": flag, "on_value": "1", "off_value": "0"},
    }
    if settings:
        data["settings"] = settings
    data["environments"] = {"staging": environment}
    return write_yaml(directory, data)


# -- what every end-to-end run checks ----------------------------------------------------------

def ran_ok(command, project, environ: dict[str, str]):
    """`command` (runbook.commands.provision, rollback, …) on staging with --yes: it ends "ok"."""
    result = command(project, "staging", yes=True, environ=environ)
    assert result.status == "ok", result.messages
    return result


def diagnosed_clean(project, environ: dict[str, str]):
    """`runbook diagnose` on staging: the four checks pass, in order."""
    diag = commands.diagnose(project, "staging", environ=environ)
    assert [(c.name, c.status) for c in diag.checks] == [
        ("role", "pass"), ("grants", "pass"), ("url", "pass"), ("flag", "pass")], [c.detail for c in diag.checks]
    return diag


def assert_not_shown(caplog, results, *secrets: str) -> None:
    """No secret reached the logs or the commands' JSON output."""
    shown = caplog.text + json.dumps([r.to_json() for r in results])
    for secret in secrets:
        assert secret not in shown
