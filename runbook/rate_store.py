"""Each platform account's rate budget as a row of the central state store, so that the shards of
a fleet (`--shard I/N` in N processes, perhaps on N machines) draw on one bucket per account and
together stay under the platform's limit (providers.http.StoreBudget is the client side).

A row per account: a hash of the provider's account key (never a token), the usable tokens (what
may be sent beyond the model's reserve), when they were last refilled, the requests admitted and
not yet answered, and when an answer last said what is left. Every call is applied by a locked
UPDATE on the server's clock (shards on other machines need not agree on the time); the takes of
one account that queue together in this process share one UPDATE, as do their answers:

- take: refill by the model's rate since the last refill, then take one token if there is one;
  otherwise say how long until there is. Until an answer has said what is left (a new row, or one
  no answer has reached for SYNC_SECONDS), at most the reserve goes out, as in-process.
- observe: an answer's RateLimit-Remaining, less every request still in flight (of every shard),
  less the reserve, is an upper bound of what may still be sent; the bucket is lowered to it (set
  to it by the first answer). Only the model's own refill raises it again: the platform refills at
  that rate, so answers that arrive out of order never raise it past what is there, and no
  number of shards overdraws it. A 429's Retry-After lowers it further; an answer without a count
  only ends its request.

A row is clamped, never trusted: tokens to [-limit, limit - reserve] (NaN reads as 0), timestamps
in the future read as now, the in-flight count to [0, limit], and admissions older than
IN_FLIGHT_SECONDS (a shard that died with requests out) stop counting.
The table sits in the journal's `runbook` schema and is made and trust-checked like the journal's
own tables (runbook.journal: owner, no grants beyond SELECT, no triggers, rules or policies).
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
from typing import Any

from runbook.secret import Secret, mask_url, redact

TABLE = "rate_budgets"
IN_FLIGHT_SECONDS = 120.0   # longer than any one request may take (http_timeout defaults to 30 s)
SYNC_SECONDS = 120.0        # an answer older than this no longer says what is left (others may have drawn on it)

DDL = """CREATE TABLE IF NOT EXISTS {table} (
    account text PRIMARY KEY, tokens double precision NOT NULL, refilled_at double precision NOT NULL,
    inflight double precision NOT NULL, inflight_at double precision NOT NULL,
    synced_at double precision NOT NULL)"""

# the row as it may be used now: refilled, clamped, admissions of the dead dropped (locked)
_CURRENT = """
WITH clock AS (SELECT EXTRACT(EPOCH FROM pg_catalog.clock_timestamp())::pg_catalog.float8 AS t),
raw AS (
  SELECT b.account, clock.t,
         LEAST(%(cap)s::pg_catalog.float8,
               CASE WHEN b.tokens = 'NaN' THEN 0 ELSE GREATEST(%(floor)s, LEAST(b.tokens, %(cap)s)) END
               + %(refill)s * GREATEST(0, clock.t - LEAST(CASE WHEN b.refilled_at = 'NaN' THEN clock.t
                                                                ELSE b.refilled_at END, clock.t))) AS avail,
         CASE WHEN b.inflight = 'NaN' OR b.inflight_at = 'NaN'
                   OR clock.t - LEAST(b.inflight_at, clock.t) > %(stale)s THEN 0
              ELSE GREATEST(0, LEAST(b.inflight, %(limit)s)) END AS inflight,
         NOT (b.synced_at <> 'NaN' AND clock.t - LEAST(b.synced_at, clock.t) <= %(sync)s) AS blind,
         b.inflight_at, b.synced_at
    FROM {table} b, clock WHERE b.account = %(account)s FOR UPDATE OF b),
cur AS (
  SELECT raw.*, CASE WHEN raw.blind THEN LEAST(raw.avail, %(reserve)s - raw.inflight) ELSE raw.avail END AS usable
    FROM raw)
"""

# %(n)s takes that queued together, in one statement: the i-th (from 0) is granted when what was
# usable, less the i before it, is still a whole token, exactly as n statements one after another
# would grant; the caller works out each one's answer from (usable, blind, in flight) before them
_TAKE = _CURRENT + """,
got AS (SELECT cur.*, LEAST(%(n)s::pg_catalog.float8, GREATEST(0, pg_catalog.floor(cur.usable))) AS granted FROM cur)
UPDATE {table} b SET
       tokens = got.usable - got.granted,
       refilled_at = got.t,
       inflight = got.inflight + got.granted,
       inflight_at = CASE WHEN got.granted > 0 THEN got.t ELSE LEAST(got.inflight_at, got.t) END
  FROM got WHERE b.account = got.account
