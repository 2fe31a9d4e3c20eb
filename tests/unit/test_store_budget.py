"""providers.http.StoreBudget, the client side of a rate budget kept outside the process, against a
scripted BudgetStore (the store itself is runbook/rate_store.py, tested on PostgreSQL in
tests/e2e/test_shard_budget.py)."""

from __future__ import annotations

import httpx
import pytest

from providers.base import BudgetStoreDown, ProviderRuntime
from providers.heroku import RATE
from providers.http import UNDECLARED, NoTimeLeft, RateBudget, StoreBudget, shared_budget
from providers.supabase import RATE as SUPABASE_RATE


class Script:
    """Answers take() from a list; records every call."""

    def __init__(self, takes: list[tuple[float, bool] | Exception]) -> None:
        self.takes = takes
        self.calls: list[tuple] = []

    def take(self, account, model):
        self.calls.append(("take", account))
        answer = self.takes.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def observe(self, account, model, remaining, retry_after):
        self.calls.append(("observe", remaining, retry_after))

    def cancel(self, account, model):
        self.calls.append(("cancel",))


def _budget(store: Script, notes: list[str] | None = None) -> tuple[StoreBudget, list[float]]:
    slept: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    budget = StoreBudget(RATE, "heroku:x", store, note=(notes.append if notes is not None else pytest.fail),
                         sleep=sleep, clock=lambda: clock[0])
    return budget, slept


def test_waits_for_the_refill_and_reports_each_answer():
    store = Script([(2.0, False), (0.0, False)])
    budget, slept = _budget(store)
    budget.before_request(10.0)
    assert slept == [2.0]
    budget.observe(httpx.Response(429, headers={"RateLimit-Remaining": "0", "Retry-After": "7"}))
    assert store.calls == [("take", "heroku:x"), ("take", "heroku:x"), ("observe", 0.0, 7.0)]
    assert budget.throttled == 1 and budget.waited == 2.0


def test_a_refill_past_the_deadline_is_refused_at_once_but_first_answers_are_awaited():
    budget, slept = _budget(Script([(30.0, False)]))
    with pytest.raises(NoTimeLeft) as refused:
        budget.before_request(10.0)
    assert slept == [] and refused.value.pause == 30.0
    budget, slept = _budget(Script([(30.0, True), (30.0, True), (0.0, False)]))
    budget.before_request(10.0)         # requests are out before the first answer: it looks again shortly
    assert slept == [StoreBudget.POLL, StoreBudget.POLL]


def test_answers_without_a_usable_count_only_end_the_request():
    store = Script([(0.0, False)] * 3)
    budget, _ = _budget(store)
    for header in ({}, {"RateLimit-Remaining": "inf"}, {"RateLimit-Remaining": "many"}):
        budget.before_request(10.0)
        budget.observe(httpx.Response(200, headers=header))
        assert store.calls[-1] == ("observe", None, None)


def test_the_store_failing_falls_back_to_the_process_with_one_note():
    notes: list[str] = []
    store = Script([(0.0, False), BudgetStoreDown("postgresql://u:****@db/x: OperationalError")])
    budget, _ = _budget(store, notes)
    budget.before_request(10.0)          # admitted by the store
    budget.before_request(10.0)          # the store fails: admitted in-process
    assert budget.alone
    budget.observe(httpx.Response(200, headers={"RateLimit-Remaining": "100"}))    # the store's request
    budget.observe(httpx.Response(200, headers={"RateLimit-Remaining": "99"}))     # the process's
    budget.before_request(10.0)
    assert [c[0] for c in store.calls] == ["take", "take", "observe"]
    assert notes == ["shared rate budget unavailable (postgresql://u:****@db/x: OperationalError); this process "
                     "now paces Heroku Platform API requests by itself"]


def test_only_announced_account_buckets_go_to_the_store():
    runtime = ProviderRuntime()
    runtime.budget_store = Script([])
    assert isinstance(shared_budget("heroku:a", RATE, runtime), StoreBudget)
    for key, model in (("gcp:a", UNDECLARED), ("supabase:a", SUPABASE_RATE)):
        found = shared_budget(key, model, runtime)
        assert type(found) is RateBudget
    assert type(shared_budget("heroku:b", RATE, ProviderRuntime())) is RateBudget     # no store: in-process
