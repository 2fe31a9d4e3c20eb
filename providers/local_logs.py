"""The server log of a PostgreSQL the tool reaches directly: a file it may open
(`database.server_log`, or the embedded server's own), or the logging collector's files read
over SQL (`pg_current_logfile()`, `pg_ls_logdir()`, `pg_read_binary_file()`).

Only the tail of each file is read (runbook.dblog's caps), in the most structured format the
server writes: jsonlog, then csvlog, then stderr with log_line_prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from runbook.dblog import (MAX_BYTES, PREFIX_FIX, Budget, LogLines, LogRecord, parse_csvlog, parse_jsonlog,
                           parse_text, prefix_problem, zone)
from runbook.secret import Secret

CHUNK = 1024 * 1024
# what the admin needs to read the collector's files over SQL (PostgreSQL 11+ roles)
SQL_GRANTS = ("GRANT pg_monitor, pg_read_server_files TO {admin} (pg_current_logfile and pg_ls_logdir need "
              "pg_monitor; pg_read_binary_file needs pg_read_server_files), or set database.server_log to the file")


def _format_of(name: str) -> str:
    return "jsonlog" if name.endswith(".json") else "csvlog" if name.endswith(".csv") else "stderr"


def _lines(chunks: Iterator[bytes], skip_first: bool) -> Iterator[str]:
    """Text lines of byte chunks; a line cut by where the tail begins is dropped."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        parts = data.split(b"\n")
        carry = parts.pop()
        for part in parts:
            if skip_first:
                skip_first = False
                continue
            yield part.decode("utf-8", errors="replace") + "\n"
    if carry and not skip_first:
        yield carry.decode("utf-8", errors="replace")


def _parse(fmt: str, lines: Iterator[str], role: str, prefix: str, tz, budget: Budget) -> list[LogRecord]:
    if fmt == "jsonlog":
        return list(parse_jsonlog(lines, role, budget=budget))
    if fmt == "csvlog":
        return list(parse_csvlog(lines, role, budget=budget))
    return list(parse_text(lines, prefix, role, tz=tz, budget=budget))


def _settings(conn) -> dict[str, str]:
    rows = conn.execute(
        "SELECT name, setting FROM pg_catalog.pg_settings WHERE name IN ('log_line_prefix', 'log_timezone', "
        "'log_directory', 'logging_collector', 'log_destination')").fetchall()
    return {name: value for name, value in rows}


def _connect(dsn: Secret):
    import psycopg

    # settings by SET after connecting, never startup `options` (PgBouncer at its defaults refuses
    # them), no prepared statements (a transaction pooler moves them), search_path pinned
    conn = psycopg.connect(dsn.reveal(), autocommit=True, connect_timeout=10, application_name="runbook:log",
                           prepare_threshold=None)
    try:
        conn.execute("SELECT pg_catalog.set_config('statement_timeout', '20000', false), "
                     "pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")
    except BaseException:
        conn.close()
        raise
    return conn


def read_file(dsn: Secret, path: Path, since: float, role: str) -> LogLines:
    """`path` read from disk; the prefix and zone come from the server's settings."""
    source = f"server log {path}"
    fmt = _format_of(path.name)
    try:
        size = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        return LogLines(source, problem=f"cannot read {path}: {exc.strerror}",
                        fix="make the file readable by the user running runbook, or fix database.server_log")
    with _connect(dsn) as conn:
        settings = _settings(conn)
    prefix = settings.get("log_line_prefix", "")
    if fmt == "stderr" and prefix_problem(prefix):
        return LogLines(source, problem=prefix_problem(prefix), fix=PREFIX_FIX, text=True)
    start = max(0, size - MAX_BYTES)
    with handle:
        handle.seek(start)

        def chunks() -> Iterator[bytes]:
            while chunk := handle.read(CHUNK):
                yield chunk

        budget = Budget()
        records = _parse(fmt, _lines(chunks(), start > 0), role, prefix, zone(settings.get("log_timezone")), budget)
    partial = budget.exhausted or (f"only the last {MAX_BYTES // CHUNK} MiB read" if start else None)
    return LogLines(source, tuple(records), partial=partial, text=fmt == "stderr",
                    by_message=fmt == "stderr" and "%e" not in prefix)


