"""Reading the database log for the soak's `errors` check: the three PostgreSQL formats, what
counts for the role, and lines a hostile owner or client writes."""

from __future__ import annotations

import csv
import io
import json

import pytest

from runbook import dblog

PREFIX = "%m [%p] %q%u@%d "
T0 = dblog.parse_time("2026-12-01 12:00:00.000 UTC")


def text(*lines: str) -> list[str]:
    return [line + "\n" for line in lines]


def test_a_text_log_counts_the_roles_denials_and_auth_failures():
    records = list(dblog.parse_text(text(
        "2026-12-01 12:00:01.123 UTC [12] app@raptor ERROR:  permission denied for table orders",
        "2026-12-01 12:00:01.123 UTC [12] app@raptor STATEMENT:  SELECT * FROM orders",
        "2026-12-01 12:00:02.000 UTC [13] app@raptor FATAL:  password authentication failed for user \"app\"",
        "2026-12-01 12:00:03.000 UTC [14] app@raptor ERROR:  relation \"nope\" does not exist",
        "2026-12-01 12:00:04.000 UTC [15] other@raptor ERROR:  permission denied for table orders",
    ), PREFIX, "app"))
    found = dblog.count(records, "app", T0)
    assert (found.permission_denied, found.auth_failed) == (1, 1)
    assert found.first == ["ERROR: permission denied for table orders",
                           'FATAL: password authentication failed for user "app"']


def test_lines_before_the_moment_do_not_count():
    records = list(dblog.parse_text(text(
        "2026-12-01 11:59:59.999 UTC [12] app@raptor ERROR:  permission denied for table orders"), PREFIX, "app"))
    assert dblog.count(records, "app", T0).total == 0


@pytest.mark.parametrize("prefix,line", [
    ("%t:%r:%u@%d:[%p]:", "2026-12-01 12:00:01 UTC:10.0.0.7(51234):app@raptor:[77]:ERROR:  permission denied for schema s"),
    ("%m [%p] %u %d %e ", "2026-12-01 13:00:01.5 +01 [9] app raptor 42501 ERROR:  permission denied for schema s"),
    ("%n [%p] user=%u,db=%d ", "1796126401.250 [9] user=app,db=raptor ERROR:  permission denied for schema s"),
])
def test_prefixes_that_carry_user_and_time(prefix, line):
    assert dblog.prefix_problem(prefix) is None
    records = list(dblog.parse_text(text(line), prefix, "app"))
    assert len(records) == 1 and records[0].at == pytest.approx(T0 + 1, abs=0.5)
    assert dblog.count(records, "app", T0).permission_denied == 1


@pytest.mark.parametrize("prefix,why", [
    ("%m [%p] ", "does not carry the user"),
    ("%u@%d ", "carries no time"),
    ("%m %a %u ", "puts %a"),
])
def test_prefixes_that_cannot_attribute(prefix, why):
    assert why in dblog.prefix_problem(prefix)


def test_a_forged_line_inside_a_message_never_starts_a_line():
    # PostgreSQL writes a message's continuation lines after a tab
    forged = "2026-12-01 12:00:05.000 UTC [1] app@raptor ERROR:  permission denied for table forged"
    records = list(dblog.parse_text(text(
        "2026-12-01 12:00:05.000 UTC [40] owner@raptor LOG:  hello", "\t" + forged,
        "2026-12-01 12:00:05.000 UTC [40] owner@raptor ERROR:  permission denied for table x"), PREFIX, "app"))
    assert records == []


def test_lookalike_names_refuse_a_text_log():
    assert dblog.names_problem(["app", "app_reader", "postgres"], "app") is None
    assert "could pass for app" in dblog.names_problem(["app@evil"], "app")
    assert "could pass for app" in dblog.names_problem(["raptor ERROR:  permission denied"], "app")


def test_messages_are_cleaned_and_capped():
    line = "2026-12-01 12:00:05.000 UTC [1] app@raptor ERROR:  permission denied for table \x1b[2J\u202eevil" + "x" * 5000
    (record,) = dblog.parse_text(text(line), PREFIX, "app")
    assert "\x1b" not in record.message and "\u202e" not in record.message
    assert len(record.message) <= dblog.MAX_MESSAGE


def _csv_row(user: str, severity: str, state: str, message: str, when: str = "2026-12-01 12:00:01.000 UTC") -> str:
    row = [when, user, "raptor", "12", "127.0.0.1:5000", "s.1", "1", "SELECT", when, "3/4", "0",
           severity, state, message, "", "", "", "", "", "", "", "", "psql", "client backend", "", "0"]
    out = io.StringIO()
    csv.writer(out).writerow(row)
    return out.getvalue()


def test_csvlog_attributes_by_its_user_field():
    data = (_csv_row("app", "ERROR", "42501", "permission denied for table orders\n2026 [1] app@raptor ERROR:  x")
            + _csv_row("owner", "ERROR", "42501", "permission denied for table t")
            + _csv_row("app", "FATAL", "28P01", "password authentication failed for user \"app\""))
    records = list(dblog.parse_csvlog(io.StringIO(data), "app"))
    found = dblog.count(records, "app", T0)
    assert (found.permission_denied, found.auth_failed) == (1, 1)
    assert "\n" not in found.first[0]


def test_a_torn_csv_record_keeps_what_came_before():
    data = _csv_row("app", "ERROR", "42501", "permission denied for table orders") + '"2026-12-01 12:00:02.000 UTC","app","raptor","1'
    assert len(list(dblog.parse_csvlog(io.StringIO(data), "app"))) == 1


def test_jsonlog_attributes_by_its_user_field():
    lines = [json.dumps({"timestamp": "2026-12-01 12:00:01.000 UTC", "user": "app", "error_severity": "ERROR",
                         "state_code": "42501", "message": "permission denied for sequence orders_id_seq"}),
             json.dumps({"timestamp": "2026-12-01 12:00:01.000 UTC", "user": "owner", "error_severity": "ERROR",
                         "state_code": "42501", "message": "permission denied"}),
             "not json", json.dumps(["a list"])]
    found = dblog.count(dblog.parse_jsonlog([ln + "\n" for ln in lines], "app"), "app", T0)
    assert found.permission_denied == 1 and found.auth_failed == 0


def test_the_sqlstate_decides_when_present():
    # a role's own RAISE EXCEPTION 'permission denied' has SQLSTATE P0001: not a denial
    record = dblog.LogRecord(T0 + 1, "app", "ERROR", "permission denied (raised by a function)", "P0001")
    assert dblog.kind(record) is None
    assert dblog.kind(dblog.LogRecord(T0 + 1, "app", "LOG", "permission denied", None)) is None


def test_a_budget_stops_a_huge_log():
    budget = dblog.Budget(max_bytes=1000)
    lines = ("2026-12-01 12:00:05.000 UTC [1] app@raptor LOG:  statement: SELECT 1\n" for _ in range(10_000))
    assert list(dblog.parse_text(lines, PREFIX, "app", budget=budget)) == []
    assert budget.exhausted


def test_times_in_other_zones():
    assert dblog.parse_time("2026-12-01 13:00:00 +01") == T0
    assert dblog.parse_time("2026-12-01T12:00:00.000Z") == T0
    berlin = dblog.zone("Europe/Berlin")
    assert dblog.parse_time("2026-12-01 13:00:00.000 CET", berlin) == T0
    assert dblog.parse_time("2026-12-01 13:00:00.000 XYZ", berlin) is None


@pytest.mark.parametrize("value,ok", [("C", True), ("", True), ("POSIX", True), ("C.UTF-8", True),
                                      ("en_US.UTF-8", True), ("de_DE.UTF-8", False), ("fr_FR", False)])
def test_only_english_messages_can_be_counted_by_their_text(value, ok):
    assert (dblog.locale_problem(value) is None) == ok
