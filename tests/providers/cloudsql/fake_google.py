"""Contract fakes of the Google APIs the cloudsql/cloudrun providers use, on 127.0.0.1.

Four servers (so a provider that sends a call to the wrong base URL gets a 404):
- sqladmin:       instances.get, instances.listServerCas, users.insert (CLOUD_IAM_SERVICE_ACCOUNT),
                  users.delete, operations.get (PENDING → RUNNING → DONE over polls)
- iamcredentials: serviceAccounts.generateAccessToken (tokens for the instance's IAM users)
- secretmanager:  see fake_secrets (secrets, versions, aliases, IAM policies)
- run (v2):       services.get, services.patch (→ a long-running operation, a new revision),
                  operations.get, revisions.get

Cloud Run rollouts as the v2 Service resource reports them: a PATCH creates a revision and sets
`latestCreatedRevision`, `reconciling: true` and a CONDITION_RECONCILING `terminalCondition`; the
revision becomes ready (or fails) only as its operation is polled to `done`. Then `latestReadyRevision`,
`observedGeneration`, `trafficStatuses` and `terminalCondition` say how it ended. Until then the
previous ready revision serves, so a PATCH whose answer was lost leaves the service reconciling.

IAM database authentication, with a real PostgreSQL behind: users.insert of a service account
creates its role as Cloud SQL does (LOGIN, in cloudsqliamserviceaccount, no password, so nothing
logs it in yet). Cloud SQL would check each login's token with IAM; here generateAccessToken is
the only place a token is born, so when it issues one with the sqlservice.login scope for such a
user it makes that token the role's password, VALID UNTIL its expireTime: the latest unexpired
token logs in, a wrong or expired one fails as PostgreSQL's own password error.

Backed by the real PostgreSQL when an admin DSN is given: users.delete really drops the role
(its PostgreSQL error becomes the operation's error), and every revision Cloud Run "starts"
resolves its env (secrets included) so a test can connect the way the app would.
Every request and answer is refereed by the API's discovery document (see discovery.py and
GoogleServer): a request it rules out is answered 400 and fails the test, and so does an answer of
the fake's that does not follow the response schema.
"""

from __future__ import annotations

import base64
import copy
import itertools
import re
import threading
import uuid
from typing import Any

import psycopg
from psycopg import sql

from tests.providers.cloudsql.discovery import api
from tests.providers.cloudsql.fake_secrets import PROJECT_NUMBER, SecretStore  # noqa: F401 (tests import it here)
from tests.providers.loopback import FakeServer, Reply, Request

TOKEN = "ya29.fake-google-access-token"
PROJECT = "raxx-prod-123"
INSTANCE = "raxx-pg"
REGION = "europe-west1"
SERVICE = "raxx-api"
PUBLIC_IP = "203.0.113.7"     # TEST-NET-3 (RFC 5737): never routed, so a stray login cannot leave the machine
PRIVATE_IP = "10.20.0.3"
LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
IAM_GROUP = "cloudsqliamserviceaccount"        # Cloud SQL's group of the users it makes for service accounts


def gerror(code: int, status: str, message: str, reason: str | None = None) -> tuple[int, dict]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        err["errors"] = [{"message": message, "domain": "global", "reason": reason}]
    return code, {"error": err}


class GoogleServer(FakeServer):
    """A route table refereed by the API's discovery document: a request the document does not
    allow gets Google's 400 INVALID_ARGUMENT, and both it and any answer of the fake's that does
    not follow the response schema land in `violations`, which fail the test at teardown."""

    def __init__(self, name: str, document: str, violations: list[str]) -> None:
        super().__init__(name)
        self.api = api(document)
        self.violations = violations

    def respond(self, request: Request) -> Reply:
        method, problems = self.api.check_request(request.method, request.path, request.query, request.body,
                                                  request.raw)
        if problems:
            self.violations.extend(f"request: {p}" for p in problems)
            return gerror(400, "INVALID_ARGUMENT", "; ".join(problems))
        reply = super().respond(request)
        if request.fault is None and method is not None:
            self.violations.extend(f"the fake's answer: {p}" for p in self.api.check_response(method, reply[0], reply[1]))
        return reply


