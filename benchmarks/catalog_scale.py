"""Catalog scale: `drift`, the `provision` grant phase and `drift --fix` on databases of N tables.

    python benchmarks/catalog_scale.py --sizes 1000,10000,50000

Each size gets its own database on a private embedded PostgreSQL (a temp folder, removed at the
end): N tables, each with a bigserial sequence and a primary key, owned by a NOLOGIN owner role,
plus `alembic_version` (deny-listed). Every runbook figure is the real command function
(runbook.commands) with the project loaded once, connections included. They are compared with:

  per-object  what per-resource tools do: one has_table_privilege/has_sequence_privilege query
              per object (read) and one autocommitted GRANT per object (write).
  floor       the bare catalog query: the snapshot's relations scan (pg_class ⋈ pg_namespace,
              same filter) returning name, kind, owner and ACL, with no privilege evaluation,
              on an open connection. Nothing that reads the catalog can be faster.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
import yaml  # noqa: E402
from psycopg import sql  # noqa: E402

from providers.embedded import Cluster, embedded_bin_dir  # noqa: E402
from runbook import catalog, commands, project as projects  # noqa: E402
from runbook.project import SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES  # noqa: E402

OWNER = "bench_owner"
ENV = "bench"
TABLE_PRIVS = ["SELECT", "INSERT", "UPDATE", "DELETE"]
SEQ_PRIVS = ["USAGE", "SELECT"]

_BARE = sql.SQL("""
SELECT n.nspname, c.relname, c.relkind::text, c.relowner, c.relacl
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY({schemas}) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND NOT c.relispartition
""")

_OBJECTS = sql.SQL("""
SELECT n.nspname, c.relname, c.relkind = 'S'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND NOT c.relispartition
  AND c.relname <> 'alembic_version'
