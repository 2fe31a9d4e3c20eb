"""Cloud Logging's entries.list for Cloud SQL's postgres.log, refereed by the logging v2
discovery document (tests/providers/cloudsql/discovery.py) like the other Google fakes.

The fake evaluates the subset of the logging query language a reader of one instance needs —
clauses joined by AND, each `field="v"`, `field>="v"`, `field>=LEVEL` or `field:"substring"` on
resource.type, resource.labels.database_id, logName, timestamp, severity and textPayload — and
answers 400 INVALID_ARGUMENT (a violation that fails the test) for anything else."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from tests.providers.cloudsql.fake_google import PROJECT, GoogleServer, gerror
from tests.providers.loopback import Request

SEVERITIES = ["DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"]
_CLAUSE = re.compile(r'^(?P<field>[a-zA-Z_.]+)\s*(?P<op>>=|=|:)\s*(?:"(?P<q>(?:[^"\\]|\\.)*)"|(?P<bare>[A-Z]+))$')
FIELDS = {"resource.type", "resource.labels.database_id", "logName", "timestamp", "severity", "textPayload"}


def _when(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _get(entry: dict[str, Any], field: str) -> str:
    value: Any = entry
    for part in field.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return str(value)


class FakeLogging:
    def __init__(self, token: str, violations: list[str], *, page_size: int = 2) -> None:
        self.token = token
        self.server = GoogleServer("logging", "logging.v2", violations)
        self.entries: list[dict[str, Any]] = []
        self.page_size = page_size          # the most entries one page holds, whatever pageSize asks
        self.bodies: list[dict[str, Any]] = []
        self.forbidden = False
        self._routes()

    def add(self, instance: str, at: float, severity: str, text: str, project: str = PROJECT) -> None:
        self.entries.append({
            "logName": f"projects/{project}/logs/cloudsql.googleapis.com%2Fpostgres.log",
            "resource": {"type": "cloudsql_database",
                         "labels": {"database_id": f"{project}:{instance}", "project_id": project, "region": "us-central"}},
            "timestamp": datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "severity": severity, "textPayload": text, "insertId": f"s={len(self.entries)}"})

    def _matches(self, entry: dict[str, Any], clauses: list[re.Match[str]]) -> bool:
        for c in clauses:
            field, op = c["field"], c["op"]
            want = c["q"].replace('\\"', '"').replace("\\\\", "\\") if c["q"] is not None else c["bare"]
            have = _get(entry, field)
            if field == "severity":
                if SEVERITIES.index(have) < SEVERITIES.index(want) if op == ">=" else have != want:
                    return False
            elif field == "timestamp":
                if op != ">=" or _when(have) < _when(want):
                    return False
            elif op == ":":
                if want not in have:
                    return False
            elif have != want:
                return False
        return True

    def _routes(self) -> None:
        @self.server.route("POST", r"/v2/entries:list")
        def entries_list(req: Request, m: re.Match[str]):
            if req.headers.get("authorization") != f"Bearer {self.token}":
                return gerror(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            if self.forbidden:
                return gerror(403, "PERMISSION_DENIED", "Permission 'logging.logEntries.list' denied")
            body = req.body or {}
            self.bodies.append(body)
            clauses = []
            for part in (body.get("filter") or "").split(" AND "):
                match = _CLAUSE.match(part.strip())
                if not match or match["field"] not in FIELDS:
                    self.server.violations.append(f"the fake cannot evaluate filter clause {part!r}")
                    return gerror(400, "INVALID_ARGUMENT", f"unsupported filter clause {part!r}")
                clauses.append(match)
            picked = [e for e in self.entries if self._matches(e, clauses)]
            if body.get("orderBy") == "timestamp asc":
                picked.sort(key=lambda e: e["timestamp"])
            start = int(body.get("pageToken") or 0)
            size = min(int(body.get("pageSize") or 50), self.page_size)
            out: dict[str, Any] = {"entries": picked[start:start + size]}
            if start + size < len(picked):
                out["nextPageToken"] = str(start + size)
            return 200, out
