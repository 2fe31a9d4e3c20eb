"""Supabase's Postgres logs for the soak's `errors` check, through the Management API fake."""

from __future__ import annotations

import time

from runbook import dblog
from tests.providers.supabase import fake_logs

NOW = time.time()


def row(at: float, user: str, severity: str, state: str, message: str) -> dict:
    return {"timestamp": int(at * 1_000_000), "user_name": user, "error_severity": severity,
            "sql_state_code": state, "event_message": message}


def test_the_roles_errors_in_each_day_of_the_soak(bare_fake, open_db):
    since = NOW - 2.5 * 86400
    asked = fake_logs.install(bare_fake, [
        row(since - 10, "app", "ERROR", "42501", "permission denied for table before"),
        row(since + 10, "app", "ERROR", "42501", "permission denied for table orders\x1b[2J"),
        row(NOW - 86400 - 5, "app", "FATAL", "28P01", 'password authentication failed for user "app"'),
        row(NOW - 60, "owner", "ERROR", "42501", "permission denied for table x"),
        row(NOW - 30, "app", "ERROR", "42P01", 'relation "nope" does not exist'),
    ])
    lines = open_db(bare_fake).read_log(since, "app")
    assert lines.problem is None and not lines.text
    found = dblog.count(lines.records, "app", since)
    assert (found.permission_denied, found.auth_failed) == (1, 1)
    assert "\x1b" not in found.first[0]
    assert len(asked) == 3                        # 2.5 days: one query per day
    assert all("parsed.user_name = 'app'" in q["sql"] for q in asked)
    assert bare_fake.errors == []                 # every request and answer matched the OpenAPI document


def test_a_query_error_is_inconclusive(bare_fake, open_db):
    fake_logs.install(bare_fake, [], error="bad query")
    lines = open_db(bare_fake).read_log(NOW - 60, "app")
    assert "the logs query failed: bad query" in lines.problem
    assert bare_fake.errors == []


def test_a_role_name_that_cannot_be_quoted_is_refused(bare_fake, open_db):
    asked = fake_logs.install(bare_fake, [])
    lines = open_db(bare_fake).read_log(NOW - 60, "app' or 1=1 --")
    assert "cannot be put" in lines.problem and asked == []


def test_not_asked_it_reads_nothing(bare_fake, open_db):
    asked = fake_logs.install(bare_fake, [])
    assert open_db(bare_fake).read_log(NOW - 60, "app", asked=False) is None and asked == []
