"""Loopback HTTP servers for the contract fakes: what every fake shares about serving.

`LoopbackServer` serves on 127.0.0.1 only, on an ephemeral port, one daemon thread per
connection, with Nagle off. Every request is recorded (method, path, query, headers, JSON body,
and the status it got, None when the connection was dropped) before it is answered, including
the ones a fault answered, so tests assert exactly what a provider sent and how many attempts
it took. A subclass answers in `respond()`; an exception there is a bug in the fake: it lands in
`errors` (tests assert that stays empty) and the client gets a 500.

`FakeServer` adds a route table and injected faults (a status, a slow answer, a dropped
connection) for fakes that describe an API as routes (Google, Supabase).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]          # lower-case names
    body: Any                        # parsed JSON, or None
    raw: bytes = b""
    api: str = ""                    # the name of the server that received it
    status: int | None = None        # None: not answered yet, or the connection was dropped
    fault: str | None = None         # the injected fault that answered it, if any

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]


class Dropped(Exception):
    """Raised by respond(): close the connection without an answer."""


class LoopbackServer:
    server_version = "Fake/1"
    content_type = "application/json"
    crash_reply: Any = {"fake": "crashed"}

    def __init__(self, name: str, *, requests: list[Request] | None = None, errors: list[str] | None = None,
                 lock: threading.RLock | None = None) -> None:
        """requests/errors/lock: pass a fake's own to share one log across several servers."""
        self.name = name
        self.requests: list[Request] = [] if requests is None else requests
        self.errors: list[str] = [] if errors is None else errors  # bugs in the fake: never silent
        self._lock = lock or threading.RLock()
        self.httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def respond(self, request: Request) -> Reply:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "LoopbackServer":
        serve = self._serve

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = self.server_version
            # replies go out as headers, then body: with Nagle on, delayed ACKs add ~40 ms to
            # every answer on loopback
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:   # quiet: bodies and tokens stay out
                pass

            def do_GET(self) -> None:
                serve(self)

            do_POST = do_PATCH = do_DELETE = do_PUT = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def url(self) -> str:
        assert self.httpd is not None, f"fake {self.name} is not started"
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # -- inspection ------------------------------------------------------------------------

    def calls(self, method: str | None = None, pattern: str | None = None) -> list[Request]:
        rx = re.compile(pattern + r"$") if pattern else None
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and (rx is None or rx.match(r.path))]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- serving ---------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        request = _read(h, self.name)
        with self._lock:
            self.requests.append(request)
        try:
            status, payload, *rest = self.respond(request)
        except Dropped:
            _drop(h)
            return
        except Exception:
            self.errors.append(f"{self.name}: {request.method} {request.path}:\n{traceback.format_exc()}")
            status, payload, rest = 500, self.crash_reply, []
        request.status = status
        self._write(h, status, payload, rest[0] if rest else {})

    def _write(self, h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", self.content_type)
            h.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                h.send_header(key, value)
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
        except OSError:
            h.close_connection = True   # the client gave up (read timeout): that is the point of a slow fault


def _read(h: BaseHTTPRequestHandler, api: str) -> Request:
    parts = urlsplit(h.path)
    length = int(h.headers.get("Content-Length") or 0)
    raw = h.rfile.read(length) if length else b""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    return Request(h.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                   {k.lower(): v for k, v in h.headers.items()}, body, raw, api)


def _drop(h: BaseHTTPRequestHandler) -> None:
    # an RST rather than a FIN: the client sees a reset connection, not a clean close
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass


# -- a route table with injected faults -------------------------------------------------------

@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    kind: str                        # "status" | "slow" | "reset"
    times: int = 1
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 1.5


Handler = Callable[[Request, re.Match[str]], Reply]


class FakeServer(LoopbackServer):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._faults: list[Fault] = []

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self._routes.append((method, re.compile(pattern + r"$"), fn))
            return fn
        return register

    def fail(self, method: str, pattern: str, kind: str = "status", *, times: int = 1, status: int = 503,
             headers: dict[str, str] | None = None, body: Any = None, delay: float = 1.5) -> None:
        """The next `times` matching requests meet this fault instead of the route."""
        with self._lock:
            self._faults.append(Fault(method, re.compile(pattern + r"$"), kind, times, status,
                                      headers or {}, body, delay))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.pattern.match(path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def respond(self, request: Request) -> Reply:
        fault = self._take_fault(request.method, request.path)
        if fault is not None:
            request.fault = fault.kind
            if fault.kind == "reset":
                raise Dropped()
            if fault.kind == "slow":
                time.sleep(fault.delay)
                return 200, {"late": True}
            return fault.status, fault.body if fault.body is not None else {}, fault.headers
        for method, pattern, fn in self._routes:
            match = pattern.match(request.path)
            if method == request.method and match:
                return fn(request, match)
        return 404, {"error": {"code": 404, "message": f"no route for {request.method} {request.path}",
                               "status": "NOT_FOUND"}}
