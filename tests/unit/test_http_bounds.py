"""ApiClient stays inside its RetryPolicy (attempts and total time, the rate budget's pauses
included) and its one-line error says which bound ended the call; the budget and the retries
follow each platform's declared RateModel (Heroku's refilling account bucket, Supabase's fixed
window per endpoint with X-RateLimit-Reset and no Retry-After).

httpx.MockTransport answers; a fake clock that moves only when the client sleeps or an answer
"takes" time makes the time budget deterministic (nothing here waits for real, except the
RateBudget's 50 ms blind wait).
"""

from __future__ import annotations

import re

import httpx
import pytest

from providers import heroku, supabase
from providers.base import RetryPolicy
from providers.base import ProviderRuntime
from providers.http import ApiClient, NoTimeLeft, RateBudget, RateModel, shared_budget
from runbook.errors import ProviderError


class Clock:
    """Stands in for time.monotonic and time.sleep: time passes only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _client(handler, clock: Clock, budget: RateBudget | None = None, rate: RateModel | None = None,
            **policy: float) -> ApiClient:
    retry = RetryPolicy(**{"attempts": 20, "total_seconds": 2.0, "timeout_seconds": 1.0,
                           "max_backoff_seconds": 0.1, **policy})
    return ApiClient("api", "http://127.0.0.1:9", headers={}, retry=retry, transport=httpx.MockTransport(handler),
                     budget=budget, rate=rate, sleep=clock.sleep, clock=clock)


def _answering(clock: Clock, *responses: httpx.Response, seconds: float = 0.0):
    """A handler that takes `seconds` per request and gives the responses in turn (the last one again)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        clock.now += seconds
        return responses[min(len(seen), len(responses)) - 1]

    return handle, seen


def test_the_time_budget_ends_retries_and_the_error_says_so():
    clock = Clock()
    handle, seen = _answering(clock, httpx.Response(503), seconds=0.4)
    with pytest.raises(ProviderError) as err:
        _client(handle, clock).request("GET", "/x")
    made = len(seen)
    assert 2 <= made < 20
    assert re.fullmatch(rf"api: GET /x still failing after {made} attempts in \d+\.\ds, when the 2s retry "
                        r"budget ran out: HTTP 503", err.value.message), err.value.message
    assert clock.now - 1000.0 <= 2.0 + 0.4      # no pause crossed the deadline; one attempt may end past it


def test_the_attempt_count_ends_retries_and_the_error_says_so():
    clock = Clock()
    handle, seen = _answering(clock, httpx.Response(503))
    with pytest.raises(ProviderError) as err:
        _client(handle, clock, attempts=3, total_seconds=100).request("GET", "/x")
    assert err.value.message == "api: GET /x still failing after 3 attempts: HTTP 503"
    assert len(seen) == 3


def test_timeouts_ended_by_the_time_budget_say_so():
    clock = Clock()
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        clock.now += 1.0
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ProviderError) as err:
        _client(handle, clock, total_seconds=2.5).request("GET", "/x")
    assert re.fullmatch(rf"api: GET /x timed out after retries \({len(seen)} attempts in \d+\.\ds, when the "
                        r"2\.5s retry budget ran out\)", err.value.message), err.value.message
    assert len(seen) < 20


def test_a_retry_after_past_the_budget_fails_at_once():
    clock = Clock()
    handle, seen = _answering(clock, httpx.Response(429, headers={"Retry-After": "60"}))
    with pytest.raises(ProviderError) as err:
        _client(handle, clock, total_seconds=10).request("GET", "/x")
    assert err.value.message == ("api: GET /x still failing after 1 attempt: HTTP 429; it asks for 60s "
                                 "(Retry-After), more than the 10.0s left of the 10s retry budget")
    assert len(seen) == 1 and clock.sleeps == []


def test_a_retry_after_within_the_budget_is_honoured():
    clock = Clock()
    handle, seen = _answering(clock, httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200))
    assert _client(handle, clock, total_seconds=10).request("GET", "/x").status_code == 200
    assert clock.sleeps == [3.0] and len(seen) == 2


