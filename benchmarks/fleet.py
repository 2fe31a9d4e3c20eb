"""Fleet: `rollback` over 50 Heroku environments against the Heroku contract fake, with 50 ms of
injected latency per call and a rate budget; wall time against the floor, and the 429s met.

    python benchmarks/fleet.py                                  # 50 envs, 50 ms, parallel 1,5,10,25,32
    python benchmarks/fleet.py --envs 50 --latency 0.05 --parallel 1,8,16,32 --repeat 3

What runs is runbook.fleet.run(project, "rollback", envs, parallel=P, yes=True): what
`runbook rollback --env 'fleet-*' --parallel P --yes` calls once it has parsed its arguments, with
the project file (50 environments) loaded once. Each environment is a Heroku app whose flag is on;
rollback turns it off (GET config-vars, PATCH, GET to verify: 3 calls). `rollback` because it is
pure app-side HTTP: `provision` on Heroku also needs a real database per environment (the Data API
credential is a real role, and roles are cluster-wide), so it would measure 50 PostgreSQL servers.

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

def measure(project: Any, fake: FakeProcess, envs: list[str], parallel: int, state: str, base: Path) -> dict:
    from runbook import fleet

    fake_cpu = fake.ask("arm")
    environ = {**os.environ, **fake.environ, "HOME": str(base)}
    cpu, started = time.process_time(), time.perf_counter()
    res = fleet.run(project, "rollback", envs, parallel=parallel, yes=True, confirm=None, environ=environ, state=state)
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
        heroku.shared_budget = lambda key, model: RateBudget(model)   # type: ignore[assignment]  # baseline only
    fake = FakeProcess(apps, latency, rate_limit, window, token)
    rows = []
    try:
        for p in parallels:
            runs = [measure(project, fake, envs, p, state, base) for _ in range(repeat)]
            wall = statistics.median(r["wall"] for r in runs)
            calls = max(r["calls"] for r in runs)
            floor = max(calls * latency / p, rate_floor)
            # an environment's calls are sequential and it runs on one worker: ceil(envs / p) of them in a row
            wave_floor = max(math.ceil(len(envs) / p) * (calls / len(envs)) * latency, rate_floor)
            rows.append({"scenario": name, "parallel": p, "wall": wall, "calls": calls, "floor": floor,
                         "wave_floor": wave_floor, "wave_ratio": wall / wave_floor if wave_floor else float("nan"),
                         "cpu": statistics.median(r["cpu"] for r in runs),
                         "fake_cpu": statistics.median(r["fake_cpu"] for r in runs),
                         "ratio": wall / floor if floor else float("nan"),
                         "throttled": sum(r["throttled"] for r in runs),
                         "failed": sum(r["failed"] for r in runs), "runs": repeat,
                         "converged": all(r["flags_off"] == len(apps) for r in runs),
                         "first_failure": next((r["first_failure"] for r in runs if r["first_failure"]), "")})
            print(f"# {name} parallel {p}: {wall:.2f}s, {rows[-1]['ratio']:.2f}× floor, "
                  f"{rows[-1]['throttled']} 429s", file=sys.stderr, flush=True)
    finally:
        fake.stop()
        heroku.shared_budget = original
    return rows


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
    args = ap.parse_args(argv)
    parallels = [int(p) for p in args.parallel.split(",") if p.strip()]

    from runbook import fleet, project as projects

    base = Path(tempfile.mkdtemp(prefix="rb-fleet-bench-"))
    base.chmod(0o755)
    apps = [f"fleet-app-{i:03d}" for i in range(args.envs)]
    path = write_project(base, apps)
    cluster, state = state_store(base)
    rows: list[dict] = []
    try:
        project = projects.load(path)
        envs = fleet.select(project, ["fleet-*"])
        common = dict(latency=args.latency, repeat=max(1, args.repeat), state=state, base=base)
        # warm-up: imports, the state schema, connection set-up paths
        scenario("warm-up", project, envs[:4], apps, [2], latency=0.0, rate_limit=HEROKU_LIMIT, window=3600,
                 repeat=1, state=state, base=base, token="bench-token-warmup")
        rows += scenario("full", project, envs, apps, parallels, rate_limit=HEROKU_LIMIT, window=3600,
                         token="bench-token-full", **common)
        if not args.skip_drained:
            calls = rows[-1]["calls"] if rows else 3 * args.envs
            left = max(1, calls - DRAINED_SHORTFALL)
            window = left / HEROKU_REFILL                      # the fake refills at Heroku's 75/min
            drained = dict(rate_limit=left, window=window, rate_floor=DRAINED_SHORTFALL / HEROKU_REFILL,
                           latency=args.latency, state=state, base=base, repeat=1)
            rows += scenario("drained", project, envs, apps, [args.drained_parallel], token="bench-token-drained",
                             **drained)
            rows += scenario("drained, per-client", project, envs, apps, [args.drained_parallel],
                             token="bench-token-naive", shared=False, **drained)
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
    print(f"machine: {machine()}")
    print(f"{args.envs} environments, rollback, {args.latency * 1000:.0f} ms per call; floor = calls × latency ÷ "
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
