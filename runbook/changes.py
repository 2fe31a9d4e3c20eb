"""The one object that plan printing, apply, and the journal all handle (pyinfra's idea)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runbook.secret import redact

if TYPE_CHECKING:      # psycopg costs ~55 ms to import; a rollback builds no SQL
    from psycopg import sql


_VERIFIER = re.compile(r"PASSWORD\s+'[^']*'", re.IGNORECASE)


@dataclass(frozen=True)
class Change:
    summary: str                               # "grant SELECT, INSERT on 42 tables in public"
    statement: sql.Composable | None = None    # None for API calls
    reversible: bool = True
    count: int = 1
    data: dict[str, Any] = field(default_factory=dict, compare=False)

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
