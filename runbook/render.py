"""Output: rich to stderr for humans (NO_COLOR and non-TTY respected), JSON to stdout.

Everything printed passes through the redactor first."""

from __future__ import annotations

import json
import re
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
    """JSON on stdout, versioned (`runbook schema output`; runbook.output_schema)."""
    from runbook.output_schema import OUTPUT_VERSION

    if isinstance(payload, dict):
        payload = {"output_version": OUTPUT_VERSION, **payload}

    def default(o: Any) -> Any:
        if isinstance(o, Secret):
            return MASK
        return str(o)

    sys.stdout.write(redact(json.dumps(payload, default=default, indent=2, sort_keys=False)) + "\n")
    sys.stdout.flush()


# What a terminal acts on: C0 but newline and tab, DEL, C1 (ESC starts every sequence; CSI and
# OSC also exist as single C1 bytes), and the bidi overrides and line separators that reorder or
# split what is shown. Text from outside (the journal, a provider, a command) can hold any of it.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """`text` with every control character shown as an escape (`\\x1b[2J`), so the terminal gets
    none and a tampered row reads as tampered, not as nothing."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(clean(redact(text)))


# `roles:` projects: steps and checks are shown under a heading of their role (the CLI sets it)
ROLE_HEADINGS = False
_shown_role: list[str | None] = [None]


def _role_heading(out, role: str | None) -> None:
    if ROLE_HEADINGS and role is not None and role != _shown_role[0]:
        out.print(f"[bold cyan]role {_esc(role)}[/]")
    _shown_role[0] = role


def step_line(report) -> None:
    if QUIET:               # nothing would be printed: do not load rich (~40 ms) to print nothing
        return
    out = console()
    _role_heading(out, getattr(report, "role", None))
    style = _STATUS_STYLE.get(report.status, "white")
    out.print(f"[{style}]{report.status:>9}[/] [bold]{_esc(report.step)}[/]")
    for change in report.changes:
        out.print(f"           · {_esc(change.summary)}")
    for note in report.notes:
        out.print(f"           [dim]note: {_esc(note)}[/]")
    if report.verdict and report.verdict.status != "pass":
        out.print(f"           [red]verify: {_esc(report.verdict.detail)}[/]")


def result(res, *, streamed: bool = False, show_sql: bool = False) -> None:
    if QUIET:
        return
    out = console()
    if res.steps and not streamed:
        _shown_role[0] = None
        for report in res.steps:
            step_line(report)
    if show_sql and res.data.get("sql"):
        out.print("[dim]SQL that would run (secrets masked):[/]")
        for text in res.data["sql"]:
            out.print(f"  [dim]{_esc(text)};[/]")
    if res.checks:
        _shown_role[0] = None
        for check in res.checks:
            _role_heading(out, check.role)
            style = _STATUS_STYLE.get(check.status, "white")
            out.print(f"[{style}]{check.status:>12}[/] [bold]{_esc(check.name)}[/]: {_esc(check.detail)}")
            if check.fix and check.status != "pass":
                out.print(f"               [dim]fix:[/] {_esc(check.fix)}")
    soak = res.data.get("soak")
    if res.command == "soak" and isinstance(res.data.get("roles"), dict):
        for name, view in res.data["roles"].items():       # several roles: each one's soak
            _soak(out, view, role=name)
    elif soak:
        _soak(out, soak)
    for key, fn in (("environments", _status_table), ("runs", _history)):
        if key in res.data:
            fn(out, res.data)
    for message in res.messages:
        out.print(_esc(message))


def _soak(out, soak: dict[str, Any], *, role: str | None = None) -> None:
    from rich.table import Table

    title = f"soak of {soak['env']}{f' (role {role})' if role else ''}: {soak['state']}"
    if soak.get("remaining") and soak["state"] == "running":
        title += f", {soak['remaining']} remaining"
    title = _esc(title)
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("checkpoint")
    table.add_column("status")
    table.add_column("when")
    table.add_column("checks")
    for point in soak["checkpoints"]:
        style = _STATUS_STYLE.get(point["status"], "white")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(point["evaluated_at"])) if point["evaluated_at"] else "-"
        checks = "; ".join(f"{c['check']}: {c['status']}" for c in point["checks"])
        table.add_row(_esc(point["checkpoint"]), f"[{style}]{point['status']}[/]" + (" (late)" if point["late"] else ""),
                      when, _esc(checks))
    out.print(table)