def test_an_unreadable_retry_after_falls_back_to_the_backoff():
    clock = Clock()
    handle, seen = _answering(clock, httpx.Response(503, headers={"Retry-After": "soon"}), httpx.Response(200))
    assert _client(handle, clock).request("GET", "/x").status_code == 200
    assert len(clock.sleeps) == 1 and clock.sleeps[0] <= 0.1


def _throttled_then_fine(clock: Clock):
    # a real 429: the account's budget is spent (RateLimit-Remaining: 0), come back at once
    return _answering(clock, httpx.Response(429, headers={"RateLimit-Remaining": "0", "Retry-After": "0"}),
                      httpx.Response(200, headers={"RateLimit-Remaining": "4000"}))


def test_the_rate_budget_never_pauses_past_the_callers_deadline():
    clock, paused = Clock(), []
    budget = RateBudget(heroku.RATE, sleep=paused.append)   # refills 1.25/s: ~8 s to get back to low water
    handle, seen = _throttled_then_fine(clock)
    with pytest.raises(ProviderError) as err:
        _client(handle, clock, budget=budget, total_seconds=3).request("GET", "/x")
    assert re.fullmatch(r"api: GET /x not retried after 1 attempt: the account's API rate budget needs a "
                        r"\d+\.\ds pause, more than the \d\.\ds left of the 3s retry budget", err.value.message), \
        err.value.message
    assert paused == [] and budget.waited == 0      # refused, not slept, and no slot reserved
    assert len(seen) == 1


def test_the_rate_budget_pauses_when_the_deadline_allows():
    clock, paused = Clock(), []
    budget = RateBudget(heroku.RATE, sleep=paused.append)
    handle, seen = _throttled_then_fine(clock)
    assert _client(handle, clock, budget=budget, total_seconds=60).request("GET", "/x").status_code == 200
    assert len(paused) == 1 and 7.0 < paused[0] <= 8.0 and len(seen) == 2


def test_the_wait_for_first_answers_is_bounded_too():
    budget = RateBudget(heroku.RATE, low_water=1)
    budget.before_request()                   # in flight, no answer yet: the next one waits for it
    with pytest.raises(NoTimeLeft):
        budget.before_request(time_left=0.05)
    budget.cancel()                           # the first one ended: room again
    budget.before_request(time_left=0.05)


# --- each platform's rate model -----------------------------------------------------------------

def test_each_platform_declares_its_own_model():
    assert (heroku.RATE.kind, heroku.RATE.per, heroku.RATE.limit) == ("bucket", "account", 4500)
    assert heroku.RATE.refill_per_second == pytest.approx(75 / 60)
    assert heroku.RATE.remaining_headers == ("RateLimit-Remaining",) and heroku.RATE.reset_header is None
    assert (supabase.RATE.kind, supabase.RATE.per, supabase.RATE.limit, supabase.RATE.window_seconds) == (
        "window", "endpoint", 120, 60)
    assert supabase.RATE.remaining_headers == ("X-RateLimit-Remaining",)
    assert supabase.RATE.reset_header == "X-RateLimit-Reset"


def _supabase_window(clock: Clock, seconds_left: float):
    """Supabase's documented 429: for the rest of the window, X-RateLimit-Reset seconds, no
    Retry-After; every request before the reset is refused again."""
    ends = clock.now + seconds_left
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if clock.now < ends:
            return httpx.Response(429, headers={"X-RateLimit-Limit": "120", "X-RateLimit-Remaining": "0",
                                                "X-RateLimit-Reset": str(int(ends - clock.now + 0.999))})
        return httpx.Response(200, headers={"X-RateLimit-Limit": "120", "X-RateLimit-Remaining": "119",
                                            "X-RateLimit-Reset": "60"})

    return handle, seen


