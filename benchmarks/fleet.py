"""Fleet: `rollback` and `provision` over 50 environments against the Heroku contract fake, with
50 ms of injected latency per call and a rate budget; wall time against the floor, and the 429s met.

    python benchmarks/fleet.py                                  # 50 envs, 50 ms, parallel 1,5,10,25,32, both verbs
    python benchmarks/fleet.py --envs 50 --latency 0.05 --parallel 1,8,16,32 --repeat 3
    python benchmarks/fleet.py --verbs provision --parallel 25,32

What runs is runbook.fleet.run(project, VERB, envs, parallel=P, yes=True): what
`runbook VERB --env 'fleet-*' --parallel P --yes` calls once it has parsed its arguments, with
the project file (50 environments) loaded before the clock starts.

- rollback: each environment is a Heroku app whose flag is on; rollback turns it off (GET
  config-vars, PATCH, GET to verify: 3 calls). Pure app-side HTTP.
- provision: the same 50 Heroku apps as the app side; each environment's database is
  `provider: local` on a PostgreSQL cluster of its own (roles are cluster-wide, and a project
  names one role), 50 small embedded clusters copied from one initdb. Each run provisions a role
  of a new name (every repeat does the whole work: CREATE ROLE, grants, the URL written to the
  app, the app-side login). The end state is checked from the app's side: a login with exactly
  the URL the fake's app holds is the role, may SELECT/INSERT/UPDATE/DELETE `orders` and may not
  read the deny-listed `alembic_version`. Its floor counts the HTTP calls only, as rollback's:
  the database work of each environment is on top.

- The fake runs in its own process: in ours, its request handling would share our GIL.
- Its sockets get TCP_NODELAY: it writes headers and body separately, and Nagle plus delayed ACK
  then add ~40 ms to every response (fake_heroku.Handler lacks `disable_nagle_algorithm = True`).
- The fake's listening sockets get a backlog of 128: socketserver's 5 overflows when 25+ clients
  connect at once, and each dropped SYN costs a 1 s retransmit (a ~1.2 s outlier run).
- The journal is a central PostgreSQL store (`--state postgresql://…`, the fleet set-up of
  DESIGN.md) on a private embedded cluster; each environment gets its own run and events there,
  over connections the fleet's environments share (the Runtime's pool, runbook/run.py).

Scenarios (each on a fresh fake and token, so a fresh shared budget):
  full      the account's whole bucket (4,500 requests, refilling 75/min, Heroku's documented limit):
            the budget never binds; floor = calls × latency ÷ parallelism.
  drained   an account with only `calls − 25` requests left, refilling at Heroku's 75/min: the shared
            budget must pace the fleet; floor = max(calls × latency ÷ parallelism, 25 ÷ 1.25/s).
  drained, per-client   the same, each client pacing alone (no shared budget): the 429 storm the
            shared budget exists to avoid.

Wave floor: an environment's calls are sequential and run on one worker, so the fleet cannot take
less than ceil(envs ÷ parallel) × calls per env × latency: 0.30 s at --parallel 25 and at 32, where
calls × latency ÷ parallel (0.23 s) is out of reach. Both ratios are printed.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

HEROKU_LIMIT = 4500                      # requests per account per hour (Heroku Platform API)
HEROKU_REFILL = HEROKU_LIMIT / 3600      # 75 per minute
FLAG = "FLEET_ROLE_ENABLED"
TARGET = 1.3
DRAINED_SHORTFALL = 25                   # requests the drained account is short of the fleet's need
PROVISION_DB = "fleetdb"
PROVISION_ADMIN = "fleet_admin"
PROVISION_ADMIN_PASSWORD = "fleet-admin-bench"      # a throwaway cluster's, on loopback only
PROVISION_URL_VAR = "FLEET_DATABASE_URL"


# --- the fake, in its own process ------------------------------------------------------------

def _serve(conn: Any, apps: list[str], latency: float, rate_limit: int, window: float, token: str) -> None:
    from tests.providers.heroku.fake_heroku import FakeHeroku

    fake = FakeHeroku(admin_dsn=None, database="d1fleet", port=9, latency=latency, rate_limit=rate_limit,
                      rate_window_seconds=window, tokens=(token,))
    fake.start()
    for server in fake._servers.values():
        server.RequestHandlerClass.disable_nagle_algorithm = True   # see the module docstring
        server.socket.listen(128)        # see the module docstring (backlog)
    for i, app in enumerate(apps):
        fake.add_addon(app, owner="u1owner", name=f"postgresql-fleet-{i:03d}")
    conn.send(fake.environ())
    while True:
        cmd, *args = conn.recv()
        if cmd == "arm":                 # every flag on, the request log empty
            for app in apps:
                fake.set_config_var(app, FLAG, "1")
            fake.clear()
            conn.send(time.process_time())
        elif cmd == "stats":
            reqs = list(fake.requests)
            flags_off = sum(1 for app in apps if fake.config_vars(app).get(FLAG) == "0")
            conn.send({"calls": len(reqs), "throttled": sum(1 for r in reqs if r.status == 429),
                       "flags_off": flags_off, "fake_errors": list(fake.errors), "cpu": time.process_time()})
        elif cmd == "vars":              # each app's value of one config variable (provision's end state)
            conn.send({app: fake.config_vars(app).get(args[0]) for app in apps})
        elif cmd == "stop":
            fake.stop()
            conn.send(None)
            return


class FakeProcess:
    def __init__(self, apps: list[str], latency: float, rate_limit: int, window: float, token: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, apps, latency, rate_limit, window, token), daemon=True)
        self.proc.start()
        self.environ: dict[str, str] = self.conn.recv()

    def ask(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        return self.conn.recv()

    def stop(self) -> None:
        try:
            self.ask("stop")
        finally:
            self.proc.join(timeout=10)


# --- the project -----------------------------------------------------------------------------

def write_project(base: Path, apps: list[str]) -> Path:
    envs = {f"fleet-{i:03d}": {"provider": "heroku", "database": {"addon": "DATABASE", "sslmode": "disable"},
                               "app": {"name": app}}
            for i, app in enumerate(apps)}
    data = {"version": 1, "app": "fleetbench",
            "role": {"name": "fleet_app", "schemas": {"public": {"tables": ["SELECT"]}}},
            "config": {"url_var": "FLEET_DATABASE_URL"},
            "flag": {"name": FLAG, "on_value": "1", "off_value": "0"},
            "settings": {"http_attempts": 8, "http_timeout": "10s", "retry_budget": "120s"},
            "environments": envs}
    path = base / "runbook.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_provision_project(base: Path, apps: list[str], clusters: list[Any], role: str) -> tuple[Path, dict[str, str]]:
    """The same Heroku apps as the app side, each environment's database on its own cluster
    (`provider: local`, an admin DSN in an environment variable): roles are cluster-wide and the
    project names one role, so one cluster per environment is what keeps them apart."""
    envs, environ = {}, {}
    for i, (app, cluster) in enumerate(zip(apps, clusters)):
        var = f"FLEET_{i:03d}_ADMIN_DSN"
        environ[var] = (f"host=127.0.0.1 port={cluster.port} user={PROVISION_ADMIN} password={PROVISION_ADMIN_PASSWORD} "
                        f"dbname={PROVISION_DB} sslmode=disable")
        envs[f"fleet-{i:03d}"] = {"provider": "local", "database": {"dsn_env": var, "sslmode": "disable"},
                                  "app": {"platform": "heroku", "name": app}}
    data = {"version": 1, "app": "fleetbench",
            "role": {"name": role, "schemas": {"public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"],
                                                          "sequences": ["USAGE", "SELECT"]}},
                     "deny": ["alembic_version"]},
            "config": {"url_var": PROVISION_URL_VAR},
            "flag": {"name": FLAG, "on_value": "1", "off_value": "0"},
            "settings": {"http_attempts": 8, "http_timeout": "10s", "retry_budget": "120s"},
            "environments": envs}
    path = base / f"runbook-{role}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, environ


def database_clusters(base: Path, count: int) -> list[Any]:
    """`count` small clusters, each with the same database: an owner, an admin that may create
    roles, two tables. One is made with initdb and SQL; the others are copies of its data folder
    (initdb 50 times would take minutes on a loaded machine), each on its own port."""
    import psycopg
    from concurrent.futures import ThreadPoolExecutor

    from providers.embedded import Cluster, embedded_bin_dir, free_port

    settings = {"shared_buffers": "16MB", "max_connections": "40", "log_min_messages": "warning"}
    first = Cluster(embedded_bin_dir(), base / "db-000")
    first.start(settings=settings)
    first.wait_ready()
    with psycopg.connect(first.admin_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {PROVISION_DB}")
        conn.execute("CREATE ROLE fleet_owner NOLOGIN")
        conn.execute(f"CREATE ROLE {PROVISION_ADMIN} LOGIN CREATEROLE PASSWORD '{PROVISION_ADMIN_PASSWORD}'")
        conn.execute(f"GRANT fleet_owner TO {PROVISION_ADMIN}")
        conn.execute(f"GRANT CONNECT, CREATE ON DATABASE {PROVISION_DB} TO {PROVISION_ADMIN}")
    with psycopg.connect(first.admin_conninfo(PROVISION_DB), autocommit=True) as conn:
        conn.execute("GRANT CREATE, USAGE ON SCHEMA public TO fleet_owner")
        conn.execute("SET ROLE fleet_owner")
        conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, total int)")
        conn.execute("CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
    first.stop()
    clusters = [first]
    for i in range(1, count):
        copy = Cluster(first.bin_dir, base / f"db-{i:03d}")
        shutil.copytree(first.data_dir, copy.data_dir, symlinks=True, copy_function=shutil.copy2)
        shutil.copystat(first.data_dir, copy.data_dir)
        stat = first.data_dir.stat()
        for path in (copy.data_dir, *copy.data_dir.rglob("*")):
            os.lchown(path, stat.st_uid, stat.st_gid)
        (copy.data_dir / "postmaster.pid").unlink(missing_ok=True)
        copy.port_file.write_text(str(free_port()))
        clusters.append(copy)
    start = lambda c: (c.start(settings=settings), c.wait_ready())  # noqa: E731
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(start, clusters))
    return clusters


def provisioned(fake: FakeProcess, apps: list[str], clusters: list[Any], role: str) -> int:
    """Environments whose app can do what the role was given: logged in with exactly the URL the
    fake's app holds, as the role, reading and writing `orders` and refused `alembic_version`."""
    import psycopg

    urls = fake.ask("vars", PROVISION_URL_VAR)
    good = 0
    for app, cluster in zip(apps, clusters):
        url = urls.get(app)
        if not url or f":{cluster.port}/" not in url:
            continue
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            row = conn.execute("SELECT current_user, has_table_privilege('public.orders', 'SELECT, INSERT, UPDATE, "
                               "DELETE'), has_table_privilege('public.alembic_version', 'SELECT')").fetchone()
        good += row == (role, True, False)
    return good


