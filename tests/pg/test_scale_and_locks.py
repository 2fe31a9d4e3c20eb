"""Catalog reads and grants at scale, and grants that meet another session's locks.

Scale: the snapshot evaluates privileges once per distinct (schema, kind, owner, ACL); these
tests hold it to a per-object oracle on deliberately mixed ACLs, and check that neither the
catalog queries nor the grant statements grow with the number of tables. Speed itself is
measured by benchmarks/catalog_scale.py, not asserted here.

Locks: GRANT rewrites each object's pg_class row, so it waits for a transaction that changed
the same row (here a migration's ALTER TABLE left open). The grant transaction runs under
SET LOCAL lock_timeout, is retried, and ends as one line that says nothing was changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import yaml
from psycopg import sql

from runbook import catalog, commands, grants
from runbook.errors import RunbookError
from runbook.project import SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES
from runbook.steps import grants as privileges

# The snapshot's answer computed the slow, obvious way: every privilege of every object.
_ORACLE = sql.SQL("""
SELECT n.nspname, c.relname, c.relkind::text, pg_get_userbyid(c.relowner),
       ARRAY(SELECT p FROM unnest(CASE WHEN c.relkind = 'S' THEN {seqp}::text[] ELSE {tabp}::text[] END) AS p
             WHERE CASE WHEN c.relkind = 'S' THEN has_sequence_privilege({roid}::oid, c.oid, p)
                        ELSE coalesce(has_table_privilege({roid}::oid, c.oid, p), false) END),
       ARRAY(SELECT DISTINCT a.privilege_type FROM aclexplode(c.relacl) AS a WHERE a.grantee = {roid}::oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY({schemas}) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND NOT c.relispartition
ORDER BY 1, 2
""")

SPEC_SCHEMAS = {"public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"], "sequences": ["USAGE", "SELECT"]}}


def _ident(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def _oracle(conn: psycopg.Connection, role: str, schemas: list[str]) -> list[tuple]:
    roid = catalog.role_oid(conn, role)
    rows = conn.execute(_ORACLE.format(
        roid=sql.Literal(roid), schemas=sql.Literal(schemas),
        tabp=sql.Literal(list(TABLE_PRIVILEGES)), seqp=sql.Literal(list(SEQUENCE_PRIVILEGES)))).fetchall()
    return [(s, n, k, o, frozenset(h), frozenset(d)) for s, n, k, o, h, d in rows]


def _spec(role: str, owner: str, schemas: dict | None = None):
    from runbook.project import RoleSpec

    return RoleSpec(name=role, owner=owner, schemas=schemas or SPEC_SCHEMAS, deny=["alembic_version"])


def _many_tables(conn: psycopg.Connection, schema: str, owner: str, n: int) -> None:
    """n tables with a bigserial each, created server-side in one statement."""
    conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(_ident(schema), _ident(owner)))
    conn.execute(sql.SQL("SET ROLE {}").format(_ident(owner)))
    conn.execute(sql.SQL("""
        DO $$ BEGIN
          FOR i IN 1..{n} LOOP
            EXECUTE format('CREATE TABLE %I.%I (id bigserial PRIMARY KEY)', {schema}, 't' || i);
          END LOOP;
        END $$""").format(n=sql.Literal(n), schema=sql.Literal(schema)))
    conn.execute("RESET ROLE")


class CountingConnection:
    """Counts the statements the snapshot sends (it only calls execute)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn, self.statements = conn, 0

    def execute(self, *args, **kw):
        self.statements += 1
        return self.conn.execute(*args, **kw)


# --- scale ---------------------------------------------------------------------------------

def test_snapshot_matches_a_per_object_oracle_on_mixed_acls(pg):
    owner, other, group = pg.role("owner"), pg.role("other_owner"), pg.role("readers")
    app, missing = pg.role("app"), pg.role("not_created")
    with pg.connect() as conn:
        for role in (owner, other, group):
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(_ident(role)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE {}").format(_ident(app), _ident(group)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}, {}").format(_ident(owner), _ident(other)))
        conn.execute(sql.SQL("CREATE SCHEMA s2 AUTHORIZATION {}").format(_ident(owner)))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA s2 TO {}").format(_ident(other)))
        # ~130 objects whose ACLs fall into many groups: direct grants, grants to a role the app is
        # a member of, PUBLIC, two owners, views, sequences with their own grants, a partition
        for i in range(60):
            who = owner if i % 5 else other
            schema = "s2" if i % 7 == 0 else "public"
            table = _ident(schema, f"t{i}")
            conn.execute(sql.SQL("SET ROLE {}").format(_ident(who)))
            conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, v int)").format(table))
            seq = _ident(schema, f"t{i}_id_seq")
            if i % 2:
                conn.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(table, _ident(app)))
            if i % 3 == 0:
                conn.execute(sql.SQL("GRANT UPDATE, TRUNCATE ON {} TO {}").format(table, _ident(group)))
            if i % 4 == 0:
                conn.execute(sql.SQL("GRANT SELECT ON {} TO PUBLIC").format(table))
            if i % 6 == 0:
                conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(seq, _ident(app)))
            if i % 8 == 0:
                conn.execute(sql.SQL("CREATE VIEW {} AS SELECT id FROM {}").format(_ident(schema, f"v{i}"), table))
                conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(_ident(schema, f"v{i}"), _ident(app)))
            conn.execute("RESET ROLE")
        conn.execute(sql.SQL("SET ROLE {}").format(_ident(owner)))
        conn.execute("CREATE TABLE alembic_version (version_num text)")
        conn.execute("CREATE TABLE parted (id int) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10)")
        conn.execute(sql.SQL("GRANT ALL ON alembic_version, parted TO {}").format(_ident(app)))
        conn.execute("RESET ROLE")

        schemas = {"public": SPEC_SCHEMAS["public"], "s2": {"tables": ["SELECT"], "sequences": ["USAGE"]}}
        for role in (app, missing):
            snap = catalog.snapshot(conn, _spec(role, owner, schemas), owner)
            expected = _oracle(conn, role, ["public", "s2"])
            assert len(expected) > 100
            assert [tuple(r) for r in snap.relations] == expected
        assert not any(held or direct for *_, held, direct in expected)    # the role that does not exist
        # the ACLs are genuinely mixed, so grouping by them had something to get wrong
        assert len({(r[0], r[2], r[3], r[4], r[5]) for r in _oracle(conn, app, ["public", "s2"])}) >= 10