def test_a_45s_supabase_window_is_waited_out_within_the_120s_budget():
    """The issue's case: five attempts of backoff used to end in 32 s, inside the window. Waiting
    for X-RateLimit-Reset takes one pause and one more attempt."""
    clock = Clock()
    handle, seen = _supabase_window(clock, 45)
    budget = RateBudget(supabase.RATE, sleep=clock.sleep, clock=clock)
    client = _client(handle, clock, budget=budget, attempts=5, total_seconds=120, max_backoff_seconds=20)
    assert client.request("POST", "/v1/projects/x/secrets").status_code == 200
    assert clock.sleeps == [45.0] and len(seen) == 2
    assert clock.now - 1000.0 == pytest.approx(45.0)


def test_without_the_model_the_same_window_ends_the_retries_early():
    """What the issue measured: no Retry-After, so only the backoff, and the attempts run out
    inside the window."""
    clock = Clock()
    handle, seen = _supabase_window(clock, 45)
    client = _client(handle, clock, attempts=5, total_seconds=120, max_backoff_seconds=20)
    with pytest.raises(ProviderError, match="still failing after 5 attempts: HTTP 429"):
        client.request("POST", "/v1/projects/x/secrets")
    assert sum(clock.sleeps) < 45


def test_a_window_longer_than_the_budget_fails_at_once_and_says_which_header():
    clock = Clock()
    handle, seen = _supabase_window(clock, 130)
    client = _client(handle, clock, rate=supabase.RATE, attempts=5, total_seconds=120)
    with pytest.raises(ProviderError) as err:
        client.request("GET", "/v1/projects/x/secrets")
    assert err.value.message == ("api: GET /v1/projects/x/secrets still failing after 1 attempt: HTTP 429; it asks "
                                 "for 130s (X-RateLimit-Reset), more than the 120.0s left of the 120s retry budget")
    assert len(seen) == 1 and clock.sleeps == []


def test_a_spent_window_is_waited_for_before_sending_and_only_on_its_endpoint():
    """A 2xx that says nothing is left in the window: the next request to that endpoint waits for
    the reset instead of meeting a 429; another endpoint has its own window."""
    clock = Clock()
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"})

    budget = RateBudget(supabase.RATE, sleep=clock.sleep, clock=clock)
    client = _client(handle, clock, budget=budget, total_seconds=120)
    client.request("GET", "/v1/projects/x/secrets")
    client.request("GET", "/v1/projects/x")             # another endpoint: no pause
    assert clock.sleeps == []
    client.request("GET", "/v1/projects/x/secrets")     # its window is spent: wait for the reset
    assert clock.sleeps == [30.0] and len(seen) == 3
    assert budget.scope("GET", "/v1/projects/x/secrets") is not budget.scope("GET", "/v1/projects/x")
    assert heroku_budget().scope("GET", "/a") is heroku_budget().scope("POST", "/b")    # one account-wide bucket


ONE_RUNTIME = ProviderRuntime()


def heroku_budget() -> RateBudget:
    return shared_budget("heroku:test-one-account", heroku.RATE, ONE_RUNTIME)


def test_a_spent_window_past_the_deadline_is_refused_without_sending():
    clock = Clock()
    budget = RateBudget(supabase.RATE, sleep=clock.sleep, clock=clock)
    handle, seen = _answering(clock, httpx.Response(200, headers={"X-RateLimit-Remaining": "0",
                                                                  "X-RateLimit-Reset": "50"}))
    client = _client(handle, clock, budget=budget, total_seconds=20)
    client.request("GET", "/v1/projects/x/secrets")
    with pytest.raises(ProviderError) as err:
        client.request("GET", "/v1/projects/x/secrets")
    assert re.fullmatch(r"api: GET /v1/projects/x/secrets not sent: this endpoint's rate-limit window is spent and "
                        r"resets in 50\.0s, more than the 20\.0s left of the 20s retry budget", err.value.message), \
        err.value.message
    assert len(seen) == 1 and clock.sleeps == []
