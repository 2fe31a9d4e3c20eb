"""Heroku Postgres's server log through a Platform API log session (`POST /apps/{app}/
log-sessions` with `dyno: postgres`, as `heroku logs -d postgres` does; the session's
`logplex_url` then answers the app's recent lines and closes).

Logplex keeps only the app's last 1,500 lines, so the session proves the whole soak only when
its oldest line is older than the flag; otherwise the check says so (a log drain keeps all).
A line counts when Heroku's prefix names the role (`user="…"`, written on Standard and higher
plans) and it is the first part of a message (`[N-1]`: a long or multi-line message goes on in
`[N-2]` lines, where a client's forged text would land).
"""

from __future__ import annotations

import re
import time
from typing import Any

from runbook.dblog import MAX_LINE, Budget, LogLines, LogRecord, clean, parse_time

LINES = 1500          # the most a log session answers (Platform API log-session `lines`)
_HEAD = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) app\[postgres\.\d+\]: "
                   r"\[[A-Z0-9_]+\] \[\d+-(?P<part>\d+)\]\s+(?P<rest>.*)$")


_CODE = re.compile(r"sql_error_code = (?P<state>[0-9A-Z]{5})")
_FIELD = re.compile(r"\s+(?P<key>\w+)(?: = |=)\"(?P<value>[^\"]*)\"")
_LEVEL = re.compile(r"\s+(?P<level>[A-Z]+):  (?P<msg>.*)$")


def fields(rest: str) -> tuple[str | None, dict[str, str], str | None, str]:
    """(sqlstate, the prefix's key="value" fields, level, message) of a line's body. A value
    holds no quote, so a field cannot hide another; a key met twice (a name carrying
    `" user="…`) makes the line unreadable (no fields)."""
    m = _CODE.match(rest)
    if not m:
        return None, {}, None, rest
    pos, found = m.end(), {}
    while f := _FIELD.match(rest, pos):
        if f["key"] in found:
            return m["state"], {}, None, rest
        found[f["key"]] = f["value"]
        pos = f.end()
    level = _LEVEL.match(rest, pos)
    return (m["state"], found, level["level"], level["msg"]) if level else (m["state"], found, None, rest)


def parse(lines, role: str, budget: Budget) -> tuple[list[LogRecord], float | None, int, int]:
    """(the role's records, the oldest line's time, postgres lines, postgres lines naming a user)."""
    records: list[LogRecord] = []
    oldest: float | None = None
    seen = named = 0
    for raw in lines:
        if not budget.spend(len(raw) + 1):
            break
        line = raw[:MAX_LINE].rstrip("\r\n")
        head = _HEAD.match(line)
        if not head:
            continue
        at = parse_time(head["ts"])
        if at is not None and (oldest is None or at < oldest):
            oldest = at
        seen += 1
        state, found, level, msg = fields(head["rest"])
        if "user" in found:
            named += 1
        if head["part"] == "1" and found.get("user") == role and level in ("ERROR", "FATAL"):
            records.append(LogRecord(at, role, level, clean(msg), state))
    return records, oldest, seen, named


def read(api: Any, app: str, since: float, role: str, *, transport: Any = None, timeout: float = 30.0) -> LogLines:
    import httpx

    source = f"Heroku log session of {app} (postgres)"
    response = api.platform.request("POST", f"/apps/{app}/log-sessions",
                                    json={"dyno": "postgres", "lines": LINES, "tail": False}, allow=(403, 422))
    if response.status_code in (403, 422):
        return LogLines(source, problem=f"Heroku refused the log session (HTTP {response.status_code})",
                        fix="use a token with access to the app's logs (`heroku logs -d postgres -a " + app + "`)")
    url = str((response.json() or {}).get("logplex_url") or "")
    base = str(api.platform_url)
    if not (url.startswith("https://") or (url.startswith("http://") and base.startswith("http://"))):
        return LogLines(source, problem="the log session gave no https logplex_url")
    budget = Budget()
    deadline = time.monotonic() + timeout
    with httpx.Client(transport=transport, timeout=timeout, follow_redirects=False) as client:
        with client.stream("GET", url) as stream:
            if stream.status_code != 200:
                return LogLines(source, problem=f"the log session's URL answered HTTP {stream.status_code}")

            def lines():
                for line in stream.iter_lines():
                    if time.monotonic() > deadline:
                        budget.exhausted = budget.exhausted or f"reading stopped after {timeout:g} s"
                        return
                    yield line

            records, oldest, seen, named = parse(lines(), role, budget)
    if seen and not named:
        return LogLines(source, problem="the add-on's log lines do not name the user (Heroku writes user=\"…\" "
                        "on Standard, Premium, Private and Shield plans)", text=True)
    partial = budget.exhausted
    if not partial and (oldest is None or oldest > since):
        partial = (f"Heroku keeps the app's last {LINES} lines and they reach back only to "
                   + (time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(oldest)) if oldest else "nothing")
                   + "; add a log drain to keep the whole soak")
    return LogLines(source, tuple(records), partial=partial, text=True)