ORDER BY 1, 2
""")


def _spec(role: str) -> dict:
    return {
        "version": 1, "app": "bench",
        "role": {"name": role, "owner": OWNER,
                 "schemas": {"public": {"tables": TABLE_PRIVS, "sequences": SEQ_PRIVS}},
                 "deny": ["alembic_version"]},
        "config": {"url_var": "BENCH_DATABASE_URL"},
        "flag": {"name": "FLAG_BENCH_ROLE", "on_value": "1", "off_value": "0"},
        "environments": {ENV: {"provider": "local", "database": {"dsn_env": "BENCH_ADMIN_DSN"},
                               "app": {"dotenv": f".runbook/{ENV}.env"}}},
    }


def _timed(fn) -> float:
    gc.collect()          # no run pays for the garbage of the one before
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _strict(fn):
    """A floor measured with the cyclic GC paused, so it is as low as it can be."""
    def run():
        gc.disable()
        try:
            return fn()
        finally:
            gc.enable()
    return run


def _median(fn, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        times.append(_timed(fn))
    return statistics.median(times)


class Database:
    """One benchmark database of n tables, its runbook project and a per-object baseline role."""

    def __init__(self, cluster: Cluster, base: Path, n: int) -> None:
        self.n = n
        self.name = f"scale_{n}"
        self.role = f"bench_app_{n}"
        self.base_role = f"bench_base_{n}"
        self.dsn = cluster.admin_conninfo(self.name)
        self.dir = base / f"project_{n}"
        self.dir.mkdir()
        (self.dir / "runbook.yaml").write_text(yaml.safe_dump(_spec(self.role), sort_keys=False))
        self.project = projects.load(self.dir / "runbook.yaml")
        self.environ = {"BENCH_ADMIN_DSN": self.dsn, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def populate(self) -> float:
        """n tables with a bigserial each, created server-side, committing every 1,000 (a single
        transaction would need a lock-table slot per new relation)."""
        c = self.conn
        c.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(OWNER)))
        c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER)))
        started = time.perf_counter()
        c.execute(sql.SQL("""
            DO $$ BEGIN
              FOR i IN 1..{n} LOOP
                EXECUTE format('CREATE TABLE %I (id bigserial PRIMARY KEY, v int)', 't' || lpad(i::text, 6, '0'));
                IF i % 1000 = 0 THEN COMMIT; END IF;
              END LOOP;
            END $$""").format(n=sql.Literal(self.n)))
        c.execute("CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
        c.execute("RESET ROLE")
        c.execute("VACUUM ANALYZE pg_catalog.pg_class")
        return time.perf_counter() - started

    # --- runbook -------------------------------------------------------------------------
    def provision(self) -> float:
        """The grants step of a real `provision`, timed between the engine's step reports."""
        marks: list[tuple[str, float]] = [("start", time.perf_counter())]
        res = commands.provision(self.project, ENV, yes=True, environ=self.environ,
                                 on_step=lambda r: marks.append((r.step, time.perf_counter())))
        assert res.exit_code == 0, (res.status, res.messages)
        for (_, before), (step, at) in zip(marks, marks[1:]):
            if step == "grants":
                return at - before
        raise AssertionError(f"no grants step in {[m[0] for m in marks]}")

    def unprovision(self) -> None:
        ident = sql.Identifier(self.role)
        self.conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        self.conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
        self.conn.execute("DROP SCHEMA IF EXISTS runbook CASCADE")
        shutil.rmtree(self.dir / ".runbook", ignore_errors=True)

    def drift(self) -> None:
        res = commands.drift(self.project, ENV, environ=self.environ)
        assert res.exit_code == 0, res.data.get("findings")

    def drift_fix(self) -> None:
        res = commands.drift(self.project, ENV, fix=True, yes=True, environ=self.environ)
        assert res.exit_code == 0 and res.steps, (res.status, res.messages)

    def break_grants(self, role: str | None = None) -> None:
        ident = sql.Identifier(role or self.role)
        self.conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident))
        self.conn.execute(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(ident))

    # --- floors --------------------------------------------------------------------------
    def floor(self) -> int:
        return len(self.conn.execute(_BARE.format(schemas=sql.Literal(["public"]))).fetchall())

    def relations_query(self) -> int:
        """The snapshot's relations query alone (as shipped in runbook/catalog.py)."""
        roid = catalog.role_oid(self.conn, self.role)
        query = catalog._RELATIONS.format(
            roid=sql.Literal(roid), schemas=sql.Literal(["public"]),
            tabp=sql.Literal(list(TABLE_PRIVILEGES)), seqp=sql.Literal(list(SEQUENCE_PRIVILEGES)))
        return len(self.conn.execute(query).fetchall())

    # --- per-object baseline --------------------------------------------------------------
    def _objects(self) -> list[tuple[str, str, bool]]:
        return self.conn.execute(_OBJECTS).fetchall()

    def per_object_read(self) -> list[tuple[str, str, bool]]:
        """One query per object for the privileges it should hold; returns the objects lacking any."""
        table_q = sql.SQL("SELECT {}").format(sql.SQL(", ").join(
            sql.SQL("has_table_privilege(%(role)s, %(obj)s, {})").format(sql.Literal(p)) for p in TABLE_PRIVS))
        seq_q = sql.SQL("SELECT {}").format(sql.SQL(", ").join(
            sql.SQL("has_sequence_privilege(%(role)s, %(obj)s, {})").format(sql.Literal(p)) for p in SEQ_PRIVS))
        lacking = []
        for schema, name, seq in self._objects():
            obj = sql.Identifier(schema, name).as_string(self.conn)
            if not all(self.conn.execute(seq_q if seq else table_q, {"role": self.base_role, "obj": obj}).fetchone()):
                lacking.append((schema, name, seq))
        return lacking

    def per_object_grant(self, objects: list[tuple[str, str, bool]]) -> None:
        """One autocommitted GRANT per object, as a per-resource tool applies each resource."""
        role = sql.Identifier(self.base_role)
        privs = {False: sql.SQL(", ").join(map(sql.SQL, TABLE_PRIVS)), True: sql.SQL(", ").join(map(sql.SQL, SEQ_PRIVS))}
        for schema, name, seq in objects:
            self.conn.execute(sql.SQL("GRANT {} ON {} {} TO {}").format(
                privs[seq], sql.SQL("SEQUENCE" if seq else "TABLE"), sql.Identifier(schema, name), role))

    def per_object_provision(self) -> float:
        ident = sql.Identifier(self.base_role)
        self.conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
        self.conn.execute(sql.SQL("CREATE ROLE {}").format(ident))
        started = time.perf_counter()
        self.conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        self.per_object_grant(self._objects())
        return time.perf_counter() - started

    def per_object_fix(self) -> None:
        self.per_object_grant(self.per_object_read())

    def close(self) -> None:
        self.conn.close()


