"""A fleet's ApiClients of one account share one httpx client (and its connection pool)."""

from __future__ import annotations

import httpx

from providers.base import ProviderRuntime, RetryPolicy
from providers.clients import shared_clients
from providers.http import ApiClient

RETRY = RetryPolicy(attempts=1, total_seconds=5, timeout_seconds=2)


def _api(transport, token="t1", base="https://api.example.test", runtime=None):
    return ApiClient("x", base, headers={"Authorization": f"Bearer {token}"}, retry=RETRY, transport=transport,
                     runtime=runtime)


def test_inside_a_fleet_one_account_shares_one_client_and_it_closes_with_the_fleet():
    seen = []
    transport = httpx.MockTransport(lambda req: seen.append(req.headers["authorization"]) or httpx.Response(200, json={}))
    rt = ProviderRuntime()
    with shared_clients(rt) as pool:
        a, b = _api(transport, runtime=rt), _api(transport, runtime=rt)
        other_token = _api(transport, token="t2", runtime=rt)
        other_api = _api(transport, base="https://data.example.test", runtime=rt)
        assert a.client is b.client
        assert other_token.client is not a.client and other_api.client is not a.client
        a.close()                                 # an environment finishing does not close it for the others
        assert b.request("GET", "/x").status_code == 200
        assert pool.built == 3
        with shared_clients(rt) as inner:         # nested: the same pool
            assert inner is pool
        shared = a.client
    assert shared.is_closed and rt.clients is None
    assert seen == ["Bearer t1"]


def test_outside_a_fleet_every_client_owns_its_own():
    transport = httpx.MockTransport(lambda req: httpx.Response(200, json={}))
    rt = ProviderRuntime()              # a runtime outside a fleet shares no clients
    a, b = _api(transport, runtime=rt), _api(transport, runtime=rt)
    assert a.client is not b.client
    a.close()
    assert a.client.is_closed and not b.client.is_closed
    b.close()
