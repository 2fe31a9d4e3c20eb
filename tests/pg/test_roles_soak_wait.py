"""`runbook soak --wait` on a three-role project, the way an operator runs it (a subprocess): it
stays until every role's soak has passed, or stops as soon as one has failed, with a progress
line per role (issue 18)."""

from __future__ import annotations

import json
import re

import pytest
from psycopg import sql

from tests.e2e.test_cli import run_cli
from tests.pg.test_roles_three import Three

# long enough that the CLI starts (a few seconds on a loaded machine) well before a checkpoint
SOAK = {"duration": "16s", "checkpoints": ["8s", "16s"], "valid_for": "1h", "checks": ["drift"]}


@pytest.fixture
def three(pg, tmp_path, request) -> Three:
    made = Three(pg, tmp_path, "createrole")
    made.data["soak"] = SOAK
    made.write()
    request.addfinalizer(lambda: pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(made.mig))))
    return made


def _wait(three) -> tuple[int, dict, list[str]]:
    res = run_cli(["soak", "--env", "staging", "--wait", "-o", "json"], three.dir, three.environ, timeout=180)
    return res.returncode, json.loads(res.stdout), res.stderr.splitlines()


def _age(three, seconds: int, *, ro: bool) -> None:
    """Move the running soaks of the read-only role (or of every other role) `seconds` into the past."""
    which = "=" if ro else "<>"
    three.pg.execute(sql.SQL(f"UPDATE runbook.soaks SET started_at = started_at - %s "
                             f"WHERE status = 'running' AND role {which} %s"), (seconds, three.ro))


def test_soak_wait_stays_until_every_role_has_passed(three):
    assert three.provision().status == "ok"
    # the app's and the migrator's soaks are due in full now; the read-only role's is not: the
    # first role passing must not end the wait
    _age(three, 30, ro=False)
    code, doc, lines = _wait(three)
    assert code == 0, lines
    assert {name: v["state"] for name, v in doc["data"]["roles"].items()} == \
        {three.app: "passed", three.ro: "passed", three.mig: "passed"}
    waiting = [line for line in lines if line.startswith(f"staging: soak {three.ro}: waiting for checkpoint")]
    assert waiting, lines
    assert all(re.fullmatch(rf"staging: soak {three.ro}: waiting for checkpoint \d+s "
                            r"\(\d+:\d\d left, soak ends in \d+:\d\d\)", line) for line in waiting), lines
    for name in (three.app, three.ro, three.mig):
        assert lines.count(f"staging: soak {name}: passed (done)") == 1, lines
    assert not any(line.startswith(f"staging: soak {three.app}: waiting") for line in lines), lines


def test_soak_wait_stops_when_one_role_fails(three):
    assert three.provision().status == "ok"
    # the owner hands the read-only role a write: its drift check fails at its first checkpoint,
    # due now, while the others' soaks still run
    with three.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(three.owner)))
        conn.execute(sql.SQL("GRANT INSERT ON orders TO {}").format(sql.Identifier(three.ro)))
    _age(three, 30, ro=True)
    code, doc, lines = _wait(three)
    assert code == 4, lines
    states = {name: v["state"] for name, v in doc["data"]["roles"].items()}
    assert states[three.ro] == "failed"
    # it stopped at the first evaluation, without waiting for the others' checkpoints
    assert not any("waiting for checkpoint" in line for line in lines), lines
