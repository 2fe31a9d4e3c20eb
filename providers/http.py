"""One HTTP client shape for every provider API: httpx + tenacity, bounded, quiet.

- Retries 429 (honouring Retry-After), 5xx, timeouts and connection resets; never 4xx otherwise.
- Bounded by attempts *and* total time (RetryPolicy), so a run never waits forever: no pause (a
  backoff, a Retry-After, the rate budget's) ends past the call's deadline, no retry starts after
  it, and the error says which bound ended the call.
- Paces itself when the API says the budget is low (RateLimit-Remaining, x-ratelimit-remaining),
  through a RateBudget that may be shared by every client of one account (fleet runs).
- Never logs or raises with a response body: provider bodies hold config vars and passwords.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential_jitter,
)

from providers.base import RetryPolicy
from runbook.errors import ProviderError
from runbook.secret import redact

RETRY_STATUS = {429, 500, 502, 503, 504}


class RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None     # unreadable: the backoff decides
    return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class NoTimeLeft(Exception):
    """The rate budget's pause would end after the caller's deadline; nothing was sent."""

    def __init__(self, pause: float | None, left: float) -> None:
        super().__init__("no time left for the rate budget's pause")
        self.pause = pause      # None: waiting for the first answers of requests in flight
        self.left = left


class RateBudget:
    """Per-account pacing. Clients report the remaining budget the API announced; when it runs
    low, callers wait a little before the next request instead of meeting a 429.

    Shared by parallel clients (a fleet), it counts requests in flight: an answer's remaining
    count was taken when the server handled that request, so the others still in flight are
    subtracted from it. Until the first answer, at most `low_water` requests go out blind."""

    def __init__(self, low_water: int = 10, refill_per_second: float = 75 / 60,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.low_water = low_water
        self.refill_per_second = refill_per_second
        self.sleep = sleep
        self._remaining: float | None = None
        self._unmetered = False     # the API answered without a remaining count: nothing to pace by
        self._inflight = 0          # admitted by before_request, not yet answered
        self._stamp = time.monotonic()
        self._cond = threading.Condition()
        self.waited = 0.0
        self.throttled = 0      # 429s met by clients sharing this budget

    def before_request(self, time_left: float | None = None) -> None:
        """Admit one request, pausing first when the budget runs low. `time_left` is what remains
        of the caller's retry budget: a pause that would outlast it is refused with NoTimeLeft,
        and nothing is reserved."""
        deadline = None if time_left is None else time.monotonic() + time_left
        with self._cond:
            while self._remaining is None and not self._unmetered and self._inflight >= self.low_water:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NoTimeLeft(None, 0.0)
                self._cond.wait(0.5 if left is None else min(0.5, left))
            self._inflight += 1
            if self._remaining is None:
                return
            now = time.monotonic()
            self._remaining += (now - self._stamp) * self.refill_per_second
            self._stamp = now
            if self._remaining >= self.low_water:
                self._remaining -= 1
                return
            # reserve the next slot: callers queue up 1/refill apart
            delay = (self.low_water - self._remaining) / self.refill_per_second
            if deadline is not None and now + delay > deadline:
                self._inflight -= 1
                raise NoTimeLeft(delay, max(0.0, deadline - now))
            self._remaining = self.low_water - 1
            self._stamp = now + delay
            self.waited += delay
        self.sleep(delay)

    def observe(self, response: httpx.Response) -> None:
        with self._cond:
            self._inflight = max(0, self._inflight - 1)
            if response.status_code == 429:
                # the client's retry honours Retry-After; the budget only counts, so as not to wait twice
                self.throttled += 1
            value = next((response.headers[name] for name in ("RateLimit-Remaining", "X-RateLimit-Remaining")
                          if name in response.headers), None)    # httpx headers are case-insensitive
            try:
                if value is None:
                    raise ValueError
                self._remaining = float(value) - self._inflight
                self._stamp = time.monotonic()
            except ValueError:
                if self._remaining is None:
                    self._unmetered = True
            self._cond.notify_all()

    def cancel(self) -> None:
        """A request admitted by before_request got no answer (timeout, reset)."""
        with self._cond:
            self._inflight = max(0, self._inflight - 1)
            self._cond.notify_all()


_BUDGETS: dict[str, RateBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def shared_budget(account_key: str) -> RateBudget:
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(account_key, RateBudget())


_TLS: Any = None


def _tls_context() -> Any:
    """httpx's default TLS context, built once per process: building it loads the CA bundle (~20 ms
    of CPU, under the GIL), and a fleet opens two clients per environment."""
    global _TLS
    if _TLS is None:
        with _BUDGETS_LOCK:
            if _TLS is None:
                _TLS = httpx.create_ssl_context()
    return _TLS


ErrorFormatter = Callable[[httpx.Response], str]


def default_error(response: httpx.Response) -> str:
    return f"HTTP {response.status_code}"


class ApiClient:
    """A thin, retrying JSON client for one API base URL."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        headers: dict[str, str],
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None = None,
        budget: RateBudget | None = None,
        describe_error: ErrorFormatter = default_error,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.retry = retry
        self.budget = budget
        self.describe_error = describe_error
        self.sleep = sleep
        self.clock = clock
        self.calls = 0
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(retry.timeout_seconds, connect=min(10.0, retry.timeout_seconds)),
            transport=transport,
            follow_redirects=False,
            verify=_tls_context() if transport is None else True,
        )

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200, 201, 202, 204),
                allow: tuple[int, ...] = ()) -> httpx.Response:
        """Send with retries. Returns the response for statuses in `ok` or `allow`; raises
        ProviderError (one line) for anything else, saying what ended the retries."""
        policy = self.retry
        started = self.clock()
        deadline = started + policy.total_seconds
        ended: dict[str, Any] = {"by": "attempts"}    # what stopped the retries, and when
        sent = 0

        def attempt() -> httpx.Response:
            nonlocal sent
            if self.budget:
                self.budget.before_request(deadline - self.clock())
            self.calls += 1
            sent += 1
            try:
                response = self.client.request(method, path, json=json, params=params, headers=headers)
            except BaseException:
                if self.budget:
                    self.budget.cancel()
                raise
            if self.budget:
                self.budget.observe(response)
            if response.status_code in RETRY_STATUS and response.status_code not in allow:
                response.read()
                raise RetryableStatus(response)
            return response

        def stop(state: RetryCallState) -> bool:
            left = deadline - self.clock()
            if state.attempt_number >= policy.attempts:
                by = "attempts"
            elif left <= 0:
                by = "budget"
            elif (_hint(state) or 0.0) > left:
                # the API says when it will take the request again, and that is past the deadline
                by = "retry-after"
            else:
                return False
            ended.update(by=by, left=max(0.0, left), elapsed=self.clock() - started)
            return True

        def wait(state: RetryCallState) -> float:
            hinted = _hint(state)
            backoff = wait_exponential_jitter(multiplier=0.5, max=policy.max_backoff_seconds)(state)
            # never sleep past the deadline
            return max(0.0, min(hinted if hinted is not None else backoff, deadline - self.clock()))

        retryer = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, (RetryableStatus, httpx.TransportError))),
            stop=stop, wait=wait, sleep=self.sleep, reraise=True,
        )
        where = f"{self.name}: {method} {path}"

        def spent() -> str:
            """The attempts made; with the clock when the time budget, not the count, ended them."""
            made = f"{sent} attempt{'s' if sent != 1 else ''}"
            if ended["by"] != "budget":
                return made
            return f"{made} in {ended['elapsed']:.1f}s, when the {budget} retry budget ran out"

        budget = f"{policy.total_seconds:g}s"
        try:
            response = retryer(attempt)
        except NoTimeLeft as exc:
            what = f"not retried after {spent()}" if sent else "not sent"
            if exc.pause is None:
                why = f"the {budget} retry budget ran out while the account's first requests went unanswered"
            else:
                why = (f"the account's API rate budget needs a {exc.pause:.1f}s pause, more than the "
                       f"{exc.left:.1f}s left of the {budget} retry budget")
            raise ProviderError(f"{where} {what}: {why}") from None
        except RetryableStatus as exc:
            error = redact(self.describe_error(exc.response))
            if ended["by"] == "retry-after":
                error += (f"; it asks for {_retry_after(exc.response):.0f}s (Retry-After), more than the "
                          f"{ended['left']:.1f}s left of the {budget} retry budget")
            raise ProviderError(f"{where} still failing after {spent()}: {error}") from None
        except httpx.TimeoutException:
            raise ProviderError(f"{where} timed out after retries ({spent()})") from None
        except httpx.TransportError as exc:
            raise ProviderError(f"{where} could not connect: {type(exc).__name__} (after {spent()})") from None
        if response.status_code in ok or response.status_code in allow:
            return response
        raise ProviderError(f"{where} failed: {redact(self.describe_error(response))}")


def _hint(state: RetryCallState) -> float | None:
    """The Retry-After of the failed attempt, if it gave one."""
    exc = state.outcome.exception() if state.outcome else None
    return _retry_after(exc.response) if isinstance(exc, RetryableStatus) else None