def state_store(base: Path):
    import psycopg

    from providers.embedded import Cluster, embedded_bin_dir

    cluster = Cluster(embedded_bin_dir(), base / "state-pg")
    cluster.start(settings={"max_connections": "200"})
    cluster.wait_ready()
    with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE fleet_state")
    url = f"postgresql://postgres@/fleet_state?host={cluster.socket_dir}&port={cluster.port}"
    return cluster, url


# --- measuring -------------------------------------------------------------------------------

def measure(project: Any, fake: FakeProcess, envs: list[str], parallel: int, state: str, base: Path, *,
            command: str = "rollback", environ_extra: dict[str, str] | None = None) -> dict:
    from runbook import fleet

    fake_cpu = fake.ask("arm")
    environ = {**os.environ, **fake.environ, **(environ_extra or {}), "HOME": str(base)}
    cpu, started = time.process_time(), time.perf_counter()
    res = fleet.run(project, command, envs, parallel=parallel, yes=True, confirm=None, environ=environ, state=state)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    stats = fake.ask("stats")
    failed = [o for o in res.outcomes if o.exit_code != 0]
    if stats["fake_errors"]:
        raise SystemExit(f"the fake failed: {stats['fake_errors'][:3]}")
    return {"wall": wall, "cpu": cpu, "fake_cpu": stats["cpu"] - fake_cpu, "calls": stats["calls"],
            "throttled": stats["throttled"], "failed": len(failed),
            "first_failure": failed[0].message if failed else "", "flags_off": stats["flags_off"]}


