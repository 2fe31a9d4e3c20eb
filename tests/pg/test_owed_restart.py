"""A restart owed by a run that changed the app's config and then failed is paid by the next run,
even when that run finds nothing left to change; it is paid once, and then no more.

The debt lives in the journal (an app-config intent with no restart result after it), in the
state store or, for a rollback that never reached the store, in the local journal file.
"""

from __future__ import annotations

import pytest

from runbook import commands
from runbook.errors import RunbookError
from tests.pg.conftest import make_env
from tests.projects import dotenv

RESTARTS = "restarts.log"
WORKS = f"echo restarted >> {RESTARTS}"


def restarts(env) -> int:
    log = env.dir / RESTARTS
    return log.read_text().count("restarted") if log.exists() else 0


def restart_step(result):
    return next(s for s in result.steps if s.step == "restart")


def run(verb, env):
    try:
        return verb(env.project(), "staging", yes=True, environ=env.environ)
    except RunbookError as exc:
        return exc


def test_provision_whose_restart_failed_is_restarted_by_the_rerun(pg, tmp_path):
    env = make_env(pg, tmp_path, restart="false")
    failed = run(commands.provision, env)
    assert isinstance(failed, RunbookError), failed
    assert dotenv(env.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "1"     # config changed, app not restarted

    env.rewrite(restart=WORKS)
    rerun = run(commands.provision, env)
    assert rerun.status == "ok" and restarts(env) == 1
    step = restart_step(rerun)
    assert step.status == "applied"
    assert "changed its config" in step.changes[0].summary and "did not restart it" in step.changes[0].summary
    assert [s.step for s in rerun.steps if s.status == "applied"] == ["restart"]     # nothing else was owed

    again = run(commands.provision, env)
    assert again.status == "unchanged" and restarts(env) == 1                        # paid once, not forever


def test_rollback_that_failed_before_the_store_is_restarted_by_the_next_rollback(pg, tmp_path):
    env = make_env(pg, tmp_path, restart=WORKS)
    assert run(commands.provision, env).status == "ok" and restarts(env) == 1

    env.rewrite(restart="false")
    failed = run(commands.rollback, env)
    assert isinstance(failed, RunbookError), failed
    assert dotenv(env.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
    # the failed rollback never reached the store: its records wait in the local journal
    assert (env.dir / ".runbook" / "journal.jsonl").read_text().count('"app": true') == 1

    env.rewrite(restart=WORKS)
    rerun = run(commands.rollback, env)
    assert rerun.status == "ok" and restarts(env) == 2
    assert restart_step(rerun).status == "applied"

    assert run(commands.rollback, env).status == "unchanged" and restarts(env) == 2


def test_provision_pays_a_restart_owed_by_a_rollback_drained_into_the_store(pg, tmp_path):
    env = make_env(pg, tmp_path, restart=WORKS)
    assert run(commands.provision, env).status == "ok"
    env.rewrite(restart="false")
    assert isinstance(run(commands.rollback, env), RunbookError)

    # the next provision imports the local records first, then turns the flag back on: its own
    # change restarts the app, and afterwards nothing is owed any more
    env.rewrite(restart=WORKS)
    assert run(commands.provision, env).status == "ok" and restarts(env) == 2
    assert run(commands.provision, env).status == "unchanged" and restarts(env) == 2


@pytest.mark.parametrize("cluster", ["pg18"], indirect=True)
def test_without_a_restart_command_the_hint_is_given_once(pg, tmp_path):
    env = make_env(pg, tmp_path)                       # no app.restart configured
    first = run(commands.provision, env)
    assert any("restart the app yourself" in n for n in restart_step(first).notes)
    second = run(commands.provision, env)
    assert second.status == "unchanged" and not restart_step(second).notes
