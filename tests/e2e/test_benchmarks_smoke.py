"""The benchmark scripts run, at a tiny size: a smoke test, not a timing (figures are in
benchmarks/README.md). peers.py --small skips the peers that are not installed under its cache,
so here it measures pg-runbook alone unless the cache is given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_peers_small_runs_and_pg_runbook_ends_exactly_at_the_spec(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/peers.py"), "--small", "--cache", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[0].split("|")[1:3] == [" N  ", " op             "]
    ops = [line.split("|")[2].strip() for line in lines[2:6]]
    assert ops == ["first converge", "no-op rerun", "drift check", "fix 1 % drift"]
    assert "  pg-runbook: exactly the spec" in lines
    assert "skipping ldap2pg, pgbedrock, pg-sync-roles (not installed" in res.stderr


def test_sessions_small_counts_what_each_command_opens_and_runs():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/sessions.py"), "--small"],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in res.stdout.splitlines()[2:]}
    assert rows["provision --yes"][:2] == ["2", "1"]      # one admin session, one login as the app role
    assert rows["drift"][:2] == ["1", "0"]
