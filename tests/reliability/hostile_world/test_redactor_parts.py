"""A registered DSN or URL teaches the redactor its password alone: a command that prints only
the password (or a libpq error quoting it) is masked as well as the whole DSN — without making
registration quadratic."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from runbook.secret import MASK, Secret, redact
from tests.conftest import CANARY


PASSWORD = CANARY + "/p@ss w'rd"


@pytest.mark.parametrize("dsn", [
    f"postgresql://admin:{quote(PASSWORD, safe='')}@db.internal:5432/app?sslmode=require",
    f"postgres://admin:{quote(PASSWORD, safe='')}@[::1]/app",
    "host=db.internal user=admin password='" + PASSWORD.replace("'", "\\'") + "' dbname=app",
    f"postgresql://db.internal/app?user=admin&password={quote(PASSWORD, safe='')}",
])
def test_the_password_of_a_registered_dsn_is_masked_alone(fresh_redactor, dsn):
    Secret(dsn)
    for form in (PASSWORD, quote(PASSWORD, safe="")):
        assert redact(f"the check printed: {form}\n") == f"the check printed: {MASK}\n"
    assert PASSWORD not in redact(dsn) and quote(PASSWORD, safe="") not in redact(dsn)


def test_a_dsn_without_a_password_registers_nothing_more(fresh_redactor):
    Secret("host=/run/postgresql user=postgres dbname=app")
    assert redact("user=postgres") == "user=postgres"


def test_tokens_and_plain_passwords_are_masked_alone_as_before(fresh_redactor):
    Secret("hrku-" + "a" * 30)
    Secret("a=b=c not a dsn at all")      # unparseable: registered as itself only
    assert redact("token hrku-" + "a" * 30) == f"token {MASK}"
    assert redact("a=b=c not a dsn at all") == MASK


def test_registering_many_dsns_stays_logarithmic(fresh_redactor):
    dsns = [f"postgresql://u{i}:pw-{i:05d}-secret@h/db" for i in range(2000)]
    for i, dsn in enumerate(dsns):
        Secret(dsn)
        if i % 7 == 0:
            redact("nothing")
    assert redact("pw-00042-secret and pw-01999-secret") == f"{MASK} and {MASK}"
    forms = 3 * 2 * len(dsns)              # each DSN and its password, in three forms
    assert sum(fresh_redactor) <= forms * 14, sum(fresh_redactor)
