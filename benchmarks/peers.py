"""pg-runbook against the tools a user would pick instead, side by side, whole process, wall clock.

    python benchmarks/peers.py                      # N = 1,000, 10,000, 50,000; median of 3
    python benchmarks/peers.py --sizes 1000 --repeat 5
    python benchmarks/peers.py --small              # CI smoke: tiny N, one run, peers only if installed

The peers (ldap2pg 5.9, pgbedrock 0.4.2, pg-sync-roles 0.0.61) are installed from PyPI into their
own venvs under --cache (ldap2pg builds python-ldap: it needs Debian's libldap2-dev and
libsasl2-dev). Each tool gets its own PostgreSQL cluster (Debian's 15 when present, else the
embedded one) holding the same catalog: N tables `(id bigserial PRIMARY KEY, v int)` owned by a
NOLOGIN owner, plus alembic_version and schema_migrations. Separate clusters because roles are
cluster-wide and two of the peers manage every role they see (pgbedrock refuses to run while any
role is missing from its spec; ldap2pg drops roles it does not know).

Each tool converges one login role to SELECT, INSERT, UPDATE, DELETE on every table, USAGE and
SELECT on every sequence, default privileges for the owner, and no access to the two migration
tables, as close as it can express it. The end state after every write is checked with the same
SQL for every tool (`_END_STATE`), and the table says how each one differs from the spec.

Operations, interleaved tool by tool within each repetition:
  first converge  role absent → converged
  no-op rerun     the same command again
  drift check     the tool's read-only check (pg-sync-roles has none)
  fix 1 % drift   REVOKE ALL on every 100th table and its sequence, then the tool's converge
Floors (one psql process each): `GRANT … ON ALL TABLES/SEQUENCES IN SCHEMA` (converge, fix), an
`aclexplode` scan of the schema's relations (no-op, drift), and `GRANT … ON TABLE/SEQUENCE`
naming exactly the broken objects (the targeted fix floor).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import yaml  # noqa: E402
from psycopg import sql  # noqa: E402

from providers.embedded import Cluster, embedded_bin_dir  # noqa: E402

OWNER = "bench_owner"
DB = "bench"
DENY = ("alembic_version", "schema_migrations")
TABLE_PRIVS = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQ_PRIVS = ("USAGE", "SELECT")
DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")
PEERS = {  # tool → (pip requirements, what proves it is installed)
    "ldap2pg": (["ldap2pg==5.9", "psycopg2-binary"], "bin/ldap2pg"),
    "pgbedrock": (["pgbedrock==0.4.2"], "bin/pgbedrock"),
    "pg-sync-roles": (["pg-sync-roles==0.0.61", "psycopg[binary]"], "bin/python"),
}
OPS = ("first converge", "no-op rerun", "drift check", "fix 1 % drift")

# The same end-state check for every tool: per relation kind, how many objects hold exactly the
# spec, fewer privileges, more; the deny-listed tables; the owner's default privileges; LOGIN.
_END_STATE = sql.SQL("""
WITH rel AS (
  SELECT c.relname, c.relkind = 'S' AS seq,
         coalesce((SELECT array_agg(a.privilege_type ORDER BY a.privilege_type)
                   FROM aclexplode(c.relacl) a WHERE a.grantee = r.oid), '{{}}') AS direct
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, pg_roles r
  WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S') AND r.rolname = {role}
)
SELECT
  count(*) FILTER (WHERE NOT seq AND relname <> ALL({deny}) AND direct = {tabp}),
  count(*) FILTER (WHERE NOT seq AND relname <> ALL({deny}) AND NOT direct @> {tabp}),
  count(*) FILTER (WHERE NOT seq AND relname <> ALL({deny}) AND direct @> {tabp} AND direct <> {tabp}),
  count(*) FILTER (WHERE seq AND direct = {seqp}),
  count(*) FILTER (WHERE seq AND NOT direct @> {seqp}),
  count(*) FILTER (WHERE seq AND direct @> {seqp} AND direct <> {seqp}),
  count(*) FILTER (WHERE NOT seq AND relname = ANY({deny}) AND direct <> '{{}}'),
  (SELECT coalesce(string_agg(d.defaclobjtype::text || ':' || a.privilege_type, ','
                                 ORDER BY d.defaclobjtype::text || ':' || a.privilege_type), '')
     FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace,
          aclexplode(d.defaclacl) a, pg_roles r
    WHERE n.nspname = 'public' AND d.defaclrole = {owner}::regrole AND a.grantee = r.oid AND r.rolname = {role}),
  (SELECT rolcanlogin FROM pg_roles WHERE rolname = {role})