def scenario(name: str, project: Any, envs: list[str], apps: list[str], parallels: list[int], *, latency: float,
             rate_limit: int, window: float, repeat: int, state: str, base: Path, token: str,
             shared: bool = True, rate_floor: float = 0.0) -> list[dict]:
    import providers.heroku as heroku
    from providers.http import RateBudget

    original = heroku.shared_budget
    if not shared:
        heroku.shared_budget = lambda key, model, runtime: RateBudget(model)   # type: ignore[assignment]  # baseline only
    fake = FakeProcess(apps, latency, rate_limit, window, token)
    rows = []
    try:
        for p in parallels:
            runs = [measure(project, fake, envs, p, state, base) for _ in range(repeat)]
            for r in runs:
                r["converged"] = r["flags_off"] == len(apps)
            rows.append(_row(name, p, runs, latency, len(envs), rate_floor, repeat))
            wall = rows[-1]["wall"]
            print(f"# {name} parallel {p}: {wall:.2f}s, {rows[-1]['ratio']:.2f}× floor, "
                  f"{rows[-1]['throttled']} 429s", file=sys.stderr, flush=True)
    finally:
        fake.stop()
        heroku.shared_budget = original
    return rows


def provision_rows(apps: list[str], clusters: list[Any], parallels: list[int], *, latency: float, repeat: int,
                   state: str, base: Path) -> list[dict]:
    """`provision` over the fleet: each repeat provisions a role of its own name (a new role in
    every cluster), so every run does the whole work; the end state is checked from the app side."""
    from runbook import fleet, project as projects

    fake = FakeProcess(apps, latency, HEROKU_LIMIT, 3600, "bench-token-provision")
    rows = []
    try:
        for p in parallels:
            runs = []
            for r in range(repeat):
                role = f"fleet_app_p{p}_r{r}"
                path, extra = write_provision_project(base, apps, clusters, role)
                project = projects.load(path)
                envs = fleet.select(project, ["fleet-*"])
                run = measure(project, fake, envs, p, state, base, command="provision", environ_extra=extra)
                run["converged"] = provisioned(fake, apps, clusters, role) == len(apps)
                runs.append(run)
            rows.append(_row("provision", p, runs, latency, len(apps), 0.0, repeat))
            print(f"# provision parallel {p}: {rows[-1]['wall']:.2f}s, {rows[-1]['wave_ratio']:.2f}× wave floor, "
                  f"{rows[-1]['throttled']} 429s", file=sys.stderr, flush=True)
    finally:
        fake.stop()
    return rows


