"""The central rate budget combines the calls of a fleet's threads (runbook/rate_store.py): while
one batch is at the server the others queue, and the next round trip carries them all, with the
same statements in the same order, so nothing is overdrawn or counted twice."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from providers.heroku import RATE
from runbook.rate_store import TABLE, CentralBudgets, account_hash

pytestmark = [pytest.mark.pg, pytest.mark.parametrize("cluster", ["pg18"], indirect=True)]

THREADS = 25


def _store_url(pg) -> str:
    info = psycopg.conninfo.conninfo_to_dict(pg.admin_dsn)
    return f"postgresql://{info['user']}@/{info['dbname']}?host={info['host']}&port={info['port']}"


def _row(pg, account: str) -> tuple:
    return pg.execute(f"SELECT tokens, inflight FROM runbook.{TABLE} WHERE account = %s",
                      (account_hash(account),))[0]


def test_waiting_takes_go_in_one_round_trip_and_never_overdraw(pg):
    store = CentralBudgets(_store_url(pg))
    try:
        store.take("batch", RATE)                   # connected, the row made
        pg.execute(f"UPDATE runbook.{TABLE} SET tokens = 10, refilled_at = extract(epoch from clock_timestamp()), "
                   "inflight = 0, synced_at = extract(epoch from clock_timestamp()) WHERE account = %s",
                   (account_hash("batch"),))
        before = store.round_trips
        granted: list[bool] = []
        errors: list[BaseException] = []

        def take() -> None:
            try:
                granted.append(store.take("batch", RATE)[0] == 0)
            except BaseException as exc:    # noqa: BLE001 - the assertion below names it
                errors.append(exc)

        # the row locked by another session: the first take waits at the server, the rest queue
        blocker = psycopg.connect(pg.admin_dsn)
        try:
            blocker.execute(f"SELECT 1 FROM runbook.{TABLE} WHERE account = %s FOR UPDATE", (account_hash("batch"),))
            started = time.time()
            threads = [threading.Thread(target=take) for _ in range(THREADS)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while len(store._queue) < THREADS - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(store._queue) == THREADS - 1
            blocker.rollback()
        finally:
            blocker.close()
        for t in threads:
            t.join(60)
        assert not errors and len(granted) == THREADS
        assert store.round_trips - before == 2      # the first take alone, then the 24 that queued behind it
        refilled = (time.time() - started) * RATE.refill_per_second
        assert 10 <= sum(granted) <= 10 + refilled + 1, (sum(granted), refilled)
        tokens, inflight = _row(pg, "batch")
        assert inflight == sum(granted)             # each admission counted once
        assert tokens < 1
    finally:
        store.close()


def test_a_failed_batch_fails_every_call_in_it_and_the_store_stays_down(pg):
    store = CentralBudgets(_store_url(pg))
    try:
        store.take("down", RATE)
        # the budget's own session ended from outside: the next batch fails, every call in it with it
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'runbook:rate-budget'")
        from providers.base import BudgetStoreDown

        failures: list[str] = []

        def take() -> None:
            try:
                store.take("down", RATE)
            except BudgetStoreDown as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=take) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(failures) == 8 and len(set(failures)) == 1
        trips = store.round_trips
        with pytest.raises(BudgetStoreDown):
            store.observe("down", RATE, 100.0, None)
        assert store.round_trips == trips            # final: no reconnect
    finally:
        store.close()
