"""Supabase's Postgres logs through the Management API (`GET /v1/projects/{ref}/analytics/
endpoints/logs.all`, the Logs Explorer's query endpoint), one query per day of the soak.

Rows come from the `postgres_logs` source with the fields Supabase parses from the server's
csvlog (`metadata.parsed`): the user name is the server's own field, so no prefix is parsed.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any

from runbook.dblog import LogLines, LogRecord, clean, parse_time

DAY = 86400.0
ROWS = 1000           # rows asked for per day; a full page means more may be unread
_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

QUERY = (
    "select timestamp, parsed.error_severity, parsed.user_name, parsed.sql_state_code, event_message "
    "from postgres_logs cross join unnest(metadata) as m cross join unnest(m.parsed) as parsed "
    "where parsed.user_name = '{role}' and parsed.error_severity in ('ERROR', 'FATAL') "
    "order by timestamp asc limit {rows}")


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _when(value: Any) -> float | None:
    """Logflare's timestamp: microseconds since the epoch, or an ISO-8601 string (UTC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1_000_000 if value > 1e12 else float(value)
    if isinstance(value, str):
        return parse_time(value.replace("T", " ").rstrip("Z") + " UTC") if "+" not in value else parse_time(value)
    return None


def read(mgmt: Any, ref: str, since: float, role: str, *, now: float | None = None) -> LogLines:
    source = f"Supabase postgres_logs of project {ref}"
    if not _ROLE.match(role):
        return LogLines(source, problem=f"role name {role!r} cannot be put in a Logs Explorer query safely")
    now = now or time.time()
    records: list[LogRecord] = []
    partial: str | None = None
    start = since
    while start < now:
        end = min(now, start + DAY)
        body = mgmt.json("GET", f"/v1/projects/{ref}/analytics/endpoints/logs.all", params={
            "sql": QUERY.format(role=role, rows=ROWS), "iso_timestamp_start": _iso(start), "iso_timestamp_end": _iso(end)})
        if not isinstance(body, dict):
            return LogLines(source, problem="the logs endpoint answered with something that is not a result")
        if body.get("error"):
            error = body["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            return LogLines(source, problem=f"the logs query failed: {clean(str(message), 160)}")
        rows = body.get("result") or []
        if len(rows) >= ROWS:
            partial = f"{ROWS} rows on {_iso(start)[:10]}, the most one query returns"
        for row in rows:
            if not isinstance(row, dict) or row.get("user_name") != role:
                continue
            records.append(LogRecord(_when(row.get("timestamp")), role, str(row.get("error_severity") or ""),
                                     clean(str(row.get("event_message") or "")),
                                     str(row["sql_state_code"]) if row.get("sql_state_code") else None))
        start = end
    return LogLines(source, tuple(records), partial=partial)