def _row(name: str, p: int, runs: list[dict], latency: float, envs: int, rate_floor: float, repeat: int) -> dict:
    wall = statistics.median(r["wall"] for r in runs)
    calls = max(r["calls"] for r in runs)
    floor = max(calls * latency / p, rate_floor)
    # an environment's calls are sequential and it runs on one worker: ceil(envs / p) of them in a row
    wave_floor = max(math.ceil(envs / p) * (calls / envs) * latency, rate_floor)
    return {"scenario": name, "parallel": p, "wall": wall, "calls": calls, "floor": floor,
            "wave_floor": wave_floor, "wave_ratio": wall / wave_floor if wave_floor else float("nan"),
            "cpu": statistics.median(r["cpu"] for r in runs),
            "fake_cpu": statistics.median(r["fake_cpu"] for r in runs),
            "ratio": wall / floor if floor else float("nan"),
            "throttled": sum(r["throttled"] for r in runs),
            "failed": sum(r["failed"] for r in runs), "runs": repeat,
            "converged": all(r["converged"] for r in runs),
            "first_failure": next((r["first_failure"] for r in runs if r["first_failure"]), "")}


def table(rows: list[dict]) -> str:
    head = ("scenario", "parallel", "calls", "wall s", "floor s", "wall ÷ floor", "wave floor s", "wall ÷ wave floor",
            "429s met", "envs failed", "converged", "runbook CPU s", "fake CPU s")
    body = [(r["scenario"], str(r["parallel"]), str(r["calls"]), f"{r['wall']:.2f}", f"{r['floor']:.2f}",
             f"{r['ratio']:.2f}×", f"{r['wave_floor']:.2f}", f"{r['wave_ratio']:.2f}×", str(r["throttled"]),
             str(r["failed"]), "yes" if r["converged"] else "NO", f"{r['cpu']:.2f}", f"{r['fake_cpu']:.2f}")
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def machine() -> str:
    model = "?"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU ({model}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", type=int, default=50)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every API call")
    ap.add_argument("--parallel", default="1,5,10,25,32", help="comma-separated --parallel values (full bucket)")
    ap.add_argument("--drained-parallel", type=int, default=25, help="--parallel of the drained-account rows")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (median wall; 429s summed)")
    ap.add_argument("--skip-drained", action="store_true", help="only the full-bucket rows")
    ap.add_argument("--verbs", default="rollback,provision",
                    help="rollback (app side only), provision (one PostgreSQL cluster per environment), or both")
    args = ap.parse_args(argv)
    parallels = [int(p) for p in args.parallel.split(",") if p.strip()]
    verbs = {v.strip() for v in args.verbs.split(",") if v.strip()}
    if not verbs <= {"rollback", "provision"}:
        ap.error(f"--verbs: rollback and/or provision, not {', '.join(sorted(verbs - {'rollback', 'provision'}))}")

    from runbook import fleet, project as projects

    base = Path(tempfile.mkdtemp(prefix="rb-fleet-bench-"))
    base.chmod(0o755)
    apps = [f"fleet-app-{i:03d}" for i in range(args.envs)]
    path = write_project(base, apps)
    cluster, state = state_store(base)
    rows: list[dict] = []
    databases: list[Any] = []
    try:
        project = projects.load(path)
        envs = fleet.select(project, ["fleet-*"])
        common = dict(latency=args.latency, repeat=max(1, args.repeat), state=state, base=base)
        # warm-up: imports, the state schema, connection set-up paths
        scenario("warm-up", project, envs[:4], apps, [2], latency=0.0, rate_limit=HEROKU_LIMIT, window=3600,
                 repeat=1, state=state, base=base, token="bench-token-warmup")
        if "rollback" in verbs:
            rows += scenario("full", project, envs, apps, parallels, rate_limit=HEROKU_LIMIT, window=3600,
                             token="bench-token-full", **common)
        if "provision" in verbs:
            databases = database_clusters(base, len(apps))
            rows += provision_rows(apps, databases, parallels, **common)
        if "rollback" in verbs and not args.skip_drained:
            full = [r for r in rows if r["scenario"] == "full"]
            calls = full[-1]["calls"] if full else 3 * args.envs
            left = max(1, calls - DRAINED_SHORTFALL)
            window = left / HEROKU_REFILL                      # the fake refills at Heroku's 75/min
            drained = dict(rate_limit=left, window=window, rate_floor=DRAINED_SHORTFALL / HEROKU_REFILL,
                           latency=args.latency, state=state, base=base, repeat=1)
            rows += scenario("drained", project, envs, apps, [args.drained_parallel], token="bench-token-drained",
                             **drained)
            rows += scenario("drained, per-client", project, envs, apps, [args.drained_parallel],
                             token="bench-token-naive", shared=False, **drained)
    finally:
        for each in (cluster, *databases):
            each.destroy()
        shutil.rmtree(base, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"{args.envs} environments, {' and '.join(v for v in ('rollback', 'provision') if v in verbs)}, "
          f"{args.latency * 1000:.0f} ms per call; floor = calls × latency ÷ "
          f"parallel; wave floor = ceil(envs ÷ parallel) × calls per env × latency (drained rows: either, or the "
          f"refill time of the shortfall, if longer); load average {os.getloadavg()[0]:.2f} at the end")
    print(table(rows))
    for r in rows:
        if r["first_failure"]:
            print(f"{r['scenario']} parallel {r['parallel']}: first failure: {r['first_failure']}")
    for key, floor in (("ratio", "floor"), ("wave_ratio", "wave floor")):
        met = [r for r in rows if r["scenario"] != "drained, per-client" and r[key] <= TARGET and r["throttled"] == 0]
        where = ", ".join(f"{r['parallel']} ({r['scenario']})" for r in met) or "none"
        print(f"target (wall ≤ {TARGET}× {floor}, zero 429s): met at parallel {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
