"""Output: rich to stderr for humans (NO_COLOR and non-TTY respected), JSON to stdout.

Everything printed passes through the redactor first."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from runbook.secret import MASK, Secret, redact

QUIET = False          # --quiet: nothing on stderr but the error line main() writes itself

_STATUS_STYLE = {"pass": "green", "fail": "red", "inconclusive": "yellow", "pending": "dim",
                 "applied": "green", "unchanged": "dim", "planned": "cyan", "failed": "red"}


def console():
    from rich.console import Console

    import os

    # a pipe or a log file gets long lines, not rich's 80-column default
    width = None if sys.stderr.isatty() else int(os.environ.get("COLUMNS", "160"))
    # colour follows rich's own reading of NO_COLOR, FORCE_COLOR and whether stderr is a terminal
    return Console(stderr=True, highlight=False, soft_wrap=False, width=width, quiet=QUIET)


def emit_json(payload: Any) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, Secret):
            return MASK
        return str(o)

    sys.stdout.write(redact(json.dumps(payload, default=default, indent=2, sort_keys=False)) + "\n")
    sys.stdout.flush()


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(redact(text))


def step_line(report) -> None:
    out = console()
    style = _STATUS_STYLE.get(report.status, "white")
    out.print(f"[{style}]{report.status:>9}[/] [bold]{_esc(report.step)}[/]")
    for change in report.changes:
        out.print(f"           · {_esc(change.summary)}")
    for note in report.notes:
        out.print(f"           [dim]note: {_esc(note)}[/]")
    if report.verdict and report.verdict.status != "pass":
        out.print(f"           [red]verify: {_esc(report.verdict.detail)}[/]")


def result(res, *, streamed: bool = False, show_sql: bool = False) -> None:
    out = console()
    if res.steps and not streamed:
        for report in res.steps:
            step_line(report)
    if show_sql and res.data.get("sql"):
        out.print("[dim]SQL that would run (secrets masked):[/]")
        for text in res.data["sql"]:
            out.print(f"  [dim]{_esc(text)};[/]")
    if res.checks:
        for check in res.checks:
            style = _STATUS_STYLE.get(check.status, "white")
            out.print(f"[{style}]{check.status:>12}[/] [bold]{_esc(check.name)}[/]: {_esc(check.detail)}")
            if check.fix and check.status != "pass":
                out.print(f"               [dim]fix:[/] {_esc(check.fix)}")
    soak = res.data.get("soak")
    if soak:
        _soak(out, soak)
    for key, fn in (("environments", _status_table), ("runs", _history)):
        if key in res.data:
            fn(out, res.data)
    for message in res.messages:
        out.print(_esc(message))


def _soak(out, soak: dict[str, Any]) -> None:
    from rich.table import Table

    title = f"soak of {soak['env']}: {soak['state']}"
    if soak.get("remaining") and soak["state"] == "running":
        title += f", {soak['remaining']} remaining"
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("checkpoint")
    table.add_column("status")
    table.add_column("when")
    table.add_column("checks")
    for point in soak["checkpoints"]:
        style = _STATUS_STYLE.get(point["status"], "white")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(point["evaluated_at"])) if point["evaluated_at"] else "-"
        checks = "; ".join(f"{c['check']}: {c['status']}" for c in point["checks"])
        table.add_row(point["checkpoint"], f"[{style}]{point['status']}[/]" + (" (late)" if point["late"] else ""),
                      when, _esc(checks))
    out.print(table)


def _status_table(out, data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(show_edge=False)
    for col in ("env", "role", "flag", "soak", "last_run"):
        table.add_column(col)
    for row in data["environments"]:
        table.add_row(*[_esc(str(row.get(c, "-"))) for c in ("env", "role", "flag", "soak", "last_run")])
    out.print(table)


def _history(out, data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="runs", title_justify="left", show_edge=False)
    for col in ("id", "env", "command", "status", "actor@host", "started (UTC)"):
        table.add_column(col)
    for run in data.get("runs", []):
        table.add_row(str(run["id"]), run["env"], run["command"], run["status"], f"{run['actor']}@{run['host']}",
                      time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run["started_at"])))
    out.print(table)
    if data.get("approvals"):
        t2 = Table(title="approvals", title_justify="left", show_edge=False)
        for col in ("env", "from", "sign-off", "actor@host", "when (UTC)", "forced", "reason"):
            t2.add_column(col)
        for a in data["approvals"]:
            t2.add_row(a["env"], a.get("from_env") or "-", _esc(a["sign_off"]), f"{a['actor']}@{a['host']}",
                       time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a["at"])), "yes" if a["forced"] else "no",
                       _esc(a.get("reason") or ""))
        out.print(t2)
    events = data.get("events", [])
    if events:
        t3 = Table(title="events (latest last)", title_justify="left", show_edge=False)
        for col in ("when (UTC)", "run", "step", "kind", "summary"):
            t3.add_column(col)
        for e in events[-40:]:
            t3.add_row(time.strftime("%H:%M:%S", time.gmtime(e["at"])), str(e.get("run_id") or "-"), e.get("step") or "",
                       e["kind"], _esc(e.get("summary") or ""))
        out.print(t3)