RETURNING got.usable, got.blind, got.inflight
"""

# the answers that queued together, in arrival order, in one statement: each ends one request in
# flight and lowers the bucket to what it announced, less the requests still out after it, less
# the reserve (a NULL remaining announced nothing: that request only ends). The same end state as
# one statement per answer, but for a 429's Retry-After while blind, which here still holds after a
# later count (more cautious; one at a time, that count would have replaced it)
_OBSERVE = _CURRENT + """,
ans AS (SELECT a.remaining, a.retry_after, a.i
          FROM unnest(%(remaining)s::pg_catalog.float8[], %(retry_after)s::pg_catalog.float8[])
               WITH ORDINALITY AS a(remaining, retry_after, i)),
seen AS (
  SELECT cur.account, cur.t, GREATEST(0, cur.inflight - (SELECT count(*) FROM ans)) AS inflight,
         (SELECT min(ans.remaining - %(reserve)s - GREATEST(0, cur.inflight - ans.i))
            FROM ans WHERE ans.remaining IS NOT NULL) AS counted,
         (SELECT max(ans.retry_after) FROM ans) AS retry_after,
         cur.blind, cur.avail, cur.synced_at
    FROM cur),
bound AS (
  SELECT seen.*,
         CASE WHEN seen.counted IS NULL THEN seen.avail
              ELSE LEAST(CASE WHEN seen.blind THEN %(cap)s ELSE seen.avail END, seen.counted) END AS bound,
         CASE WHEN seen.counted IS NULL
              THEN CASE WHEN seen.synced_at = 'NaN' THEN 0 ELSE LEAST(seen.synced_at, seen.t) END
              ELSE seen.t END AS synced
    FROM seen)
UPDATE {table} b SET
       tokens = GREATEST(%(floor)s, LEAST(bound.bound, COALESCE(-%(refill)s * bound.retry_after, bound.bound))),
       refilled_at = bound.t, inflight = bound.inflight, inflight_at = bound.t, synced_at = bound.synced
  FROM bound WHERE b.account = bound.account
"""


def account_hash(account: str) -> str:
    """What the row is keyed by: never the provider's key itself (it may be derived from a token)."""
    return hashlib.sha256(f"pg-runbook rate budget\0{account}".encode()).hexdigest()