def default_instance(project: str = PROJECT, instance: str = INSTANCE, region: str = REGION) -> dict[str, Any]:
    return {
        "kind": "sql#instance",
        "name": instance,
        "project": project,
        "region": region,
        "state": "RUNNABLE",
        "databaseVersion": "POSTGRES_16",
        "databaseInstalledVersion": "POSTGRES_16_4",
        "instanceType": "CLOUD_SQL_INSTANCE",
        "connectionName": f"{project}:{region}:{instance}",
        "backendType": "SECOND_GEN",
        "ipAddresses": [{"type": "PRIMARY", "ipAddress": PUBLIC_IP}, {"type": "OUTGOING", "ipAddress": "198.51.100.1"}],
        "settings": {
            "kind": "sql#settings",
            "tier": "db-custom-2-7680",
            "edition": "ENTERPRISE",
            "availabilityType": "REGIONAL",
            "activationPolicy": "ALWAYS",
            # the pair the document lists for "encrypted, no client certificate" on PostgreSQL
            "ipConfiguration": {"ipv4Enabled": True, "sslMode": "ENCRYPTED_ONLY", "requireSsl": False},
        },
    }


def default_service(project: str = PROJECT, region: str = REGION, service: str = SERVICE) -> dict[str, Any]:
    name = f"projects/{project}/locations/{region}/services/{service}"
    return {
        "name": name,
        "uid": str(uuid.uuid4()),
        "generation": "1",
        "labels": {"team": "raptor"},
        "createTime": "2024-05-01T10:00:00Z",
        "ingress": "INGRESS_TRAFFIC_ALL",
        "launchStage": "GA",
        "template": {
            "containers": [
                {"name": "otel", "image": "otel/opentelemetry-collector:0.98.0"},
                {"name": "app", "image": f"europe-docker.pkg.dev/{project}/apps/raxx-api:1.4.2",
                 "ports": [{"name": "http1", "containerPort": 8080}],
                 "env": [{"name": "LOG_LEVEL", "value": "info"}],
                 "resources": {"limits": {"cpu": "1", "memory": "512Mi"}}},
            ],
            "serviceAccount": f"raxx-api@{project}.iam.gserviceaccount.com",
            "maxInstanceRequestConcurrency": 80,
        },
        "traffic": [{"type": LATEST, "percent": 100}],
        "observedGeneration": "1",
        "terminalCondition": condition("Ready", "CONDITION_SUCCEEDED"),
        "conditions": [condition("RoutesReady", "CONDITION_SUCCEEDED"),
                       condition("ConfigurationsReady", "CONDITION_SUCCEEDED")],
        "latestReadyRevision": f"{name}/revisions/{service}-00001-abc",
        "latestCreatedRevision": f"{name}/revisions/{service}-00001-abc",
        "trafficStatuses": [{"type": LATEST, "revision": f"{service}-00001-abc", "percent": 100}],
        "uri": f"https://{service}-x7y2z.a.run.app",
        "etag": '"etag-1"',
        "reconciling": False,
    }


def condition(kind: str, state: str, message: str | None = None) -> dict[str, Any]:
    out = {"type": kind, "state": state, "lastTransitionTime": "2024-05-01T10:00:00Z"}
    if message:
        out.update(message=message, severity="ERROR")
    return out