def test_catalog_reads_and_grant_statements_do_not_grow_with_the_tables(pg):
    owner, app = pg.role("owner"), pg.role("app")
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(_ident(owner)))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(_ident(app)))
        _many_tables(conn, "few", owner, 3)
        _many_tables(conn, "many", owner, 600)

        def measure(schema: str) -> tuple[int, int, int]:
            spec = _spec(app, owner, {schema: SPEC_SCHEMAS["public"]})
            counting = CountingConnection(conn)
            snap = catalog.snapshot(counting, spec, owner)
            changes = grants.plan(spec, snap)
            for change in changes:
                conn.execute(change.statement)
            left = grants.findings(spec, catalog.snapshot(conn, spec, owner))
            assert left == [], [f.summary() for f in left]
            return counting.statements, len(changes), len(snap.relations)

        few, many = measure("few"), measure("many")
    assert (few[2], many[2]) == (6, 1200)              # a table and its sequence each
    assert few[:2] == many[:2]                          # same queries, same statements, 200× the objects


# --- locks ---------------------------------------------------------------------------------

def _with_settings(env, **settings) -> None:
    data = yaml.safe_load(env.path.read_text())
    data["settings"] = settings
    env.path.write_text(yaml.safe_dump(data, sort_keys=False))


def _provisioned_then_broken(env) -> None:
    """Provisioned, then SELECT revoked on every table: drift --fix has a schema-wide GRANT to run."""
    res = commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert res.exit_code == 0, res.messages
    env.pg.execute(sql.SQL("REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {}").format(_ident(env.role)))


