"""Per-role soaks and the per-role promotion gate, with three roles (app with a flag, readonly
and migrator without) on real PostgreSQL: staging on the test cluster, prod on its own."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from runbook import commands
from runbook.errors import GateClosed
from tests.pg.conftest import prod_database
from tests.pg.test_roles_three import FLAG, Three
from tests.projects import dotenv

# long enough that no checkpoint falls due on its own between provision and the first `soak`,
# however loaded the machine (a 3 s soak passed there by itself under load); tests age it instead
SHORT = {"duration": "10m", "checkpoints": ["5m", "10m"], "valid_for": "1h", "checks": ["diagnose", "drift"]}


@pytest.fixture
def staged(pg, tmp_path, prod_cluster):
    three = Three(pg, tmp_path, "superuser")
    three.data["soak"] = SHORT
    with prod_database(prod_cluster, three.base, "CREATE TABLE orders (id serial PRIMARY KEY)") as dbname:
        three.data["environments"]["prod"] = {
            "provider": "local", "database": {"embedded": str(prod_cluster.data_dir), "database": dbname},
            "app": {"dotenv": ".runbook/prod.env"}, "promote_from": "staging"}
        three.write()
        try:
            yield three
        finally:
            pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(three.mig)))
    # prod's database is gone with what these roles held in it; the roles are the cluster's
    with psycopg.connect(prod_cluster.admin_conninfo(), autocommit=True) as conn:
        for role in (three.mig, three.ro):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def pass_running_soaks(three, *names: str) -> None:
    three.pg.execute("UPDATE runbook.soaks SET started_at = started_at - 3600 WHERE status = 'running'")
    res = commands.soak(three.project(), "staging", environ=three.environ)
    states = {name: view["state"] for name, view in res.data["roles"].items()}
    assert all(states[n] == "passed" for n in (names or states)), (res.messages, states)


def promote(three, **kw):
    return commands.promote(three.project(), "prod", yes=True, environ=three.environ, sign_off="Ada", **kw)


def test_each_role_needs_its_own_passed_soak_and_an_unchanged_role_needs_none(staged):
    three = staged
    commands.provision(three.project(), "staging", yes=True, environ=three.environ)
    soak = commands.soak(three.project(), "staging", environ=three.environ)
    assert soak.exit_code == 3
    assert set(soak.data["roles"]) == {three.app, three.ro, three.mig}
    assert all(v["state"] == "running" for v in soak.data["roles"].values())
    with pytest.raises(GateClosed) as closed:
        promote(three)
    assert all(name in closed.value.message for name in (three.app, three.ro, three.mig))

    pass_running_soaks(three)
    res = promote(three)
    assert res.status == "ok"
    assert dotenv(three.dir, "prod")[FLAG] == "1"
    approvals = commands.history(three.project(), "prod", environ=three.environ).data["approvals"]
    assert {a["role"] for a in approvals} == {three.app, three.ro, three.mig}

    # readonly's spec changes: a new soak for it alone, and the gate waits for that one only
    three.data["roles"][three.ro]["schemas"]["public"]["tables"] = ["SELECT", "REFERENCES"]
    three.write()
    commands.provision(three.project(), "staging", yes=True, environ=three.environ)
    with pytest.raises(GateClosed) as closed:
        promote(three)
    assert three.ro in closed.value.message
    assert three.app not in closed.value.message and three.mig not in closed.value.message

    # app's passed staging soak is voided by a rollback; its spec is what prod last took, so it
    # needs no new soak (the rule both ways: readonly's changed spec still does)
    commands.rollback(three.project(), "staging", yes=True, environ=three.environ, role=three.app)
    with pytest.raises(GateClosed) as closed:
        promote(three)
    assert three.ro in closed.value.message and three.app not in closed.value.message
    pass_running_soaks(three, three.ro)
    res = promote(three)
    assert res.status == "ok"
    assert any("unchanged since prod last took" in m and three.app in m for m in res.messages)

    # a role whose spec prod never took needs its soak even though prod has taken others
    three.data["roles"][three.mig]["connection_limit"] = 3
    three.write()
    with pytest.raises(GateClosed) as closed:
        promote(three)
    assert three.mig in closed.value.message


def test_soak_and_status_report_each_role(staged):
    three = staged
    commands.provision(three.project(), "staging", yes=True, environ=three.environ)
    one = commands.soak(three.project(), "staging", environ=three.environ, role=three.ro)
    assert set(one.data["roles"]) == {three.ro}
    status = commands.status(three.project(), environ=three.environ)
    rows = [r for r in status.data["environments"] if r["env"] == "staging"]
    assert {r["role_name"] for r in rows} == {three.app, three.ro, three.mig}
    flags = {r["role_name"]: r["flag"] for r in rows}
    assert flags == {three.app: "on", three.ro: "none", three.mig: "none"}
    assert all(r["soak"] == "running" for r in rows)
