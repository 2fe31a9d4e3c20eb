"""Rollback is the command used while things burn: it must work with the database stopped, the
state store unreachable and the journal corrupt, and say where it journalled."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from providers.embedded import Cluster, embedded_bin_dir
from runbook import commands
from tests.projects import dotenv, load, spec_dict, write_project


def _embedded_project(tmp_path: Path) -> Path:
    data = spec_dict("raptor_app_rb")
    data["environments"]["staging"]["database"] = {"embedded": ".runbook/pg"}
    return write_project(tmp_path, data)


def test_rollback_with_the_database_stopped(tmp_path):
    path = _embedded_project(tmp_path)
    project = load(path)
    cluster = Cluster(embedded_bin_dir(), tmp_path / ".runbook" / "pg")
    try:
        assert commands.provision(project, "staging", yes=True).status == "ok"
        cluster.stop("immediate")
        res = commands.rollback(project, "staging", yes=True)
        assert res.status == "ok"
        assert dotenv(tmp_path)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
        assert res.data["journal"].startswith("local:")
        assert any("journalled locally" in m for m in res.messages)
        records = [json.loads(line) for line in (tmp_path / ".runbook" / "journal.jsonl").read_text().splitlines()]
        assert any(r["kind"] == "intent" and r["step"] == "flag off" for r in records)
        # the next run that reaches the store imports the local records
        cluster.start()
        again = commands.provision(project, "staging", yes=True)
        assert any("imported" in m for m in again.messages)
        assert not (tmp_path / ".runbook" / "journal.jsonl").read_text().strip()
        hist = commands.history(project, "staging")
        assert any(e["step"] == "flag off" for e in hist.data["events"])
    finally:
        cluster.destroy()


def test_rollback_with_the_state_store_unreachable(su_env):
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    res = commands.rollback(su_env.project(), "staging", yes=True, environ=su_env.environ,
                            state="postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")
    assert res.status == "ok"
    assert res.data["journal"].startswith("local:")
    assert dotenv(su_env.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"


def test_rollback_with_a_corrupt_journal(su_env):
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    local = su_env.dir / ".runbook" / "journal.jsonl"
    local.write_bytes(b'{"env": "staging", "step": "x"\n\x00\xff garbage\n[1, 2]\n')
    # and the store's tables are damaged too
    su_env.pg.execute("ALTER TABLE runbook.events DROP COLUMN summary")
    res = commands.rollback(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert res.status == "ok"
    assert dotenv(su_env.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
    assert res.data["journal"].startswith("local:")


def test_rollback_with_a_broken_database_block_still_flips_the_flag(su_env):
    data = yaml.safe_load(su_env.path.read_text())
    data["environments"]["staging"]["database"] = {"dsn_env": "NOT_SET_ANYWHERE"}
    su_env.path.write_text(yaml.safe_dump(data))
    res = commands.rollback(su_env.project(), "staging", yes=True, environ={})
    assert res.status == "ok"
    assert dotenv(su_env.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
