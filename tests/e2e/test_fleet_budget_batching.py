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


def _set(pg, account: str, tokens: float, inflight: float) -> None:
    now = "extract(epoch from clock_timestamp())"
    pg.execute(f"UPDATE runbook.{TABLE} SET tokens = %s, refilled_at = {now}, inflight = %s, inflight_at = {now}, "
               f"synced_at = {now} WHERE account = %s", (tokens, inflight, account_hash(account)))


# arrival order: takes and answers of one account interleaved, as a fleet's threads send them
_OPS = [("take",), ("observe", 4000.0, None), ("take",), ("take",), ("cancel",), ("observe", None, None),
        ("take",), ("observe", RATE.low_water + 30.0, None), ("take",), ("observe", RATE.low_water + 28.0, None),
        ("take",)]


def _calls(store, account: str, ops) -> list:
    from runbook.rate_store import _OBSERVE_KIND, _TAKE_KIND, _Call

    out = []
    for op in ops:
        if op[0] == "take":
            out.append(_Call(_TAKE_KIND, store._params(account, RATE)))
        else:
            remaining, retry_after = (None, None) if op[0] == "cancel" else op[1:]
            out.append(_Call(_OBSERVE_KIND, store._params(account, RATE, remaining=remaining, retry_after=retry_after)))
    return out


def _one_at_a_time(store, account: str, ops) -> list:
    answers = []
    for op in ops:
        if op[0] == "take":
            answers.append(store.take(account, RATE))
        elif op[0] == "cancel":
            store.cancel(account, RATE)
        else:
            store.observe(account, RATE, *op[1:])
    return answers


@pytest.mark.parametrize("tokens, inflight", [(50.0, 6.0), (2.5, 0.0)])
def test_a_folded_batch_leaves_the_row_and_answers_as_its_statements_one_by_one(pg, tokens, inflight):
    """A batch's takes of one account go as one take of n, its answers as one observe of arrays
    (answers first): the row and every take's answer are what those statements, one at a time
    in that order, give; with the bucket never short, what they give in arrival order too."""
    store = CentralBudgets(_store_url(pg))
    try:
        for account in ("one-by-one", "arrival", "folded"):
            store.take(account, RATE)                       # the rows
            _set(pg, account, tokens, inflight)
        answers_first = [op for op in _OPS if op[0] != "take"] + [op for op in _OPS if op[0] == "take"]
        expected = _one_at_a_time(store, "one-by-one", answers_first)
        arrival = _one_at_a_time(store, "arrival", _OPS)
        batch = _calls(store, "folded", _OPS)
        before = store.round_trips
        store._send(batch)
        assert store.round_trips == before + 1 and store._down is None
        got = [(0.0 if c.rows[0][0] >= 1 else (1 - c.rows[0][0]) / RATE.refill_per_second, bool(c.rows[0][1]))
               for c in batch if c.query == "take"]
        assert [s for _, s in got] == [s for _, s in expected]
        assert [w for w, _ in got] == pytest.approx([w for w, _ in expected], abs=0.1)
        want = _row(pg, "one-by-one")
        assert _row(pg, "folded")[1] == want[1]                              # in flight: exact
        assert _row(pg, "folded")[0] == pytest.approx(want[0], abs=0.05)     # tokens, up to a few ms of refill
        if tokens > 10:      # never short, each answer ending a request in flight: moving them ahead changes nothing
            assert [w for w, _ in arrival] == [0.0] * len(arrival)
            assert _row(pg, "arrival")[1] == want[1]
            assert _row(pg, "arrival")[0] == pytest.approx(want[0], abs=0.05)
    finally:
        store.close()


def test_answers_nobody_waits_for_all_reach_the_store(pg):
    """An answer's observe returns at once while a batch is out; whoever sends next carries it,
    and the last sender sends what is left, so no request stays counted in flight."""
    store = CentralBudgets(_store_url(pg))
    try:
        store.take("async", RATE)
        _set(pg, "async", 1000.0, 0.0)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for remaining in (4000.0, 3990.0, 3980.0):
                    assert store.take("async", RATE)[0] == 0
                    store.observe("async", RATE, remaining, None)
            except BaseException as exc:    # noqa: BLE001 - the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert not store._queue and not store._busy
        assert _row(pg, "async")[1] == 0           # every admission answered, before any close
        assert store.round_trips < 2 * 3 * THREADS  # folded and carried, not one trip per call
    finally:
        store.close()