def _holder(env) -> psycopg.Connection:
    """A migration left open: its ALTER TABLE changed orders' pg_class row and has not committed."""
    conn = psycopg.connect(env.pg.admin_dsn)
    conn.execute("ALTER TABLE orders ADD COLUMN held_by_migration int")
    return conn


def _can_select(env, table: str) -> bool:
    return env.pg.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (env.role, table))[0][0]


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    taken: list[float] = []
    monkeypatch.setattr(privileges, "_sleep", taken.append)
    return taken


def test_grant_blocked_by_a_lock_times_out_retries_then_reports_one_line(su_env, sleeps):
    env = su_env
    _with_settings(env, lock_timeout="150ms", lock_retries=2)
    _provisioned_then_broken(env)
    holder = _holder(env)
    try:
        with pytest.raises(RunbookError) as caught:
            commands.drift(env.project(), "staging", fix=True, yes=True, environ=env.environ)
        message = caught.value.message
        assert "\n" not in message
        assert message.startswith("grants gave up after 3 attempt(s)")
        assert "lock_timeout 150 ms" in message and "nothing was changed" in message
        assert sleeps == [2.0, 4.0]                      # two retries, backing off
        # the migration was not disturbed, and none of the grant transaction survived
        assert holder.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
        assert not _can_select(env, "customers")
    finally:
        holder.rollback()
        holder.close()
    history = commands.history(env.project(), "staging", environ=env.environ)
    errors = [e for e in history.data["events"] if e["kind"] == "error"]
    assert errors and errors[0]["step"] == "grants" and "gave up" in errors[0]["summary"]
    # with the migration gone, the same command converges
    fixed = commands.drift(env.project(), "staging", fix=True, yes=True, environ=env.environ)
    assert fixed.exit_code == 0 and _can_select(env, "customers")


def test_grant_is_retried_when_the_blocking_session_commits_first(su_env, sleeps):
    env = su_env
    _with_settings(env, lock_timeout="20s", lock_retries=2)
    _provisioned_then_broken(env)
    holder = _holder(env)
    committed = threading.Event()

    def commit_once_we_wait() -> None:
        # commit the migration only once the grant is queued behind it, so PostgreSQL ends the
        # grant with "tuple concurrently updated" rather than letting it run after the commit
        with env.pg.connect() as watcher:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND application_name LIKE 'runbook:%'").fetchone()[0]
                if waiting:
                    break
                committed.wait(0.02)
        holder.commit()
        committed.set()

    thread = threading.Thread(target=commit_once_we_wait, daemon=True)
    thread.start()
    try:
        res = commands.drift(env.project(), "staging", fix=True, yes=True, environ=env.environ)
    finally:
        thread.join(30)
        holder.close()
    assert committed.is_set()
    assert res.exit_code == 0 and _can_select(env, "orders") and _can_select(env, "customers")
    notes = [n for step in res.steps for n in step.notes]
    assert any("committed while we waited (attempt 1/3); retrying" in n for n in notes), notes
    assert sleeps == [2.0]


def test_the_cli_reports_a_lock_timeout_as_one_line(su_env):
    env = su_env
    _with_settings(env, lock_timeout="100ms", lock_retries=1)
    _provisioned_then_broken(env)
    holder = _holder(env)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "runbook.cli", "drift", "--env", "staging", "--fix", "--yes"],
            cwd=env.dir, env={**os.environ, **env.environ, "NO_COLOR": "1", "CI": "true"},
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        holder.rollback()
        holder.close()
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: grants gave up after 2 attempt(s)") and "nothing was changed" in lines[0]
    assert not _can_select(env, "customers")


def test_only_contention_is_retried():
    class Fake(psycopg.errors.InternalError_):
        sqlstate = "XX000"

        def __str__(self) -> str:
            return "tuple concurrently updated"

    assert privileges._contended(psycopg.errors.LockNotAvailable()) == "lock_timeout met"
    assert privileges._contended(psycopg.errors.DeadlockDetected())
    assert privileges._contended(Fake())
    assert privileges._contended(psycopg.errors.InsufficientPrivilege()) is None
    assert privileges._contended(psycopg.errors.InternalError_()) is None
