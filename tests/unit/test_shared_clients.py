"""A fleet's ApiClients of one account share one httpx client (and its connection pool)."""

from __future__ import annotations

import threading

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


def _loopback_server():
    """A keep-alive HTTP/1.1 server on 127.0.0.1 that answers with the client port it saw."""
    import http.server
    import socketserver

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = str(self.client_address[1]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_shared_client_keeps_one_connection_per_thread_and_closes_them_all():
    """httpcore's one pool scans every connection per request (quadratic in a fleet's workers):
    a shared client without a test transport gets a small pool per thread instead."""
    from providers.http import PerThreadTransport

    server = _loopback_server()
    rt = ProviderRuntime()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with shared_clients(rt):
            api = _api(None, base=base, runtime=rt)
            assert isinstance(api.client._transport, PerThreadTransport)
            ports: dict[str, list[str]] = {}
            barrier = threading.Barrier(4)

            def work(name: str) -> None:
                mine = _api(None, base=base, runtime=rt)       # the same shared client
                assert mine.client is api.client
                barrier.wait()                                  # four threads at once
                ports[name] = [mine.request("GET", "/").text for _ in range(3)]

            threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(ports) == 4
            # each thread's three requests went over one kept-alive connection of its own
            assert all(len(set(p)) == 1 for p in ports.values()), ports
            assert len({p[0] for p in ports.values()}) == 4, ports
            shards = list(api.client._transport._all)
            assert len(shards) == 4
        assert api.client.is_closed
        assert all(not shard._pool.connections for shard in shards)    # every thread's connection closed
    finally:
        server.shutdown()
        server.server_close()