class FakeGoogle:
    def __init__(self, *, admin_dsn: str | None = None, token: str = TOKEN, op_polls: int = 2) -> None:
        self.admin_dsn = admin_dsn
        self.token = token
        self.op_polls = op_polls                       # operation GETs before DONE
        self.violations: list[str] = []               # requests or answers the discovery documents rule out
        self.sqladmin = GoogleServer("sqladmin", "sqladmin.v1", self.violations)
        self.secretmanager = GoogleServer("secretmanager", "secretmanager.v1", self.violations)
        self.run = GoogleServer("run", "run.v2", self.violations)
        self.iamcredentials = GoogleServer("iamcredentials", "iamcredentials.v1", self.violations)
        self.token_creator_denied: set[str] = set()    # service accounts the caller may not mint tokens for
        self.issued: list[dict[str, Any]] = []          # every generateAccessToken answer, with its request
        self.instances: dict[tuple[str, str], dict[str, Any]] = {(PROJECT, INSTANCE): default_instance()}
        self.sql_ops: dict[str, dict[str, Any]] = {}
        self.server_cas: list[str] = []                # PEMs instances.listServerCas answers
        self.op_statuses: list[str] = []               # every status an sqladmin operation GET returned
        self.fail_next_operation: str | None = None    # message of an sqladmin operation error
        self.stuck_operations = False                  # operations never finish
        self.store = SecretStore(PROJECT)
        self.secrets = self.store.secrets              # (project, secret id) → secret; see fake_secrets
        self.services: dict[str, dict[str, Any]] = {}
        self.run_ops: dict[str, dict[str, Any]] = {}
        self.patch_masks: list[str | None] = []        # the updateMask of every services.patch
        self.fail_next_revision: str | None = None     # the next revision fails to become ready, with this message
        self.revisions: list[dict[str, Any]] = []      # revisions rolled out that became ready, with resolved env
        self.all_revisions: dict[str, dict[str, Any]] = {}   # full name → every revision, the first one included
        self.default_account = f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
        self._counter = itertools.count(2)
        self._lock = threading.Lock()
        self.add_service(default_service())
        self._routes()

    # -- set-up ----------------------------------------------------------------------------

    def start(self) -> "FakeGoogle":
        for server in self.servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    @property
    def servers(self) -> tuple[FakeServer, ...]:
        return self.sqladmin, self.secretmanager, self.run, self.iamcredentials

    @property
    def errors(self) -> list[str]:
        return [e for s in self.servers for e in s.errors] + self.violations

    def environ(self) -> dict[str, str]:
        return {"CLOUDSQL_API_URL": self.sqladmin.url, "SECRETMANAGER_API_URL": self.secretmanager.url,
                "CLOUDRUN_API_URL": self.run.url, "IAMCREDENTIALS_API_URL": self.iamcredentials.url,
                "GOOGLE_OAUTH_ACCESS_TOKEN": self.token}

    def add_service(self, service: dict[str, Any]) -> None:
        """A deployed service: its template is what its ready revision runs (edits to the template
        before the first PATCH count as deployed too, the way a test sets the scene)."""
        self.services[service["name"]] = service
        ready = service["latestReadyRevision"]
        self.all_revisions[ready] = {"name": ready.rsplit("/", 1)[-1], "full": ready, "generation": 1,
                                     "service": service["name"], "template": service["template"],
                                     "state": "ready", "env": None, "error": None}

    def service(self, name: str | None = None) -> dict[str, Any]:
        return self.services[name or f"projects/{PROJECT}/locations/{REGION}/services/{SERVICE}"]

    def secret_value(self, name: str, project: str = PROJECT) -> str | None:
        return self.store.value(name, project)

    def latest_env(self) -> dict[str, str]:
        """What the app runs with: the env of the revision that serves (the latest ready one)."""
        revision = self.all_revisions[self.service()["latestReadyRevision"]]
        if revision["env"] is None:
            return self._resolve_env(revision["service"].split("/")[1], revision["template"], strict=False)
        return revision["env"]

    def revision(self, name: str) -> dict[str, Any]:
        """A revision by short name (every one the fake knows, pending and failed included)."""
        return next(r for r in self.all_revisions.values() if r["name"] == name)

    # -- routes ----------------------------------------------------------------------------

    def _authed(self, req: Request) -> tuple[int, dict] | None:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return gerror(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        return None

    def _routes(self) -> None:
        sa, sm, run = self.sqladmin, self.secretmanager, self.run
        p, seg = r"(?P<p>[^/]+)", r"(?P<{}>[^/:]+)"

        @sa.route("GET", rf"/v1/projects/{p}/instances/{seg.format('i')}")
        def get_instance(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            inst = self.instances.get((m["p"], m["i"]))
            if inst is None:
                return gerror(404, "NOT_FOUND", "The Cloud SQL instance does not exist.", "instanceDoesNotExist")
            return 200, inst

        @sa.route("GET", rf"/v1/projects/{p}/instances/{seg.format('i')}/listServerCas")
        def list_server_cas(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            if (m["p"], m["i"]) not in self.instances:
                return gerror(404, "NOT_FOUND", "The Cloud SQL instance does not exist.", "instanceDoesNotExist")
            certs = [{"kind": "sql#sslCert", "cert": pem, "instance": m["i"], "sha1Fingerprint": f"{i:040x}"}
                     for i, pem in enumerate(self.server_cas)]
            return 200, {"kind": "sql#instancesListServerCas", "certs": certs,
                         **({"activeVersion": f"{0:040x}"} if certs else {})}

        @sa.route("DELETE", rf"/v1/projects/{p}/instances/{seg.format('i')}/users")
        def delete_user(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            if (m["p"], m["i"]) not in self.instances:
                return gerror(404, "NOT_FOUND", "The Cloud SQL instance does not exist.", "instanceDoesNotExist")
            name = req.query.get("name")
            if not name:
                return gerror(400, "INVALID_ARGUMENT", "Missing parameter: name.", "required")
            return 200, self._sql_op(m["p"], m["i"], "DELETE_USER", ("drop_role", name))

        @sa.route("POST", rf"/v1/projects/{p}/instances/{seg.format('i')}/users")
        def insert_user(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            if (m["p"], m["i"]) not in self.instances:
                return gerror(404, "NOT_FOUND", "The Cloud SQL instance does not exist.", "instanceDoesNotExist")
            body = req.body or {}
            name, kind = body.get("name"), body.get("type") or "BUILT_IN"
            if kind != "CLOUD_IAM_SERVICE_ACCOUNT":
                return gerror(400, "INVALID_ARGUMENT", f"this fake makes CLOUD_IAM_SERVICE_ACCOUNT users, not {kind}")
            # the user of a service account of this project: its email without .gserviceaccount.com
            if not re.fullmatch(rf"[a-z][a-z0-9-]{{4,28}}[a-z0-9]@{re.escape(m['p'])}\.iam", str(name or "")):
                return gerror(400, "INVALID_ARGUMENT", f"Invalid request: {name!r} is not a service account "
                              "email without the .gserviceaccount.com suffix.", "invalid")
            op = self._sql_op(m["p"], m["i"], "CREATE_USER", ("create_iam_user", name))
            return 200, op

        @sa.route("GET", rf"/v1/projects/{p}/operations/{seg.format('op')}")
        def get_operation(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            entry = self.sql_ops.get(m["op"])
            if entry is None:
                return gerror(404, "NOT_FOUND", "The Cloud SQL operation does not exist.", "operationDoesNotExist")
            op = entry["op"]
            if op["status"] != "DONE" and not self.stuck_operations:
                entry["polls"] += 1
                if entry["polls"] >= self.op_polls:
                    op["status"] = "DONE"
                    self._finish_sql_op(entry)
                else:
                    op["status"] = "RUNNING"
            elif self.stuck_operations:
                op["status"] = "RUNNING"
            self.op_statuses.append(op["status"])
            return 200, op

        self.store.routes(sm, self._authed)

        @self.iamcredentials.route("POST", r"/v1/projects/-/serviceAccounts/(?P<sa>[^/:]+):generateAccessToken")
        def generate_access_token(req: Request, m: re.Match[str]):
            import datetime
            import secrets as tokens

            if denied := self._authed(req):
                return denied
            email = m["sa"]
            if email in self.token_creator_denied:
                return gerror(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied on "
                              f"resource (or it may not exist).", "forbidden")
            body = req.body or {}
            lifetime = int(str(body.get("lifetime") or "3600s").removesuffix("s"))
            expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lifetime)
            token = "ya29.sa-" + tokens.token_urlsafe(24)
            answer = {"accessToken": token, "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
            self.issued.append({"serviceAccount": email, "scope": list(body.get("scope") or []), **answer})
            if "https://www.googleapis.com/auth/sqlservice.login" in (body.get("scope") or []):
                self._accept_token(email.removesuffix(".gserviceaccount.com"), token, expires)
            return 200, answer

        service_rx = rf"/v2/(?P<name>projects/{p}/locations/(?P<r>[^/]+)/services/(?P<s>[^/]+))"

        @run.route("GET", service_rx)
        def get_service(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            service = self.services.get(m["name"])
            if service is None:
                return gerror(404, "NOT_FOUND", f"Resource '{m['s']}' of kind 'SERVICE' in region '{m['r']}' "
                                                f"in project '{m['p']}' does not exist.")
            return 200, service

        @run.route("PATCH", service_rx)
        def patch_service(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            with self._lock:
                service = self.services.get(m["name"])
                if service is None:
                    return gerror(404, "NOT_FOUND", f"Resource '{m['s']}' of kind 'SERVICE' does not exist.")
                body = req.body if isinstance(req.body, dict) else {}
                if body.get("etag") not in (None, service["etag"]):
                    return gerror(409, "ABORTED", "The etag does not match: the service changed since it was read.")
                mask = req.query.get("updateMask")
                paths = mask.split(",") if mask else [k for k in body if k != "etag"]
                writable = api("run.v2").schemas["GoogleCloudRunV2Service"]["properties"]
                if bad := [path for path in paths if path.split(".")[0] not in writable or path == "etag"]:
                    return gerror(400, "INVALID_ARGUMENT", f"Invalid update mask paths: {', '.join(bad)}.")
                self.patch_masks.append(mask)
                for path in paths:
                    if path != "template" and path in body:
                        service[path] = copy.deepcopy(body[path])
                template = body.get("template") if "template" in paths else service["template"]
                if not isinstance(template, dict) or not template.get("containers"):
                    return gerror(400, "INVALID_ARGUMENT", "template.containers is required.")
                if template == service["template"] and req.query.get("forceNewRevision") != "true":
                    # nothing in the template changed: Cloud Run rolls no revision
                    op_name = f"projects/{m['p']}/locations/{m['r']}/operations/{uuid.uuid4()}"
                    self.run_ops[op_name] = {"polls": 0, "noop": True, "service": m["name"], "error": None}
                    return 200, {"name": op_name, "done": False}
                gen = next(self._counter)
                rev = template.get("revision") or f"{m['s']}-{gen:05d}-{uuid.uuid4().hex[:3]}"
                full = f"{m['name']}/revisions/{rev}"
                if full in self.all_revisions:
                    error = {"code": 6, "message": f"Revision named '{rev}' with different configuration already exists."}
                else:
                    error = self._resolve_failure(m["p"], template)
                if error is None and self.fail_next_revision:
                    error = {"code": 9, "message": self.fail_next_revision}
                self.fail_next_revision = None
                service["template"] = copy.deepcopy(template)
                service["generation"] = str(gen)
                service["etag"] = f'"etag-{gen}"'
                service["reconciling"] = True
                service["terminalCondition"] = condition("Ready", "CONDITION_RECONCILING")
                created = full not in self.all_revisions
                if created:
                    service["latestCreatedRevision"] = full
                    self.all_revisions[full] = {"name": rev, "full": full, "generation": gen, "service": m["name"],
                                                "template": service["template"], "state": "pending", "env": None,
                                                "error": error}
                op_name = f"projects/{m['p']}/locations/{m['r']}/operations/{uuid.uuid4()}"
                self.run_ops[op_name] = {"polls": 0, "error": error, "service": m["name"], "revision": full,
                                         "created": created}
                return 200, {"name": op_name, "done": False,
                             "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Service",
                                          "name": m["name"]}}

        @run.route("GET", rf"/v2/(?P<name>projects/{p}/locations/[^/]+/operations/[^/]+)")
        def get_run_operation(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            with self._lock:
                entry = self.run_ops.get(m["name"])
                if entry is None:
                    return gerror(404, "NOT_FOUND", "Operation not found.")
                entry["polls"] += 1
                if entry["polls"] < self.op_polls:
                    return 200, {"name": m["name"], "done": False,
                                 "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Service",
                                              "terminalCondition": condition("Ready", "CONDITION_RECONCILING")}}
                if entry.get("noop"):
                    return 200, {"name": m["name"], "done": True,
                                 "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Service",
                                              **self.services[entry["service"]]}}
                if not entry.get("finished"):
                    entry["finished"] = True
                    self._finish_rollout(entry)
                if entry["error"]:
                    return 200, {"name": m["name"], "done": True, "error": entry["error"]}
                service = self.services[entry["service"]]
                return 200, {"name": m["name"], "done": True,
                             "response": {"@type": "type.googleapis.com/google.cloud.run.v2.Service", **service}}

        @run.route("GET", rf"/v2/(?P<name>projects/{p}/locations/[^/]+/services/[^/]+/revisions/[^/]+)")
        def get_revision(req: Request, m: re.Match[str]):
            if denied := self._authed(req):
                return denied
            revision = self.all_revisions.get(m["name"])
            if revision is None:
                return gerror(404, "NOT_FOUND", f"Resource '{m['name'].rsplit('/', 1)[-1]}' of kind 'REVISION' "
                                                "does not exist.")
            state = {"ready": "CONDITION_SUCCEEDED", "failed": "CONDITION_FAILED"}.get(revision["state"],
                                                                                      "CONDITION_RECONCILING")
            message = (revision["error"] or {}).get("message") if revision["state"] == "failed" else None
            template = revision["template"]
            return 200, {
                "name": revision["full"], "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, revision["full"])),
                "generation": "1", "service": revision["service"], "labels": dict(template.get("labels") or {}),
                "createTime": "2024-05-01T10:00:00Z", "launchStage": "GA",
                "containers": template.get("containers") or [], "volumes": template.get("volumes") or [],
                **{k: template[k] for k in ("serviceAccount", "maxInstanceRequestConcurrency") if k in template},
                "reconciling": revision["state"] == "pending", "observedGeneration": "1",
                "conditions": [condition("Ready", state, message)],
            }

    # -- behaviour -------------------------------------------------------------------------

    def _sql_op(self, project: str, instance: str, kind: str, action: tuple[str, str]) -> dict[str, Any]:
        op_id = str(uuid.uuid4())
        op = {"kind": "sql#operation", "name": op_id, "status": "PENDING", "operationType": kind,
              "targetId": instance, "targetProject": project, "insertTime": "2024-05-01T10:00:00Z",
              "selfLink": f"https://sqladmin.googleapis.com/v1/projects/{project}/operations/{op_id}"}
        self.sql_ops[op_id] = {"op": op, "polls": 0, "action": action, "error": self.fail_next_operation}
        self.fail_next_operation = None
        return op

    def _accept_token(self, user: str, token: str, expires) -> None:
        """What Cloud SQL's IAM check would let in: `token` for `user`, until it expires (only for a
        user Cloud SQL made for a service account)."""
        if self.admin_dsn is None:
            return
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            if not conn.execute(
                    """SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
                       JOIN pg_roles g ON g.oid = m.roleid WHERE r.rolname = %s AND g.rolname = %s""",
                    (user, IAM_GROUP)).fetchone():
                return
            verifier = conn.pgconn.encrypt_password(token.encode(), user.encode(), b"scram-sha-256").decode()
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {} VALID UNTIL {}").format(
                sql.Identifier(user), sql.Literal(verifier), sql.Literal(expires.isoformat())))

    def _finish_sql_op(self, entry: dict[str, Any]) -> None:
        error = entry["error"]
        kind, name = entry["action"]
        if error is None and kind == "create_iam_user":
            if self.admin_dsn is None:
                error = "no database behind this fake"
            else:
                try:
                    with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (IAM_GROUP,)).fetchone():
                            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(IAM_GROUP)))
                        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                            sql.Identifier(name), sql.Identifier(IAM_GROUP)))
                        if conn.info.server_version >= 160000:
                            # an assumption, stated: Cloud SQL leaves its users manageable by postgres
                            # (alter, comment, drop) through cloudsqlsuperuser's ADMIN OPTION, without
                            # handing cloudsqlsuperuser the user's privileges
                            conn.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE").format(
                                sql.Identifier(name), sql.Identifier("cloudsqlsuperuser")))
                except psycopg.Error as exc:
                    error = f"Cannot create user {name}: {str(exc).splitlines()[0]}"
        elif error is None and kind == "drop_role":
            if self.admin_dsn is None:
                error = "no database behind this fake"
            else:
                try:
                    with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
                except psycopg.Error as exc:
                    error = f"Cannot delete user {name}: {str(exc).splitlines()[0]}"
        if error:
            entry["op"]["error"] = {"kind": "sql#operationErrors",
                                    "errors": [{"kind": "sql#operationError", "code": "ERROR_RDBMS", "message": error}]}

    def _finish_rollout(self, entry: dict[str, Any]) -> None:
        """The operation is done: its revision is ready or failed, and the service says so."""
        service = self.services[entry["service"]]
        revision = self.all_revisions[entry["revision"]]
        newest = service["latestCreatedRevision"] == entry["revision"]
        if entry["error"]:
            if entry["created"]:
                revision["state"] = "failed"
            if newest or not entry["created"]:
                # the previous ready revision keeps serving; the service says why the rollout failed
                message = entry["error"]["message"]
                service["reconciling"] = False
                service["terminalCondition"] = condition("Ready", "CONDITION_FAILED", message)
                service["conditions"] = [condition("RoutesReady", "CONDITION_SUCCEEDED"),
                                         condition("ConfigurationsReady", "CONDITION_FAILED", message)]
            return
        revision["state"] = "ready"
        revision["env"] = self._resolve_env(entry["service"].split("/")[1], revision["template"])
        self.revisions.append({"name": revision["name"], "labels": dict(revision["template"].get("labels") or {}),
                               "env": revision["env"]})
        current = self.all_revisions[service["latestReadyRevision"]]
        if revision["generation"] > current["generation"]:
            service["latestReadyRevision"] = revision["full"]
        if newest:
            service["reconciling"] = False
            service["observedGeneration"] = str(revision["generation"])
            service["terminalCondition"] = condition("Ready", "CONDITION_SUCCEEDED")
            service["conditions"] = [condition("RoutesReady", "CONDITION_SUCCEEDED"),
                                     condition("ConfigurationsReady", "CONDITION_SUCCEEDED")]
        self._route_traffic(service)

    @staticmethod
    def _route_traffic(service: dict[str, Any]) -> None:
        """trafficStatuses from the service's traffic targets: LATEST means the latest ready revision."""
        ready = service["latestReadyRevision"].rsplit("/", 1)[-1]
        service["trafficStatuses"] = [
            {"type": t.get("type", LATEST), "revision": ready if t.get("type", LATEST) == LATEST else t.get("revision"),
             "percent": t.get("percent", 0), **({"tag": t["tag"]} if t.get("tag") else {})}
            for t in service.get("traffic") or [{"type": LATEST, "percent": 100}]]

    def _env_refs(self, template: dict[str, Any]):
        for container in template.get("containers") or []:
            for env in container.get("env") or []:
                yield container, env

    def _resolve_failure(self, project: str, template: dict[str, Any]) -> dict[str, Any] | None:
        for container, env in self._env_refs(template):
            ref = (env.get("valueSource") or {}).get("secretKeyRef")
            if ref:
                _, why = self.store.resolve(project, ref["secret"], str(ref.get("version") or "latest"),
                                            template.get("serviceAccount") or self.default_account)
                if why:
                    return {"code": 9, "message": (
                        f"Revision is not ready and cannot serve traffic. spec.template.spec.containers"
                        f"[{container.get('name')}].env.valueFrom.secretKeyRef: {why}")}
        return None

    def _resolve_env(self, project: str, template: dict[str, Any], *, strict: bool = True) -> dict[str, str]:
        """The env a revision's instances start with; secret versions resolved now."""
        out: dict[str, str] = {}
        for _, env in self._env_refs(template):
            if "value" in env:
                out[env["name"]] = env["value"]
            elif (env.get("valueSource") or {}).get("secretKeyRef"):
                ref = env["valueSource"]["secretKeyRef"]
                data, why = self.store.resolve(project, ref["secret"], str(ref.get("version") or "latest"),
                                               template.get("serviceAccount") or self.default_account)
                if data is None:
                    if strict:
                        raise AssertionError(f"a revision became ready that cannot read its env: {why}")
                    continue
                out[env["name"]] = data.decode()
        return out
