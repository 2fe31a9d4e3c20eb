"""Least privilege, proven from the app's side: after `provision` with the local provider, connect
with the URL the app was given and try every privilege on every kind of object.

The spec grants DML on tables, USAGE/SELECT on sequences in `public`, read-only tables and
EXECUTE on functions in `billing`, and denies migration bookkeeping and one billing table. The
database also holds a schema outside the spec (`internal`) and the tool's own journal (`runbook`).

Each row of MATRIX is one attempt, made inside a transaction that is rolled back, with the
outcome it must have: "ok", or "denied" (SQLSTATE 42501, insufficient_privilege). A few rows are
"public": allowed only because PostgreSQL grants them to PUBLIC by default and the tool leaves
PUBLIC alone (a database-wide decision, not the app role's): TEMP tables, EXECUTE on functions
whose owner did not revoke it from PUBLIC, large objects, CONNECT to the cluster's other
databases. They are pinned here so that a change in that decision is made on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import errors, sql

from runbook import commands
from tests.conftest import PgTarget, RunningCluster
from tests.pg.conftest import Env, make_env

SCHEMAS = {
    "public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"], "sequences": ["USAGE", "SELECT"]},
    "billing": {"tables": ["SELECT"], "functions": ["EXECUTE"]},
}
DENY = ["alembic_version", "schema_migrations", "billing.ledger_audit"]

# The app's world, created by the owner as migrations would (make_env adds orders, customers,
# alembic_version and the view big_orders in public).
OWNER_DDL = [
    "CREATE TABLE public.events (id bigint, at date NOT NULL) PARTITION BY RANGE (at)",
    "CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE MATERIALIZED VIEW public.order_totals AS SELECT count(*) AS n FROM public.orders",
    "CREATE FUNCTION public.open_total() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.orders'",
    "CREATE FUNCTION public.closed_total() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM public.orders'",
    "REVOKE EXECUTE ON FUNCTION public.closed_total() FROM PUBLIC",
    "CREATE TABLE billing.invoices (id int PRIMARY KEY, amount numeric)",
    "INSERT INTO billing.invoices VALUES (1, 10)",
    "CREATE SEQUENCE billing.invoice_no",
    "CREATE TABLE billing.ledger_audit (id int)",
    "CREATE FUNCTION billing.tax(amount numeric) RETURNS numeric LANGUAGE sql AS 'SELECT amount * 0.2'",
    "REVOKE EXECUTE ON FUNCTION billing.tax(numeric) FROM PUBLIC",
    "CREATE TABLE internal.secrets (k text, v text)",
    "CREATE FUNCTION internal.helper() RETURNS int LANGUAGE sql AS 'SELECT 1'",
]


@dataclass(frozen=True)
class Attempt:
    statement: str
    outcome: str          # ok | denied | public (allowed through PostgreSQL's PUBLIC defaults)
    check: str | None = None    # a query that must return true afterwards (same transaction)


def _rows() -> list:
    T = Attempt
    matrix = {
        # tables in the spec: exactly the declared DML
        "table/select": T("SELECT * FROM orders", "ok"),
        "table/insert(+sequence)": T("INSERT INTO orders (total) VALUES (1)", "ok"),
        "table/insert(identity)": T("INSERT INTO customers (name) VALUES ('a')", "ok"),
        "table/update": T("UPDATE orders SET total = 2", "ok"),
        "table/delete": T("DELETE FROM orders", "ok"),
        "table/truncate": T("TRUNCATE orders", "denied"),
        "table/references": T("SELECT 1", "ok", "NOT has_table_privilege('public.orders', 'REFERENCES')"),
        "table/trigger": T("SELECT 1", "ok", "NOT has_table_privilege('public.orders', 'TRIGGER')"),
        "table/alter": T("ALTER TABLE orders ADD COLUMN sneaky int", "denied"),
        "table/create-index": T("CREATE INDEX ON orders (total)", "denied"),
        "table/drop": T("DROP TABLE orders", "denied"),
        "table/grant-onward": T("GRANT SELECT ON orders TO PUBLIC", "ok",
                                "NOT has_table_privilege('public', 'public.orders', 'SELECT')"),
        "partitioned/insert-through-parent": T("INSERT INTO events VALUES (1, '2024-05-01')", "ok"),
        "partitioned/select-partition": T("SELECT * FROM events_2024", "ok"),
        "view/select": T("SELECT * FROM big_orders", "ok"),
        "view/insert": T("INSERT INTO big_orders (total) VALUES (500)", "ok"),
        "matview/select": T("SELECT * FROM order_totals", "ok"),
        "matview/refresh": T("REFRESH MATERIALIZED VIEW order_totals", "denied"),
        # sequences in the spec: USAGE and SELECT, not UPDATE
        "sequence/nextval": T("SELECT nextval('orders_id_seq')", "ok"),
        "sequence/select": T("SELECT last_value FROM orders_id_seq", "ok"),
        "sequence/setval": T("SELECT setval('orders_id_seq', 1000)", "denied"),
        # the deny list, plain and schema-qualified
        "denied-table/select": T("SELECT * FROM alembic_version", "denied"),
        "denied-table/insert": T("INSERT INTO alembic_version VALUES ('x')", "denied"),
        "denied-table/update": T("UPDATE alembic_version SET version_num = 'x'", "denied"),
        "denied-table/delete": T("DELETE FROM alembic_version", "denied"),
        "denied-qualified/select": T("SELECT * FROM billing.ledger_audit", "denied"),
        # a read-only schema with EXECUTE declared
        "readonly-table/select": T("SELECT * FROM billing.invoices", "ok"),
        "readonly-table/insert": T("INSERT INTO billing.invoices VALUES (2, 1)", "denied"),
        "readonly-table/update": T("UPDATE billing.invoices SET amount = 0", "denied"),
        "readonly-table/delete": T("DELETE FROM billing.invoices", "denied"),
        "undeclared-sequence/nextval": T("SELECT nextval('billing.invoice_no')", "denied"),
        "undeclared-sequence/select": T("SELECT last_value FROM billing.invoice_no", "denied"),
        # functions: EXECUTE where declared; elsewhere only what PUBLIC still holds
        "function/execute-declared": T("SELECT billing.tax(10)", "ok"),
        "function/execute-undeclared": T("SELECT public.closed_total()", "denied"),
        "function/execute-public-default": T("SELECT public.open_total()", "public"),
        # no new objects anywhere
        "create/table": T("CREATE TABLE public.sneaky (x int)", "denied"),
        "create/table-in-readonly-schema": T("CREATE TABLE billing.sneaky (x int)", "denied"),
        "create/view": T("CREATE VIEW public.sneaky AS SELECT 1", "denied"),
        "create/sequence": T("CREATE SEQUENCE public.sneaky", "denied"),
        "create/function": T("CREATE FUNCTION public.sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'", "denied"),
        "create/schema": T("CREATE SCHEMA sneaky", "denied"),
        "create/role": T("CREATE ROLE sneaky", "denied"),
        "create/temp-table": T("CREATE TEMP TABLE scratch (x int)", "public"),
        "create/large-object": T("SELECT lo_create(0)", "public"),
        # schemas outside the spec, and the tool's journal
        "other-schema/select": T("SELECT * FROM internal.secrets", "denied"),
        "other-schema/execute": T("SELECT internal.helper()", "denied"),
        "state-schema/select-runs": T("SELECT * FROM runbook.runs", "denied"),
        "state-schema/select-events": T("SELECT * FROM runbook.events", "denied"),
        "state-schema/insert": T("INSERT INTO runbook.events (env, at, kind) VALUES ('x', 0, 'x')", "denied"),
        # roles: no way up to the owner or the admin
        "role/set-role-owner": T("SET ROLE {owner}", "denied"),
        "role/set-role-admin": T("SET ROLE {admin}", "denied"),
        "role/set-session-authorization-owner": T("SET SESSION AUTHORIZATION {owner}", "denied"),
        "role/grant-owner-to-self": T("GRANT {owner} TO CURRENT_USER", "denied"),
        "role/not-member-of-owner": T("SELECT 1", "ok", "NOT pg_has_role({owner_literal}, 'MEMBER')"),
        "role/no-attributes": T("SELECT 1", "ok", "(SELECT NOT (rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication"
                                                  " OR rolbypassrls) FROM pg_roles WHERE rolname = current_user)"),
        # the server itself
        "server/read-file": T("SELECT pg_read_file('postgresql.conf')", "denied"),
        "server/copy-from-file": T("COPY orders FROM '/etc/hostname'", "denied"),
        "server/copy-to-program": T("COPY (SELECT 1) TO PROGRAM 'true'", "denied"),
        "server/others-queries-hidden": T("SELECT 1", "ok", "NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE usename "
                                                             "<> current_user AND query <> '<insufficient privilege>')"),
        "server/terminate-admin": T("SELECT pg_terminate_backend({admin_pid})", "denied"),
    }
    return [pytest.param(name, attempt, id=name) for name, attempt in matrix.items()]


@dataclass
class Provisioned:
    env: Env
    app: psycopg.Connection
    admin: psycopg.Connection


@pytest.fixture(scope="module", params=["superuser", "createrole"])
def provisioned(request, cluster: RunningCluster, tmp_path_factory) -> Iterator[Provisioned]:
    """One provisioned database per cluster and admin kind; every attempt is rolled back."""
    suffix = uuid.uuid4().hex[:8]
    pg = PgTarget(cluster, f"t_{suffix}", suffix)
    with psycopg.connect(cluster.admin(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE rb_template").format(sql.Identifier(pg.dbname)))
    try:
        env = make_env(pg, tmp_path_factory.mktemp("least"), admin=request.param, schemas=SCHEMAS, deny=DENY)
        for schema in ("billing", "internal"):
            pg.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(env.owner)))
        for statement in OWNER_DDL:
            env.as_owner(statement)
        res = commands.provision(env.project(), "staging", yes=True, environ=env.environ)
        assert res.status == "ok", res.messages
        drift = commands.drift(env.project(), "staging", environ=env.environ)
        assert drift.status == "ok", drift.data["findings"]
        with env.app_conn() as app, psycopg.connect(env.admin_dsn, autocommit=True) as admin:
            yield Provisioned(env, app, admin)
    finally:
        with psycopg.connect(cluster.admin(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(pg.dbname)))
            leftover = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"%\\_{suffix}",)).fetchall()
            for (role,) in leftover:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _render(text: str, p: Provisioned) -> sql.Composable:
    pid, admin = p.admin.execute("SELECT pg_backend_pid(), current_user").fetchone()
    return sql.SQL(text).format(owner=sql.Identifier(p.env.owner), owner_literal=sql.Literal(p.env.owner),
                                admin=sql.Identifier(admin), admin_pid=sql.Literal(pid))


@pytest.mark.parametrize("name, attempt", _rows())
def test_the_app_role_can_do_exactly_what_the_spec_says(provisioned, name, attempt):
    app = provisioned.app
    assert app.execute("SELECT current_user").fetchone()[0] == provisioned.env.role
    with app.transaction(force_rollback=True):
        if attempt.outcome == "denied":
            with pytest.raises(errors.InsufficientPrivilege):
                with app.transaction():
                    app.execute(_render(attempt.statement, provisioned))
        else:
            app.execute(_render(attempt.statement, provisioned))
        if attempt.check:
            assert app.execute(_render(f"SELECT {attempt.check}", provisioned)).fetchone()[0] is True


def test_create_database_is_denied(provisioned):
    # outside a transaction: CREATE DATABASE refuses to run inside one before checking privileges
    with pytest.raises(errors.InsufficientPrivilege):
        provisioned.app.execute("CREATE DATABASE sneaky")


def test_other_databases_are_reachable_only_through_public_connect(provisioned):
    """PUBLIC holds CONNECT on every database by default; the role reaches the cluster's other
    databases, but sees no objects it was not granted there (and cannot create any, PG 15+)."""
    conninfo = psycopg.conninfo.conninfo_to_dict(str(provisioned.app.info.dsn))
    url = psycopg.conninfo.make_conninfo(provisioned.app.info.dsn, dbname="postgres",
                                         password=provisioned.app.info.password)
    assert conninfo["dbname"] != "postgres"
    with psycopg.connect(url, autocommit=True) as other:
        assert other.execute("SELECT current_database()").fetchone()[0] == "postgres"
        with pytest.raises(errors.InsufficientPrivilege):
            other.execute("CREATE TABLE public.sneaky (x int)")
