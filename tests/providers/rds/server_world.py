"""An AWS account the way the `runbook` command meets it: moto in server mode on 127.0.0.1 (the
tool runs as a subprocess with AWS_ENDPOINT_URL pointing there), ECS deployments that behave
like ECS; the RDS-like server itself (role model, password-command restriction, IAM login) is
tests/providers/rds/rds_server.py.

Stock moto leaves a deployment as it was created and never starts a task. `EcsDeployments`
wraps moto's ECS backend (it runs in this process, in the server's thread):

- update_service with forceNewDeployment or a new taskDefinition starts a new PRIMARY
  deployment IN_PROGRESS (the one before becomes ACTIVE), as ECS does;
- each describe_services starts one task of each deployment in progress: its container
  `secrets` are fetched the way the ECS agent does (GetSecretValue with the ARN's version stage
  / id and JSON key, GetParameters with decryption, from moto's own stores). A task that
  cannot fetch one (missing secret, secret pending deletion, missing JSON key, missing
  parameter) stops; the second such task fails the deployment by the circuit breaker
  ("ECS deployment circuit breaker: tasks failed to start."). When the new deployment runs
  its desired count it is COMPLETED and the older ones are gone.
- what each started task received is kept (`received`), so a test logs in with exactly that.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.providers.wire import relay

CIRCUIT_BREAKER = "ECS deployment circuit breaker: tasks failed to start."


@dataclass
class EcsDeployments:
    account: str
    region: str
    received: list[dict[str, str]] = field(default_factory=list)      # env of every task started
    stopped: list[str] = field(default_factory=list)                  # stoppedReason of every task that failed
    updates: list[dict[str, Any]] = field(default_factory=list)       # the update_service calls seen
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: int = 0

    def install(self, monkeypatch) -> None:
        from moto.ecs.models import EC2ContainerServiceBackend

        original_update = EC2ContainerServiceBackend.update_service
        original_describe = EC2ContainerServiceBackend.describe_services
        world = self

        def update_service(backend, service_properties):
            force = bool(service_properties.get("force_new_deployment"))
            new_definition = service_properties.get("task_definition")
            world.updates.append({"force": force, "taskDefinition": new_definition})
            service = original_update(backend, dict(service_properties))
            if force or new_definition:
                world._deploy(backend, service)
            return service

        def describe_services(backend, cluster_str, service_names_or_arns):
            services, failures = original_describe(backend, cluster_str, service_names_or_arns)
            with world._lock:
                for service in services:
                    world._step(backend, service)
            return services, failures

        monkeypatch.setattr(EC2ContainerServiceBackend, "update_service", update_service)
        monkeypatch.setattr(EC2ContainerServiceBackend, "describe_services", describe_services)

    # -- ECS's side ---------------------------------------------------------------------------

    def _deploy(self, backend, service) -> None:
        from moto.core.utils import utcnow

        definition = backend.describe_task_definition(service.task_definition)
        service.task_definition = definition.arn
        for old in service.deployments:
            if old["status"] == "PRIMARY":
                old["status"] = "ACTIVE"
        self._ids += 1
        now = utcnow()
        service.deployments.insert(0, {
            "id": f"ecs-svc/{9000000000000000000 + self._ids}", "status": "PRIMARY",
            "taskDefinition": definition.arn, "desiredCount": service.desired_count, "pendingCount": 0,
            "runningCount": 0, "failedTasks": 0, "createdAt": now, "updatedAt": now,
            "launchType": service.launch_type or "FARGATE", "rolloutState": "IN_PROGRESS",
            "rolloutStateReason": "ECS deployment in progress.",
        })

    def _step(self, backend, service) -> None:
        from moto.core.utils import utcnow

        primary = next((d for d in service.deployments if d["status"] == "PRIMARY"), None)
        if primary is None or primary.get("rolloutState") != "IN_PROGRESS":
            return
        definition = backend.describe_task_definition(primary["taskDefinition"])
        try:
            env = self.start_task(definition.container_definitions)
        except TaskFailed as exc:
            self.stopped.append(str(exc))
            primary["failedTasks"] += 1
            if primary["failedTasks"] >= 2:
                primary["rolloutState"], primary["rolloutStateReason"] = "FAILED", CIRCUIT_BREAKER
            primary["updatedAt"] = utcnow()
            return
        self.received.append(env)
        primary["runningCount"] += 1
        for old in service.deployments[1:]:
            old["runningCount"] = max(0, old.get("runningCount", 0) - 1)
        if primary["runningCount"] >= primary["desiredCount"]:
            primary["rolloutState"] = "COMPLETED"
            primary["rolloutStateReason"] = f"ECS deployment {primary['id']} completed."
            service.deployments[:] = [primary]
        service.running_count = primary["runningCount"]
        primary["updatedAt"] = utcnow()

    def start_task(self, containers: list[dict[str, Any]]) -> dict[str, str]:
        """What the agent hands the app container (environment, then secrets), or TaskFailed."""
        env: dict[str, str] = {}
        for container in containers:
            for entry in container.get("environment") or []:
                env[entry["name"]] = entry["value"]
            for entry in container.get("secrets") or []:
                env[entry["name"]] = self.fetch(entry["valueFrom"])
        return env

    def fetch(self, value_from: str) -> str:
        from moto.secretsmanager.models import secretsmanager_backends
        from moto.ssm.models import ssm_backends

        if value_from.startswith("arn:") and ":secretsmanager:" in value_from:
            fields = value_from.split(":")
            arn = ":".join(fields[:7])
            key, stage, version = (fields[7:10] + ["", "", ""])[:3]
            backend = secretsmanager_backends[self.account][self.region]
            try:
                out = backend.get_secret_value(arn, version or None, stage or (None if version else "AWSCURRENT"))
            except Exception as exc:     # moto's ResourceNotFound / InvalidRequest (marked for deletion)
                raise TaskFailed(f"ResourceInitializationError: unable to pull secrets: {type(exc).__name__}: "
                                 f"{getattr(exc, 'message', exc)}") from None
            text = out.get("SecretString") or ""
            if not key:
                return text
            body = json.loads(text)
            if key not in body:
                raise TaskFailed(f"ResourceInitializationError: unable to pull secrets: retrieved secret from "
                                 f"Secrets Manager did not contain json key {key}")
            return body[key] if isinstance(body[key], str) else json.dumps(body[key])
        name = value_from
        if value_from.startswith("arn:"):
            tail = value_from.split(":", 5)[5].split("/", 1)[1]
            name = tail if tail.startswith("/") or "/" not in tail else "/" + tail
        params = ssm_backends[self.account][self.region].get_parameters([name])
        if name not in params:
            raise TaskFailed(f"ResourceInitializationError: unable to pull secrets: invalid ssm parameters: {name}")
        value = params[name].decrypt(params[name].value)    # the agent asks with decryption
        if value is None:
            raise TaskFailed(f"ResourceInitializationError: unable to decrypt ssm parameter {name}")
        return value


class TaskFailed(Exception):
    """A task stopped before its app started (the agent could not fetch a secret)."""


class Tunnel:
    """A port-forward on 127.0.0.1 to the database (what `database.connect` points the tool at)."""

    def __init__(self, target_port: int) -> None:
        target = ("127.0.0.1", target_port)

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(target) as upstream:
                    pipes = [threading.Thread(target=relay, args=(self.request, upstream), daemon=True),
                             threading.Thread(target=relay, args=(upstream, self.request), daemon=True)]
                    for pipe in pipes:
                        pipe.start()
                    for pipe in pipes:
                        pipe.join()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.connections = 0
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def install_modify_db_proxy(monkeypatch, account: str, region: str) -> list[list[dict[str, str]]]:
    """moto has no ModifyDBProxy; this one takes the Auth list as the RDS API reference describes
    it (it replaces the list; each entry AuthScheme SECRETS with the ARN of an existing secret)
    and fails the request otherwise. Returns every Auth list it was sent."""
    from moto.core.responses import ActionResult
    from moto.rds.exceptions import InvalidParameterValue
    from moto.rds.responses import RDSResponse
    from moto.secretsmanager.models import secretsmanager_backends

    sent: list[list[dict[str, str]]] = []
    allowed = {"Description", "UserName", "AuthScheme", "SecretArn", "IAMAuth", "ClientPasswordAuthType"}

    def modify_db_proxy(self) -> ActionResult:
        name = self.params["DBProxyName"]
        proxy = self.backend.describe_db_proxies(name)[0]
        raw = self.params.get("Auth")
        # moto's request parser hands nested members over snake_cased; check them as the API names them
        camel = {"description": "Description", "user_name": "UserName", "auth_scheme": "AuthScheme",
                 "secret_arn": "SecretArn", "iam_auth": "IAMAuth", "client_password_auth_type": "ClientPasswordAuthType"}
        auth = None if raw is None else [{camel.get(k, k): v for k, v in e.items()} for e in raw]
        if auth is not None:
            secrets = secretsmanager_backends[account][region]
            for entry in auth:
                if set(entry) - allowed or entry.get("AuthScheme") != "SECRETS" or \
                        entry.get("IAMAuth", "DISABLED") not in ("DISABLED", "REQUIRED", "ENABLED"):
                    raise InvalidParameterValue(f"invalid Auth entry {sorted(entry)}")
                if not secrets._is_valid_identifier(entry.get("SecretArn", "")):
                    raise InvalidParameterValue(f"no secret {entry.get('SecretArn')}")
            if not auth:
                raise InvalidParameterValue("Auth needs at least one entry")
            sent.append([dict(e) for e in auth])
            proxy.auth = [dict(e) for e in raw]
        return ActionResult({"DBProxy": proxy})

    monkeypatch.setattr(RDSResponse, "modify_db_proxy", modify_db_proxy, raising=False)
    return sent


# -- IAM database authentication -----------------------------------------------------------------

def verify_auth_token(token: str, *, user: str, endpoint: str, region: str, key_id: str, secret_key: str,
                      session_token: str | None, now: float) -> str | None:
    """Check an RDS IAM auth token (a SigV4-presigned `connect` request) the way RDS does: signed
    with these credentials for rds-db in `region`, for this endpoint and DB user, not expired.
    Returns why it is refused, or None."""
    import hashlib
    import hmac
    from datetime import datetime, timezone
    from urllib.parse import parse_qsl, quote

    host, _, query = token.partition("/?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if host != endpoint:
        return f"token is for {host}, not {endpoint}"
    if params.get("Action") != "connect" or params.get("DBUser") != user:
        return "token is not a connect request for this user"
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or params.get("X-Amz-SignedHeaders") != "host":
        return "token is not SigV4 signed over host"
    if session_token is not None and params.get("X-Amz-Security-Token") != session_token:
        return "token's session token differs"
    cred = params.get("X-Amz-Credential", "").split("/")
    if len(cred) != 5 or cred[0] != key_id or cred[2:] != [region, "rds-db", "aws4_request"]:
        return "token's credential scope is wrong"
    amz_date = params.get("X-Amz-Date", "")
    signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    if not (signed_at - 300 <= now <= signed_at + int(params.get("X-Amz-Expires", "0"))):
        return "token expired"
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                               for k, v in sorted(params.items()) if k != "X-Amz-Signature")
    canonical = "\n".join(["GET", "/", canonical_query, f"host:{host}", "", "host",
                           hashlib.sha256(b"").hexdigest()])
    scope = f"{cred[1]}/{region}/rds-db/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (cred[1], region, "rds-db", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    want = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, params.get("X-Amz-Signature", "")):
        return "token signature does not match"
    return None
