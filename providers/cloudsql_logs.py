"""Cloud SQL for PostgreSQL's server log through Cloud Logging (`POST /v2/entries:list`),
filtered on the instance, its postgres.log, the time since the flag went on, ERROR and above,
and the role's `user=` in the line (a pre-filter: attribution is still the prefix's).

Cloud SQL writes every server line as one entry, with log_line_prefix
'%m [%p]: [%l-1] db=%d,user=%u '; only an entry's first line is read, so text a client put
after a newline in its message never reads as a line of its own.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from runbook.dblog import Budget, LogLines, LogRecord, parse_text

CLOUDSQL_PREFIX = "%m [%p]: [%l-1] db=%d,user=%u "
DEFAULT_API = "https://logging.googleapis.com"
PAGE = 1000
NEEDS = "roles/logging.viewer (logging.logEntries.list) on the project"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log_filter(project: str, instance: str, since: float, role: str) -> str:
    quoted = role.replace("\\", "\\\\").replace('"', '\\"')
    return (f'resource.type="cloudsql_database" AND resource.labels.database_id="{project}:{instance}" '
            f'AND logName="projects/{project}/logs/cloudsql.googleapis.com%2Fpostgres.log" '
            f'AND timestamp>="{_iso(since)}" AND severity>=ERROR AND textPayload:"user={quoted}"')


def read(api: Any, headers: dict[str, str], project: str, instance: str, since: float, role: str) -> LogLines:
    from providers.gcp import json_body

    source = f"Cloud Logging postgres.log of {project}:{instance}"
    budget = Budget()
    body: dict[str, Any] = {"resourceNames": [f"projects/{project}"], "filter": log_filter(project, instance, since, role),
                            "orderBy": "timestamp asc", "pageSize": PAGE}
    records: list[LogRecord] = []
    while True:
        response = api.request("POST", "/v2/entries:list", json=body, headers=headers, allow=(403,))
        if response.status_code == 403:
            return LogLines(source, problem="the Google identity may not list log entries (403)", fix=f"grant {NEEDS}")
        page = json_body(response, "Cloud Logging API: entries.list")
        firsts = [str(e.get("textPayload") or "").split("\n", 1)[0] + "\n" for e in page.get("entries") or []
                  if isinstance(e, dict)]
        records += parse_text(firsts, CLOUDSQL_PREFIX, role, budget=budget)
        token = page.get("nextPageToken")
        if not token or budget.exhausted:
            break
        body = {**body, "pageToken": token}
    return LogLines(source, tuple(records), partial=budget.exhausted, text=True, by_message=True)
