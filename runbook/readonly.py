"""Read-only runs: drift, diagnose, plan, status, history, and a soak with nothing due work with
a DSN that cannot write. The journal is opened without being created (an absent one reads as
empty), a read the DSN may not do ends as one line, and a write it may not do is recognised so
a due checkpoint that cannot be recorded is reported rather than lost (runbook.soak)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from runbook.errors import ConfigError, RunbookError

# SQLSTATEs of a write the server refused to this session: insufficient_privilege,
# read_only_sql_transaction (a standby, default_transaction_read_only)
_DENIED = {"42501"}
_READ_ONLY = {"42501", "25006"}
_READS = frozenset({"runs", "events", "open_soak", "latest_soak", "checkpoints", "approvals", "interrupted",
                    "last_approval", "turn_events"})


def cannot_write(exc: BaseException) -> bool:
    if getattr(exc, "sqlstate", None) in _READ_ONLY:
        return True
    # an SQLite error exists only where a SQLite journal loaded sqlite3: a run without one never imports it
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(exc, sqlite3.OperationalError) \
        and "readonly" in str(exc).replace(" ", "").lower()


def _denied(exc: BaseException) -> bool:
    return getattr(exc, "sqlstate", None) in _DENIED


class EmptyJournal:
    """No journal exists yet where the environment keeps it: nothing was recorded, so every read
    is empty (a write would have to create it, which a read-only run never does)."""

    def __init__(self, location: str) -> None:
        self.location = location

    def runs(self, env: str | None, limit: int = 50, role: str | None = None) -> list[dict[str, Any]]:
        return []

    def turn_events(self, env: str, role: str | None, logins: tuple[str, ...],
                    converted: str | None = None) -> list[dict[str, Any]]:
        return []

    def events(self, env: str | None, run_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return []

    def approvals(self, env: str | None, limit: int = 50) -> list[dict[str, Any]]:
        return []

    def checkpoints(self, soak_id: int) -> list[dict[str, Any]]:
        return []

    def open_soak(self, env: str, role: Any = None) -> None:
        return None

    def last_approval(self, env: str, role: str) -> None:
        return None

    def latest_soak(self, env: str, role: Any = None) -> None:
        return None

    def interrupted(self, env: str, current: int) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        return None


class ReadGuard:
    """A store whose reads end as one line (ConfigError, exit 2) when the DSN may not read the
    journal, instead of a driver error; writes pass through untouched."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.location = store.location

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in _READS:
            return attr

        def read(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                if _denied(exc):
                    raise ConfigError(
                        f"cannot read the journal at {self.location}: permission denied",
                        hint="grant the DSN's role USAGE on schema runbook and SELECT on its tables, or pass "
                             "--state with a store it can read") from None
                raise
        return read


def open_journal(open_store: Callable[..., Any]) -> Any:
    """`open_store(create=False)` as a read-only run sees it."""
    from runbook.journal import JournalMissing

    try:
        store = open_store(create=False)
    except JournalMissing as exc:
        return EmptyJournal(exc.location)
    except RunbookError:
        raise
    except Exception as exc:
        if _denied(exc):
            raise ConfigError("cannot read the journal: permission denied",
                              hint="grant the DSN's role USAGE on schema runbook and SELECT on its tables") from None
        raise
    return ReadGuard(store)
