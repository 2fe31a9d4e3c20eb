"""`--shard I/N`: a stable share of the environments a glob matches, by a hash of each name."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from runbook import fleet
from runbook.errors import ConfigError
from tests.e2e.test_cli import run_cli

NAMES = [f"tenant-{i:03d}" for i in range(200)]


def test_every_environment_is_in_exactly_one_shard_and_the_shards_are_balanced():
    shards = [fleet.shard(NAMES, f"{i}/4") for i in range(1, 5)]
    assert sorted(sum(shards, [])) == sorted(NAMES)
    assert all(len(s) > 30 for s in shards), [len(s) for s in shards]       # 50 each on average
    assert shards[0] == [n for n in NAMES if n in shards[0]]                  # the glob's order is kept


def test_adding_an_environment_moves_no_other_and_a_fifth_shard_moves_only_what_it_wins():
    before = {n: fleet.shard_of(n, 4) for n in NAMES}
    after = {n: fleet.shard_of(n, 4) for n in [*NAMES, "tenant-new"]}
    assert all(after[n] == before[n] for n in NAMES)
    five = {n: fleet.shard_of(n, 5) for n in NAMES}
    moved = [n for n in NAMES if five[n] != before[n]]
    assert all(five[n] == 5 for n in moved)          # nothing moves between the old four
    assert len(moved) < len(NAMES) / 3               # ~1/5 of them


def test_the_assignment_does_not_depend_on_the_process():
    # a fixed hash, not Python's per-process salted hash(): shards on different machines agree
    assert Counter(fleet.shard_of(n, 4) for n in NAMES) == Counter(fleet.shard_of(n, 4) for n in reversed(NAMES))
    assert [fleet.shard_of(n, 4) for n in ("staging", "prod", "tenant-000")] == \
        [fleet.shard_of(n, 4) for n in ("staging", "prod", "tenant-000")]


@pytest.mark.parametrize("bad", ["0/4", "5/4", "1", "a/b", "1/0", "-1/2", ""])
def test_a_malformed_shard_is_bad_input(bad):
    with pytest.raises(ConfigError) as caught:
        fleet.parse_shard(bad)
    assert caught.value.exit_code == 2


def _project(tmp_path, names):
    envs = {n: {"provider": "local", "database": {"dsn_env": "RB_UNSET_DSN"}, "app": {"dotenv": f".runbook/{n}.env"}}
            for n in names}
    data = {"version": 1, "app": "raptor",
            "role": {"name": "raptor_app", "schemas": {"public": {"tables": ["SELECT"]}}},
            "config": {"url_var": "RAPTOR_APP_DATABASE_URL"},
            "flag": {"name": "FLAG_X", "on_value": "1", "off_value": "0"},
            "environments": envs}
    (tmp_path / "runbook.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def test_the_cli_runs_only_its_shard_before_or_after_the_verb_and_from_the_environment(tmp_path):
    names = [f"tenant-{i:02d}" for i in range(12)]
    _project(tmp_path, names)
    seen = []
    for argv, environ in ((["rollback", "--env", "tenant-*", "--yes", "--shard", "1/3", "-o", "json"], {}),
                          (["--shard", "2/3", "rollback", "--env", "tenant-*", "--yes", "-o", "json"], {}),
                          (["rollback", "--env", "tenant-*", "--yes", "-o", "json"], {"RUNBOOK_SHARD": "3/3"})):
        res = run_cli(argv, tmp_path, environ)
        assert res.returncode in (0, 1), res.stderr
        ran = [r["env"] for r in json.loads(res.stdout)["results"]]
        assert ran == [n for n in names if fleet.shard_of(n, 3) == len(seen) + 1]
        seen.append(ran)
    assert sorted(sum(seen, [])) == names
    bad = run_cli(["rollback", "--env", "tenant-*", "--yes", "--shard", "4/3"], tmp_path, {})
    assert bad.returncode == 2 and "--shard '4/3'" in bad.stderr
