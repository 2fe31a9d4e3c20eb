"""Read-only runs, the way a nightly CI job or a cron soak runs them: with a DSN whose role can
read the catalog and nothing else (and, for the soak, SELECT on the journal), in a session that
is read-only by default. drift, diagnose, plan, status, history and a soak with nothing due work,
never create the `runbook` schema, and write nothing; a due checkpoint that cannot be recorded is
reported (exit 6) and left for a run that can write."""

from __future__ import annotations

import json
import time

import pytest
from psycopg import sql

from tests.e2e.test_cli import run_cli
from tests.pg.conftest import make_env

pytestmark = pytest.mark.pg

READER_PW = "reader-pw-0123456789"


def _reader(e, *, journal: bool = False) -> dict[str, str]:
    """A login that can read the catalog only (plus the journal when `journal`); its sessions are
    read-only by default, so even a temporary table would be refused."""
    name = e.pg.role("reader")
    e.pg.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(READER_PW)))
    e.pg.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(name)))
    e.pg.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(e.pg.dbname), sql.Identifier(name)))
    if journal:
        e.pg.execute(sql.SQL("GRANT USAGE ON SCHEMA runbook TO {}").format(sql.Identifier(name)))
        e.pg.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA runbook TO {}").format(sql.Identifier(name)))
    return {**e.environ, "RB_TEST_ADMIN_DSN": e.pg.tcp_dsn(name, READER_PW)}


def _journal_rows(e) -> tuple[int, int, int]:
    return tuple(e.pg.execute("SELECT (SELECT count(*) FROM runbook.runs), (SELECT count(*) FROM runbook.events), "
                              "(SELECT count(*) FROM runbook.checkpoints)")[0])


def _schema_exists(e) -> bool:
    return bool(e.pg.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'runbook'")[0][0])


def _cli(e, environ, *args, code):
    res = run_cli(list(args), e.dir, environ)
    assert res.returncode == code, (args, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    return res


def test_never_provisioned_read_only_runs_create_nothing(pg, tmp_path):
    e = make_env(pg, tmp_path, admin="createrole")
    reader = _reader(e)
    plan = _cli(e, reader, "plan", "--env", "staging", code=0)
    said = " ".join(plan.stderr.split())         # rich folds long notes
    assert "provision with this DSN would be refused: admin user reader_" in said
    assert "CREATE ROLE" in _cli(e, reader, "plan", "--env", "staging", "--sql", code=0).stderr   # and the plan itself
    _cli(e, reader, "drift", "--env", "staging", code=2)          # the role does not exist yet: provision first
    _cli(e, reader, "diagnose", "--env", "staging", code=4)
    soak = json.loads(_cli(e, reader, "soak", "--env", "staging", "-o", "json", code=3).stdout)
    assert soak["data"]["soak"]["state"] == "none"
    hist = json.loads(_cli(e, reader, "history", "--env", "staging", "-o", "json", code=0).stdout)
    assert hist["data"].get("runs", []) == []
    _cli(e, reader, "status", code=0)
    assert not _schema_exists(e)


@pytest.fixture
def provisioned(pg, tmp_path):
    e = make_env(pg, tmp_path, admin="createrole",
                 soak={"duration": "1h", "checkpoints": ["30m", "1h"], "checks": ["diagnose", "drift"]})
    _cli(e, e.environ, "provision", "--env", "staging", "--yes", code=0)
    return e


def test_drift_with_a_catalog_only_role(provisioned):
    e = provisioned
    reader = _reader(e)
    before = _journal_rows(e)
    res = _cli(e, reader, "drift", "--env", "staging", "-o", "json", code=0)
    assert json.loads(res.stdout)["data"]["findings"] == []
    # and it sees drift when there is some: a table the role should reach but cannot
    with e.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(e.owner)))
        conn.execute("CREATE TABLE invoices (id int)")
        conn.execute(sql.SQL("REVOKE ALL ON invoices FROM {}").format(sql.Identifier(e.role)))
    found = json.loads(_cli(e, reader, "drift", "--env", "staging", "-o", "json", code=4).stdout)["data"]["findings"]
    assert any("invoices" in obj for f in found for obj in f["objects"]), found
    assert _journal_rows(e) == before


def test_plan_diagnose_status_history_and_soak_with_nothing_due(provisioned):
    e = provisioned
    reader = _reader(e, journal=True)
    before = _journal_rows(e)
    plan = json.loads(_cli(e, reader, "plan", "--env", "staging", "-o", "json", code=0).stdout)
    assert plan["status"] == "unchanged"
    diag = json.loads(_cli(e, reader, "diagnose", "--env", "staging", "-o", "json", code=0).stdout)
    assert [c["status"] for c in diag["checks"]] == ["pass"] * 4
    status = json.loads(_cli(e, reader, "status", "-o", "json", code=0).stdout)
    assert status["data"]["environments"][0]["soak"] == "running"
    hist = json.loads(_cli(e, reader, "history", "--env", "staging", "-o", "json", code=0).stdout)
    assert [r["command"] for r in hist["data"]["runs"]] == ["provision"]
    soak = json.loads(_cli(e, reader, "soak", "--env", "staging", "-o", "json", code=3).stdout)
    assert soak["data"]["soak"]["state"] == "running"
    assert _journal_rows(e) == before


def test_a_journal_the_dsn_may_not_read_is_one_line(provisioned):
    e = provisioned
    reader = _reader(e)                           # catalog only: no USAGE on schema runbook
    res = _cli(e, reader, "history", "--env", "staging", code=2)
    assert res.stderr.startswith("error: cannot read the journal at schema runbook") and "permission denied" in res.stderr
    res = _cli(e, reader, "soak", "--env", "staging", code=2)
    assert res.stderr.startswith("error: cannot read the journal at schema runbook") and "fix: grant" in res.stderr


def test_a_due_checkpoint_that_cannot_be_recorded_is_reported_and_left_for_a_writer(pg, tmp_path):
    e = make_env(pg, tmp_path, admin="createrole", soak={"duration": "2s", "checkpoints": ["2s"], "checks": ["diagnose"]})
    _cli(e, e.environ, "provision", "--env", "staging", "--yes", code=0)
    started = e.pg.execute("SELECT started_at FROM runbook.soaks")[0][0]
    while time.time() < started + 2.5:             # until the checkpoint is due
        time.sleep(0.2)
    reader = _reader(e, journal=True)
    before = _journal_rows(e)
    res = _cli(e, reader, "soak", "--env", "staging", "-o", "json", code=6)
    out = json.loads(res.stdout)
    assert out["status"] == "not-recorded"
    [point] = out["data"]["soak"]["checkpoints"]
    assert point["status"] == "pass" and point["not_recorded"] and "read-only" in point["not_recorded"]
    assert any("could not be recorded" in m for m in out["messages"])
    assert _journal_rows(e) == before                 # nothing written, nothing half-written
    # a run that can write records it, and the soak passes
    done = json.loads(_cli(e, e.environ, "soak", "--env", "staging", "-o", "json", code=0).stdout)
    assert done["data"]["soak"]["state"] == "passed"
    assert _journal_rows(e)[2] == 1
