"""Item 9 of issue 12 (a rollback undone by an in-flight provision) and the fault hook's gate."""

from __future__ import annotations

import os

import pytest

from runbook import commands
from runbook.errors import GateClosed
from tests.projects import dotenv
from tests.reliability.test_crash_and_locks import cli

FLAG = "FLAG_RAPTOR_APP_ROLE_SEPARATION"


def test_a_rollback_during_a_provision_is_not_undone(env):
    """The operator rolls back while a provision is between its url and flag-on steps (rollback
    takes no lock): the provision's flag-on step finds the rollback's marker, leaves the flag off
    and exits 3 with the reason. The next provision, started after the rollback, turns it on."""
    project = env.project()
    assert commands.provision(project, "staging", yes=True, environ=env.environ).status == "ok"
    env.rewrite(deny=["alembic_version", "schema_migrations", "orders"])     # a change: provision has work again
    project = env.project()
    rolled: list[str] = []

    def meanwhile(report) -> None:
        if report.step == "url" and not rolled:
            res = commands.rollback(project, "staging", yes=True, environ=env.environ)
            rolled.append(res.status)
            assert dotenv(env.dir)[FLAG] == "0"

    with pytest.raises(GateClosed) as err:
        commands.provision(project, "staging", yes=True, environ=env.environ, on_step=meanwhile)
    assert rolled == ["ok"]
    assert "rolled back" in err.value.message and "after this run started" in err.value.message
    assert err.value.exit_code == 3 and "\n" not in err.value.message
    assert dotenv(env.dir)[FLAG] == "0"

    again = commands.provision(project, "staging", yes=True, environ=env.environ)
    assert again.status == "ok" and dotenv(env.dir)[FLAG] == "1"


def test_a_rollback_from_before_the_run_does_not_block_it(env):
    project = env.project()
    commands.provision(project, "staging", yes=True, environ=env.environ)
    commands.rollback(project, "staging", yes=True, environ=env.environ)
    assert commands.provision(project, "staging", yes=True, environ=env.environ).status == "ok"
    assert dotenv(env.dir)[FLAG] == "1"


def test_the_fault_hook_alone_kills_nothing(su_env):
    """RUNBOOK_FAULT_KILL_AFTER is a test hook: set by itself (a stray export), a production run
    goes through; only with the test-only token does it kill."""
    done = cli(su_env, "provision", "--env", "staging", "--yes", extra={"RUNBOOK_FAULT_KILL_AFTER": "role"})
    assert done.returncode == 0, done.stderr
    wrong = cli(su_env, "rotate", "--env", "staging", "--yes",
                extra={"RUNBOOK_FAULT_KILL_AFTER": "rotate_password", "RUNBOOK_FAULT_TOKEN": "yes"})
    assert wrong.returncode == 0, wrong.stderr
    assert "RUNBOOK_FAULT" not in "".join(os.environ)
