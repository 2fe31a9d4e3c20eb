"""One HTTP client shape for every provider API: httpx + tenacity, bounded, quiet.

- Retries 429, 5xx, timeouts and connection resets; never 4xx otherwise. A 429 waits as long as
  the platform says (Retry-After, or the header its RateModel names, e.g. X-RateLimit-Reset).
- Bounded by attempts *and* total time (RetryPolicy), so a run never waits forever: no pause (a
  backoff, a server's wait hint, the rate budget's) ends past the call's deadline, no retry starts
  after it, and the error says which bound ended the call.
- Paces itself by the platform's own rate model (RateModel, declared by each provider module:
  an account-wide refilling bucket for Heroku, a fixed window per endpoint for Supabase), through
  a RateBudget that may be shared by every client of one account (fleet runs), or, when the
  runtime hands in a BudgetStore (fleet shards on one central state store), by every process.
- Never logs or raises with a response body: provider bodies hold config vars and passwords.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential_jitter,
)

from providers.base import BudgetStore, BudgetStoreDown, ProviderRuntime, RetryPolicy
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


@dataclass(frozen=True)
class RateModel:
    """How one platform meters its API, as the platform documents it. Each provider module declares
    its own (heroku.RATE, supabase.RATE); the budget and the retries follow it.

    kind "bucket": one bucket of `limit` requests that refills continuously over `window_seconds`
    (Heroku: 4,500 per account, ~75 a minute). kind "window": `limit` requests per fixed window of
    `window_seconds`; a 429 lasts for the rest of the window and `reset_header` says how many
    seconds are left (Supabase: 120 per endpoint per project per minute, X-RateLimit-Reset, no
    Retry-After). `per` is what one budget counts: the whole account, or each endpoint (method and
    path; a project's ref is in its paths)."""

    name: str
    kind: Literal["bucket", "window"]
    limit: int
    window_seconds: float
    per: Literal["account", "endpoint"] = "account"
    remaining_headers: tuple[str, ...] = ("RateLimit-Remaining",)
    reset_header: str | None = None
    low_water: int = 10      # bucket: kept in reserve for others; both: requests sent blind before the first answer
    announced: bool = True   # every answer carries the remaining count (a BudgetStore paces only such models)

    @property
    def refill_per_second(self) -> float:
        return self.limit / self.window_seconds

    def wait_hint(self, response: httpx.Response | None) -> tuple[float, str] | None:
        """How long a refused request was told to wait, and the header that said so."""
        after = _retry_after(response)
        if after is not None:
            return after, "Retry-After"
        if response is None or response.status_code != 429 or not self.reset_header:
            return None
        seconds = _seconds_header(response, self.reset_header)
        return (seconds, self.reset_header) if seconds is not None else None


def _seconds_header(response: httpx.Response, name: str) -> float | None:
    try:
        return max(0.0, float(response.headers.get(name, "")))
    except ValueError:
        return None


class NoTimeLeft(Exception):
    """The rate budget's pause would end after the caller's deadline; nothing was sent."""

    def __init__(self, pause: float | None, left: float, *, window: bool = False) -> None:
        super().__init__("no time left for the rate budget's pause")
        self.pause = pause      # None: waiting for the first answers of requests in flight
        self.left = left
        self.window = window    # the pause is the rest of a spent rate-limit window


class RateBudget:
    """Pacing by one platform's RateModel. Clients report what the API announced; when the budget
    runs out, callers wait (a bucket: until it refills to its reserve; a window: until it resets)
    instead of meeting a 429.

    Shared by parallel clients (a fleet), it counts requests in flight: an answer's remaining
    count was taken when the server handled that request, so the others still in flight are
    subtracted from it. Until the first answer, at most `low_water` requests go out blind.
    A model metered per endpoint keeps one such counter per endpoint (`scope`)."""

    def __init__(self, model: RateModel | None = None, *, low_water: int | None = None,
                 refill_per_second: float | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if model is None:
            if refill_per_second is None:
                raise TypeError("RateBudget needs the platform's RateModel (or a bucket's refill_per_second)")
            model = RateModel("API", "bucket", limit=1, window_seconds=1 / refill_per_second,
                              remaining_headers=("RateLimit-Remaining", "X-RateLimit-Remaining"))
        self.model = model
        self.low_water = model.low_water if low_water is None else low_water
        self.refill_per_second = model.refill_per_second if refill_per_second is None else refill_per_second
        self.sleep = sleep
        self.clock = clock
        self._remaining: float | None = None
        self._reset_at: float | None = None     # window: when the current window ends (our clock)
        self._unmetered = False     # the API answered without a remaining count: nothing to pace by
        self._inflight = 0          # admitted by before_request, not yet answered
        self._stamp = clock()
        self._cond = threading.Condition()
        self._scopes: dict[str, RateBudget] | None = {} if model.per == "endpoint" else None
        self.waited = 0.0
        self.throttled = 0      # 429s met by clients sharing this budget

    def scope(self, method: str, path: str) -> "RateBudget":
        """The counter one request draws on: this one, or its endpoint's."""
        if self._scopes is None:
            return self
        key = f"{method} {path}"
        with self._cond:
            child = self._scopes.get(key)
            if child is None:
                child = self._scopes[key] = RateBudget(
                    replace(self.model, per="account"), low_water=self.low_water,
                    refill_per_second=self.refill_per_second, sleep=self.sleep, clock=self.clock)
            return child

    def before_request(self, time_left: float | None = None) -> None:
        """Admit one request, pausing first when the budget runs low. `time_left` is what remains
        of the caller's retry budget: a pause that would outlast it is refused with NoTimeLeft,
        and nothing is reserved."""
        deadline = None if time_left is None else self.clock() + time_left
        with self._cond:
            while self._remaining is None and not self._unmetered and self._inflight >= self.low_water:
                left = None if deadline is None else deadline - self.clock()
                if left is not None and left <= 0:
                    raise NoTimeLeft(None, 0.0)
                self._cond.wait(0.5 if left is None else min(0.5, left))
            self._inflight += 1
            if self._remaining is None and self._reset_at is None:
                return
            if self.model.kind == "window":
                self._admit_in_window(deadline)
                return
            if self._remaining is None:     # a bucket never sets _reset_at: only the type checker needs this
                return
            now = self.clock()
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

    def _admit_in_window(self, deadline: float | None) -> None:
        """A fixed window (lock held): take a request from this window, or wait for the next."""
        while True:
            now = self.clock()
            if self._reset_at is not None and now >= self._reset_at:
                self._remaining, self._reset_at = float(self.model.limit), None    # a new window
            if self._remaining is None or self._remaining >= 1:
                if self._remaining is not None:
                    self._remaining -= 1
                return
            if self._reset_at is None:      # spent, and nobody said when it resets: a whole window at most
                self._reset_at = now + self.model.window_seconds
            delay = self._reset_at - now
            if deadline is not None and now + delay > deadline:
                self._inflight -= 1
                raise NoTimeLeft(delay, max(0.0, deadline - now), window=True)
            self.waited += delay
            self._cond.release()
            try:
                self.sleep(delay)
            finally:
                self._cond.acquire()

    def observe(self, response: httpx.Response) -> None:
        with self._cond:
            self._inflight = max(0, self._inflight - 1)
            now = self.clock()
            if response.status_code == 429:
                # the client's retry honours the wait hint; the budget only counts, so as not to wait twice
                self.throttled += 1
            value = next((response.headers[name] for name in self.model.remaining_headers
                          if name in response.headers), None)    # httpx headers are case-insensitive
            try:
                if value is None:
                    raise ValueError
                self._remaining = float(value) - self._inflight
                self._stamp = now
            except ValueError:
                if self._remaining is None and self.model.kind == "bucket":
                    self._unmetered = True
            if self.model.kind == "window":
                reset = _seconds_header(response, self.model.reset_header) if self.model.reset_header else None
                if response.status_code == 429:
                    # refused until the server's word: the same wait the client's retry takes, so
                    # the two never add up (Retry-After first, as the client reads it)
                    hint = self.model.wait_hint(response)
                    self._remaining = 0.0
                    self._reset_at = now + hint[0] if hint else None   # None: before_request waits a window
                elif reset is not None:
                    self._reset_at = now + reset
            self._cond.notify_all()

    def cancel(self) -> None:
        """A request admitted by before_request got no answer (timeout, reset)."""
        with self._cond:
            self._inflight = max(0, self._inflight - 1)
            self._cond.notify_all()


# for a platform that declares no model (Google's APIs announce no remaining count): paced only if
# an answer ever says what is left, and then as a bucket refilling at one request a second
UNDECLARED = RateModel("API", "bucket", limit=60, window_seconds=60,
                       remaining_headers=("RateLimit-Remaining", "X-RateLimit-Remaining"), announced=False)


class StoreBudget(RateBudget):
    """One account's bucket kept in a BudgetStore that other processes draw on too. The store
    counts every process's requests in flight and lowers the bucket to what the platform announces
    (RateLimit-Remaining, less those in flight, less the reserve), so N shards together stay under
    the account's limit. Should the store stop answering, this process paces itself as a plain
    RateBudget from then on and says so once through `note`."""

    POLL = 0.25     # while the first answers are awaited: how often to look whether one came

    def __init__(self, model: RateModel, account: str, store: BudgetStore, *, note: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(model, sleep=sleep, clock=clock)
        self.account = account
        self.store = store
        self.note = note
        self.alone = False          # the store failed: the in-process budget from here on
        self._admitted = 0          # admitted through the store, not yet answered

    def _fall_back(self, exc: BudgetStoreDown) -> None:
        with self._cond:
            first, self.alone = not self.alone, True
        if first:
            self.note(f"shared rate budget unavailable ({exc}); this process now paces {self.model.name} "
                      "requests by itself")

    def before_request(self, time_left: float | None = None) -> None:
        deadline = None if time_left is None else self.clock() + time_left
        while not self.alone:
            try:
                wait, sooner = self.store.take(self.account, self.model)
            except BudgetStoreDown as exc:
                self._fall_back(exc)
                break
            if wait <= 0:
                with self._cond:
                    self._admitted += 1
                return
            now = self.clock()
            left = None if deadline is None else deadline - now
            if sooner:      # the first answer will say what is left
                if left is not None and left <= 0:
                    raise NoTimeLeft(None, 0.0)
                pause = min(self.POLL, left if left is not None else self.POLL)
            elif left is not None and wait > left:
                # only the refill makes room, and not in time: refused now, not at the deadline
                raise NoTimeLeft(wait, max(0.0, left))
            else:
                pause = wait
            with self._cond:
                self.waited += pause
            self.sleep(pause)
        super().before_request(None if deadline is None else max(0.0, deadline - self.clock()))

    def _ours(self) -> bool:
        """An answer to a request the store admitted (False: the in-process budget's)."""
        with self._cond:
            if self._admitted > 0:
                self._admitted -= 1
                return True
            return False

    def observe(self, response: httpx.Response) -> None:
        if not self._ours():
            super().observe(response)
            return
        if response.status_code == 429:
            with self._cond:
                self.throttled += 1
        value = next((response.headers[name] for name in self.model.remaining_headers if name in response.headers), None)
        try:
            remaining: float | None = max(0.0, float(value)) if value is not None else None
        except ValueError:
            remaining = None
        if remaining is not None and not math.isfinite(remaining):
            remaining = None        # "inf" or "nan" says nothing about what is left
        hint = self.model.wait_hint(response) if response.status_code == 429 else None
        try:
            self.store.observe(self.account, self.model, remaining, hint[0] if hint else None)
        except BudgetStoreDown as exc:
            self._fall_back(exc)

    def cancel(self) -> None:
        if not self._ours():
            super().cancel()
            return
        try:
            self.store.cancel(self.account, self.model)
        except BudgetStoreDown as exc:
            self._fall_back(exc)


def shared_budget(account_key: str, model: RateModel, runtime: ProviderRuntime) -> RateBudget:
    """The one budget of an account in this runtime (every client of a fleet draws on it), paced
    by the platform's model; kept in the runtime's BudgetStore when it has one and the model is an
    account-wide bucket whose answers say what is left (other processes then share it)."""
    store = runtime.budget_store
    if store is not None and model.kind == "bucket" and model.per == "account" and model.announced:
        found: RateBudget = runtime.budget(account_key, lambda: StoreBudget(model, account_key, store, note=runtime.note))
    else:
        found = runtime.budget(account_key, lambda: RateBudget(model))
    return found


def _client_key(base_url: str, headers: dict[str, str], timeout: float, transport: Any) -> tuple[Any, ...]:
    # the credentials are in the headers: hashed, so two tokens never share a client
    digest = hashlib.sha256(repr(sorted(headers.items())).encode()).hexdigest()
    # the transport itself, not its id(): the key keeps it alive, so a later one cannot reuse the id
    return (base_url, digest, timeout, transport)


class PerThreadTransport(httpx.BaseTransport):
    """A shared client's connections, one small pool per thread. httpcore 1.0's pool scans every
    connection on each request's arrival and departure, quadratically (encode/httpcore#1035, not
    released): with one pool serving a fleet's 25–32 workers that bookkeeping was a quarter of
    the fleet's CPU, under the GIL. A fleet worker sends its environment's calls one after another,
    so a pool per thread keeps one warm connection each and its scans stay O(1)."""

    def __init__(self, verify: Any) -> None:
        self._verify = verify
        self._local = threading.local()
        self._all: list[httpx.HTTPTransport] = []
        self._lock = threading.Lock()

    def _mine(self) -> httpx.HTTPTransport:
        mine: httpx.HTTPTransport | None = getattr(self._local, "transport", None)
        if mine is None:
            mine = self._local.transport = httpx.HTTPTransport(verify=self._verify)
            with self._lock:
                self._all.append(mine)
        return mine

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._mine().handle_request(request)

    def close(self) -> None:
        with self._lock:
            shards, self._all = self._all, []
        for shard in shards:
            shard.close()


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
        rate: RateModel | None = None,
        describe_error: ErrorFormatter = default_error,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        runtime: ProviderRuntime | None = None,
    ) -> None:
        self.name = name
        self.retry = retry
        self.budget = budget
        # the platform's model says which headers tell a refused request how long to wait
        self.rate = rate or (budget.model if budget is not None else None)
        self.describe_error = describe_error
        self.sleep = sleep
        self.clock = clock
        self.calls = 0

        pool = runtime.clients if runtime is not None else None      # a fleet's (providers/clients.py)

        def build() -> httpx.Client:
            # the CA bundle is loaded once per runtime (~20 ms of CPU under the GIL; a fleet
            # opens two clients per environment)
            verify = (True if transport is not None else
                      runtime.tls_context(httpx.create_ssl_context) if runtime is not None else
                      httpx.create_ssl_context())
            return httpx.Client(
                base_url=base_url.rstrip("/"),
                headers=headers,
                timeout=httpx.Timeout(retry.timeout_seconds, connect=min(10.0, retry.timeout_seconds)),
                transport=(transport if transport is not None or pool is None else PerThreadTransport(verify)),
                follow_redirects=False,
                verify=verify,
            )

        self._owned = pool is None
        self.client = build() if pool is None else pool.get(
            _client_key(base_url.rstrip("/"), headers, retry.timeout_seconds, transport), build)

    def close(self) -> None:
        if self._owned:         # a shared client closes with the fleet (SharedClients.close)
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

        counter = self.budget.scope(method, path) if self.budget else None

        def attempt() -> httpx.Response:
            nonlocal sent
            if counter:
                counter.before_request(deadline - self.clock())
            self.calls += 1
            sent += 1
            try:
                response = self.client.request(method, path, json=json, params=params, headers=headers)
            except BaseException:
                if counter:
                    counter.cancel()
                raise
            if counter:
                counter.observe(response)
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
            elif (self._hint(state) or (0.0, ""))[0] > left:
                # the API says when it will take the request again, and that is past the deadline
                by = "retry-after"
            else:
                return False
            ended.update(by=by, left=max(0.0, left), elapsed=self.clock() - started)
            return True

        def wait(state: RetryCallState) -> float:
            hinted = (self._hint(state) or (None, ""))[0]
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
                whose = "this endpoint's rate-limit window is spent and resets in" if exc.window else \
                    "the account's API rate budget needs a"
                why = (f"{whose} {exc.pause:.1f}s{'' if exc.window else ' pause'}, more than the "
                       f"{exc.left:.1f}s left of the {budget} retry budget")
            raise ProviderError(f"{where} {what}: {why}") from None
        except RetryableStatus as exc:
            error = redact(self.describe_error(exc.response))
            if ended["by"] == "retry-after":
                seconds, header = self._hint_for(exc.response) or (0.0, "Retry-After")
                error += (f"; it asks for {seconds:.0f}s ({header}), more than the "
                          f"{ended['left']:.1f}s left of the {budget} retry budget")
            raise ProviderError(f"{where} still failing after {spent()}: {error}") from None
        except httpx.TimeoutException:
            raise ProviderError(f"{where} timed out after retries ({spent()})") from None
        except httpx.TransportError as exc:
            raise ProviderError(f"{where} could not connect: {type(exc).__name__} (after {spent()})") from None
        if response.status_code in ok or response.status_code in allow:
            return response
        raise ProviderError(f"{where} failed: {redact(self.describe_error(response))}")

    def _hint_for(self, response: httpx.Response | None) -> tuple[float, str] | None:
        if self.rate is not None:
            return self.rate.wait_hint(response)
        after = _retry_after(response)
        return (after, "Retry-After") if after is not None else None

    def _hint(self, state: RetryCallState) -> tuple[float, str] | None:
        """How long the failed attempt was told to wait, if it was."""
        exc = state.outcome.exception() if state.outcome else None
        return self._hint_for(exc.response) if isinstance(exc, RetryableStatus) else None