class CentralBudgets:
    """providers.base.BudgetStore on a central PostgreSQL state store: one connection of this
    process (opened on first use, shared by a fleet's threads), one statement per call. The first
    failure is final for this process: every later call raises BudgetStoreDown at once, and the
    budgets fall back to pacing in-process (no reconnect storm against a store that is down).

    Calls are combined: while one thread's statements are at the server, the calls of the others
    queue, and the next of them sends the whole queue as one pipeline (one round trip, the same
    statements in arrival order). Each HTTP request costs a take and an observe; one at a time on
    one connection, a fleet at --parallel 25 queued ~300 round trips behind each other."""

    def __init__(self, conninfo: str | Secret, *, connect_timeout: int = 3) -> None:
        self._conninfo = conninfo if isinstance(conninfo, Secret) else Secret(conninfo)
        self.location = mask_url(self._conninfo)
        self.connect_timeout = connect_timeout
        self._lock = threading.Condition()
        self._conn: Any = None
        self._down: str | None = None
        self._queue: list[_Call] = []       # calls waiting for the next round trip
        self._busy = False                  # a thread is at the server with a batch
        self._waiting = 0                   # threads waiting for their call's answer
        self.round_trips = 0                # batches sent (a benchmark's and a test's measure)

    # --- the connection -----------------------------------------------------------------------
    def _connect(self) -> Any:
        import psycopg

        from runbook.context import pin_session
        from runbook.journal import PostgresStore

        # tcp_user_timeout: a store that vanishes mid-fleet fails a call within seconds, never hangs it
        conn = psycopg.connect(self._conninfo.reveal(), autocommit=True, connect_timeout=self.connect_timeout,
                               prepare_threshold=None, application_name="runbook:rate-budget",
                               tcp_user_timeout=10_000)
        try:
            pin_session(conn)
            conn.execute("SELECT pg_catalog.set_config('statement_timeout', '10s', false)")
            PostgresStore._ensure(conn, location=self.location)     # the journal's schema, checked as it is
            ensure_table(conn, self.location)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, query: Any, params: dict[str, Any], *, wait: bool = True) -> list[tuple]:
        """One statement, in arrival order. With `wait` False (an answer's observe, a cancel: the
        caller needs nothing back) it only joins the queue while a batch is at the server, and the
        thread sending that batch, or the next waiting one, carries it; a failure then surfaces
        on this process's next call, as BudgetStoreDown."""
        from providers.base import BudgetStoreDown

        call = _Call(query, params)
        with self._lock:
            if self._down is not None:
                raise BudgetStoreDown(self._down)
            self._queue.append(call)
            if not wait and self._busy:
                return []
            self._waiting += 1
            while self._busy and not call.done:
                self._lock.wait()
            self._waiting -= 1
            if not call.done:               # nobody at the server: this thread takes the queue there
                self._busy = True
                batch, self._queue = self._queue, []
        sending = not call.done
        while sending:
            try:
                self._send(batch)
            finally:
                with self._lock:
                    for each in batch:
                        if each.rows is None and each.error is None:     # interrupted at the server
                            self._down = self._down or f"{self.location}: interrupted"
                            self._close()
                            each.error = self._down
                        each.done = True
                    if self._down is not None:
                        for each in self._queue:
                            each.error, each.done = self._down, True
                        self._queue = []
                    if self._queue and not self._waiting:
                        # calls nobody waits for (observes): this thread sends them too, or they would sit
                        batch, self._queue = self._queue, []
                    else:
                        sending = self._busy = False
                        self._lock.notify_all()
        if not wait:
            return []
        if call.error is not None or call.rows is None:
            raise BudgetStoreDown(call.error or f"{self.location}: no answer")
        return call.rows

    def _send(self, batch: list[_Call]) -> None:
        """One round trip for the batch (no lock held: others queue meanwhile); a failure is every
        call's, and final."""
        import psycopg

        from runbook.errors import RunbookError

        try:
            if self._down is None:
                if self._conn is None:
                    self._conn = self._connect()
                self.round_trips += 1
                groups = _fold(batch)
                if len(groups) == 1:
                    cursors = [self._conn.execute(groups[0][0], groups[0][1])]
                else:
                    with self._conn.pipeline():
                        cursors = [self._conn.execute(query, params) for query, params, _ in groups]
                for (_, _, calls), cur in zip(groups, cursors):
                    _answer(calls, cur.fetchall() if cur.description else [])
        except (psycopg.Error, OSError, RunbookError) as exc:
            why = exc.message if isinstance(exc, RunbookError) else type(exc).__name__
            self._down = redact(f"{self.location}: {why}").splitlines()[0]
            self._close()
        if self._down is not None:
            for each in batch:
                each.error = self._down

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        with self._lock:
            while self._busy:
                self._lock.wait()
            self._close()

    # --- BudgetStore --------------------------------------------------------------------------
    @staticmethod
    def _params(account: str, model: Any, **more: Any) -> dict[str, Any]:
        return {"account": account_hash(account), "cap": float(model.limit - model.low_water),
                "floor": -float(model.limit), "limit": float(model.limit), "refill": model.refill_per_second,
                "reserve": float(model.low_water), "stale": IN_FLIGHT_SECONDS, "sync": SYNC_SECONDS, **more}

    def take(self, account: str, model: Any) -> tuple[float, bool]:
        params = self._params(account, model)
        rows = self._run(_TAKE_KIND, params)
        if not rows:
            # a new row: blind (the reserve may go out before the first answer says what is left)
            self._run(_query("INSERT INTO {table} (account, tokens, refilled_at, inflight, inflight_at, synced_at) "
                             "VALUES (%(account)s, %(reserve)s, EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()), "
                             "0, 0, 0) ON CONFLICT (account) DO NOTHING"), params)
            rows = self._run(_TAKE_KIND, params)
            if not rows:
                from providers.base import BudgetStoreDown

                raise BudgetStoreDown(f"{self.location}: the rate budget row vanished")
        usable, sooner = float(rows[0][0]), bool(rows[0][1])
        return (0.0 if usable >= 1 else (1 - usable) / model.refill_per_second), sooner

    # an answer's bookkeeping needs nothing back: the request that got it goes on at once
    def observe(self, account: str, model: Any, remaining: float | None, retry_after: float | None) -> None:
        self._run(_OBSERVE_KIND, self._params(account, model, remaining=remaining, retry_after=retry_after),
                  wait=False)

    def cancel(self, account: str, model: Any) -> None:
        self._run(_OBSERVE_KIND, self._params(account, model, remaining=None, retry_after=None), wait=False)


