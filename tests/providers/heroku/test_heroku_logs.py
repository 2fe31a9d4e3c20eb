"""Heroku Postgres's log for the soak's `errors` check, through a log session on the fake."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from runbook import dblog
from tests.providers.heroku.conftest import APP
from tests.providers.heroku.fake_logs import Logplex

NOW = time.time()


def pg_line(at: float, user: str, level: str, message: str, *, state: str = "42501", part: int = 1,
            app_name: str = "web") -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + ".000000+00:00"
    return (f'{stamp} app[postgres.1234]: [DATABASE] [7-{part}]  sql_error_code = {state} time_ms = "x" pid="99" '
            f'database="d1abc" connection_source="10.1.2.3(5432)" user="{user}" application_name="{app_name}" '
            f"{level}:  {message}")


@pytest.fixture
def logplex(bare_fake) -> Iterator[Logplex]:
    plex = Logplex(bare_fake)
    yield plex
    plex.stop()
    assert plex.problems == []


def test_the_roles_errors_when_the_buffer_covers_the_soak(bare_fake, logplex, open_db):
    since = NOW - 600
    logplex.lines[APP] = [
        pg_line(since - 30, "app", "LOG", "connection received", state="00000"),
        pg_line(since + 1, "app", "ERROR", "permission denied for table orders"),
        pg_line(since + 2, "u1owner", "ERROR", "permission denied for table x"),
        pg_line(since + 3, "u1owner", "LOG", "hello", state="00000") ,
        pg_line(since + 3, "u1owner", "LOG", pg_line(since + 3, "app", "ERROR", "permission denied forged"), part=2),
        pg_line(since + 4, "app", "FATAL", 'password authentication failed for user "app"', state="28P01"),
        f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(since + 5))}+00:00 heroku[router]: at=info user=\"app\"",
    ]
    lines = open_db(bare_fake).read_log(since, "app")
    assert lines.problem is None and lines.partial is None, lines
    found = dblog.count(lines.records, "app", since)
    assert (found.permission_denied, found.auth_failed) == (1, 1)
    assert logplex.bodies == [{"dyno": "postgres", "lines": 1500, "tail": False}]


def test_a_buffer_that_does_not_reach_the_flag_is_partial(bare_fake, logplex, open_db):
    logplex.lines[APP] = [pg_line(NOW - 10, "app", "LOG", "x", state="00000")]
    lines = open_db(bare_fake).read_log(NOW - 3600, "app")
    assert "last 1500 lines" in lines.partial and "log drain" in lines.partial


def test_lines_without_the_user_are_inconclusive(bare_fake, logplex, open_db):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW)) + "+00:00"
    logplex.lines[APP] = [f"{stamp} app[postgres.1234]: [DATABASE] [7-1]  sql_error_code = 42501 ERROR:  permission denied"]
    lines = open_db(bare_fake).read_log(NOW - 60, "app")
    assert "do not name the user" in lines.problem


def test_not_asked_it_reads_nothing(bare_fake, logplex, open_db):
    assert open_db(bare_fake).read_log(NOW - 60, "app", asked=False) is None
    assert logplex.bodies == []