def _status_table(out, data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(show_edge=False)
    cols = ("env", "role_name", "role", "flag", "soak", "last_run") if any(
        "role_name" in row for row in data["environments"]) else ("env", "role", "flag", "soak", "last_run")
    for col in cols:
        table.add_column({"role_name": "role", "role": "present"}.get(col, col) if "role_name" in cols else col)
    for row in data["environments"]:
        table.add_row(*[_esc(str(row.get(c, "-"))) for c in cols])
    out.print(table)


def _history(out, data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="runs", title_justify="left", show_edge=False)
    for col in ("id", "env", "command", "status", "actor@host", "started (UTC)"):
        table.add_column(col)
    for run in data.get("runs", []):
        table.add_row(str(run["id"]), _esc(run["env"]), _esc(run["command"]), _esc(run["status"]),
                      _esc(f"{run['actor']}@{run['host']}"),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run["started_at"])))
    out.print(table)
    if data.get("approvals"):
        t2 = Table(title="approvals", title_justify="left", show_edge=False)
        for col in ("env", "from", "sign-off", "actor@host", "when (UTC)", "forced", "reason"):
            t2.add_column(col)
        for a in data["approvals"]:
            t2.add_row(_esc(a["env"]), _esc(a.get("from_env") or "-"), _esc(a["sign_off"]), _esc(f"{a['actor']}@{a['host']}"),
                       time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a["at"])), "yes" if a["forced"] else "no",
                       _esc(a.get("reason") or ""))
        out.print(t2)
    events = data.get("events", [])
    if events:
        t3 = Table(title="events (latest last)", title_justify="left", show_edge=False)
        for col in ("when (UTC)", "run", "step", "kind", "summary"):
            t3.add_column(col)
        for e in events[-40:]:
            t3.add_row(time.strftime("%H:%M:%S", time.gmtime(e["at"])), str(e.get("run_id") or "-"), _esc(e.get("step") or ""),
                       _esc(e["kind"]), _esc(e.get("summary") or ""))
        out.print(t3)


# --- long waits, as they happen ----------------------------------------------------------------

def _clock(seconds: float) -> str:
    """A countdown as a person reads it: 4:58, 1:02:03, 2d 03:04:05."""
    s = max(0, int(seconds + 0.999))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    text = f"{hours}:{minutes:02d}:{s:02d}" if hours else f"{minutes}:{s:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{s:02d}" if days else text


def _countdowns(event, since: float, now: float) -> list[str]:
    """`remaining` as "… left", and every field named *_in (seconds at the event) as "… in …",
    both counted down from when the event arrived."""
    parts = []
    if event.remaining is not None:
        parts.append(f"{_clock(event.remaining - (now - since))} left")
    for key, value in (event.fields or {}).items():
        if key.endswith("_in") and isinstance(value, (int, float)):
            parts.append(f"{key[:-3].replace('_', ' ')} in {_clock(value - (now - since))}")
    return parts


class ProgressDisplay:
    """Long platform waits (providers.base.Progress events), soak countdowns and fleets on stderr.

    `live`: a rich display redrawn in place, each wait with its countdown; a finished wait leaves
    one line behind. Otherwise (a pipe, a log, --output json) one plain line per state change and
    nothing else: no spinner, no carriage return, nothing on stdout. Thread-safe: fleet workers
    report from their own threads. A display fault never reaches the wait that reported."""

    def __init__(self, *, live: bool) -> None:
        import threading

        self.live = live
        self._lock = threading.RLock()
        self._waits: dict[tuple[str, str], tuple[Any, float]] = {}   # (env, what) → (event, when it came)
        self._said: dict[tuple[str, str], str] = {}                   # plain: the last state printed
        self._live: Any = None

    def __call__(self, env: str | None, event: Any) -> None:
        if QUIET:
            return
        try:
            with self._lock:
                (self._show if self.live else self._plain)((env or "", event.what), event)
        except Exception:   # pragma: no cover - a broken terminal must not fail a deployment wait
            pass

    # plain ----------------------------------------------------------------------------------
    def _plain(self, key: tuple[str, str], event: Any) -> None:
        if not event.done and self._said.get(key) == event.state:
            return
        self._said[key] = event.state
        if event.done:
            self._said.pop(key, None)
        extra = _countdowns(event, 0.0, 0.0)
        line = f"{key[0] + ': ' if key[0] else ''}{event.what}: {event.state}"
        if event.done:
            line += " (done)"
        elif extra:
            line += f" ({', '.join(extra)})"
        sys.stderr.write(redact(line).replace("\r", " ").replace("\n", " ") + "\n")
        sys.stderr.flush()

    # live -----------------------------------------------------------------------------------
    def _show(self, key: tuple[str, str], event: Any) -> None:
        if event.done:
            self._waits.pop(key, None)
            out = self._live.console if self._live is not None else console()
            where = f"{key[0]} · " if key[0] else ""
            out.print(f"[green]✓[/] {_esc(where + event.what)}: {_esc(event.state)}")
            if not self._waits:
                self.close()
            return
        self._waits[key] = (event, time.monotonic())
        if self._live is None:
            from rich.live import Live

            self._live = Live(_Board(self), console=console(), transient=True, refresh_per_second=4,
                              redirect_stdout=False, redirect_stderr=True)
            self._live.start()
        self._live.refresh()

    def rows(self) -> list[tuple[str, str]]:
        now = time.monotonic()
        with self._lock:
            waits = list(self._waits.items())
        return [(f"{env} · {what}" if env else what, " · ".join([event.state, *_countdowns(event, since, now)]))
                for (env, what), (event, since) in waits]

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                live, self._live = self._live, None
                live.stop()
            self._waits.clear()


class _Board:
    """What the live display draws on each refresh: one spinner line per wait in progress."""

    def __init__(self, display: ProgressDisplay) -> None:
        self.display = display
        from rich.spinner import Spinner

        self._spinner = Spinner("dots", style="cyan")

    def __rich_console__(self, console, options):
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        for where, text in self.display.rows():
            grid.add_row(self._spinner, f"[bold]{_esc(where)}[/]:", _esc(text))
        yield grid


def progress_display(*, as_json: bool) -> ProgressDisplay:
    """Live on a terminal with text output; plain lines otherwise (TERM=dumb counts as no terminal)."""
    import os

    live = not as_json and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    return ProgressDisplay(live=live)


# --- markdown (PR comments, job summaries) -----------------------------------------------------

_MD_ICON = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️", "pending": "⏳", "planned": "📝", "unchanged": "·",
            "applied": "✅", "failed": "❌"}


def _cell(text: Any) -> str:
    """One table cell: redacted, on one line, pipes escaped."""
    return redact(str(text if text is not None else "")).replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def markdown(res) -> str:
    """A command's result as GitHub/GitLab-flavoured markdown: plan, drift, diagnose and soak in
    full; any other command as its status and messages."""
    lines = [f"### runbook {res.command}: {_cell(res.env or 'every environment')} — {res.status} (exit {res.exit_code})", ""]
    if res.command == "plan":
        changed = [s for s in res.steps if s.changes]
        if not changed:
            lines.append("No changes: provision would change nothing.")
        for step in changed:
            lines.append(f"- **{_cell(step.step)}**")
            lines.extend(f"  - {_cell(c.summary)}" for c in step.changes)
        notes = [n for s in res.steps for n in s.notes]
        if notes:
            lines += ["", "<details><summary>notes</summary>", ""] + [f"- {_cell(n)}" for n in notes] + ["", "</details>"]
        if res.data.get("sql"):
            lines += ["", "<details><summary>SQL (secrets masked)</summary>", "", "```sql"]
            lines += [redact(text) + ";" for text in res.data["sql"]] + ["```", "", "</details>"]
    if res.command == "drift" and "findings" in res.data:
        found = res.data["findings"]
        lines.append(f"{len(found)} finding(s) over {res.data.get('relations', 0)} relations and "
                     f"{res.data.get('routines', 0)} routines.")
        if found:
            lines += ["", "| kind | schema | detail | objects |", "|---|---|---|---|"]
            lines += [f"| {_cell(f['kind'])} | {_cell(f['schema'])} | {_cell(f['detail'])} | "
                      f"{_cell(', '.join(f['objects'][:20]) + (' …' if len(f['objects']) > 20 else ''))} |" for f in found]
    if res.checks and res.command != "drift":
        lines += ["| | check | detail | fix |", "|---|---|---|---|"]
        lines += [f"| {_MD_ICON.get(c.status, c.status)} | {_cell(c.name)} | {_cell(c.detail)} | "
                  f"{_cell(c.fix if c.status != 'pass' else '')} |" for c in res.checks]
    soak = res.data.get("soak")
    if soak:
        title = f"Soak **{_cell(soak['state'])}**"
        if soak.get("remaining") and soak["state"] == "running":
            title += f", {_cell(soak['remaining'])} remaining"
        lines += [title, "", "| checkpoint | status | evaluated (UTC) | checks |", "|---|---|---|---|"]
        for point in soak["checkpoints"]:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(point["evaluated_at"])) if point["evaluated_at"] else ""
            checks = "; ".join(f"{c['check']}: {c['status']}" for c in point["checks"])
            status = _MD_ICON.get(point["status"], "") + " " + point["status"] + (" (late)" if point["late"] else "")
            lines.append(f"| {_cell(point['checkpoint'])} | {_cell(status.strip())} | {when} | {_cell(checks)} |")
    if res.messages:
        lines.append("")
        lines.extend(f"> {_cell(m)}" for m in res.messages)
    return "\n".join(lines).rstrip() + "\n"


def emit_markdown(results: list) -> None:
    sys.stdout.write("\n".join(markdown(r) for r in results))
    sys.stdout.flush()
