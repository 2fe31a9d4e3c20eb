"""The redactor's prefilter (runbook/secret.py): a text in which no registered secret can start
is returned without compiling the patterns; one that holds a secret is masked exactly as before,
whatever was registered meanwhile."""

from __future__ import annotations

from urllib.parse import quote

from runbook import secret
from runbook.secret import MASK, Secret, redact


def test_texts_without_a_secret_compile_nothing_and_secrets_are_still_masked(fresh_redactor):
    urls = [f"postgres://fleet_app:pw-{i:03d}-{'x' * 20}@127.0.0.1:5432/db{i}" for i in range(50)]
    for i, url in enumerate(urls):
        Secret(url)
        # what a fleet's environments say between registrations: step notes, masked URLs
        assert redact(f"fleet-{i:03d}: applied ensure-role, url {MASK}") == f"fleet-{i:03d}: applied ensure-role, url {MASK}"
    assert fresh_redactor == []
    password = f"pw-017-{'x' * 20}"
    # a secret at the very end, one cut by nothing, its quoted form, and a whole URL
    text = f"a {urls[3]} b {quote(password, safe='')} c {password}"
    assert redact(text) == f"a {MASK} b {MASK} c {MASK}"
    assert fresh_redactor and sum(fresh_redactor) == len(secret._known)     # everything known, compiled once


def test_a_secret_that_only_begins_the_text_or_ends_it_is_found(fresh_redactor):
    Secret("begin-secret-value")
    Secret("other-secret-value")
    assert redact("begin-secret-value") == MASK
    assert redact("xx other-secret-value") == f"xx {MASK}"
    assert redact("begin-secre") == "begin-secre"               # a prefix alone is not the secret
