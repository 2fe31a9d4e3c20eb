"""Log sessions on the Heroku fake: `POST /apps/{app}/log-sessions` (body keys and types as
the Heroku CLI sends them: dyno, lines, source, tail — packages/cli logs command), answered
with a log-session (`id`, `logplex_url`, `created_at`, `updated_at`), and a Logplex stand-in
on 127.0.0.1 that answers the session's URL once with the app's buffered lines and closes."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.providers.heroku.fake_heroku import FakeHeroku

_TYPES = {"dyno": str, "lines": int, "source": str, "tail": bool}


class Logplex:
    def __init__(self, fake: FakeHeroku) -> None:
        self.lines: dict[str, list[str]] = {}       # app → its buffered lines (the last 1,500)
        self.sessions: dict[str, tuple[str, dict[str, Any]]] = {}
        self.bodies: list[dict[str, Any]] = []
        self.problems: list[str] = []
        plex = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = plex.sessions.pop(self.path.split("?")[0].strip("/").split("/")[-1], None)   # one use, as Logplex
                if found is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                app, body = found
                lines = [ln for ln in plex.lines.get(app, []) if not body.get("dyno") or
                         f" app[{body['dyno']}." in ln][-int(body.get("lines") or 100):]
                data = "".join(ln + "\n" for ln in lines).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        original = fake._platform

        def platform(method: str, path: str, body: Any, headers: dict[str, str]):
            parts = path.strip("/").split("/")
            if method == "POST" and len(parts) == 3 and parts[0] == "apps" and parts[2] == "log-sessions":
                return self._create(fake, parts[1], body)
            return original(method, path, body, headers)

        fake._platform = platform          # type: ignore[method-assign]

    def _create(self, fake: FakeHeroku, app: str, body: Any):
        body = body or {}
        for key, value in body.items():
            if key not in _TYPES or not isinstance(value, _TYPES[key]) or (key == "lines" and not 0 < value <= 1500):
                self.problems.append(f"log-session body: {key}={value!r}")
                return 422, {"id": "invalid_params", "message": f"Invalid {key}"}
        fake._find_app(app)
        self.bodies.append(body)
        ident = str(uuid.uuid4())
        self.sessions[ident] = (app, body)
        return 201, {"id": ident, "logplex_url": f"{self.url}/sessions/{ident}?srv=1",
                     "created_at": "2026-12-01T00:00:00Z", "updated_at": "2026-12-01T00:00:00Z"}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
