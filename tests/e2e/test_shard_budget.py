"""One rate budget per platform account across the shards of a fleet (`--shard I/N` in N
processes), kept in the central `--state postgresql://…` store (runbook/rate_store.py).

The Heroku contract fake meters every token as Heroku documents it: a refilling bucket (here a
small one, refilled at Heroku's own ~75 a minute), RateLimit-Remaining on every answer, 429 with
Retry-After when it is empty."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from providers.base import ProviderRuntime
from providers.embedded import free_port
from providers.heroku import RATE
from providers.http import BudgetStoreDown, StoreBudget, shared_budget
from runbook.rate_store import TABLE, CentralBudgets, account_hash

pytestmark = [pytest.mark.pg, pytest.mark.parametrize("cluster", ["pg18"], indirect=True)]

FLAG = "FLAG_RAPTOR_APP_ROLE_SEPARATION"
ENVS = 50
SHARDS = 4
PARALLEL = 16
# the account's bucket holds 120 requests and refills at Heroku's rate (4,500 an hour, 1.25 a
# second); 50 environments × 3 requests is more than that, and with a second of latency per call
# the four shards are all under way when they reach the bottom together
LIMIT = 120
WINDOW = LIMIT / RATE.refill_per_second
LATENCY = 1.0


def _store_url(pg) -> str:
    info = psycopg.conninfo.conninfo_to_dict(pg.admin_dsn)
    return f"postgresql://{info['user']}@/{info['dbname']}?host={info['host']}&port={info['port']}"


class HerokuFleet:
    """A project of ENVS Heroku environments on one account of the contract fake (no database
    behind it: rollback touches only the app side)."""

    def __init__(self, directory: Path, *, rate_limit: int | None = LIMIT, latency: float = LATENCY) -> None:
        from tests.providers.heroku.fake_heroku import FakeHeroku

        self.dir = directory
        self.token = "hk-canary-" + secrets.token_hex(12)
        self.fake = FakeHeroku(admin_dsn=None, database="d1shards", port=free_port(), tokens=(self.token,),
                               rate_limit=rate_limit, rate_window_seconds=WINDOW, latency=latency)
        self.fake.start()
        for server in self.fake._servers.values():
            server.RequestHandlerClass.disable_nagle_algorithm = True
        envs = {}
        for i in range(ENVS):
            app = f"shard-app-{i:02d}"
            self.fake.add_addon(app, owner="u1owner", name=f"postgresql-shard-{i:02d}")
            self.fake.set_config_var(app, FLAG, "1")
            envs[f"hk-{i:02d}"] = {"provider": "heroku", "database": {"addon": "DATABASE", "sslmode": "disable"},
                                   "app": {"name": app}}
        data = {
            "version": 1, "app": "raptor",
            "role": {"name": "raptor_app", "schemas": {"public": {"tables": ["SELECT"]}}},
            "config": {"url_var": "RAPTOR_APP_DATABASE_URL"},
            "flag": {"name": FLAG, "on_value": "1", "off_value": "0"},
            # room to wait for the bucket: the fleet needs more requests than the account has left
            "settings": {"connect_timeout": "3s", "http_attempts": 5, "http_timeout": "10s", "retry_budget": "150s"},
            "environments": envs,
        }
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "runbook.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        self.environ = {**os.environ, **self.fake.environ(), "HOME": str(directory), "NO_COLOR": "1", "CI": "true"}

    def shards(self, state: str | None, *, parallel: int = PARALLEL) -> tuple[list[subprocess.CompletedProcess], float]:
        """`runbook rollback --env '*' --shard I/4` as four processes started together; their
        results and the wall time of all four."""
        started = time.perf_counter()
        procs = []
        for i in range(1, SHARDS + 1):
            where = state if state is not None else f"sqlite:///.runbook/shard-{i}.db"   # a store of its own each
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "runbook.cli", "rollback", "--env", "*", "--shard", f"{i}/{SHARDS}",
                 "--parallel", str(parallel), "--state", where, "--yes", "--output", "json"],
                cwd=self.dir, env=self.environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
        done = []
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return done, time.perf_counter() - started

    def throttled(self) -> int:
        return sum(1 for r in self.fake.requests if r.status == 429)

    def stop(self) -> None:
        self.fake.stop()
        assert self.fake.errors == []


@pytest.fixture
def heroku_fleet(tmp_path) -> Iterator[HerokuFleet]:
    made: list[HerokuFleet] = []

    def make(name: str, **kw) -> HerokuFleet:
        made.append(HerokuFleet(tmp_path / name, **kw))
        return made[-1]

    yield make
    for f in made:
        f.stop()


def _rows(pg) -> list[tuple]:
    return pg.execute(f"SELECT account, tokens, refilled_at, inflight, inflight_at, synced_at FROM runbook.{TABLE}")


def test_four_shards_share_one_account_budget_and_meet_no_429(pg, heroku_fleet):
    # first without sharing: four processes, each with a store (and so a budget) of its own, each
    # pacing only itself by what the account's answers say; together they overdraw it
    alone = heroku_fleet("alone")
    results, alone_seconds = alone.shards(None)
    print(f"\nalone: {alone_seconds:.1f}s, {alone.throttled()} 429s of {len(alone.fake.requests)}, "
          f"exits {[r.returncode for r in results]}")
    assert all("Traceback" not in r.stderr for r in results), [r.stderr for r in results]
    assert alone.throttled() > 0, "four unshared shards never met a 429: this test could not fail"

    # the same fleet with the central store: one bucket across the four processes
    shared = heroku_fleet("shared")
    url = _store_url(pg)
    results, shared_seconds = shared.shards(url)
    for r in results:
        assert r.returncode == 0, (r.args, r.stdout[-2000:], r.stderr[-2000:])
        assert "Traceback" not in r.stderr and "note:" not in r.stderr, r.stderr
    outcomes = [o for r in results for o in json.loads(r.stdout)["results"]]
    assert sorted(o["env"] for o in outcomes) == [f"hk-{i:02d}" for i in range(ENVS)]
    assert all(o["status"] == "ok" for o in outcomes), [(o["env"], o["message"]) for o in outcomes if o["status"] != "ok"]
    assert all(shared.fake.config_vars(f"shard-app-{i:02d}")[FLAG] == "0" for i in range(ENVS))
    assert len(shared.fake.requests) >= 3 * ENVS > LIMIT
    assert shared.throttled() == 0, [(r.method, r.path) for r in shared.fake.requests if r.status == 429][:5]

    # one row, for the one account, keyed by a hash; nothing in the table holds the token
    rows = _rows(pg)
    assert len(rows) == 1 and rows[0][0] == account_hash(
        "heroku:" + __import__("hashlib").sha256(shared.token.encode()).hexdigest()[:16])
    dump = json.dumps([list(map(str, r)) for r in rows])
    assert shared.token not in dump and shared.token[-12:] not in dump
    assert rows[0][3] == 0          # every admitted request was answered
    print(f"\n4 shards × {ENVS // SHARDS}ish environments, parallel {PARALLEL}: "
          f"per-process budgets {alone_seconds:.1f}s with {alone.throttled()} 429s, "
          f"shared budget {shared_seconds:.1f}s with 0 429s ({len(shared.fake.requests)} requests); "
          f"load {os.getloadavg()[0]:.1f}")


# --- the store itself ---------------------------------------------------------------------------

def _answer(remaining: int | None, status: int = 200, retry_after: str | None = None) -> httpx.Response:
    headers = {} if remaining is None else {"RateLimit-Remaining": str(remaining)}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return httpx.Response(status, headers=headers)


def test_a_new_account_row_sends_the_reserve_blind_then_follows_the_platform(pg):
    store = CentralBudgets(_store_url(pg))
    reserve = RATE.low_water
    try:
        assert [store.take("acct", RATE)[0] for _ in range(reserve)] == [0.0] * reserve
        assert _rows(pg)[0][3] == reserve
        wait, sooner = store.take("acct", RATE)       # nothing has answered yet: the blind allowance is spent,
        assert wait > 0 and sooner                     # and the first answer will say what is left
        # the first answer: 4,000 left, less the 9 others in flight, less the reserve
        store.observe("acct", RATE, 4000, None)
        assert _rows(pg)[0][3] == reserve - 1
        assert _rows(pg)[0][1] == pytest.approx(4000 - reserve - (reserve - 1), abs=0.5)
        store.observe("acct", RATE, 3990, None)           # lower: followed
        assert _rows(pg)[0][1] == pytest.approx(3990 - reserve - (reserve - 2), abs=0.5)
        store.observe("acct", RATE, 3999, None)           # an older answer arriving late: never raises it
        assert _rows(pg)[0][1] == pytest.approx(3990 - reserve - (reserve - 2), abs=0.5)
        # a 429 with Retry-After: below zero by at least that much refill
        store.observe("acct", RATE, 0, 8.0)
        assert _rows(pg)[0][1] <= -8.0 * RATE.refill_per_second
        wait, sooner = store.take("acct", RATE)
        assert wait >= 8.0 and not sooner             # only the refill makes room now
        for _ in range(reserve - 4):
            store.cancel("acct", RATE)
        assert _rows(pg)[0][3] == 0
    finally:
        store.close()


@pytest.mark.parametrize("tokens, refilled_at, inflight, inflight_at, synced_at, expect", [
    ("1e300", "now", "0", "now", "now", "capped"),                # huge: the model's bucket at most
    ("'Infinity'", "now", "0", "now", "now + 86400", "capped"),
    ("-1e300", "now", "0", "now", "now", "floored"),              # negative: one window's refill at most
    ("'NaN'", "now", "'NaN'", "now", "'NaN'", "zero"),
    ("0", "now + 86400", "0", "now", "now", "zero"),              # a future stamp: no refill from it
    ("1000", "now", "0", "now", "now - 1000", "blind"),           # no answer for long: the reserve only
    ("100", "now", "1e300", "now", "now", "inflight-capped"),
    ("100", "now", "50", "now - 1000", "now", "inflight-dropped"),  # admitted long ago: the shard died
])
def test_a_hostile_row_is_clamped_not_trusted(pg, tokens, refilled_at, inflight, inflight_at, synced_at, expect):
    store = CentralBudgets(_store_url(pg))
    try:
        store.take("acct", RATE)                    # makes the table and the row
        now = "extract(epoch from clock_timestamp())"
        pg.execute(f"UPDATE runbook.{TABLE} SET tokens = {tokens}, refilled_at = {refilled_at.replace('now', now)}, "
                   f"inflight = {inflight}, inflight_at = {inflight_at.replace('now', now)}, "
                   f"synced_at = {synced_at.replace('now', now)}")
        wait, sooner = store.take("acct", RATE)
        row = _rows(pg)[0]
        assert not sooner
        cap = RATE.limit - RATE.low_water
        if expect == "capped":
            assert wait == 0 and row[1] == pytest.approx(cap - 1, abs=0.01)
        elif expect == "floored":
            assert wait == pytest.approx((1 + RATE.limit) / RATE.refill_per_second, rel=0.01)
            assert wait <= RATE.window_seconds + 1
        elif expect == "zero":
            assert wait == pytest.approx(1 / RATE.refill_per_second, rel=0.05)
            assert row[2] <= time.time() + 5          # the stamp is the server's now again
        elif expect == "blind":
            assert wait == 0 and row[1] == pytest.approx(RATE.low_water - 1, abs=0.01)
        elif expect == "inflight-capped":
            assert wait == 0 and row[3] == RATE.limit + 1
        else:
            assert wait == 0 and row[3] == 1
    finally:
        store.close()


def test_take_and_observe_round_trips(pg):
    """What the shared budget costs a request: one statement to take, one for its answer."""
    store = CentralBudgets(_store_url(pg))
    budget = StoreBudget(RATE, "heroku:round-trips", store, note=pytest.fail)
    try:
        answer = _answer(4000)
        budget.before_request(60.0)
        budget.observe(answer)
        started, n = time.perf_counter(), 300
        for _ in range(n):
            budget.before_request(60.0)
            budget.observe(answer)
        elapsed = time.perf_counter() - started
        per_request = elapsed / n
        row = _rows(pg)[0]
        # the same count announced again does not give back what was taken since: only the refill does
        spent = 4000 - RATE.low_water - n
        assert row[3] == 0 and spent - 1 <= row[1] <= spent + 1 + RATE.refill_per_second * elapsed
        assert budget.waited == 0 and not budget.alone
        print(f"\nshared budget: {per_request * 1e3:.2f} ms per request (take + observe); load {os.getloadavg()[0]:.1f}")
    finally:
        store.close()


_TAKER = """
import sys
from providers.heroku import RATE
from runbook.rate_store import CentralBudgets
store = CentralBudgets(sys.argv[1])
store.take("warm-" + sys.argv[2], RATE)   # connected, the table checked
print("ready", flush=True)
sys.stdin.readline()                    # all ready: go together
print(sum(store.take("race", RATE)[0] == 0 for _ in range(60)), flush=True)
"""


def test_takes_from_four_processes_at_once_never_overdraw(pg):
    url = _store_url(pg)
    store = CentralBudgets(url)
    store.take("race", RATE)
    store.close()
    cwd = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", _TAKER, url, str(i)], cwd=cwd, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for i in range(4)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 4
    # 30 tokens left (an answer said so just now), refilled at 1.25 a second: 240 takes get 30 and
    # what refilled while they ran, never more
    started = time.time()
    pg.execute(f"UPDATE runbook.{TABLE} SET tokens = 30, refilled_at = extract(epoch from clock_timestamp()), "
               "inflight = 0, synced_at = extract(epoch from clock_timestamp()) WHERE account = %s",
               (account_hash("race"),))
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    granted = [int(p.communicate(timeout=120)[0]) for p in procs]
    refilled = (time.time() - started) * RATE.refill_per_second
    assert 30 <= sum(granted) <= 30 + refilled + 1, (granted, refilled)
    race = [r for r in _rows(pg) if r[0] == account_hash("race")]
    assert race[0][3] == sum(granted)       # each admission counted in flight once


def test_a_journal_schema_changed_behind_its_back_is_refused_and_the_budget_stays_in_process(pg):
    store = CentralBudgets(_store_url(pg))
    store.take("acct", RATE)
    store.close()
    pg.execute(f"CREATE FUNCTION public.rb_tamper() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; "
               f"CREATE TRIGGER tamper BEFORE UPDATE ON runbook.{TABLE} FOR EACH ROW EXECUTE FUNCTION public.rb_tamper()")
    notes: list[str] = []
    runtime = ProviderRuntime()
    runtime.budget_store = CentralBudgets(_store_url(pg))
    runtime.note = notes.append
    budget = shared_budget("heroku:someone", RATE, runtime)
    assert isinstance(budget, StoreBudget)
    with pytest.raises(BudgetStoreDown, match=f"trigger tamper on {TABLE}"):
        runtime.budget_store.take("acct", RATE)
    budget.before_request(5.0)                   # the in-process budget admits it
    budget.observe(_answer(4000))
    budget.before_request(5.0)
    assert budget.alone and len(notes) == 1 and "shared rate budget unavailable" in notes[0], notes
    assert "trigger tamper" in notes[0] and "\n" not in notes[0]


def test_the_store_going_away_mid_fleet_falls_back_with_one_note(pg, heroku_fleet):
    f = heroku_fleet("dying", rate_limit=None, latency=0.05)
    url = _store_url(pg)
    killed = threading.Event()

    def kill_once_busy() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed.is_set():
            if len(f.fake.requests) >= 20:
                with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
                    n = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                     "WHERE application_name = 'runbook:rate-budget'").fetchone()[0]
                if n:
                    killed.set()
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_once_busy)
    killer.start()
    proc = subprocess.run([sys.executable, "-m", "runbook.cli", "rollback", "--env", "hk-*", "--parallel", "4",
                           "--state", url, "--yes", "--output", "json"], cwd=f.dir, env=f.environ,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    killer.join()
    assert killed.is_set()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: shared rate budget unavailable")]
    assert len(notes) == 1, proc.stderr
    assert "this process now paces Heroku Platform API requests by itself" in notes[0]
    assert all(o["status"] == "ok" for o in json.loads(proc.stdout)["results"])
    assert all(f.fake.config_vars(f"shard-app-{i:02d}")[FLAG] == "0" for i in range(ENVS))
