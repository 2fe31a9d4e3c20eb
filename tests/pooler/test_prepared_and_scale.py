"""Automatic prepared statements through a transaction pooler, and a 10,000-table environment
whose app URL goes through one.

psycopg prepares a statement once it has run `prepare_threshold` (5) times on a connection. A
transaction pooler may run the next execution on another server connection, which never saw
the PREPARE: `prepared statement "_pg3_0" does not exist`. The shuffle below makes PgBouncer do
exactly that on every statement, so the control fails for certain and the tool's connections
must not."""

from __future__ import annotations

import psycopg
import pytest

from runbook import commands
from runbook.journal import PostgresStore
from tests.pooler.bouncer import POOL_ADMIN, POOL_ADMIN_PASSWORD
from tests.pooler.conftest import bouncer_for, make_pooled_env

REPEATS = 20


def shuffled(dsn: str, statement) -> None:
    """Run `statement()` REPEATS times through a transaction pooler so that consecutive runs
    land on different server connections: a second client takes, inside an open transaction,
    the server connection the statement just used (PgBouncer hands out the most recently
    released one first)."""
    with psycopg.connect(dsn, prepare_threshold=None) as other:   # not autocommit: it holds a transaction
        for _ in range(REPEATS // 2):
            other.commit()
            statement()
            other.execute("SELECT 1")
            statement()
        other.commit()


def test_the_shuffle_breaks_automatic_preparation(pg, bouncer_pool):
    """The control: with psycopg's default prepare_threshold the shuffle fails, so the test
    below is able to fail."""
    b = bouncer_for(bouncer_pool, pg.rc, "transaction")
    from tests.pooler import bouncer

    bouncer.install_auth_function(pg.admin_dsn)
    pg.execute(f'GRANT CONNECT ON DATABASE "{pg.dbname}" TO {POOL_ADMIN}')
    dsn = b.dsn(POOL_ADMIN, POOL_ADMIN_PASSWORD, pg.dbname)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.prepare_threshold == 5
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            shuffled(dsn, lambda: conn.execute("SELECT %s::int", (1,)))


def test_the_journal_store_survives_the_shuffle(pg, tmp_path, bouncer_pool):
    b = bouncer_for(bouncer_pool, pg.rc, "transaction")
    env = make_pooled_env(pg, tmp_path, b)
    store = PostgresStore(env.admin_dsn, location="state store")
    try:
        run = store.begin("staging", "provision", "digest")
        shuffled(env.admin_dsn, lambda: store.event(run, "staging", "grants", "info", "same statement", {"n": 1}))
    finally:
        store.close()
    assert env.pg.execute("SELECT count(*) FROM runbook.events")[0][0] == REPEATS


@pytest.mark.parametrize("cluster", ["pg18"], indirect=True)
def test_ten_thousand_tables_with_the_apps_url_through_transaction_pooling(pg, tmp_path, bouncer_pool):
    b = bouncer_for(bouncer_pool, pg.rc, "mixed")
    env = make_pooled_env(pg, tmp_path, b, tables=10_000)
    project, environ = env.project(), env.environ
    done = commands.provision(project, "staging", yes=True, environ=environ)
    assert done.exit_code == 0, done.messages
    verify = next(s for s in done.steps if s.step == "verify").to_json()["verify"]
    # 10,000 tables, orders, customers, alembic_version and two sequences
    assert verify["status"] == "pass" and "10005 relations reachable" in verify["detail"], verify
    assert f"@127.0.0.1:{b.port}/" in env.url()
    drift = commands.drift(project, "staging", environ=environ)
    assert drift.status == "ok" and drift.data["relations"] == 10_005, drift.data
    assert commands.diagnose(project, "staging", environ=environ).exit_code == 0
    # the app's URL, through the transaction pool, reaches a table the spec grants
    with psycopg.connect(env.url(), autocommit=True, prepare_threshold=None) as conn:
        for _ in range(REPEATS):
            assert conn.execute("SELECT count(*) FROM t_9999").fetchone()[0] == 0
    assert env.advisory_locks() == []
