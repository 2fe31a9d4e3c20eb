"""benchmarks/fleet.py runs at a tiny size, both verbs: a smoke test, not a timing (figures are
in benchmarks/README.md). It fails when either verb leaves an environment unconverged (rollback:
the flag off on every app; provision: the role logs in with the URL its app holds and has exactly
its privileges), meets a 429 or fails an environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.pg
def test_fleet_small_runs_rollback_and_provision_to_their_end_states():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/fleet.py"), "--envs", "3", "--parallel", "2",
                          "--repeat", "1", "--skip-drained"],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].split("|")[1:-1]]
    rows = {r[0]: dict(zip(head, r)) for r in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:])}
    assert set(rows) == {"full", "provision"}, res.stdout
    for name, row in rows.items():
        assert (row["parallel"], row["envs failed"], row["429s met"], row["converged"]) == ("2", "0", "0", "yes"), name
    assert rows["full"]["calls"] == "9"           # GET config-vars, PATCH, GET to verify, for each of 3 apps
    assert int(rows["provision"]["calls"]) >= 9
