"""ApiClient stays inside its RetryPolicy (attempts and total time, the rate budget's pauses
included) and its one-line error says which bound ended the call.

httpx.MockTransport answers; a fake clock that moves only when the client sleeps or an answer
"takes" time makes the time budget deterministic (nothing here waits for real, except the
RateBudget's 50 ms blind wait).
"""

from __future__ import annotations

import re

import httpx
import pytest

from providers.base import RetryPolicy
from providers.http import ApiClient, NoTimeLeft, RateBudget
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


def _client(handler, clock: Clock, budget: RateBudget | None = None, **policy: float) -> ApiClient:
    retry = RetryPolicy(**{"attempts": 20, "total_seconds": 2.0, "timeout_seconds": 1.0,
                           "max_backoff_seconds": 0.1, **policy})
    return ApiClient("api", "http://127.0.0.1:9", headers={}, retry=retry, transport=httpx.MockTransport(handler),
                     budget=budget, sleep=clock.sleep, clock=clock)


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
    budget = RateBudget(sleep=paused.append)       # refills 1.25/s: ~8 s to get back to low water
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
    budget = RateBudget(sleep=paused.append)
    handle, seen = _throttled_then_fine(clock)
    assert _client(handle, clock, budget=budget, total_seconds=60).request("GET", "/x").status_code == 200
    assert len(paused) == 1 and 7.0 < paused[0] <= 8.0 and len(seen) == 2


def test_the_wait_for_first_answers_is_bounded_too():
    budget = RateBudget(low_water=1)
    budget.before_request()                   # in flight, no answer yet: the next one waits for it
    with pytest.raises(NoTimeLeft):
        budget.before_request(time_left=0.05)
    budget.cancel()                           # the first one ended: room again
    budget.before_request(time_left=0.05)
