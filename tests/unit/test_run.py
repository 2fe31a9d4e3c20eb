"""runbook.run: one channel for exit codes, one invocation, verbs that take what they say."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from runbook import commands, errors, soak
from runbook.run import Invocation, Result, Runtime

README = Path(__file__).resolve().parents[2] / "README.md"


def _error_classes() -> list[type[errors.RunbookError]]:
    found, todo = [], [errors.RunbookError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == "runbook.errors"]


def test_the_readme_exit_code_table_is_the_error_classes_codes():
    section = README.read_text().split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}
    assert documented == {0} | {cls.exit_code for cls in _error_classes()}
    assert not [name for name in vars(errors) if name.startswith("EXIT_")]    # no second table of codes


@pytest.mark.parametrize("status, error", [
    ("waiting", errors.GateClosed), ("check-failed", errors.CheckFailed), ("not-recorded", errors.NotRecorded)])
def test_a_result_s_exit_code_is_its_status_error_s(status, error):
    res = Result("soak", "staging", status=status)
    assert res.exit_code == error.exit_code and res.to_json()["exit_code"] == error.exit_code


@pytest.mark.parametrize("status", ["ok", "unchanged", "planned", "cancelled"])
def test_a_result_that_did_not_stop_exits_0(status):
    assert Result("plan", "staging", status=status).exit_code == 0


def test_a_result_s_exit_code_cannot_be_set_beside_its_status():
    with pytest.raises(AttributeError):
        Result("diagnose", "staging").exit_code = 4     # type: ignore[misc]


def test_verbs_take_only_what_they_name_and_the_cli_dispatches_through_the_table():
    for name, verb in commands.VERBS.items():
        params = inspect.signature(verb).parameters.values()
        assert not [p for p in params if p.kind is p.VAR_KEYWORD], name
        assert "runtime" in inspect.signature(verb).parameters, name     # a fleet hands its runtime in
    cli = (Path(commands.__file__).parent / "cli.py").read_text()
    fleet = (Path(commands.__file__).parent / "fleet.py").read_text()
    assert "getattr(commands" not in cli and "getattr(commands" not in fleet


def test_an_invocation_is_frozen_and_each_has_its_own_runtime_unless_given_one():
    inv = Invocation(yes=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inv.yes = False            # type: ignore[misc]
    assert Invocation().runtime is not Invocation().runtime and Invocation().runtime.pool is None
    shared = Runtime()
    assert Invocation(runtime=shared).runtime is shared


def test_a_changing_verb_without_yes_or_a_person_refuses_before_touching_anything():
    with pytest.raises(errors.ConfigError, match="rollback changes things; pass --yes"):
        Invocation().need_yes("rollback")
    Invocation(yes=True).need_yes("rollback")
    Invocation(confirm=lambda what, preview: True).need_yes("rollback")


def test_the_fleet_runtime_pools_and_closes_and_a_single_run_does_not_pool():
    with Runtime.shared() as runtime:
        assert runtime.pool is not None
        pool = runtime.pool
    assert pool._closed
    assert Runtime().pool is None


def _view(state: str, **kw) -> soak.SoakView:
    return soak.SoakView("staging", state, **kw)


@pytest.mark.parametrize("state, status, said", [
    ("none", "waiting", []),
    ("superseded", "waiting", []),
    ("rolled-back", "waiting", ["the last soak of staging rolled-back; provision again to start a new one"]),
    ("retired", "waiting", ["the last soak of staging retired; provision again to start a new one"]),
    ("failed", "check-failed", ["the soak failed; roll back with: runbook rollback --env staging --yes"]),
    ("passed", "ok", ["the soak passed; promote with: runbook promote --env <prod> --sign-off NAME"]),
])
def test_a_soak_s_outcome_from_its_view(state, status, said):
    assert soak.outcome(_view(state), "sqlite:///j.db") == (status, said)


def test_a_soak_of_an_old_spec_waits_and_an_unrecorded_checkpoint_says_where():
    assert soak.outcome(_view("passed", digest_matches=False), "x")[0] == "waiting"
    point = soak.CheckpointView(60.0, "pass", unrecorded="permission denied for table checkpoints")
    status, said = soak.outcome(_view("running", started_at=1000.0, checkpoints=[point]), "schema runbook in staging")
    assert status == "not-recorded" and "could not be recorded at schema runbook in staging" in said[0]
    pending = soak.CheckpointView(120.0, "pending")
    status, said = soak.outcome(_view("running", started_at=1000.0, checkpoints=[pending]), "x", now=1030.0)
    assert (status, said) == ("waiting", ["next checkpoint 2m due in 1m30s"])


def test_a_store_s_journal_is_bound_to_its_environment_and_run(tmp_path):
    from runbook.journal import open_store

    store = open_store(f"sqlite:///{tmp_path / 'j.db'}", admin_dsn=None, base_dir=tmp_path, env="staging", app="raptor")
    try:
        run_id = store.begin("staging", "provision", "d")
        other = store.begin("prod", "provision", "d")
        journal = store.journal("staging", run_id)
        journal("grants", "intent", "grant select", {"n": 1})
        store.journal("prod", other)("grants", "result", "applied 1 change(s)")
        assert [(e["step"], e["kind"], e["summary"], e["data"]) for e in store.events("staging", run_id=run_id)] == [
            ("grants", "intent", "grant select", {"n": 1})]
        assert [e["env"] for e in store.events(None, run_id=other)] == ["prod"]
    finally:
        store.close()


def test_the_runs_of_one_runtime_share_its_local_journal_registry(tmp_path):
    from runbook.local_journal import LocalJournal

    shared = Runtime()

    class _Project:
        base_dir = tmp_path

    first, second = shared.local_journal(_Project()), shared.local_journal(_Project())
    assert first.path == second.path == tmp_path / ".runbook" / "journal.jsonl"
    assert first.registry.drain_thread_lock(first.path, "e") is second.registry.drain_thread_lock(second.path, "e")
    alone = LocalJournal(first.path)           # outside a runtime: a registry of its own, never a global one
    assert alone.registry.drain_thread_lock(alone.path, "e") is not first.registry.drain_thread_lock(first.path, "e")
