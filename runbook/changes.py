"""The one object that plan printing, apply, and the journal all handle (pyinfra's idea).

A Change carries everything its apply needs, a generated secret included, so that `plan()` can
be pure: nothing is parked on the run's context between plan and apply."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runbook.secret import Secret, redact

if TYPE_CHECKING:      # psycopg costs ~55 ms to import; a rollback builds no SQL
    from psycopg import Connection, sql

    from providers.base import Credential


_VERIFIER = re.compile(r"PASSWORD\s+'[^']*'", re.IGNORECASE)


@dataclass(frozen=True)
class Change:
    summary: str                               # "grant SELECT, INSERT on 42 tables in public"
    statement: sql.SQL | sql.Composed | None = None    # None for API calls
    reversible: bool = True
    count: int = 1
    data: dict[str, Any] = field(default_factory=dict, compare=False)   # journalled with the result
    # False for a change of a touches_app step that leaves the app's config alone (the soak clock
    # the flag step starts): it owes no restart
    touches_app: bool = True

    def executable(self, conn: Connection[Any]) -> sql.SQL | sql.Composed | None:
        """The statement apply runs (a password change puts its verifier in here)."""
        return self.statement

    def sql_text(self, conn: Any = None) -> str | None:
        """The statement as text for `plan` output; secrets (verifiers included) masked."""
        if self.statement is None:
            return None
        try:
            text = self.statement.as_string(conn)
        except Exception:
            text = repr(self.statement)
        return redact(_VERIFIER.sub("PASSWORD '****'", text))

    def to_json(self) -> dict[str, Any]:
        return {"summary": redact(self.summary), "reversible": self.reversible, "count": self.count}


@dataclass(frozen=True)
class PasswordChange(Change):
    """CREATE/ALTER ROLE … PASSWORD: `statement` shows '****'; the password itself rides along
    (never journalled, never compared) and becomes a SCRAM verifier only when applied, since
    libpq computes it over the admin connection."""

    login: str = ""
    head: sql.Composable | None = None         # the statement up to PASSWORD
    password: Secret | None = field(default=None, compare=False, repr=False)

    def executable(self, conn: Connection[Any]) -> sql.SQL | sql.Composed | None:
        from psycopg import sql

        from runbook.roles import verifier

        if self.head is None or self.password is None:
            return self.statement
        return sql.SQL("{} PASSWORD {}").format(self.head, sql.Literal(verifier(conn, self.login, self.password)))


@dataclass(frozen=True)
class CredentialChange(Change):
    """A credential written to the app's config: apply writes exactly this one."""

    credential: Credential | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SoakChange(Change):
    """The soak clock started (reason: why) or ended (status: how) by the flag step."""

    start: bool = True
    reason: str = ""
