"""Under CI=true a missing pgbouncer fails the suite; elsewhere the pooler tests skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_pgbouncer_is_there(pgbouncer_binary):
    assert Path(pgbouncer_binary).is_file()


def _run_without_pgbouncer(ci: str | None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "CI"}
    environ["RUNBOOK_TEST_PGBOUNCER"] = "/nonexistent/pgbouncer"
    if ci is not None:
        environ["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
         f"{__file__}::test_pgbouncer_is_there"],
        cwd=Path(__file__).parents[2], env=environ, capture_output=True, text=True, timeout=120)


def test_a_missing_pgbouncer_fails_under_ci_and_skips_elsewhere():
    under_ci = _run_without_pgbouncer("true")
    assert under_ci.returncode != 0 and "pgbouncer is not installed" in under_ci.stdout, under_ci.stdout
    elsewhere = _run_without_pgbouncer(None)
    assert elsewhere.returncode == 0 and "1 skipped" in elsewhere.stdout, elsewhere.stdout
