"""The fleet templates spread the environments over machines with `--shard I/N`, and the N shard
jobs together run every environment exactly once."""

from __future__ import annotations

import re

from runbook import ci, fleet
from tests.e2e.test_ci_templates import _runbook_lines, _scripts, _templates


def _shards(argv: list[str]) -> str:
    return argv[argv.index("--shard") + 1]


def test_github_fleet_drift_runs_one_shard_per_matrix_entry_with_every_dsn(tmp_path):
    doc = _templates(tmp_path, "github")["runbook-fleet-drift.yml"]
    job = doc["jobs"]["drift"]
    assert job["strategy"]["matrix"]["shard"] == list(range(1, ci.SHARDS + 1))
    assert job["env"]["SHARD"] == "${{ matrix.shard }}"
    # every environment's DSN variable, from its read-only secret
    assert all(v.startswith("${{ secrets.RUNBOOK_") and v.endswith("_READONLY_DSN }}")
               for k, v in job["env"].items() if k not in ("RUNBOOK_FILE", "SHARD"))
    (argv,) = _runbook_lines(_scripts("github", {"f": doc}))
    assert argv[:4] == ["runbook", "drift", "--env", "*"]
    assert _shards(argv) == f"$SHARD/{ci.SHARDS}"


def test_gitlab_fleet_drift_uses_the_1_based_node_index(tmp_path):
    doc = _templates(tmp_path, "gitlab")[".gitlab-ci.runbook.yml"]
    job = doc["runbook-fleet-drift"]
    assert job["parallel"] == ci.SHARDS
    (argv,) = [a for a in _runbook_lines(_scripts("gitlab", {"f": {"runbook-fleet-drift": job}})) if "--shard" in a]
    assert _shards(argv) == "$CI_NODE_INDEX/$CI_NODE_TOTAL"
    exports = [line for line in job["before_script"] if line.startswith("export")]
    assert exports and all(re.fullmatch(r'export "[A-Z0-9_]+=\$RUNBOOK_[A-Z0-9_]+_READONLY_DSN"', e) for e in exports)


def test_the_shard_jobs_together_run_every_environment_once():
    names = [f"tenant-{i:03d}" for i in range(97)]
    runs = [fleet.shard(names, f"{i}/{ci.SHARDS}") for i in range(1, ci.SHARDS + 1)]
    assert sorted(sum(runs, [])) == names
