"""Durations as operators write them: 72h, 30m, 10s, 14d, 1h30m.

Every duration is bounded: a typo such as `99999999999d` is an error with the file's line, not
an OverflowError. Timeouts have a tighter bound and must be positive: PostgreSQL, libpq and
poll(2) all take them as a C int of milliseconds (at most 24d 20h), and PostgreSQL's
`lock_timeout = 0` / `statement_timeout = 0` mean "wait for ever", never what a timeout is for.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HINT = "a duration such as 72h, 30m, 10s or 14d"

MAX_DURATION = timedelta(days=3650)     # ten years: longer than any soak or validity anyone means
MAX_TIMEOUT = timedelta(days=24)        # below 2**31 - 1 ms (24d 20h 31m)
MIN_TIMEOUT = timedelta(milliseconds=1)


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(_HINT)
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str):
            text = value.strip().replace(" ", "")
            if not text or _PART.sub("", text):
                raise ValueError(f"{value!r} is not {_HINT}")
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise ValueError(_HINT)
    except OverflowError:       # an int too large for a float
        seconds = math.inf
    if math.isnan(seconds):
        raise ValueError(f"{value!r} is not {_HINT}")
    if seconds < 0:
        raise ValueError("durations cannot be negative")
    if seconds > MAX_DURATION.total_seconds():       # also catches inf and float overflow
        shown = value if not isinstance(value, int) or seconds < math.inf else "that number"
        raise ValueError(f"{shown!r} is longer than {format_duration(MAX_DURATION)}; durations are bounded")
    return seconds


def parse_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=_seconds(value))


def parse_timeout(value: object) -> timedelta:
    """A timeout: at least 1ms and at most 24d (0 would mean no timeout at all)."""
    delta = value if isinstance(value, timedelta) else timedelta(seconds=_seconds(value))
    if delta < MIN_TIMEOUT:
        raise ValueError(f"a timeout must be positive (at least 1ms); {value!r} would mean wait for ever")
    if delta > MAX_TIMEOUT:
        raise ValueError(f"{value!r} is longer than {format_duration(MAX_TIMEOUT)}, the longest timeout there is")
    return delta


def format_duration(delta: timedelta | float) -> str:
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts[:2])
