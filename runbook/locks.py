"""One mutating run per environment: a session-level advisory lock in the environment's
database. A killed process's lock is freed by the server when its session ends, directly or
through a session pooler (which resets the server connection with DISCARD ALL when its client
leaves); nobody has to clean up by hand. A transaction pooler is refused before the lock is
taken (runbook/pooler.py), and release unlocks explicitly before it closes."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone

from runbook.errors import Locked, Refused
from runbook.secret import Secret, redact


def lock_key(app: str, env: str) -> int:
    digest = hashlib.sha256(f"pg-runbook:{app}:{env}".encode()).digest()[:8]
    return int.from_bytes(digest, "big", signed=True)


# (held here already, taken now): the try only when this server session does not hold it yet
_ACQUIRE = """
SELECT h.held, CASE WHEN h.held THEN NULL ELSE pg_catalog.pg_try_advisory_lock(%s) END
FROM (SELECT EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()
                     AND classid = %s::oid AND objid = %s::oid AND objsubid = 1) AS held) h
"""


class EnvLock:
    """`connect(dsn, label)` opens a session of the lock's own; `session` instead is one the run
    already holds on the same DSN (its admin session), which the lock then neither opens nor
    closes: it unlocks on release and leaves the session to its owner. Either way the session's
    application_name carries the label, so that a second run can name the holder."""

    def __init__(self, dsn: Secret, *, app: str, env: str, label: str, connect=None, session=None) -> None:
        self.key = lock_key(app, env)
        self.env = env
        self.held = False
        self.owned = session is None
        self.conn = connect(dsn, label) if session is None else session

    def acquire(self) -> None:
        # one round trip (CASE evaluates its condition first: a lock held here is not taken twice)
        held_here, got = self.conn.execute(_ACQUIRE, (self.key, *self._lock_ids())).fetchone()
        if held_here:
            # the lock is re-entrant per server session: a pooler that handed us a server
            # connection still holding it (no reset between clients) would let two runs share it
            self.release()
            raise Refused(f"the server connection the pooler gave this run already holds {self.env}'s lock (a previous "
                          "client's): the pooler does not reset server connections between clients; restore PgBouncer's "
                          "server_reset_query = DISCARD ALL, or give the tool a direct DSN")
        self.held = bool(got)
        if not got:
            holder = self.holder()
            self.release()
            raise Locked(f"{self.env} is locked by another run: {holder}")

    def _lock_ids(self) -> tuple[str, str]:
        """The key as pg_locks shows it: classid and objid, the high and low halves."""
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        return str(unsigned >> 32), str(unsigned & 0xFFFFFFFF)

    def reacquire(self, conn) -> None:
        """The run's session was reopened (the old one is gone, and the server freed its lock with
        it): take the lock again on the new one, or stop with Locked if another run got it first."""
        self.conn, self.held = conn, False
        self.acquire()

    def holder(self) -> str:
        row = self.conn.execute(
            """
            SELECT a.pid, a.application_name, a.usename, a.backend_start
            FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid AND l.objid = %s::oid
              AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
            """,
            self._lock_ids(),
        ).fetchone()
        if row is None:
            return "(the holder just finished; try again)"
        pid, app_name, user, since = row
        when = since.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if since else "unknown time"
        return redact(f"{app_name or 'a session'} as {user or '?'} (server pid {pid}) since {when}")

    def release(self) -> None:
        try:
            if self.held and not self.conn.closed:
                # a pooler keeps the server connection when the client closes: unlock first
                self.conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s)", (self.key,))
                self.held = False
        except Exception:
            pass
        finally:
            try:
                if self.owned:
                    self.conn.close()
            except Exception:
                pass


def label(app: str, command: str) -> str:
    from runbook.journal import actor, host

    return f"runbook:{command} {actor()}@{host()} pid {os.getpid()}"[:63]
