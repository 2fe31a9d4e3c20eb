"""The pure rules behind items 2, 3 and 6: what a role's mark says, and which app URLs a login
may be tried with (no database needed)."""

from __future__ import annotations

import pytest

from providers.base import Credential
from runbook.login import app_conninfo
from runbook.roles import Identity, parse_marker

EXPECTED = Credential(name="raptor_app", user="raptor_app", host="db.internal", port=5432, database="raptor",
                      sslmode="require")


def test_a_mark_names_one_identity_and_nothing_else_parses_as_one():
    ident = Identity("raptor", "staging", "raptor")
    assert parse_marker(ident.marker()) == ident
    for comment in (None, "", "managed by pg-runbook", ident.marker().replace("pg-runbook", "pg_runbook"),
                    "pg-runbook managed role {not json", 'pg-runbook managed role {"app": "raptor"}'):
        assert parse_marker(comment) is None


@pytest.mark.parametrize("url, why", [
    ("postgresql://raptor_app@db.internal:5432/raptor", "no password"),
    ("postgresql://raptor_app:pw@evil.example:5432/raptor", "points elsewhere: host 'evil.example'"),
    ("postgresql://raptor_app:pw@db.internal:6543/raptor", "port '6543'"),
    ("postgresql://raptor_app:pw@db.internal:5432/other", "dbname 'other'"),
    ("postgresql://app_owner:pw@db.internal:5432/raptor", "user 'app_owner'"),
    ("postgresql://raptor_app:pw@db.internal:5432/raptor?hostaddr=203.0.113.9", "sets hostaddr"),
    ("postgresql://raptor_app:pw@db.internal:5432/raptor?passfile=/root/.pgpass", "sets passfile"),
    ("postgresql://raptor_app:pw@db.internal:5432/raptor?service=prod", "sets service"),
    ("postgresql://raptor_app:pw@db.internal:5432/raptor?sslkey=/root/.postgresql/postgresql.key", "sets sslkey"),
    ("postgresql://raptor_app:pw@db.internal,evil.example:5432/raptor", "points elsewhere"),
    ("not a url at all", "does not parse"),
])
def test_a_url_that_must_not_be_tried(url, why):
    params, reason = app_conninfo(url, EXPECTED)
    assert params is None and why in reason, reason


def test_a_good_url_logs_in_with_its_own_password_and_nothing_libpq_could_add():
    params, reason = app_conninfo("postgresql://raptor_app:s3cret@db.internal:5432/raptor?sslmode=verify-full", EXPECTED)
    assert reason == ""
    assert params["password"] == "s3cret" and params["sslmode"] == "verify-full"
    assert (params["hostaddr"], params["passfile"], params["require_auth"], params["gssencmode"]) == \
        ("", "/dev/null", "scram-sha-256", "disable")
