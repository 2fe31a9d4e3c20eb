"""What stands between the tool and PostgreSQL: nothing, a session pooler, or a transaction pooler.

The tool's own sessions (admin, lock) hold session state for a whole run: a session-level
advisory lock that serialises runs and `SET statement_timeout`. A session pooler (PgBouncer
`pool_mode = session`, Supavisor port 5432) pins one server connection to the client for its
life and resets it (DISCARD ALL) when the client leaves, so both work. A transaction pooler
(PgBouncer `pool_mode = transaction`, Supavisor port 6543, RDS Proxy, Heroku connection pooling)
hands each transaction to whichever server connection is free, so the lock and the settings
would land on connections other clients use: the tool refuses it for its own session (exit 2),
before any change, naming what it found and the fix. The app's URL may go through any pooler.

How it is told (`database.pooler`, default auto):
- declared: `none` / `session` / `transaction` is taken at its word, except that a transaction
  pooler proved by the probe is refused whatever was declared;
- known endpoints (auto): Supavisor (`*.pooler.supabase.com`, port 6543), RDS Proxy
  (`*.proxy-*.rds.amazonaws.com`), a DSN from a `*_CONNECTION_POOL_URL` variable (Heroku);
- the probe (auto and session): a pooler answers the startup with its own cancel key, so the
  connection's backend pid differs from the server's pg_backend_pid(); when it does, a second
  client connection is opened and the two are compared across a few transactions: a shared
  server backend, or one that changes between transactions, is a transaction pooler.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from providers.base import PoolerMode  # noqa: F401  (the setting's values, declared beside the protocols)
from runbook.errors import Refused
from runbook.secret import Secret

SUPAVISOR_TRANSACTION_PORT = 6543
_RDS_PROXY = re.compile(r"^[^.]+\.proxy-[a-z0-9]+\.[a-z0-9-]+\.rds\.amazonaws\.com(\.cn)?$")
_PROBE_ROUNDS = 3


class PoolerRefused(Refused):
    """The tool's own session would go through a transaction pooler. Exit 2."""


@dataclass(frozen=True)
class Detection:
    mode: Literal["none", "session", "transaction"]
    how: str            # what told us: "database.pooler: session", "Supavisor port 6543", "probe: ..."

    def describe(self) -> str:
        """One line for plan/provision: what was found and what the tool does about it."""
        if self.mode == "none":
            return f"pooler: none ({self.how}); the tool holds its lock and settings on its own session"
        if self.mode == "session":
            return (f"pooler: session mode ({self.how}); the tool's session is pinned to one server connection, "
                    "so its lock and settings hold; statements are not prepared")
        return f"pooler: transaction mode ({self.how}); refused for the tool's own session"

    def to_json(self) -> dict[str, str]:
        return {"mode": self.mode, "how": self.how}


def _address(dsn: Secret) -> tuple[str, int]:
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(dsn.reveal())
    host = str(parts.get("host") or "").split(",")[0].strip().lower()
    try:
        port = int(str(parts.get("port") or 5432).split(",")[0])
    except ValueError:
        port = 5432
    return host, port


def recognise(dsn: Secret, details: Mapping[str, str] | None = None) -> Detection | None:
    """A known pooler endpoint, from the address alone (no connection)."""
    host, port = _address(dsn)
    details = details or {}
    declared = str(details.get("pooler") or "")
    if declared in ("session", "transaction"):
        return Detection(declared, f"the provider reports a {declared}-mode pooler")   # type: ignore[arg-type]
    source = str(details.get("dsn_env") or "")
    if source.upper().endswith("_CONNECTION_POOL_URL"):
        return Detection("transaction", f"the DSN comes from {source}, a Heroku connection-pooling URL")
    if host.endswith(".pooler.supabase.com") or host.endswith(".supabase.co") or host.endswith(".supabase.com"):
        if port == SUPAVISOR_TRANSACTION_PORT:
            return Detection("transaction", f"Supavisor transaction port {port} at {host}")
        if host.endswith(".pooler.supabase.com"):
            return Detection("session", f"Supavisor session port {port} at {host}")
    elif port == SUPAVISOR_TRANSACTION_PORT:
        return Detection("transaction", f"port {port}, Supavisor's transaction port")
    if _RDS_PROXY.match(host):
        return Detection("transaction", f"RDS Proxy endpoint {host} (a proxy multiplexes transactions)")
    return None