FROM rel
""")
_WANT_DEFAULTS = "S:SELECT,S:USAGE,r:DELETE,r:INSERT,r:SELECT,r:UPDATE"


def _sh(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, **kw)


@dataclass
class Tool:
    """One tool with its own cluster, its role, and the commands of the four operations."""

    name: str
    role: str
    cluster: Cluster
    work: Path
    venv: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return self.cluster.admin_conninfo(DB)

    def pg_env(self) -> dict[str, str]:
        # every tool runs from its compiled bytecode, as an installed tool does (this machine sets
        # PYTHONDONTWRITEBYTECODE, which otherwise makes each run of an editable install recompile)
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {**environ, "PGHOST": str(self.cluster.socket_dir), "PGPORT": str(self.cluster.port),
                "PGUSER": "postgres", "PGDATABASE": DB, **self.env}

    def command(self, op: str) -> list[str] | None:
        raise NotImplementedError

    def configure(self, n: int) -> None:
        """Write the tool's configuration (once per size)."""

    def reset(self, conn: psycopg.Connection) -> None:
        """Back to no role: its privileges, default privileges and the tool's own state gone."""
        ident = sql.Identifier(self.role)
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.role,)).fetchone():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))

    def run(self, op: str) -> float | None:
        cmd = self.command(op)
        if cmd is None:
            return None
        started = time.perf_counter()
        res = _sh(cmd, cwd=self.work, env=self.pg_env())
        took = time.perf_counter() - started
        # drift exits 4 when it finds drift; every other operation must succeed
        if res.returncode not in ((0, 4) if op == "drift check" else (0,)):
            raise SystemExit(f"{self.name} {op} failed ({res.returncode}): {' '.join(cmd)}\n"
                             f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        return took


class Runbook(Tool):
    def configure(self, n: int) -> None:
        spec = {
            "version": 1, "app": "bench",
            "role": {"name": self.role, "owner": OWNER,
                     "schemas": {"public": {"tables": list(TABLE_PRIVS), "sequences": list(SEQ_PRIVS)}},
                     "deny": list(DENY)},
            "config": {"url_var": "BENCH_DATABASE_URL"},
            "flag": {"name": "FLAG_BENCH_ROLE", "on_value": "1", "off_value": "0"},
            "environments": {"bench": {"provider": "local", "database": {"dsn_env": "BENCH_ADMIN_DSN"},
                                       "app": {"dotenv": ".runbook/bench.env"}}},
        }
        (self.work / "runbook.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        self.env = {"BENCH_ADMIN_DSN": self.dsn}

    def reset(self, conn: psycopg.Connection) -> None:
        super().reset(conn)
        conn.execute("DROP SCHEMA IF EXISTS runbook CASCADE")
        shutil.rmtree(self.work / ".runbook", ignore_errors=True)

    def command(self, op: str) -> list[str]:
        exe = Path(sys.executable).with_name("runbook")
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "runbook.cli"]
        verb = {"first converge": ["provision", "--yes"], "no-op rerun": ["provision", "--yes"],
                "drift check": ["drift"], "fix 1 % drift": ["drift", "--fix", "--yes"]}[op]
        return [*base, "-q", *verb, "--env", "bench"]


class Ldap2pg(Tool):
    def configure(self, n: int) -> None:
        privs = ["__usage_on_schemas__", "__select_on_tables__", "__insert_on_tables__", "__update_on_tables__",
                 "__delete_on_tables__", "__usage_on_sequences__", "__select_on_sequences__"]
        conf = {
            "postgres": {
                "databases_query": [DB],
                "schemas_query": ["public"],
                "owners_query": [OWNER],
                # the owner is not blacklisted: ldap2pg manages default privileges only for roles
                # it manages, so it is declared below as it is (NOLOGIN)
                "roles_blacklist_query": ["postgres", "pg_*"],
            },
            "privileges": {"rw": privs},
            "sync_map": [
                {"role": {"name": OWNER, "options": "NOLOGIN"}},
                {"role": {"name": self.role, "options": "LOGIN"}},
                {"grant": {"privilege": "rw", "role": self.role, "database": DB, "schema": "public"}},
            ],
        }
        (self.work / "ldap2pg.yml").write_text(yaml.safe_dump(conf, sort_keys=False))

    def command(self, op: str) -> list[str]:
        real = [] if op == "drift check" else ["--real"]
        return [str(self.venv / "bin/ldap2pg"), "--quiet", "--config", "ldap2pg.yml", *real]


class Pgbedrock(Tool):
    def configure(self, n: int) -> None:
        spec = {
            # every role in the cluster must be in the spec; ownership is not what is measured
            "postgres": {"is_superuser": True, "can_login": True,
                         "attributes": ["BYPASSRLS", "CREATEDB", "CREATEROLE", "REPLICATION"]},
            OWNER: {"owns": {"schemas": ["public"]}},
            **{r: {} for r, in psycopg.connect(self.dsn).execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pg\\_%' "
                "AND rolname <> 'pg_signal_backend' ORDER BY 1").fetchall()},
            self.role: {
                "can_login": True,
                # pgbedrock's "write" on tables is all seven privileges: it cannot say SELECT+DML only
                "privileges": {"schemas": {"read": ["public"]},
                               "tables": {"write": ["public.*"]},
                               "sequences": {"write": ["public.*"]}},
            },
        }
        (self.work / "spec.yml").write_text(yaml.safe_dump(spec, sort_keys=False))

    def command(self, op: str) -> list[str]:
        live = ["--check"] if op == "drift check" else ["--live"]
        return [str(self.venv / "bin/pgbedrock"), "configure", "spec.yml", "-h", str(self.cluster.socket_dir),
                "-p", str(self.cluster.port), "-U", "postgres", "-d", DB,
                "--no-ownerships", "--no-memberships", *live]