def read_collector(dsn: Secret, since: float, role: str) -> LogLines | None:
    """The logging collector's files, over SQL. None when the server runs no collector."""
    import psycopg

    with _connect(dsn) as conn:
        admin = conn.info.user
        settings = _settings(conn)
        if settings.get("logging_collector", "on") == "off":
            return None
        fix = SQL_GRANTS.format(admin=admin)
        current: tuple[str, str] | None = None
        try:
            for fmt in ("jsonlog", "csvlog", "stderr"):
                try:
                    row = conn.execute("SELECT pg_catalog.pg_current_logfile(%s)", (fmt,)).fetchone()
                except psycopg.errors.InvalidParameterValue:
                    continue          # a format this server does not know (jsonlog before 15)
                if row and row[0]:
                    current = (row[0], fmt)
                    break
        except psycopg.errors.InsufficientPrivilege:
            return LogLines("server log (logging collector)", problem=f"{admin} may not call pg_current_logfile()",
                            fix=fix)
        if current is None:
            return None
        path, fmt = current
        directory = str(Path(path).parent)
        files: list[tuple[str, int]] = []
        partial: str | None = None
        try:
            # earlier files of the same format, rotated since the flag went on, oldest first
            rows = conn.execute(
                "SELECT name, size FROM pg_catalog.pg_ls_logdir() "
                "WHERE modification >= to_timestamp(%s) ORDER BY modification, name", (since,)).fetchall()
            suffix = {"jsonlog": ".json", "csvlog": ".csv"}.get(fmt)
            files = [(f"{directory}/{name}", int(size)) for name, size in rows
                     if (name.endswith(suffix) if suffix else _format_of(name) == "stderr")]
        except psycopg.errors.InsufficientPrivilege:
            partial = "only the current file read (pg_ls_logdir needs pg_monitor)"
        if path not in [f for f, _ in files]:
            files.append((path, -1))
        source = f"server log {directory}/ ({fmt}, {len(files)} file(s))"
        prefix = settings.get("log_line_prefix", "")
        if fmt == "stderr" and prefix_problem(prefix):
            return LogLines(source, problem=prefix_problem(prefix), fix=PREFIX_FIX, text=True)
        budget = Budget()
        records: list[LogRecord] = []
        try:
            for name, size in files:
                if size < 0:
                    row = conn.execute("SELECT size FROM pg_catalog.pg_stat_file(%s, true)", (name,)).fetchone()
                    size = int(row[0]) if row and row[0] is not None else 0
                start = max(0, size - MAX_BYTES)
                if start:
                    partial = f"only the last {MAX_BYTES // CHUNK} MiB of {name} read"

                def chunks(name: str = name, start: int = start, size: int = size) -> Iterator[bytes]:
                    offset = start
                    while offset < size and not budget.exhausted:
                        row = conn.execute("SELECT pg_catalog.pg_read_binary_file(%s, %s, %s, true)",
                                           (name, offset, min(CHUNK, size - offset))).fetchone()
                        data = bytes(row[0]) if row and row[0] is not None else b""
                        if not data:
                            return
                        offset += len(data)
                        yield data

                records += _parse(fmt, _lines(chunks(), start > 0), role, prefix, zone(settings.get("log_timezone")),
                                  budget)
        except psycopg.errors.InsufficientPrivilege:
            return LogLines(source, problem=f"{admin} may not read the server log files", fix=fix)
    return LogLines(source, tuple(records), partial=budget.exhausted or partial, text=fmt == "stderr",
                    by_message=fmt == "stderr" and "%e" not in prefix)
