"""A loopback HTTP server for contract fakes: routes, a request log, and injected faults.

Serves on 127.0.0.1 only, on an ephemeral port, one thread per connection. Every request is
recorded (method, path, query, headers, JSON body), including the ones a fault answered, so
tests can assert exactly what a provider sent and how many attempts it took.
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


Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]
Handler = Callable[[Request, re.Match[str]], Reply]


class FakeServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[Request] = []
        self.errors: list[str] = []        # exceptions inside the fake itself: a test bug, never silent
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- set-up ----------------------------------------------------------------------------

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

    def start(self) -> "FakeServer":
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:   # quiet
                pass

            def _serve(self) -> None:
                fake._handle(self)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         name=f"fake-{self.name}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

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

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.pattern.match(path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        req = Request(h.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                      {k.lower(): v for k, v in h.headers.items()}, body, raw)
        with self._lock:
            self.requests.append(req)
        fault = self._take_fault(h.command, parts.path)
        if fault is not None:
            if fault.kind == "reset":
                # drop the connection without a response: the client sees a transport error
                h.close_connection = True
                try:
                    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if fault.kind == "slow":
                time.sleep(fault.delay)
                self._write(h, 200, {"late": True}, {})
                return
            self._write(h, fault.status, fault.body if fault.body is not None else {}, fault.headers)
            return
        for method, pattern, fn in self._routes:
            match = pattern.match(parts.path)
            if method == h.command and match:
                try:
                    reply = fn(req, match)
                except Exception:
                    self.errors.append(traceback.format_exc())
                    self._write(h, 500, {"fake": "crashed"}, {})
                    return
                status, payload, *rest = reply
                self._write(h, status, payload, rest[0] if rest else {})
                return
        self._write(h, 404, {"error": {"code": 404, "message": f"no route for {h.command} {parts.path}",
                                       "status": "NOT_FOUND"}}, {})

    @staticmethod
    def _write(h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
        except OSError:
            pass   # the client gave up (read timeout): that is the point of a slow fault