class PgSyncRoles(Tool):
    """A library, not a command: the whole process is a script that calls sync_roles once."""

    _SCRIPT = """
import re, sys
import sqlalchemy as sa
from pg_sync_roles import sync_roles, DatabaseConnect, SchemaUsage, TableSelect, Login
host, port, db, role = sys.argv[1:5]
engine = sa.create_engine(sa.URL.create("postgresql+psycopg", username="postgres", database=db,
                                        query={"host": host, "port": port}))
deny = "|".join(re.escape(t) for t in sys.argv[5].split(","))
with engine.connect() as conn:
    sync_roles(conn, role, grants=(
        DatabaseConnect(db), SchemaUsage("public"), Login(password="bench-only-password"),
        TableSelect("public", re.compile(f"^(?!(?:{deny})$).*")),
    ))
"""

    def configure(self, n: int) -> None:
        (self.work / "sync.py").write_text(self._SCRIPT)

    def command(self, op: str) -> list[str] | None:
        if op == "drift check":
            return None
        return [str(self.venv / "bin/python"), "sync.py", str(self.cluster.socket_dir), str(self.cluster.port),
                DB, self.role, ",".join(DENY)]


TOOLS = {"pg-runbook": (Runbook, "rb_app"), "ldap2pg": (Ldap2pg, "l2p_app"),
         "pgbedrock": (Pgbedrock, "bedrock_app"), "pg-sync-roles": (PgSyncRoles, "psr_app")}


