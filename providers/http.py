"""One HTTP client shape for every provider API: httpx + tenacity, bounded, quiet.

- Retries 429 (honouring Retry-After), 5xx, timeouts and connection resets; never 4xx otherwise.
- Bounded by attempts *and* total time (RetryPolicy), so a run never waits forever.
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
    stop_after_attempt,
    stop_after_delay,
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
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


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

    def before_request(self) -> None:
        with self._cond:
            while self._remaining is None and not self._unmetered and self._inflight >= self.low_water:
                self._cond.wait(0.5)
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
    ) -> None:
        self.name = name
        self.retry = retry
        self.budget = budget
        self.describe_error = describe_error
        self.sleep = sleep
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

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(exc.response) if isinstance(exc, RetryableStatus) else None
        backoff = wait_exponential_jitter(multiplier=0.5, max=self.retry.max_backoff_seconds)(state)
        delay = hinted if hinted is not None else backoff
        # never sleep past the total budget: better to fail now with a clear message
        spent = time.monotonic() - state.start_time
        return max(0.0, min(delay, self.retry.total_seconds - spent))

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200, 201, 202, 204),
                allow: tuple[int, ...] = ()) -> httpx.Response:
        """Send with retries. Returns the response for statuses in `ok` or `allow`; raises
        ProviderError (one line) for anything else."""

        def attempt() -> httpx.Response:
            if self.budget:
                self.budget.before_request()
            self.calls += 1
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

        retryer = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, (RetryableStatus, httpx.TransportError))),
            stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(self.retry.total_seconds),
            wait=self._wait,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            response = retryer(attempt)
        except RetryableStatus as exc:
            raise ProviderError(
                f"{self.name}: {method} {path} still failing after {self.retry.attempts} attempts: "
                f"{redact(self.describe_error(exc.response))}") from None
        except httpx.TimeoutException:
            raise ProviderError(f"{self.name}: {method} {path} timed out after retries "
                                f"({self.retry.attempts} attempts, {self.retry.total_seconds:.0f}s budget)") from None
        except httpx.TransportError as exc:
            raise ProviderError(f"{self.name}: {method} {path} could not connect: {type(exc).__name__}") from None
        if response.status_code in ok or response.status_code in allow:
            return response
        raise ProviderError(f"{self.name}: {method} {path} failed: {redact(self.describe_error(response))}")
