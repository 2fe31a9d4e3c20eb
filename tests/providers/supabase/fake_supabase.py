"""A contract fake of the Supabase Management API on 127.0.0.1.

Endpoints: GET /v1/projects/{ref}, GET /v1/organizations/{slug},
GET /v1/projects/{ref}/config/database/pooler, and the Edge Function secrets: GET (names with
SHA-256 digests of the values), POST (bulk create/update with [{"name", "value"}]), DELETE (a
JSON array of names). Errors are {"message": ...}.

Every request, and every 2xx answer a route gives, is checked against the official OpenAPI
document (tests/providers/supabase/openapi/): an unknown operation, a bad parameter (a project
ref must match ^[a-z]+$, 20 long), a request body or answer its schema refuses, lands in `errors`
and fails the test.

Rate limits as documented: `rate_limit` requests per endpoint (method and path, so per project)
per token per fixed window of `rate_window` seconds (120 per 60 s by default; tests shrink the
window, the semantics stay). Every answer carries X-RateLimit-Limit, -Remaining and -Reset
(seconds left in the window, rounded up); over the limit, a 429 for the rest of the window, with
no Retry-After.

Backed by the real PostgreSQL when an admin DSN is given: the project reports the server's
version, and `invoke_function()` runs what an Edge Function would, with the secrets as its
environment: it connects with the URL secret when the flag secret is on.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from typing import Any

import psycopg

from tests.providers.loopback import FakeServer, Reply, Request
from tests.providers.supabase.openapi import Contract

TOKEN = "sbp_fake0123456789abcdef0123456789abcdef01"
REF = "abcdefghijklmnopqrst"
ORG = "raptor-org"
REGION = "eu-west-2"
POOLER = "aws-1-eu-west-2.pooler.supabase.com"


_CONTRACT: Contract | None = None
_CONTRACT_LOCK = threading.Lock()


def contract() -> Contract:
    """The OpenAPI contract, read once per process (the document is half a megabyte)."""
    global _CONTRACT
    with _CONTRACT_LOCK:
        if _CONTRACT is None:
            _CONTRACT = Contract()
        return _CONTRACT


class _ManagementServer(FakeServer):
    """The route table behind the contract check and the rate windows."""

    def __init__(self, fake: "FakeSupabase") -> None:
        super().__init__("supabase")
        self.fake = fake

    def respond(self, request: Request) -> Reply:
        fake = self.fake
        for problem in fake.contract.check_request(request.method, request.path, request.query, request.body,
                                                   request.raw):
            self.errors.append(f"contract: {problem}")
        limited, headers = fake._rate(request)
        if limited:
            request.fault = "rate_limit"
            return 429, {"message": "Too many requests"}, headers
        status, payload, *rest = super().respond(request)
        if request.fault is None:      # an injected fault is the test's own answer, not the API's
            for problem in fake.contract.check_response(request.method, request.path, status, payload):
                self.errors.append(f"contract: {problem}")
        return status, payload, {**(rest[0] if rest else {}), **headers}


class FakeSupabase:
    def __init__(self, *, admin_dsn: str | None = None, token: str = TOKEN, plan: str = "pro",
                 rate_limit: int = 120, rate_window: float = 60.0, pooler_host: str = POOLER) -> None:
        self.admin_dsn = admin_dsn
        self.token = token
        self.contract = contract()
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.pooler_host = pooler_host
        self._windows: dict[tuple[str, str, str], tuple[float, int]] = {}   # (token, method, path) → (start, count)
        self._rate_lock = threading.Lock()
        self.server = _ManagementServer(self)
        version = "15.8.1.085"
        if admin_dsn:
            with psycopg.connect(admin_dsn) as conn:
                version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]
        self.projects: dict[str, dict[str, Any]] = {REF: {
            "id": REF, "ref": REF, "organization_id": ORG, "organization_slug": ORG, "name": "raptor-staging",
            "region": REGION, "created_at": "2024-05-01T10:00:00Z", "status": "ACTIVE_HEALTHY",
            "database": {"host": f"db.{REF}.supabase.co", "version": version, "postgres_engine": "15",
                         "release_channel": "ga"},
        }}
        self.organizations: dict[str, dict[str, Any]] = {ORG: {
            "id": ORG, "name": "Raptor", "plan": plan, "opt_in_tags": [], "allowed_release_channels": ["ga"]}}
        self.org_forbidden = False
        self.listing: list[dict[str, Any]] | None = None   # replaces the secrets listing when set
        self.secrets: dict[tuple[str, str], str] = {}       # plaintext, as the functions see them
        self._routes()

    def start(self) -> "FakeSupabase":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def errors(self) -> list[str]:
        return self.server.errors

    @property
    def requests(self) -> list[Request]:
        return self.server.requests

    def environ(self) -> dict[str, str]:
        return {"SUPABASE_API_URL": self.server.url, "SUPABASE_ACCESS_TOKEN": self.token}

    def invoke_function(self, url_var: str, flag: str, on_value: str = "1") -> str | None:
        """What an Edge Function does with its env: when the flag is on, connect with the URL."""
        env = {name: value for (ref, name), value in self.secrets.items() if ref == REF}
        if env.get(flag) != on_value:
            return None
        with psycopg.connect(env[url_var], connect_timeout=5) as conn:
            return str(conn.execute("SELECT current_user").fetchone()[0])

    def exhaust(self, method: str, path: str) -> None:
        """Spend what is left of this endpoint's window (starting one now if none is running)."""
        with self._rate_lock:
            key = (self.token, method, path)
            start, _ = self._windows.get(key, (time.monotonic(), 0))
            if time.monotonic() >= start + self.rate_window:
                start = time.monotonic()
            self._windows[key] = (start, self.rate_limit)

    def _rate(self, req: Request) -> tuple[bool, dict[str, str]]:
        token = (req.headers.get("authorization") or "").removeprefix("Bearer ")
        now = time.monotonic()
        with self._rate_lock:
            key = (token, req.method, req.path)
            start, count = self._windows.get(key, (now, 0))
            if now >= start + self.rate_window:
                start, count = now, 0
            limited = count >= self.rate_limit
            if not limited:
                count += 1
            self._windows[key] = (start, count)
        reset = max(1, math.ceil(start + self.rate_window - now))
        return limited, {"X-RateLimit-Limit": str(self.rate_limit),
                         "X-RateLimit-Remaining": str(max(0, self.rate_limit - count)),
                         "X-RateLimit-Reset": str(reset)}

    def _authed(self, req: Request) -> tuple[int, dict] | None:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}
        return None

    def _routes(self) -> None:
        s = self.server

        @s.route("GET", r"/v1/projects/(?P<ref>[^/]+)")
        def project(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            p = self.projects.get(m["ref"])
            return (200, p) if p else (404, {"message": "Project not found"})

        @s.route("GET", r"/v1/organizations/(?P<slug>[^/]+)")
        def organization(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            if self.org_forbidden:
                return 403, {"message": "Your account does not have the necessary privileges to access this endpoint."}
            o = self.organizations.get(m["slug"])
            return (200, o) if o else (404, {"message": "Organization not found"})

        @s.route("GET", r"/v1/projects/(?P<ref>[^/]+)/config/database/pooler")
        def pooler(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            if m["ref"] not in self.projects:
                return 404, {"message": "Project not found"}
            host = self.pooler_host
            url = f"postgresql://postgres.{m['ref']}:[YOUR-PASSWORD]@{host}:6543/postgres"
            return 200, [{"database_type": "PRIMARY", "identifier": m["ref"], "db_host": host, "db_port": 6543,
                          "db_user": f"postgres.{m['ref']}", "db_name": "postgres", "pool_mode": "transaction",
                          "default_pool_size": 15, "max_client_conn": 200, "is_using_scram_auth": True,
                          "connection_string": url, "connectionString": url}]

        @s.route("GET", r"/v1/projects/(?P<ref>[^/]+)/secrets")
        def list_secrets(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            if self.listing is not None:
                return 200, self.listing
            return 200, [{"name": name, "value": hashlib.sha256(value.encode()).hexdigest(),
                          "updated_at": "2024-05-01T10:00:00Z"}
                         for (ref, name), value in sorted(self.secrets.items()) if ref == m["ref"]]

        @s.route("POST", r"/v1/projects/(?P<ref>[^/]+)/secrets")
        def create_secrets(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            body = req.body
            if not isinstance(body, list) or not all(isinstance(x, dict) and {"name", "value"} <= set(x) for x in body):
                return 400, {"message": "Invalid request body: expected an array of {name, value}"}
            for item in body:
                if str(item["name"]).upper().startswith("SUPABASE_"):
                    return 400, {"message": "Env var names must not start with SUPABASE_"}
            for item in body:
                self.secrets[(m["ref"], item["name"])] = item["value"]
            return 201, None

        @s.route("DELETE", r"/v1/projects/(?P<ref>[^/]+)/secrets")
        def delete_secrets(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            if not isinstance(req.body, list) or not all(isinstance(x, str) for x in req.body):
                return 400, {"message": "Invalid request body: expected an array of names"}
            for name in req.body:
                self.secrets.pop((m["ref"], name), None)
            return 200, None
