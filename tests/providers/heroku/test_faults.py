"""Injected faults are survived within bounded retries; the fake's own rate limiter and latency."""

from __future__ import annotations

import httpx
import pytest

from runbook.errors import ProviderError
from tests.providers.conftest import RETRY
from tests.providers.heroku.conftest import APP, FLAG
from tests.providers.heroku.fake_heroku import ACCEPT, FakeHeroku

CONFIG_VARS = f"/apps/{APP}/config-vars"


def _tries(fake, method="GET", path=CONFIG_VARS):
    return [(r.fault, r.status) for r in fake.requests if r.method == method and r.path == path]


def test_429_honours_retry_after(bare_fake, open_app, sleeps):
    bare_fake.inject("429", path=CONFIG_VARS, retry_after=7)
    assert open_app(bare_fake).get_config([FLAG]) == {FLAG: None}
    assert _tries(bare_fake) == [("429", 429), (None, 200)]
    assert sleeps == [7.0]      # Retry-After, not the (0.2 s max) backoff


def test_429_on_a_patch_is_retried_once_applied_once(bare_fake, open_app, sleeps):
    bare_fake.inject("429", method="PATCH", retry_after=1)
    open_app(bare_fake).set_config({FLAG: "1"})
    assert _tries(bare_fake, "PATCH") == [("429", 429), (None, 200)]
    assert bare_fake.config_vars(APP)[FLAG] == "1"


def test_503_twice_then_success(bare_fake, open_db, sleeps):
    bare_fake.inject("503", count=2)
    assert open_db(bare_fake).describe().plan == "heroku-postgresql:standard-0"
    first = bare_fake.requests[0].path
    assert _tries(bare_fake, path=first) == [("503", 503), ("503", 503), (None, 404)]
    assert len(sleeps) == 2 and all(s <= RETRY.max_backoff_seconds for s in sleeps)


def test_read_timeout_is_retried(bare_fake, open_app):
    bare_fake.inject("slow", path=CONFIG_VARS, delay=1.5)      # the client gives up after 1 s
    assert open_app(bare_fake).get_config([FLAG]) == {FLAG: None}
    # (the slow answer's status is recorded only once the fake wakes up, after the client left)
    assert [fault for fault, _ in _tries(bare_fake)] == ["slow", None]
    assert _tries(bare_fake)[1] == (None, 200)


def test_connection_reset_is_retried(bare_fake, open_app):
    bare_fake.inject("reset", path=CONFIG_VARS)
    assert open_app(bare_fake).get_config(["DATABASE_URL"])["DATABASE_URL"].startswith("postgres://")
    assert _tries(bare_fake) == [("reset", None), (None, 200)]


def test_a_data_api_fault_is_survived_too(bare_fake, open_db):
    bare_fake.inject("500", api="data")
    assert open_db(bare_fake).credential("raxx_app") is None
    assert [(r.fault, r.status) for r in bare_fake.requests if r.api == "data"] == [("500", 500), (None, 404)]


def test_retries_are_bounded_and_end_in_one_line(bare_fake, open_app):
    bare_fake.inject("503", path=CONFIG_VARS, count=100)
    with pytest.raises(ProviderError) as err:
        open_app(bare_fake).get_config([FLAG])
    assert err.value.message == (
        f"heroku: GET {CONFIG_VARS} still failing after 4 attempts: HTTP 503 service_unavailable: "
        "Heroku is temporarily unavailable.")
    assert len(_tries(bare_fake)) == RETRY.attempts


def test_timeouts_are_bounded(bare_fake, open_app):
    bare_fake.inject("slow", path=CONFIG_VARS, delay=1.2, count=100)
    with pytest.raises(ProviderError, match=r"timed out after retries \(4 attempts"):
        open_app(bare_fake).get_config([FLAG])
    assert len(_tries(bare_fake)) == RETRY.attempts


def _get(fake, path=CONFIG_VARS, token=None):
    return httpx.get(f"{fake.platform_url}{path}", headers={
        "Accept": ACCEPT, "Authorization": f"Bearer {token or fake.token}"})


def test_fake_rate_limit_is_per_token_with_remaining_on_every_response():
    fake = FakeHeroku(admin_dsn=None, database="d", port=5432, rate_limit=3, tokens=("tok-a", "tok-b")).start()
    try:
        fake.add_app(APP)
        answers = [_get(fake) for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert [r.headers["RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0"]
        assert answers[3].headers["Retry-After"] == "1200"        # one request per 1200 s at 3/hour
        assert answers[3].json()["id"] == "rate_limit"
        other = _get(fake, token="tok-b")                          # another account has its own budget
        assert (other.status_code, other.headers["RateLimit-Remaining"]) == (200, "2")
    finally:
        fake.stop()
    assert fake.errors == []


def test_unlimited_fake_still_announces_remaining(bare_fake):
    r = _get(bare_fake)
    assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "4500"
    r = _get(bare_fake, token="not-a-token")
    assert r.status_code == 401 and r.headers["RateLimit-Remaining"] == "4500"


def test_fake_latency_is_applied_to_every_request():
    fake = FakeHeroku(admin_dsn=None, database="d", port=5432, latency=0.01).start()
    try:
        fake.add_app(APP)
        for _ in range(3):
            assert _get(fake).status_code == 200
    finally:
        fake.stop()
    assert fake.delayed_seconds == pytest.approx(0.03)


def test_fake_refuses_a_missing_version_header(bare_fake):
    r = httpx.get(f"{bare_fake.platform_url}{CONFIG_VARS}", headers={"Authorization": f"Bearer {bare_fake.token}"})
    assert (r.status_code, r.json()["id"]) == (400, "missing_version")


def test_fake_keeps_the_two_apis_apart(bare_fake):
    r = httpx.get(f"{bare_fake.data_url}{CONFIG_VARS}", headers={"Accept": ACCEPT, "Authorization": f"Bearer {bare_fake.token}"})
    assert r.status_code == 404


def test_fake_answers_with_nagle_off(bare_fake):
    # its own attribute, not one a test patched onto BaseHTTPRequestHandler
    for server in bare_fake._servers.values():
        assert vars(server.RequestHandlerClass).get("disable_nagle_algorithm") is True
