"""HTTP clients shared across a fleet: one per platform account instead of one per environment.

Its own module, without httpx at import time, so runbook.fleet can open the sharing for any
fleet without loading httpx for one that only has local/dotenv environments; the sharing is
held on the runtime's ProviderRuntime, which providers.http reads when it builds an ApiClient.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from providers.base import ProviderRuntime


class SharedClients:
    """The httpx clients of a fleet: one per (API base URL, credentials, timeout, transport), lent
    to every ApiClient that asks for the same, so the environments of one account reuse its
    connection pool (and TLS sessions) instead of each building a client and connecting anew.
    httpx.Client is safe to share between threads; the clients close when the fleet ends."""

    def __init__(self) -> None:
        self._clients: dict[tuple[Any, ...], httpx.Client] = {}
        self._lock = threading.Lock()
        self.built = 0

    def get(self, key: tuple[Any, ...], build: Callable[[], httpx.Client]) -> httpx.Client:
        with self._lock:
            client = self._clients.get(key)
            if client is None or client.is_closed:
                client = self._clients[key] = build()
                self.built += 1
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


@contextmanager
def shared_clients(runtime: ProviderRuntime) -> Iterator[SharedClients]:
    """While open (runbook.fleet.run holds it for a fleet), the runtime's ApiClients share their
    httpx clients; outside it every ApiClient owns its own, as before. Nested opens share the
    outer one."""
    if runtime.clients is not None:
        yield runtime.clients
        return
    pool = runtime.clients = SharedClients()
    try:
        yield pool
    finally:
        runtime.clients = None
        pool.close()
