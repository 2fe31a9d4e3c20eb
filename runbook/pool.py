"""Idle connections to a central journal (a `postgresql://` state store), lent to the stores of
one fleet run and given back on close. The journal itself is runbook/journal.py."""

from __future__ import annotations

import os
import threading
from typing import Any


def pooled_conninfo(url: str | None) -> str | None:
    """The conninfo a store URL reaches when open_store would pool its connections (a central
    PostgreSQL store, given directly or through env:VAR), else None."""
    if url and url.startswith("env:"):
        url = os.environ.get(url[4:])
    if url and url.startswith(("postgresql://", "postgres://")):
        return url
    return None


class ConnectionPool:
    """Idle journal connections, keyed by conninfo, shared by the environments of one fleet run.

    Without it, a fleet of 50 environments on one central store opens 50 connections, each a new
    server backend (fork, authentication, cold catalog caches) on the fleet's critical path. A
    connection serves one store at a time; it comes back only if it is healthy and outside any
    transaction, and is checked before it is handed out again, since the server may have ended it
    in between: without a round trip, by whether its socket has anything to read (an idle session
    hears from the server only when it is being ended: the error, then the close)."""

    def __init__(self, max_idle: int = 32) -> None:
        self.max_idle = max_idle
        self.opened = 0          # counters for tests and benchmarks
        self.reused = 0
        self.discarded = 0
        self._lock = threading.Lock()
        self._idle: dict[str, list[Any]] = {}
        self._closed = False
        self._stop_warming = threading.Event()
        # the journals this fleet has already checked (and migrated), by conninfo and how it was opened
        self._prepared: set[tuple[Any, ...]] = set()

    def prepared(self, signature: tuple[Any, ...]) -> bool:
        """Whether a connection of this fleet already checked this journal, opened this way: the
        next ones need not. One check per fleet, not per connection, trusts nothing more: a journal
        changed after the first check could as well be changed after the twenty-fifth."""
        with self._lock:
            return signature in self._prepared

    def mark_prepared(self, signature: tuple[Any, ...]) -> None:
        with self._lock:
            self._prepared.add(signature)

    def take(self, key: str) -> Any | None:
        """An idle connection for `key` the server has not ended, or None."""
        while True:
            with self._lock:
                stack = self._idle.get(key)
                conn = stack.pop() if stack else None
            if conn is None:
                return None
            if _ended(conn):
                self._discard(conn)
                continue
            with self._lock:
                self.reused += 1
            return conn

    def count_opened(self) -> None:
        with self._lock:
            self.opened += 1

    def prewarm(self, urls: dict[str, int], *, connect_timeout: int = 5) -> threading.Thread | None:
        """Open, in the background, up to `count` connections for each store URL (those a fleet's
        environments will use, and how many at once), so that the fleet's first wave does not
        start server backends all at the same moment. Failures are left for the environments to
        meet and report; join the thread before closing the pool."""
        wanted = [(key, count) for url, count in urls.items() if (key := pooled_conninfo(url)) is not None]
        if not wanted:
            return None

        def fill() -> None:
            from runbook.journal import PostgresStore

            for key, count in wanted:
                for _ in range(count):
                    with self._lock:
                        if self._closed or len(self._idle.get(key, ())) >= min(count, self.max_idle):
                            break
                    if self._stop_warming.is_set():
                        return
                    try:
                        conn = PostgresStore.connect(key, location="state store", connect_timeout=connect_timeout,
                                                     pool=self)
                    except Exception:
                        break                  # unreachable: each environment will say so itself
                    self.count_opened()
                    self.give(key, conn)

        thread = threading.Thread(target=fill, name="runbook-store-prewarm", daemon=True)
        thread.start()
        return thread

    def stop_warming(self) -> None:
        """The fleet is done: a prewarm still opening connections stops at the next one."""
        self._stop_warming.set()

    def give(self, key: str, conn: Any) -> None:
        from psycopg.pq import TransactionStatus

        healthy = not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and not self._closed and len(self._idle.get(key, ())) < self.max_idle:
                self._idle.setdefault(key, []).append(conn)
                return
        self._discard(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [conn for stack in self._idle.values() for conn in stack]
            self._idle.clear()
        for conn in idle:
            close_quietly(conn)

    def _discard(self, conn: Any) -> None:
        with self._lock:
            self.discarded += 1
        close_quietly(conn)


def _ended(conn: Any) -> bool:
    """Whether the server ended (or is ending) an idle connection: anything waiting to be read on
    it, or the connection already known broken or closed. One poll(0), no round trip: this runs
    once per environment of a fleet, and a `SELECT 1` cost a server wake-up on its critical path."""
    import select

    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except Exception:
        return True


def close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass
