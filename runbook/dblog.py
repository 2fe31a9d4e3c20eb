"""The database's own log, read for one thing: counting the role's permission-denied and
authentication errors since the flag went on.

The log is attacker-influenced text: the owner writes lines into it (RAISE LOG, a hostile
application_name, table names with newlines), so nothing here trusts it for anything but
counting. A line counts only when the server, not the message, attributes it to the role: the
user field of csvlog/jsonlog, or the `%u` of log_line_prefix in a text log. Every message kept
is stripped of control characters and capped; reading is capped in bytes and time.

Providers parse their own transport (files, API pages) with the parsers here, which know only
PostgreSQL's log formats.
"""

from __future__ import annotations

import csv
import json
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Iterable, Iterator

# caps on what one check reads: a 72 h log of a busy server must not hold the soak hostage
MAX_BYTES = 64 * 1024 * 1024
MAX_SECONDS = 20.0
MAX_MESSAGE = 240           # characters of one message kept for output
MAX_SHOWN = 3               # lines shown when the check fails
MAX_LINE = 64 * 1024        # a longer physical line is cut (its tail cannot be a prefix)

# the prefix every text log needs for attribution; the fix an inconclusive check prints
PREFIX_FIX = "log_line_prefix = '%m [%p] %q%u@%d '"

PERMISSION_STATES = frozenset({"42501"})                  # insufficient_privilege
AUTH_STATES = frozenset({"28P01", "28000"})               # invalid_password, invalid_authorization_specification
_AUTH_TEXT = re.compile(r"^(?:\S+ authentication failed for user|no pg_hba\.conf entry for|pg_hba\.conf rejects connection)")


@dataclass(frozen=True)
class LogRecord:
    """One log entry the server attributed to a user."""

    at: float | None           # epoch seconds; None when the line carries no readable time
    user: str
    level: str                 # ERROR, FATAL, LOG, ...
    message: str               # cleaned and capped
    sqlstate: str | None = None


@dataclass(frozen=True)
class LogLines:
    """What a provider read of its database log for one role since a moment.

    `problem` says why the log could not be read or attributed (the check is inconclusive) and
    `fix` what would let it; `partial` says what was left unread (caps, unlisted rotations)."""

    source: str
    records: tuple[LogRecord, ...] = ()
    problem: str | None = None
    fix: str | None = None
    partial: str | None = None
    text: bool = False         # attributed through log_line_prefix (see names_problem)
    by_message: bool = False   # no SQLSTATE in the lines: counted by English message text (see locale_problem)


def clean(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` with control and format characters (escapes, bidi overrides, newlines) replaced
    by a space, capped at `limit` characters."""
    text = text[: limit * 4]
    out = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 1] + "…"


class Budget:
    """Bytes and seconds one read may spend; `spend` says False once either runs out."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS) -> None:
        self.left = self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.exhausted: str | None = None

    def spend(self, n: int) -> bool:
        if self.exhausted:
            return False
        self.left -= n
        if self.left < 0:
            self.exhausted = f"reading stopped after {self.max_bytes / (1024 * 1024):g} MiB"
        elif time.monotonic() > self.deadline:
            self.exhausted = f"reading stopped after {self.max_seconds:g} s"
        return not self.exhausted


def lines_of(chunks: Iterable[str]) -> Iterator[str]:
    """Whole lines of text that arrives in pieces (API pages), each with its newline."""
    carry = ""
    for chunk in chunks:
        data = carry + chunk
        parts = data.split("\n")
        carry = parts.pop()
        for part in parts:
            yield part + "\n"
    if carry:
        yield carry


# --- time ---------------------------------------------------------------------------------

_TS = re.compile(r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s*([A-Za-z][A-Za-z0-9_/+-]*|[+-]\d{2}(?::?\d{2})?|Z)?")


def parse_time(text: str, default_tz: tzinfo | None = None) -> float | None:
    """A PostgreSQL log timestamp ('2026-12-01 12:00:00.123 UTC', '…+01', ISO with Z) as epoch
    seconds; None when its zone is neither numeric, UTC/GMT, nor `default_tz`'s."""
    m = _TS.match(text.strip())
    if not m:
        return None
    stamp, zone = m.group(1).replace("T", " "), m.group(2)
    try:
        naive = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    tz: tzinfo | None
    if zone is None or zone.upper() in ("UTC", "GMT", "Z", "UCT", "ETC/UTC", "ETC/GMT"):
        tz = timezone.utc if zone is not None or default_tz is None else default_tz
    elif zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        delta = timedelta(hours=hours, minutes=minutes)
        tz = timezone(delta if zone[0] == "+" else -delta)
    elif default_tz is not None and naive.replace(tzinfo=default_tz).tzname() == zone:
        tz = default_tz
    else:
        return None
    return naive.replace(tzinfo=tz).timestamp()


def zone(name: str | None) -> tzinfo | None:
    """The server's log_timezone as a tzinfo (None when unknown)."""
    if not name:
        return None
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:
        return None


# --- text logs (stderr, RDS, Cloud SQL): attribution through log_line_prefix ---------------

# what each escape may match. Forging another user's line means making the text before a level
# read "<role>… ERROR:  ", which needs spaces: only %a (any client sets application_name) can
# carry them before %u, so a prefix with %a before %u cannot attribute a line (`prefix_problem`);
# role and database names with spaces are refused by `names_problem`.
_ESCAPES = {
    "a": r".*?", "h": r"\S*", "r": r"\S*", "L": r"\S*", "b": r".*?",
    "d": r"\S*", "p": r"\d+", "P": r"\d*", "c": r"[0-9a-f.]+", "l": r"\d+", "i": r".*?",
    "e": r"(?P<sqlstate>[0-9A-Z]{5})", "v": r"[0-9/]*", "x": r"\d+", "Q": r"-?\d+",
    "t": r"(?P<t>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?: [A-Za-z0-9_/+-]+)?)",
    "m": r"(?P<m>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+(?: [A-Za-z0-9_/+-]+)?)",
    "n": r"(?P<n>\d+\.\d+)", "s": r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?: [A-Za-z0-9_/+-]+)?",
}
_HOSTILE = ("a",)
_LEVEL = r"(?P<level>DEBUG[1-5]?|LOG|INFO|NOTICE|WARNING|ERROR|FATAL|PANIC|DETAIL|HINT|QUERY|CONTEXT|STATEMENT|LOCATION):  "


def _escapes(prefix: str) -> list[str]:
    return re.findall(r"%(?:-?\d+)?([a-zA-Z%])", prefix)


def prefix_problem(prefix: str) -> str | None:
    """Why lines written with `prefix` cannot be attributed to a user, or None."""
    found = [e for e in _escapes(prefix) if e != "%"]
    if "u" not in found:
        return f"log_line_prefix {prefix!r} does not carry the user (%u), so no line can be attributed to the role"
    if not {"m", "t", "n"} & set(found):
        return f"log_line_prefix {prefix!r} carries no time (%m, %t or %n), so lines since the flag went on cannot be told apart"
    before = found[: found.index("u")]
    hostile = [e for e in before if e in _HOSTILE]
    if hostile:
        return (f"log_line_prefix {prefix!r} puts %{hostile[0]} (set by any client) before %u, so a client could "
                "forge another user's line")
    return None


def names_problem(names: Iterable[str], role: str) -> str | None:
    """Why a text log cannot be trusted given these role and database names, or None: a name
    with whitespace can carry a forged "<role>@db ERROR:  " into another user's line, and a
    role named "<role>@x" writes lines that begin like the role's own."""
    for name in names:
        lookalike = name != role and name.startswith(role) and not (name[len(role)].isalnum() or name[len(role)] in "_$")
        if lookalike or any(ch.isspace() for ch in name):
            return (f"a role or database named {clean(name, 60)!r} could pass for {role} in a text log; "
                    "use log_destination = 'jsonlog' or 'csvlog', or rename it")
    return None


def locale_problem(lc_messages: str) -> str | None:
    """Why messages cannot be counted by their text under this lc_messages, or None."""
    value = (lc_messages or "").strip()
    if value in ("", "C", "POSIX") or value.lower().startswith(("en", "c.")):
        return None
    return (f"lc_messages = {clean(value, 40)!r} translates the messages, and this log carries no SQLSTATE to "
            "count them by")


LOCALE_FIX = "lc_messages = 'C' (or add %e to log_line_prefix where you may set it)"


def prefix_pattern(prefix: str, role: str) -> re.Pattern[str]:
    """A regex for a line written with `prefix` by `role`, up to and including the level."""
    out: list[str] = []
    i = 0
    while i < len(prefix):
        ch = prefix[i]
        if ch != "%" or i + 1 >= len(prefix):
            out.append(re.escape(ch))
            i += 1
            continue
        m = re.match(r"%(-?\d+)?([a-zA-Z%])", prefix[i:])
        if not m:
            out.append(re.escape(ch))
            i += 1
            continue
        esc = m.group(2)
        if esc == "%":
            out.append("%")
        elif esc == "q":
            pass         # the rest is absent for non-session processes, which are never the role's
        elif esc == "u":
            out.append(r"\s*" + re.escape(role) + r"\s*" if m.group(1) else re.escape(role))
        else:
            pattern = _ESCAPES.get(esc, r".*?")
            out.append(r"\s*" + pattern + r"\s*" if m.group(1) else pattern)
        i += len(m.group(0))
    body = "".join(out)
    # named groups may appear once only: keep the first of each
    seen: set[str] = set()

    def once(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return "(?:"
        seen.add(name)
        return match.group(0)

    body = re.sub(r"\(\?P<(\w+)>", once, body)
    return re.compile("^" + body + r"\s*" + _LEVEL + r"(?P<msg>.*)$")


def parse_text(lines: Iterable[str], prefix: str, role: str, *, tz: tzinfo | None = None,
               budget: Budget | None = None) -> Iterator[LogRecord]:
    """The role's ERROR and FATAL lines of a text log written with `prefix`.

    A message's continuation lines start with a tab (PostgreSQL writes them so), so a line a
    client smuggled into its message never starts at column 0 and never matches the prefix."""
    pattern = prefix_pattern(prefix, role)
    for raw in lines:
        if budget is not None and not budget.spend(len(raw) + 1):
            return
        if "ERROR:" not in raw and "FATAL:" not in raw:
            continue
        line = raw[:MAX_LINE].rstrip("\r\n")
        m = pattern.match(line)
        if not m or m.group("level") not in ("ERROR", "FATAL"):
            continue
        groups = m.groupdict()
        at = None
        if groups.get("n"):
            at = float(groups["n"])
        elif groups.get("m") or groups.get("t"):
            at = parse_time(groups.get("m") or groups["t"], tz)
        yield LogRecord(at, role, m.group("level"), clean(m.group("msg")), groups.get("sqlstate"))


# --- structured logs ---------------------------------------------------------------------------

def parse_csvlog(lines: Iterable[str], role: str, *, budget: Budget | None = None) -> Iterator[LogRecord]:
    """The role's records of a csvlog file (quoted fields may hold newlines; csv reads them)."""

    def metered() -> Iterator[str]:
        for line in lines:
            if budget is not None and not budget.spend(len(line)):
                return
            yield line[:MAX_LINE]

    try:
        for row in csv.reader(metered()):
            if len(row) < 14 or row[1] != role:
                continue
            yield LogRecord(parse_time(row[0]), role, row[11], clean(row[13]), row[12] or None)
    except csv.Error:
        return        # a torn last record (the server is writing it): what came before stands


def parse_jsonlog(lines: Iterable[str], role: str, *, budget: Budget | None = None) -> Iterator[LogRecord]:
    """The role's records of a jsonlog file (one object a line)."""
    for line in lines:
        if budget is not None and not budget.spend(len(line)):
            return
        if len(line) > MAX_LINE or not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("user") != role:
            continue
        yield LogRecord(parse_time(str(entry.get("timestamp", ""))), role, str(entry.get("error_severity", "")),
                        clean(str(entry.get("message", ""))), str(entry["state_code"]) if entry.get("state_code") else None)


# --- counting ----------------------------------------------------------------------------------

def kind(record: LogRecord) -> str | None:
    """'permission denied', 'authentication failed' or None (not counted)."""
    if record.level not in ("ERROR", "FATAL"):
        return None
    if record.sqlstate in PERMISSION_STATES or (record.sqlstate is None and record.message.startswith("permission denied")):
        return "permission denied"
    if record.sqlstate in AUTH_STATES or (record.sqlstate is None and record.level == "FATAL"
                                          and _AUTH_TEXT.match(record.message)):
        return "authentication failed"
    return None


@dataclass
class Count:
    """The role's counted errors since a moment: how many of each kind, and the first lines."""

    permission_denied: int = 0
    auth_failed: int = 0
    first: list[str] = field(default_factory=list)
    undated: int = 0           # lines that could not be placed in time (not counted)

    @property
    def total(self) -> int:
        return self.permission_denied + self.auth_failed


def count(records: Iterable[LogRecord], role: str, since: float) -> Count:
    found = Count()
    for record in records:
        if record.user != role:
            continue
        what = kind(record)
        if what is None:
            continue
        if record.at is None:
            found.undated += 1
            continue
        if record.at < since:
            continue
        if what == "permission denied":
            found.permission_denied += 1
        else:
            found.auth_failed += 1
        if len(found.first) < MAX_SHOWN:
            found.first.append(f"{record.level}: {record.message}")
    return found