def run(sizes: list[int], repeat: int, baseline_repeat: int, keep: bool) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="rb-catalog-bench-"))
    base.chmod(0o755)
    cluster = Cluster(embedded_bin_dir(), base / "data")
    rows: list[dict] = []
    try:
        cluster.start(settings={"shared_buffers": "256MB"})
        cluster.wait_ready()
        with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(OWNER)))
        for n in sizes:
            db = Database(cluster, base, n)
            made = db.populate()
            objects = db.floor()
            print(f"# {n:,} tables: {objects:,} relations created in {made:.1f} s", file=sys.stderr, flush=True)

            prov = [db.provision()]
            for _ in range(repeat - 1):
                db.unprovision()
                prov.append(db.provision())
            # floors on the provisioned catalog (ACLs filled in), interleaved with drift
            floor, query, drift = [], [], []
            for _ in range(repeat):
                floor.append(_timed(_strict(db.floor)))
                query.append(_timed(_strict(db.relations_query)))
                drift.append(_timed(db.drift))
            floor, query, drift = map(statistics.median, (floor, query, drift))
            fix = _median(db.drift_fix, repeat, before=db.break_grants)

            base_prov = statistics.median(db.per_object_provision() for _ in range(baseline_repeat))
            base_drift = _median(db.per_object_read, baseline_repeat)
            base_fix = _median(db.per_object_fix, baseline_repeat, before=lambda: db.break_grants(db.base_role))
            for op, ours, theirs in (("drift", drift, base_drift),
                                     ("provision (grants step)", statistics.median(prov), base_prov),
                                     ("drift --fix", fix, base_fix)):
                rows.append({"tables": n, "relations": objects, "op": op, "runbook": ours, "per_object": theirs,
                             "floor": floor, "query": query})
            db.close()
    finally:
        if keep:
            print(f"# kept {base}", file=sys.stderr)
        else:
            cluster.destroy()
            shutil.rmtree(base, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("tables", "relations", "operation", "runbook s", "per-object s", "floor s", "query s",
            "per-object ÷ runbook", "runbook ÷ floor", "runbook ÷ query")
    body = [(f"{r['tables']:,}", f"{r['relations']:,}", r["op"], f"{r['runbook']:.3f}", f"{r['per_object']:.3f}",
             f"{r['floor']:.3f}", f"{r['query']:.3f}", f"{r['per_object'] / r['runbook']:.1f}×",
             f"{r['runbook'] / r['floor']:.2f}×", f"{r['runbook'] / r['query']:.2f}×")
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000", help="comma-separated table counts")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each runbook/floor measurement (median)")
    ap.add_argument("--baseline-repeat", type=int, default=1, help="runs of each per-object measurement (median)")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's temp folder")
    args = ap.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    rows = run(sizes, max(1, args.repeat), max(1, args.baseline_repeat), args.keep)
    print(table(rows))
    drift = [r for r in rows if r["op"] == "drift"]
    if drift:
        worst = max(drift, key=lambda r: r["tables"])
        for floor, what in (("floor", "the bare catalog scan"), ("query", "the snapshot's relations query")):
            ratio = worst["runbook"] / worst[floor]
            print(f"target: drift on {worst['tables']:,} tables within 2× {what}: {ratio:.2f}× "
                  f"({'met' if ratio <= 2 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
