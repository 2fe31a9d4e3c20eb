"""Each platform account's rate budget as a row of the central state store, so that the shards of
a fleet (`--shard I/N` in N processes, perhaps on N machines) draw on one bucket per account and
together stay under the platform's limit (providers.http.StoreBudget is the client side).

A row per account: a hash of the provider's account key (never a token), the usable tokens (what
may be sent beyond the model's reserve), when they were last refilled, the requests admitted and
not yet answered, and when an answer last said what is left. Every call is one locked UPDATE on
the server's clock (shards on other machines need not agree on the time):

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

import hashlib
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

_TAKE = _CURRENT + """
UPDATE {table} b SET
       tokens = cur.usable - CASE WHEN cur.usable >= 1 THEN 1 ELSE 0 END,
       refilled_at = cur.t,
       inflight = cur.inflight + CASE WHEN cur.usable >= 1 THEN 1 ELSE 0 END,
       inflight_at = CASE WHEN cur.usable >= 1 THEN cur.t ELSE LEAST(cur.inflight_at, cur.t) END
  FROM cur WHERE b.account = cur.account
RETURNING cur.usable, cur.blind AND cur.inflight > 0
"""

# %(remaining)s NULL: the answer announced nothing (the request only ends)
_OBSERVE = _CURRENT + """,
seen AS (
  SELECT cur.account, cur.t, GREATEST(0, cur.inflight - 1) AS inflight,
         CASE WHEN %(remaining)s::pg_catalog.float8 IS NULL THEN cur.avail
              ELSE LEAST(CASE WHEN cur.blind THEN %(cap)s ELSE cur.avail END,
                         %(remaining)s - %(reserve)s - GREATEST(0, cur.inflight - 1)) END AS bound,
         CASE WHEN %(remaining)s::pg_catalog.float8 IS NULL
              THEN CASE WHEN cur.synced_at = 'NaN' THEN 0 ELSE LEAST(cur.synced_at, cur.t) END
              ELSE cur.t END AS synced_at
    FROM cur)
UPDATE {table} b SET
       tokens = GREATEST(%(floor)s, LEAST(seen.bound, COALESCE(-%(refill)s * %(retry_after)s, seen.bound))),
       refilled_at = seen.t, inflight = seen.inflight, inflight_at = seen.t, synced_at = seen.synced_at
  FROM seen WHERE b.account = seen.account
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

    def _run(self, query: Any, params: dict[str, Any]) -> list[tuple]:
        from providers.base import BudgetStoreDown

        call = _Call(query, params)
        with self._lock:
            if self._down is not None:
                raise BudgetStoreDown(self._down)
            self._queue.append(call)
            while self._busy and not call.done:
                self._lock.wait()
            if not call.done:               # nobody at the server: this thread takes the queue there
                self._busy = True
                batch, self._queue = self._queue, []
        if not call.done:
            try:
                self._send(batch)
            finally:
                with self._lock:
                    self._busy = False
                    for each in batch:
                        if each.rows is None and each.error is None:     # interrupted at the server
                            self._down = self._down or f"{self.location}: interrupted"
                            self._close()
                            each.error = self._down
                        each.done = True
                    self._lock.notify_all()
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
                if len(batch) == 1:
                    cursors = [self._conn.execute(batch[0].query, batch[0].params)]
                else:
                    with self._conn.pipeline():
                        cursors = [self._conn.execute(each.query, each.params) for each in batch]
                for each, cur in zip(batch, cursors):
                    each.rows = cur.fetchall() if cur.description else []
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
        rows = self._run(_query(_TAKE), params)
        if not rows:
            # a new row: blind (the reserve may go out before the first answer says what is left)
            self._run(_query("INSERT INTO {table} (account, tokens, refilled_at, inflight, inflight_at, synced_at) "
                             "VALUES (%(account)s, %(reserve)s, EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()), "
                             "0, 0, 0) ON CONFLICT (account) DO NOTHING"), params)
            rows = self._run(_query(_TAKE), params)
            if not rows:
                from providers.base import BudgetStoreDown

                raise BudgetStoreDown(f"{self.location}: the rate budget row vanished")
        usable, sooner = float(rows[0][0]), bool(rows[0][1])
        return (0.0 if usable >= 1 else (1 - usable) / model.refill_per_second), sooner

    def observe(self, account: str, model: Any, remaining: float | None, retry_after: float | None) -> None:
        self._run(_query(_OBSERVE), self._params(account, model, remaining=remaining, retry_after=retry_after))

    def cancel(self, account: str, model: Any) -> None:
        self._run(_query(_OBSERVE), self._params(account, model, remaining=None, retry_after=None))


class _Call:
    """One statement waiting for its round trip, and what came back."""

    __slots__ = ("query", "params", "done", "rows", "error")

    def __init__(self, query: Any, params: dict[str, Any]) -> None:
        self.query, self.params = query, params
        self.done = False
        self.rows: list[tuple] | None = None
        self.error: str | None = None


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