# --- installing the peers -------------------------------------------------------------------------
def installed(cache: Path, tool: str) -> Path | None:
    venv = cache / tool
    return venv if (venv / PEERS[tool][1]).exists() and (venv / ".installed").exists() else None


def install(cache: Path, tool: str) -> Path:
    venv = installed(cache, tool)
    if venv:
        return venv
    venv = cache / tool
    if tool == "ldap2pg" and shutil.which("apt-get") and not Path("/usr/include/ldap.h").exists():
        print("# ldap2pg: installing libldap2-dev and libsasl2-dev (python-ldap builds against them)",
              file=sys.stderr, flush=True)
        for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "libldap2-dev", "libsasl2-dev"]):
            res = _sh(args)
            if res.returncode:
                raise SystemExit(f"{' '.join(args)} failed: {res.stderr.strip()[-500:]}")
    print(f"# installing {tool} into {venv}", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    for args in ([sys.executable, "-m", "venv", str(venv)],
                 [str(venv / "bin/pip"), "install", "-q", *PEERS[tool][0]]):
        res = _sh(args)
        if res.returncode:
            raise SystemExit(f"installing {tool} failed: {res.stderr.strip()[-1000:]}")
    (venv / ".installed").write_text(" ".join(PEERS[tool][0]) + "\n")
    return venv


# --- the catalog ----------------------------------------------------------------------------------
def populate(conn: psycopg.Connection, n: int) -> None:
    """n tables with a bigserial each, created server-side as the owner, committing every 1,000."""
    conn.execute(f"CREATE ROLE {OWNER} NOLOGIN")
    # the owner owns the schema too, as after a migration tool's first run (pgbedrock needs a schema owner)
    conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER)))
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER)))
    conn.execute(sql.SQL("""
        DO $$ BEGIN
          FOR i IN 1..{n} LOOP
            EXECUTE format('CREATE TABLE %I (id bigserial PRIMARY KEY, v int)', 't' || lpad(i::text, 6, '0'));
            IF i % 1000 = 0 THEN COMMIT; END IF;
          END LOOP;
        END $$""").format(n=sql.Literal(n)))
    for t in DENY:
        conn.execute(sql.SQL("CREATE TABLE {} (version_num text PRIMARY KEY)").format(sql.Identifier(t)))
    conn.execute("RESET ROLE")
    conn.execute("VACUUM ANALYZE pg_catalog.pg_class")


def broken(n: int) -> list[str]:
    """Every 100th table: the 1 % the drift operation breaks."""
    return [f"t{i:06d}" for i in range(100, n + 1, 100)] or ["t000001"]


def break_grants(conn: psycopg.Connection, role: str, n: int) -> None:
    ident = sql.Identifier(role)
    for t in broken(n):
        conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(sql.Identifier("public", t), ident))
        conn.execute(sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(sql.Identifier("public", f"{t}_id_seq"), ident))


def end_state(conn: psycopg.Connection, role: str, n: int) -> str:
    row = conn.execute(_END_STATE.format(
        role=sql.Literal(role), owner=sql.Literal(OWNER), deny=sql.Literal(list(DENY)),
        tabp=sql.Literal(sorted(TABLE_PRIVS)), seqp=sql.Literal(sorted(SEQ_PRIVS)))).fetchone()
    t_ok, t_short, t_over, s_ok, s_short, s_over, denied, defaults, login = row
    notes = []
    if t_short or s_short:
        notes.append(f"lacks privileges on {t_short} tables, {s_short} sequences")
    if t_over or s_over:
        notes.append(f"over-grants {t_over} tables, {s_over} sequences")
    if denied:
        notes.append(f"reaches {denied} deny-listed tables")
    if defaults != _WANT_DEFAULTS:
        notes.append(f"default privileges {defaults or 'none'}")
    if not login:
        notes.append("cannot log in")
    if t_ok != n or s_ok != n:
        notes.append(f"exact on {t_ok}/{n} tables, {s_ok}/{n} sequences")
    return "exactly the spec" if not notes else "; ".join(notes)


