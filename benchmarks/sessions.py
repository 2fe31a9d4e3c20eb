"""What one command costs the server: the connections it opens (by user) and the statements it
runs, for each verb of a no-op round on N tables, counted by the server itself.

    python benchmarks/sessions.py                  # N = 1,000
    python benchmarks/sessions.py --tables 10000
    python benchmarks/sessions.py --small          # CI smoke: 30 tables
    python benchmarks/sessions.py --source /tmp/old-checkout    # another checkout's runbook (A/B)

The catalog and the project are benchmarks/peers.py's (N tables with a bigserial each, owned by a
NOLOGIN owner; one login role converged to DML on every table), on a private cluster (Debian's
PostgreSQL 15 when present, else the embedded one) started with `log_connections` and
`pg_stat_statements`. Each command runs as a whole process, the way an operator runs it, after a
first `provision` that converges the role: connections are the server log's "connection
authorized" lines, statements are pg_stat_statements' calls (reset before each command). Server
time is pg_stat_statements' execution time, which includes neither planning nor the round trips.
Round trips are the server log's `log_statement = all` lines (one per simple query or extended-
protocol execute, psycopg's own BEGIN and COMMIT included): the tool sends each statement and
waits for its answer, so each line is one round trip.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

import peers  # noqa: E402
from providers.embedded import Cluster, embedded_bin_dir  # noqa: E402

COMMANDS = (["provision", "--yes"], ["plan"], ["drift"], ["diagnose"], ["drift", "--fix", "--yes"], ["soak"],
            ["history"])
_AUTHORIZED = re.compile(r"connection authorized: user=(\S+)")
_SENT = re.compile(r"LOG:  (?:statement|execute [^:]*): ")


def measure(tables: int, source: Path | None = None) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="rb-sessions-bench-"))
    base.chmod(0o755)
    bin_dir = peers.DEBIAN_15 if (peers.DEBIAN_15 / "postgres").exists() else embedded_bin_dir()
    cluster = Cluster(bin_dir, base / "data")
    try:
        cluster.start(settings={"shared_buffers": "256MB", "log_connections": "on", "log_statement": "all",
                                "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all"})
        cluster.wait_ready()
        with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(peers.DB)))
        work = base / "work"
        work.mkdir()
        tool = peers.Runbook("pg-runbook", "rb_app", cluster, work)
        with psycopg.connect(tool.dsn, autocommit=True) as conn:
            peers.populate(conn, tables)
            conn.execute("CREATE EXTENSION pg_stat_statements")
        tool.configure(tables)
        environ = tool.pg_env()
        exe = Path(sys.executable).with_name("runbook")
        cli = [str(exe)] if exe.exists() and source is None else [sys.executable, "-m", "runbook.cli"]
        if source is not None:
            environ = {**environ, "PYTHONPATH": str(source.resolve())}
        rows = []
        with psycopg.connect(tool.dsn, autocommit=True) as conn:
            for verb in (["provision", "--yes"], *COMMANDS):      # the first provision converges the role
                conn.execute("SELECT pg_stat_statements_reset()")
                log_from = cluster.log_file.stat().st_size
                started = time.perf_counter()
                res = subprocess.run([*cli, "-q", *verb, "--env", "bench"], cwd=work, env=environ,
                                     capture_output=True, text=True, stdin=subprocess.DEVNULL)
                wall = time.perf_counter() - started
                if res.returncode not in (0, 3):        # soak: 3 while its checkpoints are not due
                    raise SystemExit(f"runbook {' '.join(verb)} failed ({res.returncode}): {res.stderr[-2000:]}")
                time.sleep(0.2)                          # the server logs a session's start as it begins
                with cluster.log_file.open("rb") as log:
                    log.seek(log_from)
                    text = log.read().decode(errors="replace")
                users = _AUTHORIZED.findall(text)
                calls, exec_ms = conn.execute(
                    "SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0) FROM pg_stat_statements "
                    "WHERE query NOT LIKE '%pg_stat_statements%'").fetchone()
                rows.append({"command": " ".join(verb), "connections": len(users),
                             "as_app": sum(1 for u in users if u == tool.role), "statements": int(calls),
                             "round_trips": len(_SENT.findall(text)),
                             "server_ms": float(exec_ms), "wall": wall})
        return rows[1:]
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def table(rows: list[dict]) -> str:
    head = ("command", "connections", "as the app role", "statements", "round trips", "server exec ms", "wall s")
    body = [(r["command"], str(r["connections"]), str(r["as_app"]), str(r["statements"]), str(r["round_trips"]),
             f"{r['server_ms']:.1f}", f"{r['wall']:.2f}") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--small", action="store_true", help="CI smoke run: 30 tables")
    ap.add_argument("--source", type=Path, help="run the runbook of this checkout instead (PYTHONPATH)")
    args = ap.parse_args(argv)
    tables = 30 if args.small else args.tables
    load = os.getloadavg()
    print(f"# {tables:,} tables; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", file=sys.stderr, flush=True)
    print(table(measure(tables, args.source)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
