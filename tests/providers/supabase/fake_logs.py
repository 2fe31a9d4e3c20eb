"""The Management API's logs endpoint (`GET /v1/projects/{ref}/analytics/endpoints/logs.all`)
on the contract fake: requests and answers pass the same OpenAPI check as every other route.

The fake cannot run Logflare SQL. It holds `postgres_logs` rows (timestamp in microseconds,
and the fields Supabase parses from csvlog), requires the query to read that source and to
filter on exactly one `parsed.user_name = '…'`, applies that filter, the severity list and the
time window, and refuses a window without both ends or one that is not ISO-8601."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from tests.providers.loopback import Request
from tests.providers.supabase.fake_supabase import FakeSupabase

_USER = re.compile(r"parsed\.user_name\s*=\s*'([^'\\]*)'")
_SEVERITIES = re.compile(r"parsed\.error_severity\s+in\s*\(([^)]*)\)", re.I)
_LIMIT = re.compile(r"\blimit\s+(\d+)\s*$", re.I)


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def install(fake: FakeSupabase, rows: list[dict[str, Any]], *, error: Any = None) -> list[dict[str, str]]:
    """Serve `rows`; returns the list of query strings the fake was asked (for assertions)."""
    asked: list[dict[str, str]] = []

    @fake.server.route("GET", r"/v1/projects/(?P<ref>[^/]+)/analytics/endpoints/logs\.all")
    def logs(req: Request, m: re.Match[str]):
        if denied := fake._authed(req):
            return denied
        if m["ref"] not in fake.projects:
            return 404, {"message": "Project not found"}
        asked.append(dict(req.query))
        if error is not None:
            return 200, {"error": error}
        query = req.query.get("sql", "")
        users = _USER.findall(query)
        if "from postgres_logs" not in query or len(users) != 1:
            return 400, {"message": "the fake serves postgres_logs filtered on one parsed.user_name"}
        try:
            start, end = _epoch(req.query["iso_timestamp_start"]), _epoch(req.query["iso_timestamp_end"])
        except (KeyError, ValueError):
            return 400, {"message": "iso_timestamp_start and iso_timestamp_end must be ISO-8601"}
        levels = None
        if found := _SEVERITIES.search(query):
            levels = {part.strip().strip("'") for part in found.group(1).split(",")}
        limit = int(found.group(1)) if (found := _LIMIT.search(query)) else 100
        picked = [r for r in rows if r.get("user_name") == users[0] and start <= r["timestamp"] / 1e6 < end
                  and (levels is None or r.get("error_severity") in levels)]
        return 200, {"result": sorted(picked, key=lambda r: r["timestamp"])[:limit]}

    return asked
