"""Fleets: `--env` with several names and globs, `--parallel N`, the summary, and isolation.

Roles are cluster-wide and the role spec is project-wide, so two environments on one cluster
would share one role: the second provision finds it, sees that its own URL is missing, resets
the password and breaks the first environment's URL. Each local environment here therefore gets
its own embedded cluster (started once for the module). The Heroku tests need no PostgreSQL:
rollback touches only the app side, and the fake runs without a database behind it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from providers.embedded import Cluster, embedded_bin_dir, free_port
from runbook import fleet
from runbook import project as projects
from tests.e2e.test_cli import run_cli
from tests.projects import dotenv

URL_VAR = "RAPTOR_APP_DATABASE_URL"
FLAG = "FLAG_RAPTOR_APP_ROLE_SEPARATION"
GOOD = ["staging-a", "staging-b", "staging-c"]


# --- pure: selection and severity ------------------------------------------------------------

def _project_file(directory: Path, envs: dict[str, dict], role: str = "raptor_app") -> Path:
    data = {
        "version": 1, "app": "raptor",
        "role": {"name": role, "schemas": {"public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"],
                                                      "sequences": ["USAGE", "SELECT"]}},
                 "deny": ["alembic_version"]},
        "config": {"url_var": URL_VAR},
        "flag": {"name": FLAG, "on_value": "1", "off_value": "0"},
        "settings": {"connect_timeout": "3s", "http_attempts": 3, "http_timeout": "5s", "retry_budget": "20s"},
        "environments": envs,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "runbook.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _local(name: str) -> dict:
    return {"provider": "local", "database": {"dsn_env": f"RB_FLEET_{name.upper().replace('-', '_')}_DSN"},
            "app": {"dotenv": f".runbook/{name}.env"}}


def _names_project(tmp_path: Path) -> projects.Project:
    names = ["staging-a", "staging-bad", "staging-b", "staging-c", "prod"]
    return projects.load(_project_file(tmp_path, {n: _local(n) for n in names}))


def test_select_expands_lists_and_globs_in_order(tmp_path):
    project = _names_project(tmp_path)
    assert fleet.select(project, ["staging-*"]) == ["staging-a", "staging-bad", "staging-b", "staging-c"]
    # first mention wins; repeated --env and commas mix; each environment once
    assert fleet.select(project, ["prod,staging-?", "staging-a", " staging-c "]) == ["prod", "staging-a", "staging-b",
                                                                                   "staging-c"]
    assert fleet.select(project, ["staging-[ab]"]) == ["staging-a", "staging-b"]
    assert fleet.is_fleet(["staging-a"]) is False
    assert all(fleet.is_fleet(v) for v in (["a,b"], ["a", "b"], ["staging-*"], ["x?"]))


def test_exit_code_severity():
    assert fleet.worst([]) == 0
    assert fleet.worst([0, 3, 0]) == 3
    assert fleet.worst([3, 5]) == 5
    assert fleet.worst([5, 2, 3]) == 2
    assert fleet.worst([2, 4, 5]) == 4
    assert fleet.worst([0, 4, 1, 5, 2, 3]) == 1
    assert fleet.worst([0, 130, 1]) == 130


def test_bad_selections_exit_2_and_change_nothing(tmp_path):
    _names_project(tmp_path)
    res = run_cli(["diagnose", "--env", "nope-*"], tmp_path, {})
    assert res.returncode == 2, res.stderr
    assert "'nope-*' matches no environment" in res.stderr
    res = run_cli(["plan", "--env", "staging-a,stagin-b"], tmp_path, {})
    assert res.returncode == 2 and "did you mean 'staging-b'" in res.stderr, res.stderr
    res = run_cli(["rollback", "--env", "staging-*", "--parallel", "33", "--yes"], tmp_path, {})
    assert res.returncode == 2, res.stderr
    # a mutating fleet without a terminal needs --yes, like a single environment
    res = run_cli(["rollback", "--env", "staging-a,staging-b"], tmp_path, {})
    assert res.returncode == 2 and "pass --yes" in res.stderr, res.stderr
    assert not (tmp_path / ".runbook").exists()


# --- real PostgreSQL: one embedded cluster per environment -----------------------------------

@pytest.fixture(scope="module")
def clusters() -> Iterator[list[Cluster]]:
    base = Path(tempfile.mkdtemp(prefix="rb-fleet-"))
    base.chmod(0o755)
    started = [Cluster(embedded_bin_dir(), base / f"c{i}") for i in range(len(GOOD))]
    try:
        start = lambda c: c.start(settings={"log_min_messages": "warning"})  # noqa: E731
        start(started[0])          # alone first: it may create the service user the server runs as
        with ThreadPoolExecutor(len(started)) as pool:
            list(pool.map(start, started[1:]))
        for cluster in started:
            cluster.wait_ready()
        yield started
    finally:
        for cluster in started:
            cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


class Fleet:
    """A project of four staging environments (three on their own clusters, one whose DSN points at
    a closed port) and a prod environment no glob here matches."""

    def __init__(self, clusters: list[Cluster], directory: Path) -> None:
        suffix = secrets.token_hex(4)
        self.dir = directory
        self.role = f"raptor_app_{suffix}"
        self.environ: dict[str, str] = {}
        self.dsn: dict[str, str] = {}
        for name, cluster in zip(GOOD, clusters):
            self.dsn[name] = self._database(cluster, suffix)
            self.environ[f"RB_FLEET_{name.upper().replace('-', '_')}_DSN"] = self.dsn[name]
        closed = free_port()      # nothing listens there: "connection refused", a failure (exit 1)
        self.environ["RB_FLEET_STAGING_BAD_DSN"] = (f"host=127.0.0.1 port={closed} dbname=raptor user=nobody "
                                                    f"password=x sslmode=disable")
        names = ["staging-a", "staging-bad", "staging-b", "staging-c", "prod"]
        self.path = _project_file(directory, {n: _local(n) for n in names}, role=self.role)

    @staticmethod
    def _database(cluster: Cluster, suffix: str) -> str:
        dbname, owner, admin, password = f"f_{suffix}", f"owner_{suffix}", f"admin_{suffix}", "admin-" + suffix
        with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                sql.Identifier(admin), sql.Literal(password)))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(admin)))
            conn.execute(sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(admin)))
        with psycopg.connect(cluster.admin_conninfo(dbname), autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
            conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, total int)")
            conn.execute("CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
        return psycopg.conninfo.make_conninfo(host="127.0.0.1", port=str(cluster.port), user=admin,
                                              password=password, dbname=dbname, sslmode="disable")

    def cli(self, *args: str) -> tuple[int, str, str]:
        res = run_cli(list(args), self.dir, self.environ)
        assert "Traceback" not in res.stderr, res.stderr
        return res.returncode, res.stdout, res.stderr

    def runs(self, name: str) -> list[tuple[str, str]]:
        with psycopg.connect(self.dsn[name], autocommit=True) as conn:
            return conn.execute("SELECT command, status FROM runbook.runs ORDER BY id").fetchall()


@pytest.fixture
def fleet_project(clusters, tmp_path) -> Fleet:
    return Fleet(clusters, tmp_path)


def _normal(payload: dict) -> list[dict]:
    """Per-environment results without what differs from run to run (timings)."""
    out = []
    for r in payload["results"]:
        r = {k: v for k, v in r.items() if k != "seconds"}
        if r["result"]:
            r["result"] = {k: v for k, v in r["result"].items() if k != "data"}
        out.append(r)
    return out


@pytest.mark.pg
def test_one_environment_failing_never_stops_the_others(fleet_project):
    f = fleet_project
    code, out, err = f.cli("provision", "--env", "staging-*", "--parallel", "4", "--yes", "-o", "json")
    assert code == 1, err
    payload = json.loads(out)
    by_env = {r["env"]: r for r in payload["results"]}
    assert [r["env"] for r in payload["results"]] == ["staging-a", "staging-bad", "staging-b", "staging-c"]
    assert by_env["staging-bad"]["status"] == "failed" and by_env["staging-bad"]["exit_code"] == 1
    assert "cannot connect" in by_env["staging-bad"]["message"]
    assert payload["summary"] == {**payload["summary"], "environments": 4, "parallel": 4, "exit_code": 1,
                                  "statuses": {"ok": 3, "failed": 1}, "worst": ["staging-bad"], "interrupted": False}
    for name in GOOD:
        assert by_env[name]["status"] == "ok" and by_env[name]["exit_code"] == 0, by_env[name]
        assert by_env[name]["result"]["command"] == "provision"
        assert by_env[name]["message"].startswith("applied: ")
        # converged: the app's URL logs in as the role, which reaches orders and not alembic_version
        config = dotenv(f.dir, name)
        assert config[FLAG] == "1"
        with psycopg.connect(config[URL_VAR], autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == f.role
            conn.execute("INSERT INTO orders (total) VALUES (1)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM alembic_version")
        assert f.runs(name) == [("provision", "ok")]       # its own run in its own journal
        assert config[URL_VAR].split(":")[2].split("@")[0] not in out + err
    assert dotenv(f.dir, "prod") == {}                     # the glob did not match it

    # text output: details of the environment that failed, then the table, on stderr
    code, out, err = f.cli("diagnose", "--env", "staging-*", "--parallel", "2")
    assert code == 4 and out == "", err
    assert "fleet exit 4 (from staging-bad)" in err
    for name in GOOD:
        assert name in err
    assert err.count("check-failed") >= 2 and "diagnose on 4 environment(s), parallel 2" in err


@pytest.mark.pg
def test_parallel_results_equal_serial(fleet_project):
    f = fleet_project
    envs = ["--env", "staging-a,staging-b", "-e", "staging-c"]
    serial = f.cli("plan", *envs, "-o", "json")
    parallel = f.cli("plan", *envs, "--parallel", "3", "-o", "json")
    assert serial[0] == parallel[0] == 0, serial[2] + parallel[2]
    assert _normal(json.loads(serial[1])) == _normal(json.loads(parallel[1]))
    assert {r["status"] for r in json.loads(serial[1])["results"]} == {"planned"}

    code, out, err = f.cli("provision", *envs, "--yes", "-o", "json")
    assert code == 0, err
    for verb in (["diagnose"], ["drift"], ["provision", "--yes"]):
        serial = f.cli(*verb, *envs, "-o", "json")
        parallel = f.cli(*verb, *envs, "--parallel", "3", "-o", "json")
        assert serial[0] == parallel[0] == 0, (verb, serial[2], parallel[2])
        assert _normal(json.loads(serial[1])) == _normal(json.loads(parallel[1])), verb

    # a mutating verb in parallel: every environment rotates, and every new URL logs in
    before = {n: dotenv(f.dir, n)[URL_VAR] for n in GOOD}
    code, out, err = f.cli("rotate", "--env", "staging-[abc]", "--parallel", "3", "--yes", "-o", "json")
    assert code == 0, err
    for name in GOOD:
        url = dotenv(f.dir, name)[URL_VAR]
        assert url != before[name]
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == f.role
        assert [c for c, _ in f.runs(name)] == ["provision", "provision", "provision", "rotate"]


# --- Heroku (the contract fake, no database): shared budget, journal, isolation ----------------

@pytest.fixture
def heroku_fleet(tmp_path) -> Iterator[tuple[object, projects.Project, dict[str, str]]]:
    from tests.providers.heroku.fake_heroku import FakeHeroku

    fake = FakeHeroku(admin_dsn=None, database="d1fleet", port=free_port(), tokens=("fleet-" + secrets.token_hex(8),),
                      rate_limit=4500)
    fake.start()
    for server in fake._servers.values():
        # the fake writes headers and body apart; without TCP_NODELAY each answer waits ~40 ms for an ACK
        server.RequestHandlerClass.disable_nagle_algorithm = True
    envs = {}
    for i in range(12):
        app = f"fleet-app-{i:02d}"
        fake.add_addon(app, owner="u1owner", name=f"postgresql-fleet-{i:02d}")
        fake.set_config_var(app, FLAG, "1")
        envs[f"hk-{i:02d}"] = {"provider": "heroku", "database": {"addon": "DATABASE", "sslmode": "disable"},
                               "app": {"name": app}, "state": f"sqlite:///.runbook/state-{i:02d}.db"}
    project = projects.load(_project_file(tmp_path, envs))
    try:
        yield fake, project, {**fake.environ(), "HOME": str(tmp_path)}
    finally:
        fake.stop()
        assert fake.errors == []


def test_heroku_fleet_shares_one_budget_and_keeps_every_journal(heroku_fleet, monkeypatch):
    import providers.heroku as heroku

    fake, project, environ = heroku_fleet
    handed: list[object] = []
    keys: set[str] = set()

    def spy(key: str, *model):
        keys.add(key)
        handed.append(real(key, *model))
        return handed[-1]

    real = heroku.shared_budget
    monkeypatch.setattr(heroku, "shared_budget", spy)
    envs = fleet.select(project, ["hk-*"])
    res = fleet.run(project, "rollback", envs, parallel=8, yes=True, confirm=None, environ=environ)
    assert res.exit_code == 0, [(o.env, o.message) for o in res.outcomes if o.exit_code]
    assert [o.status for o in res.outcomes] == ["ok"] * len(envs)
    assert all(fake.config_vars(f"fleet-app-{i:02d}")[FLAG] == "0" for i in range(len(envs)))
    # one account, one budget: every client of the fleet paced itself by the same counter
    token = environ["HEROKU_API_KEY"]
    assert keys == {"heroku:" + hashlib.sha256(token.encode()).hexdigest()[:16]}
    assert len(handed) == len(envs) and len({id(b) for b in handed}) == 1
    assert not [r for r in fake.requests if r.status == 429]
    # every environment's records reached its own store, none was lost to another's drain
    from runbook.local_journal import LocalJournal
    from runbook.journal import open_store

    assert list(LocalJournal(project.base_dir / ".runbook" / "journal.jsonl").records()) == []
    for env in envs:
        store = open_store(project.env(env).spec.state, admin_dsn=None, base_dir=project.base_dir, env=env)
        try:
            events = store.events(env, limit=50)
        finally:
            store.close()
        assert [e["kind"] for e in events if e["step"] == "flag off"] == ["intent", "result"], (env, events)


def test_a_bug_in_one_environment_is_its_row_only(heroku_fleet, monkeypatch):
    from runbook import commands

    fake, project, environ = heroku_fleet
    real = commands.rollback

    def flaky(project, env, **kw):
        if env == "hk-03":
            raise ZeroDivisionError("a bug in one environment")
        return real(project, env, **kw)

    monkeypatch.setitem(commands.VERBS, "rollback", flaky)
    envs = fleet.select(project, ["hk-0*"])
    res = fleet.run(project, "rollback", envs, parallel=4, yes=True, confirm=None, environ=environ)
    by_env = {o.env: o for o in res.outcomes}
    assert by_env["hk-03"].status == "error" and by_env["hk-03"].exit_code == 1
    assert by_env["hk-03"].message == "internal error: ZeroDivisionError: a bug in one environment"
    assert "ZeroDivisionError" in by_env["hk-03"].traceback
    assert all(o.status == "ok" for e, o in by_env.items() if e != "hk-03")
    assert fake.config_vars("fleet-app-03")[FLAG] == "1" and fake.config_vars("fleet-app-04")[FLAG] == "0"
    payload = res.to_json()
    assert payload["summary"]["exit_code"] == 1 and payload["summary"]["worst"] == ["hk-03"]
    assert payload["summary"]["statuses"] == {"ok": len(envs) - 1, "error": 1}
    assert json.loads(json.dumps(payload))["results"][3]["result"] is None


def test_shared_budget_counts_requests_in_flight():
    """An answer's remaining count was taken when the server handled that request; the requests
    still in flight are not in it. Without subtracting them, parallel clients overrun the budget."""
    import httpx

    from providers.http import RateBudget

    slept: list[float] = []
    budget = RateBudget(low_water=2, refill_per_second=1.0, sleep=slept.append)

    def answer(remaining: int) -> httpx.Response:
        return httpx.Response(200, headers={"RateLimit-Remaining": str(remaining)})

    budget.before_request()
    budget.observe(answer(10))
    for _ in range(5):                 # five go out in parallel
        budget.before_request()
    budget.observe(answer(9))          # the first of them answers; four are still out: 9 - 4 = 5 left
    for _ in range(4):
        budget.before_request()        # 5 → 1: still at or above the low-water mark each time
    assert slept == []
    budget.before_request()            # below it: wait for one to refill
    assert slept and slept[0] == pytest.approx(1.0, abs=0.05)

    # before the first answer, at most low_water requests go out blind; an answer lets the next one go
    fresh = RateBudget(low_water=2, refill_per_second=1e6)
    fresh.before_request()
    fresh.before_request()
    third = threading.Thread(target=fresh.before_request)
    third.start()
    third.join(0.2)
    assert third.is_alive()
    fresh.observe(answer(100))
    third.join(2)
    assert not third.is_alive()


# --- a central PostgreSQL store: connections shared across the fleet's environments ------------

def _store_url(pg) -> str:
    info = psycopg.conninfo.conninfo_to_dict(pg.admin_dsn)
    return f"postgresql://{info['user']}@/{info['dbname']}?host={info['host']}&port={info['port']}"


def _terminate(pg, pids: list[int]) -> None:
    """End these server sessions and wait until they are gone (the server may restart, an idle
    timeout may fire, an operator may kill them)."""
    with pg.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        for _ in range(500):
            alive = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()[0]
            if not alive:
                return
            admin.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"sessions {pids} did not end")


@pytest.mark.pg
@pytest.mark.parametrize("cluster", ["pg18"], indirect=True)
def test_store_pool_reuses_connections_and_never_lends_a_broken_one(pg, tmp_path):
    from runbook.journal import open_store
    from runbook.run import Runtime

    url = _store_url(pg)
    opened = lambda pool=None: open_store(url, admin_dsn=None, base_dir=tmp_path, env="e", pool=pool)  # noqa: E731
    with Runtime.shared() as runtime:             # a fleet's runtime lends its pool to the stores it opens
        pool = runtime.pool
        first = opened(pool)
        pid = first.conn.info.backend_pid
        first.begin("e", "rollback", "d")
        first.close()
        first.close()                                   # a second close does not lend it twice
        second, third = opened(pool), opened(pool)      # the third while the second is out: its own
        assert second.conn.info.backend_pid == pid and third.conn.info.backend_pid != pid
        idle = [second.conn.info.backend_pid, third.conn.info.backend_pid]
        second.close()
        third.close()
        _terminate(pg, idle)
        fourth = opened(pool)                           # both idle ones are dead: a fresh one
        assert fourth.conn.info.backend_pid not in idle
        assert fourth.begin("e", "rollback", "d") > 0
        assert (pool.opened, pool.reused, pool.discarded) == (3, 1, 2)
        fourth.conn.execute("BEGIN")                    # given back inside a transaction: not lent again
        fourth.close()
        assert pool.discarded == 3
        kept = opened(pool)
        kept.close()
    assert kept.conn.closed                             # idle ones close when the fleet ends
    alone = opened()                                    # outside a fleet: no pool
    assert [r["command"] for r in alone.runs("e")] == ["rollback", "rollback"]
    alone.close()
    assert alone.conn.closed


@pytest.mark.pg
@pytest.mark.parametrize("cluster", ["pg18"], indirect=True)
def test_fleet_on_one_central_store_shares_connections_and_survives_one_dying(heroku_fleet, pg, monkeypatch):
    from runbook import journal as state
    from runbook.local_journal import LocalJournal

    fake, project, environ = heroku_fleet
    url = _store_url(pg)
    real_end_soak = state._SqlStore.end_soak

    def end_soak(self, env, *args, **kw):
        if env == "hk-03":                              # the server drops this one's connection mid-write
            _terminate(pg, [self.conn.info.backend_pid])
        return real_end_soak(self, env, *args, **kw)

    monkeypatch.setattr(state._SqlStore, "end_soak", end_soak)
    envs = fleet.select(project, ["hk-*"])
    from runbook.run import Runtime

    with Runtime.shared() as runtime:
        pool = runtime.pool
        res = fleet.run(project, "rollback", envs, parallel=4, yes=True, confirm=None, environ=environ, state=url,
                        runtime=runtime)
    assert [o.status for o in res.outcomes] == ["ok"] * len(envs), [(o.env, o.message) for o in res.outcomes]
    assert all(fake.config_vars(f"fleet-app-{i:02d}")[FLAG] == "0" for i in range(len(envs)))
    by_env = {o.env: o for o in res.outcomes}
    # its records reached the store before the connection dropped: it says so, not "journalled locally"
    said = [m for m in by_env["hk-03"].result.messages if "state store failed mid-write" in m]
    assert said and "after the rollback's records reached" in said[0] and "journalled locally" not in said[0], said
    assert by_env["hk-03"].result.data["journal"] != f"local:{project.base_dir / '.runbook' / 'journal.jsonl'}"
    # at most a first wave's worth opened by the prewarm, and as many by environments it did not reach
    # in time, plus the one replacing the dropped connection; every other store reused one
    assert pool.opened <= 2 * 4 + 1 < len(envs) and pool.discarded == 1
    assert pool.reused >= len(envs) - pool.opened
    # each environment its own run and its own events, whichever connection carried them
    store = state.open_store(url, admin_dsn=None, base_dir=project.base_dir, env="hk-00")
    try:
        runs = store.runs(None, limit=100)
        assert sorted(r["env"] for r in runs) == sorted(envs) and len({r["id"] for r in runs}) == len(envs)
        for env in envs:
            run = next(r for r in runs if r["env"] == env)
            events = store.events(env, run_id=run["id"])
            assert [e["kind"] for e in events if e["step"] == "flag off"] == ["intent", "result"], (env, events)
            assert run["status"] == "ok"
    finally:
        store.close()
    assert list(LocalJournal(project.base_dir / ".runbook" / "journal.jsonl").records()) == []


@pytest.mark.pg
@pytest.mark.parametrize("cluster", ["pg18"], indirect=True)
def test_a_fleet_checks_its_central_journal_once_per_way_of_opening_it(heroku_fleet, pg, monkeypatch):
    """The journal's trust check (owner, grants, triggers) runs on the first connection of each
    kind; the fleet's other connections to the same store skip it, so 25 workers do not each pay
    its statements under one GIL."""
    from runbook import journal as state
    from runbook.run import Runtime

    fake, project, environ = heroku_fleet
    url = _store_url(pg)
    checked: list[tuple] = []
    real_prepare = state.PostgresStore.prepare

    def prepare(conn, *, location, app=None, claim_legacy=False, create=True):
        checked.append((app, claim_legacy, create))
        return real_prepare(conn, location=location, app=app, claim_legacy=claim_legacy, create=create)

    monkeypatch.setattr(state.PostgresStore, "prepare", staticmethod(prepare))
    envs = fleet.select(project, ["hk-*"])
    with Runtime.shared() as runtime:
        res = fleet.run(project, "rollback", envs, parallel=4, yes=True, confirm=None, environ=environ, state=url,
                        runtime=runtime)
        opened = runtime.pool.opened
    assert [o.status for o in res.outcomes] == ["ok"] * len(envs), [(o.env, o.message) for o in res.outcomes]
    assert opened > 1                                   # several connections ...
    assert len(checked) == len(set(checked)) >= 1       # ... each way of opening checked once


def test_a_prewarm_stops_when_the_fleet_is_done(monkeypatch):
    from runbook import journal as state
    from runbook.pool import ConnectionPool

    entered, release = threading.Event(), threading.Event()
    made: list[object] = []

    class Conn:
        closed = broken = False

    def connect(key, **kw):
        entered.set()
        release.wait(10)
        made.append(Conn())
        return made[-1]

    monkeypatch.setattr(state.PostgresStore, "connect", staticmethod(connect))
    monkeypatch.setattr(ConnectionPool, "give", lambda self, key, conn: None)
    pool = ConnectionPool()
    thread = pool.prewarm({"postgresql://u@/db?host=/nowhere": 25})
    assert entered.wait(10)
    pool.stop_warming()                                  # the fleet ended while the first was connecting
    release.set()
    thread.join(10)
    assert not thread.is_alive() and len(made) == 1