# --- floors ---------------------------------------------------------------------------------------
def _psql(tool: Tool, script: str) -> float:
    psql = tool.cluster.bin_dir / "psql"
    started = time.perf_counter()
    res = _sh([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null", "-c", script], env=tool.pg_env())
    took = time.perf_counter() - started
    if res.returncode:
        raise SystemExit(f"floor failed: {res.stderr.strip()}")
    return took


def floors(tool: Tool, conn: psycopg.Connection, n: int) -> dict[str, float]:
    """The floors, measured on a role of their own in the pg-runbook cluster."""
    role = "floor_app"
    conn.execute(f"DROP OWNED BY {role}" if conn.execute(
        "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() else "SELECT 1")
    conn.execute(f"DROP ROLE IF EXISTS {role}")
    conn.execute(f"CREATE ROLE {role}")
    grant = (f"BEGIN; GRANT USAGE ON SCHEMA public TO {role}; "
             f"GRANT {', '.join(TABLE_PRIVS)} ON ALL TABLES IN SCHEMA public TO {role}; "
             f"GRANT {', '.join(SEQ_PRIVS)} ON ALL SEQUENCES IN SCHEMA public TO {role}; COMMIT;")
    out = {"first converge": _psql(tool, grant)}
    scan = ("SELECT c.relname, a.privilege_type FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN LATERAL aclexplode(c.relacl) a ON true WHERE n.nspname = 'public' "
            "AND c.relkind IN ('r', 'S')")
    out["no-op rerun"] = out["drift check"] = _psql(tool, scan)
    break_grants(conn, role, n)
    out["fix 1 % drift"] = _psql(tool, grant)
    break_grants(conn, role, n)
    names = broken(n)
    tables = ", ".join(f"public.{t}" for t in names)
    seqs = ", ".join(f"public.{t}_id_seq" for t in names)
    out["targeted"] = _psql(tool, f"BEGIN; GRANT {', '.join(TABLE_PRIVS)} ON TABLE {tables} TO {role}; "
                                  f"GRANT {', '.join(SEQ_PRIVS)} ON SEQUENCE {seqs} TO {role}; COMMIT;")
    return out


# --- the run --------------------------------------------------------------------------------------
def run(sizes: list[int], repeat: int, tools: list[str], cache: Path, bin_dir: Path) -> list[dict]:
    base = Path(tempfile.mkdtemp(prefix="rb-peers-bench-"))
    base.chmod(0o755)
    rows: list[dict] = []
    clusters: list[Cluster] = []
    try:
        for n in sizes:
            made: list[Tool] = []
            for name in tools:
                cls, role = TOOLS[name]
                cluster = Cluster(bin_dir, base / f"{name}-{n}" / "data")
                clusters.append(cluster)
                # per-object peers lock every table in one transaction: 50,000 need more lock slots
                # than the default 64 × max_connections (pg-sync-roles: "out of shared memory")
                cluster.start(settings={"shared_buffers": "256MB", "max_locks_per_transaction": "2048"})
                cluster.wait_ready()
                work = base / f"{name}-{n}" / "work"
                work.mkdir(parents=True)
                venv = None if name == "pg-runbook" else cache / name
                tool = cls(name, role, cluster, work, venv)
                with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
                with psycopg.connect(tool.dsn, autocommit=True) as conn:
                    started = time.perf_counter()
                    populate(conn, n)
                print(f"# {name}: {n:,} tables in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
                tool.configure(n)
                made.append(tool)
            conns = {t.name: psycopg.connect(t.dsn, autocommit=True) for t in made}
            times: dict[tuple[str, str], list[float]] = {}
            states: dict[str, dict[str, str]] = {}
            floor_runs: list[dict[str, float]] = []
            for rep in range(repeat):
                for op in OPS:
                    for tool in made:          # interleaved: each operation runs for every tool in turn
                        conn = conns[tool.name]
                        if op == "first converge":
                            tool.reset(conn)
                        elif op == "fix 1 % drift":
                            break_grants(conn, tool.role, n)
                        took = tool.run(op)
                        if took is not None:
                            times.setdefault((tool.name, op), []).append(took)
                        if op != "drift check":
                            states.setdefault(tool.name, {})[op] = end_state(conn, tool.role, n)
                floor_runs.append(floors(made[0], conns[made[0].name], n))
                print(f"# {n:,} tables: round {rep + 1} of {repeat} done", file=sys.stderr, flush=True)
            for op in OPS:
                row = {"n": n, "op": op, "floor": statistics.median(f[op] for f in floor_runs)}
                if op == "fix 1 % drift":
                    row["targeted"] = statistics.median(f["targeted"] for f in floor_runs)
                for tool in made:
                    got = times.get((tool.name, op))
                    row[tool.name] = statistics.median(got) if got else None
                rows.append(row)
            rows.append({"n": n, "states": {t: s["fix 1 % drift"] for t, s in states.items()}})
            # each size's table as soon as it is measured: a later size's failure loses nothing
            print(table([r for r in rows if r["n"] == n], tools), file=sys.stderr, flush=True)
            for c in conns.values():
                c.close()
            for tool in made:
                tool.cluster.destroy()
    finally:
        for c in clusters:
            c.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return rows


def table(rows: list[dict], tools: list[str]) -> str:
    head = ("N", "op", *tools, "floor")
    body = []
    for r in rows:
        if "states" in r:
            continue
        cells = [f"{r['n']:,}", r["op"]]
        timed = {t: r[t] for t in tools if r.get(t) is not None}
        best = min(timed, key=timed.get) if timed else None
        for t in tools:
            v = r.get(t)
            cells.append("—" if v is None else (f"**{v:.2f} s**" if t == best and len(timed) > 1 else f"{v:.2f} s"))
        floor = f"{r['floor']:.2f} s"
        if "targeted" in r:
            floor += f" ({r['targeted']:.2f} s targeted)"
        body.append((*cells, floor))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body), ""]
    for r in rows:
        if "states" in r:
            out.append(f"end state at {r['n']:,} after the fix, same SQL for every tool:")
            out.extend(f"  {t}: {s}" for t, s in r["states"].items())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000", help="comma-separated table counts")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (median)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ", ".join(TOOLS))
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "pg-runbook-bench" / "peers", help="where the peers' venvs live")
    ap.add_argument("--small", action="store_true",
                    help="CI smoke run: 30 tables, one round, only the peers already installed")
    args = ap.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tool(s): {', '.join(unknown)}")
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    repeat = max(1, args.repeat)
    if args.small:
        sizes, repeat = [30], 1
        skipped = [t for t in tools if t != "pg-runbook" and not installed(args.cache, t)]
        if skipped:
            print(f"# --small: skipping {', '.join(skipped)} (not installed under {args.cache})", file=sys.stderr)
        tools = [t for t in tools if t not in skipped]
    else:
        for t in tools:
            if t != "pg-runbook":
                install(args.cache, t)
    bin_dir = DEBIAN_15 if (DEBIAN_15 / "postgres").exists() else embedded_bin_dir()
    load = os.getloadavg()
    print(f"# PostgreSQL {Cluster(bin_dir, Path('/nonexistent')).version()} from {bin_dir}; "
          f"{os.cpu_count()} CPUs; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", file=sys.stderr, flush=True)
    rows = run(sizes, repeat, tools, args.cache, bin_dir)
    print(table(rows, tools))
    load = os.getloadavg()
    print(f"# load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", file=sys.stderr)
    # the spec is the contract: pg-runbook must end exactly there
    ours = [r["states"]["pg-runbook"] for r in rows if "states" in r and "pg-runbook" in r["states"]]
    if any(s != "exactly the spec" for s in ours):
        print(f"pg-runbook did not end at the spec: {ours}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