# what each (declared mode, DSN) was found to be, for the life of the process: a fleet run or a
# soak opens many sessions to the same DSN, and each probe costs round trips
_found: dict[tuple[str, str], Detection] = {}


def _pid(conn: Any) -> int:
    return conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()[0]


def probe(conn: Any, open_another: Callable[[], Any]) -> Detection:
    """Tell a direct connection, a session pooler and a transaction pooler apart at run time.
    Reads only; leaves no state on any server connection."""
    first = _pid(conn)
    if first == conn.info.backend_pid:
        return Detection("none", "probe: the server's backend pid is the connection's own")
    other = open_another()
    try:
        other_first = _pid(other)
        for _ in range(_PROBE_ROUNDS):
            mine, theirs = _pid(conn), _pid(other)
            if first == other_first or mine == theirs:
                return Detection("transaction", "probe: two client connections were served by one server backend")
            if mine != first or theirs != other_first:
                return Detection("transaction", "probe: the server backend changed between transactions")
    finally:
        try:
            other.close()
        except Exception:
            pass
    return Detection("session", "probe: a pooler answered, and kept one server backend per client")


def detect(declared: str, dsn: Secret, conn: Any, open_another: Callable[[], Any],
           details: Mapping[str, str] | None = None) -> Detection:
    """What the tool's session goes through (see the module docstring for the order); found
    once per DSN and process."""
    import hashlib

    key = (declared, hashlib.sha256(dsn.reveal().encode()).hexdigest())
    if key not in _found:
        _found[key] = _detect(declared, dsn, conn, open_another, details)
    return _found[key]


def _detect(declared: str, dsn: Secret, conn: Any, open_another: Callable[[], Any],
            details: Mapping[str, str] | None) -> Detection:
    if declared == "transaction":
        return Detection("transaction", "database.pooler: transaction")
    if declared == "none":
        found = probe(conn, open_another)
        return found if found.mode == "transaction" else Detection("none", "database.pooler: none")
    known = recognise(dsn, details) if declared == "auto" else None
    if known is not None and known.mode == "transaction":
        return known
    found = probe(conn, open_another)
    if found.mode == "transaction":
        return found
    if declared == "session":
        return Detection("session", "database.pooler: session")
    return known or found


def refusal(found: Detection, env: str) -> PoolerRefused:
    return PoolerRefused(
        f"the tool's own session to {env} goes through a transaction-mode pooler ({found.how}): its lock and "
        "session settings would land on server connections other clients share; give the tool a direct or "
        "session-mode DSN (the app's URL may keep the transaction pooler), or set database.pooler if this is wrong")


def login_refusal_fix(reason: str, host: str, port: int, role: str) -> str | None:
    """The fix when a pooler, not PostgreSQL, turned the app's login away; None if it does not
    look like a pooler's refusal. PostgreSQL says "password authentication failed for user";
    PgBouncer says "SASL authentication failed" or "no such user", Supavisor names itself."""
    text = reason.lower()
    signs = ("sasl authentication failed", "no such user", "pgbouncer", "supavisor", "tenant or user not found",
             "server login has been failing", "pooler error")
    if not any(s in text for s in signs):
        return None
    return (f"the pooler at {host}:{port} does not accept {role}: add the role to its auth_file or give it an "
            "auth_user/auth_query lookup (PgBouncer), or wait for the credential cache to refresh (Supavisor); "
            "then run provision again")