_TAKE_KIND = "take"         # a _Call's query: one of these (folded with its neighbours), or a statement
_OBSERVE_KIND = "observe"
_PER_CALL = ("remaining", "retry_after")


def _fold(batch: list[_Call]) -> list[tuple[Any, dict[str, Any], list[_Call]]]:
    """The batch as few statements: the takes of one account (and model) become one take of n, its
    answers one observe of their arrays, each in arrival order. Answers go before takes: an answer
    (which ends a request already counted in flight) queued behind a take leaves the same bucket
    either way, the take's token and the answer's bound commuting, but in front the take sees
    what it said, and a bucket that it empties refuses the take rather than admitting it. Other statements (a new row) go
    first; the take that needs the row waits for it and comes in a later batch."""
    others: list[tuple[Any, dict[str, Any], list[_Call]]] = []
    folded: dict[tuple[str, tuple[Any, ...]], tuple[Any, dict[str, Any], list[_Call]]] = {}
    for call in batch:
        kind = call.query if isinstance(call.query, str) else None
        if kind is None:
            others.append((call.query, call.params, [call]))
            continue
        key = (kind, tuple(sorted((k, v) for k, v in call.params.items() if k not in _PER_CALL)))
        group = folded.get(key)
        if group is None:
            if kind == _TAKE_KIND:
                folded[key] = (_query(_TAKE), {**call.params, "n": 1}, [call])
            else:
                folded[key] = (_query(_OBSERVE), {**call.params, "remaining": [call.params["remaining"]],
                                                  "retry_after": [call.params["retry_after"]]}, [call])
            continue
        _, params, calls = group
        calls.append(call)
        if kind == _TAKE_KIND:
            params["n"] += 1
        else:
            params["remaining"].append(call.params["remaining"])
            params["retry_after"].append(call.params["retry_after"])
    answers = [g for (kind, _), g in folded.items() if kind == _OBSERVE_KIND]
    takes = [g for (kind, _), g in folded.items() if kind == _TAKE_KIND]
    return [*others, *answers, *takes]


def _answer(calls: list[_Call], rows: list[tuple]) -> None:
    """Each call's rows: a folded take's (usable, blind, in flight) before the first of them gives
    the i-th (usable less the i granted before it, whether it waits on a first answer)."""
    if calls[0].query != _TAKE_KIND or not rows:
        for call in calls:
            call.rows = rows
        return
    usable, blind, inflight = float(rows[0][0]), bool(rows[0][1]), float(rows[0][2])
    granted = min(len(calls), max(0, math.floor(usable)))
    for i, call in enumerate(calls):
        before = min(i, granted)
        call.rows = [(usable - before, blind and inflight + before > 0)]


class _Call:
    """One statement waiting for its round trip, and what came back."""

    __slots__ = ("query", "params", "done", "rows", "error")

    def __init__(self, query: Any, params: dict[str, Any]) -> None:
        self.query, self.params = query, params
        self.done = False
        self.rows: list[tuple] | None = None
        self.error: str | None = None


@functools.cache
def _query(template: str) -> Any:
    from psycopg import sql

    return sql.SQL(template).format(table=sql.Identifier("runbook", TABLE))


def ensure_table(conn: Any, location: str) -> None:
    """The budget table in the (already checked) journal schema, made once, then the schema
    checked again with it in."""
    from psycopg import sql

    from runbook.journal import SCHEMA, refuse_foreign_journal

    present = conn.execute("SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s",
                           (SCHEMA, TABLE)).fetchone()
    if not present:
        with conn.transaction():
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(8675309, 1)")   # the journal's creation lock
            conn.execute(sql.SQL(DDL).format(table=sql.Identifier(SCHEMA, TABLE)))
    refuse_foreign_journal(conn, location)
