"""`platform: cloudrun` — a Cloud Run service: the URL in Secret Manager, the flag as an env var.

- The role's URL (`ctx.url_var`) is a Secret Manager secret (`url_secret`): created when missing
  (automatic replication), each new value a new version. The service's container gets the env var
  `url_var` from that secret *pinned to the version written*: env vars are resolved when an
  instance starts, so with `latest` a version added later would reach some instances and not others
  (Google recommends pinning), and a version whose PATCH never landed would pass for the app's URL.
- The flag (`ctx.flag_name`) and any other plain key are env vars of the service's container.
- Every change is one PATCH of the service template, which makes Cloud Run roll a new revision:
  that is the restart (`config_change_restarts`); a fresh `runbook-restart` label makes even a
  PATCH with nothing else changed roll one. The PATCH's long-running operation is polled until the
  rollout ends. Its error (e.g. the service account may not read the secret), or a finished rollout
  whose newest revision is not ready or does not take all the traffic, is one ProviderError line.
- Reading config looks at what serves, not at the template. The template counts only once its
  rollout is over: `reconciling` false, `terminalCondition` CONDITION_SUCCEEDED, the latest created
  revision is the latest ready one and `trafficStatuses` send all traffic to it. Otherwise (a run
  that lost a PATCH's answer, a rollout still going, a revision that failed, traffic pinned
  elsewhere) the revisions that take traffic are read, so a value that is only in the template reads
  as absent and the engine writes it again.
- The URL counts as set only when the serving env entry reads `url_secret` and that version of the
  secret holds a value.
- `restart()` rolls a revision with nothing else changed.

Base URLs: SECRETMANAGER_API_URL (default https://secretmanager.googleapis.com) and
CLOUDRUN_API_URL (default https://run.googleapis.com); token: see providers.gcp_auth.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from providers.base import Credential, Digest, OpenContext
from providers.gcp import Duration, ProjectId, api_client, json_body, wait_operation
from providers.gcp_auth import GoogleAuth, google_error
from providers.http import ApiClient, RateBudget
from runbook.errors import ConfigError, ProviderError
from runbook.secret import Secret, redact

SECRETMANAGER_API = "https://secretmanager.googleapis.com"
CLOUDRUN_API = "https://run.googleapis.com"
RESTART_LABEL = "runbook-restart"
LATEST_TRAFFIC = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"

_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_SECRET_VERSION = re.compile(r"^(?:latest|[1-9][0-9]{0,18})$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _short(name: object) -> str:
    """`rev-00002-abc` from `projects/…/services/svc/revisions/rev-00002-abc` (or from itself)."""
    return str(name or "").rsplit("/", 1)[-1]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class CloudRunAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="cloudrun app")
    platform: Literal["cloudrun"] = "cloudrun"
    project: ProjectId = Field(description="Google Cloud project id (default: the cloudsql database's project)", examples=['raptor-prod-123'])
    region: str = Field(description="region of the Cloud Run service, e.g. europe-west1", examples=['europe-west1'])
    service: str = Field(description="Cloud Run service name", examples=['web'])
    url_secret: str = Field(description="Secret Manager secret that holds the role's URL", examples=['raptor-database-url'])
    container: str | None = Field(default=None, description="container that gets the env vars "
                                  "(default: the one serving traffic)", examples=["app"])
    poll_interval: Duration = Field(default=timedelta(seconds=2), description="between operation polls")
    operation_timeout: Duration = Field(default=timedelta(minutes=10), description="longest wait for a revision")

    @model_validator(mode="before")
    @classmethod
    def _project_from_database(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, dict) and "project" not in v:
            database = (info.context or {}).get("database") or {}
            if database.get("provider") == "cloudsql" and database.get("project"):
                v = {**v, "project": database["project"]}
        return v

    @field_validator("region", "service")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} is not a Cloud Run region or service name (lower-case letters, digits, -)")
        return v

    @field_validator("url_secret")
    @classmethod
    def _secret(cls, v: str) -> str:
        if not _SECRET_ID.match(v):
            raise ValueError(f"url_secret {v!r} is not a Secret Manager secret id (letters, digits, _ and -)")
        return v

    def open(self, ctx: OpenContext) -> "CloudRunApp":
        return CloudRunApp(self, ctx)


class CloudRunApp:
    key = "cloudrun"
    config_change_restarts = True

    def __init__(self, config: CloudRunAppConfig, ctx: OpenContext, *,
                 sleep: Callable[[float], None] = time.sleep, budget: RateBudget | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.auth = GoogleAuth(ctx.environ)
        self._sleep = sleep          # between operation polls (tests pass a recorder)
        self._budget = budget        # default: the budget shared by every client of this identity
        self._clients: dict[str, ApiClient] = {}

    # -- HTTP ------------------------------------------------------------------------------

    def _client(self, name: str) -> ApiClient:
        if name not in self._clients:
            url_env, default, title = {
                "secrets": ("SECRETMANAGER_API_URL", SECRETMANAGER_API, "Secret Manager API"),
                "run": ("CLOUDRUN_API_URL", CLOUDRUN_API, "Cloud Run Admin API"),
            }[name]
            self._clients[name] = api_client(self.ctx, self.auth, self._budget, title=title,
                                             url_env=url_env, default_url=default)
        return self._clients[name]

    def _call(self, api: str, method: str, path: str, **kw: Any):
        return self._client(api).request(method, path, headers=self.auth.headers(), **kw)

    def _get(self, api: str, path: str) -> dict[str, Any]:
        return json_body(self._call(api, "GET", path), self._client(api).name)

    # -- Secret Manager --------------------------------------------------------------------

    @property
    def _secret_path(self) -> str:
        return f"/v1/projects/{self.config.project}/secrets/{self.config.url_secret}"

    def _secret_ref(self) -> str:
        return f"projects/{self.config.project}/secrets/{self.config.url_secret}"

    def _read_secret(self, version: str = "latest") -> tuple[str | None, str | None]:
        """(value, version number) of one version of the URL secret; (None, None) when there is no
        such version (no secret, no version yet, or that version disabled or destroyed)."""
        response = self._call("secrets", "GET", f"{self._secret_path}/versions/{version}:access", allow=(400, 404))
        body = json_body(response, "Secret Manager API")
        if response.status_code == 400:
            # FAILED_PRECONDITION: the version is disabled or destroyed; any other 400 is a real error
            if (body.get("error") or {}).get("status") != "FAILED_PRECONDITION":
                raise ProviderError(f"Secret Manager API: reading {self.config.url_secret} (version {version}) "
                                    f"failed: {redact(google_error(response))}")
            return None, None
        data = (body.get("payload") or {}).get("data") if response.status_code == 200 else None
        if data is None:
            return None, None
        try:
            value = base64.b64decode(data).decode()
        except (ValueError, UnicodeDecodeError):
            raise ProviderError(f"Secret Manager: version {version} of {self.config.url_secret} is not UTF-8 text") from None
        return value, _short(body.get("name")) or None

    def _write_secret(self, value: str) -> str:
        """Make `value` the secret's latest version, adding one only when it differs; its number."""
        current, version = self._read_secret()
        if current == value and version:
            return version            # a rerun adds no version for an unchanged URL
        if current is None:
            self._call("secrets", "POST", f"/v1/projects/{self.config.project}/secrets",
                       params={"secretId": self.config.url_secret},
                       json={"replication": {"automatic": {}}, "labels": {"managed-by": "pg-runbook"}},
                       allow=(409,))   # 409 ALREADY_EXISTS: keep the secret, add a version
        response = self._call("secrets", "POST", f"{self._secret_path}:addVersion",
                              json={"payload": {"data": base64.b64encode(value.encode()).decode()}})
        version = _short(json_body(response, "Secret Manager API").get("name"))
        if not version.isdigit():
            raise ProviderError(f"Secret Manager API: adding a version to {self.config.url_secret} "
                                "answered without the version's name")
        return version

    # -- Cloud Run service -----------------------------------------------------------------

    @property
    def _service_name(self) -> str:
        c = self.config
        return f"projects/{c.project}/locations/{c.region}/services/{c.service}"

    def _service(self) -> dict[str, Any]:
        return self._get("run", f"/v2/{self._service_name}")

    def _pick(self, containers: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The container that gets the env: the named one, else the ingress one (with sidecars,
        the one that declares a port), else the only one."""
        if self.config.container:
            return next((c for c in containers if c.get("name") == self.config.container), None)
        return next((c for c in containers if c.get("ports")), containers[0] if containers else None)

    def _container(self, service: dict[str, Any]) -> dict[str, Any]:
        containers = (service.get("template") or {}).get("containers") or []
        container = self._pick(containers)
        if container is not None:
            return container
        if self.config.container:
            names = ", ".join(str(c.get("name") or "?") for c in containers) or "none"
            raise ConfigError(f"Cloud Run service {self.config.service} has no container {self.config.container!r} "
                              f"(app.container); it has: {names}")
        raise ConfigError(f"Cloud Run service {self.config.service} has no container in its template")

    @staticmethod
    def _traffic(service: dict[str, Any]) -> set[str]:
        """The revisions (short names) that take a share of the traffic, per `trafficStatuses`."""
        out: set[str] = set()
        for status in service.get("trafficStatuses") or []:
            if not isinstance(status, dict) or not (status.get("percent") or 0) > 0:
                continue
            name = status.get("revision") or (
                service.get("latestReadyRevision") if status.get("type") == LATEST_TRAFFIC else None)
            if name:
                out.add(_short(name))
        return out

    def _template_serves(self, service: dict[str, Any]) -> bool:
        """The rollout of the template is over and succeeded: what the template says is what serves."""
        created, ready = service.get("latestCreatedRevision"), service.get("latestReadyRevision")
        generation, observed = service.get("generation"), service.get("observedGeneration")
        return (not service.get("reconciling") and bool(created) and created == ready
                and (service.get("terminalCondition") or {}).get("state") == "CONDITION_SUCCEEDED"
                and (generation is None or observed is None or str(generation) == str(observed))
                and self._traffic(service) == {_short(ready)})

    def _serving_env(self, service: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
        """The env entries, by name, of every revision that takes traffic: the template's once its
        rollout is over (no further call), else each serving revision's own (one GET each)."""
        if self._template_serves(service):
            sources = [service.get("template") or {}]
        else:
            sources = [self._get("run", f"/v2/{self._service_name}/revisions/{name}")
                       for name in sorted(self._traffic(service))]
        out = []
        for source in sources:
            container = self._pick(source.get("containers") or []) or {}
            out.append({e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)})
        return out

    def _wait(self, operation: dict[str, Any], what: str) -> None:
        c = self.config
        operation = wait_operation(
            operation, api="Cloud Run", what=what, poll=lambda name: self._get("run", f"/v2/{name}"),
            done=lambda op: bool(op.get("done")), interval=c.poll_interval, timeout=c.operation_timeout,
            sleep=self._sleep, follow=f"gcloud run services describe {c.service} --region={c.region}")
        error = operation.get("error")
        if error:
            detail = (error.get("message") or error.get("code")) if isinstance(error, dict) else None
            raise ProviderError(f"Cloud Run: {what} failed: {_one_line(detail or error)}")
        served = operation.get("response")
        if isinstance(served, dict) and served.get("latestCreatedRevision"):
            self._check_rollout(served, what)

    def _check_rollout(self, service: dict[str, Any], what: str) -> None:
        """A finished rollout must leave its newest revision ready and taking all the traffic."""
        created, ready = _short(service.get("latestCreatedRevision")), _short(service.get("latestReadyRevision"))
        condition = service.get("terminalCondition") or {}
        if created != ready or condition.get("state") == "CONDITION_FAILED":
            why = _one_line(condition.get("message") or "Cloud Run gave no reason")
            raise ProviderError(f"Cloud Run: {what} failed: revision {created} did not become ready: {why}")
        traffic = self._traffic(service)
        if traffic and traffic != {ready}:
            c = self.config
            raise ProviderError(
                f"Cloud Run: {what}: revision {ready} is ready but {', '.join(sorted(traffic - {ready}))} still "
                f"take traffic (pinned in the service's traffic), so the change does not serve; run `gcloud run "
                f"services update-traffic {c.service} --to-latest --region={c.region}` and rerun")

    def _roll(self, edit: Callable[[dict[str, Any]], None], what: str, service: dict[str, Any] | None = None) -> None:
        """Edit the service's template (as read, or read now), PATCH it (= a new revision) and wait
        until it serves. The etag makes a concurrent deploy fail with 409 instead of being
        overwritten; then re-read and edit again."""
        for attempt in range(3):
            if service is None:
                service = self._service()
            template = service.setdefault("template", {})
            edit(service)
            labels = template.setdefault("labels", {})
            labels[RESTART_LABEL] = f"{int(time.time())}-{secrets.token_hex(3)}"
            template.pop("revision", None)   # a fixed revision name would collide with the last one
            response = self._call("run", "PATCH", f"/v2/{self._service_name}", json=service, allow=(409,))
            if response.status_code == 409 and attempt < 2:
                service = None
                continue
            if response.status_code == 409:
                raise ProviderError(f"Cloud Run: {what}: the service kept changing under us (409); rerun")
            self._wait(json_body(response, "Cloud Run Admin API"), what)
            return

    @staticmethod
    def _put_env(container: dict[str, Any], entry: dict[str, Any]) -> None:
        env = container.setdefault("env", [])
        for i, existing in enumerate(env):
            if existing.get("name") == entry["name"]:
                env[i] = entry
                return
        env.append(entry)

    def _url_entry(self, var: str, version: str) -> dict[str, Any]:
        return {"name": var, "valueSource": {"secretKeyRef": {"secret": self.config.url_secret, "version": version}}}

    def _url_value(self, entry: dict[str, Any] | None) -> str | None:
        """The URL the serving env entry reads, or None when it does not read the URL secret."""
        ref = ((entry or {}).get("valueSource") or {}).get("secretKeyRef") or {}
        if ref.get("secret") not in (self.config.url_secret, self._secret_ref()):
            return None
        version = str(ref.get("version") or "latest")
        if not _SECRET_VERSION.match(version):
            return None
        return self._read_secret(version)[0]

    # -- AppPlatform -----------------------------------------------------------------------

    def describe(self) -> dict[str, str]:
        out = {"cloudrun": self._service_name,
               "url": f"secret {self._secret_ref()} (the version the service pins)"}
        if self.ctx.flag_name:
            out["flag"] = f"env {self.ctx.flag_name}" + (f" of container {self.config.container}" if self.config.container else "")
        return out

    def get_config(self, keys: list[str]) -> dict[str, str | Digest | None]:
        envs = self._serving_env(self._service())
        out: dict[str, str | Digest | None] = {}
        for key in keys:
            entries = [env.get(key) for env in envs]
            # in place only when every revision taking traffic holds it the same way
            entry = entries[0] if entries and all(e == entries[0] for e in entries) else None
            if key == self.ctx.url_var:
                out[key] = self._url_value(entry)
            else:
                out[key] = entry.get("value") if entry and "value" in entry else None
        return out

    def _check_keys(self, keys: list[str]) -> None:
        for key in keys:
            if not _ENV_KEY.match(key):
                raise ConfigError(f"{key!r} is not a valid environment variable name")

    def set_config(self, changes: Mapping[str, str | Secret]) -> None:
        self._check_keys(list(changes))
        for key, value in changes.items():
            if isinstance(value, Secret) and key != self.ctx.url_var:
                raise ConfigError(f"{key} holds a secret; on Cloud Run only {self.ctx.url_var or 'the URL'} "
                                  "is stored in Secret Manager, other keys are plain env vars")
        service = self._service()
        self._container(service)   # fail on a wrong container before writing anything
        entries = []
        for key, value in changes.items():
            if key == self.ctx.url_var:
                version = self._write_secret(value.reveal() if isinstance(value, Secret) else value)
                entries.append(self._url_entry(key, version))
            else:
                entries.append({"name": key, "value": str(value)})

        def edit(service: dict[str, Any]) -> None:
            container = self._container(service)
            for entry in entries:
                self._put_env(container, entry)

        self._roll(edit, f"setting {', '.join(changes)} on {self.config.service}", service)

    def unset_config(self, keys: list[str]) -> None:
        self._check_keys(keys)
        service = self._service()
        if self.ctx.url_var in keys:
            for volume in (service.get("template") or {}).get("volumes") or []:
                if (volume.get("secret") or {}).get("secret") in (self.config.url_secret, self._secret_ref()):
                    raise ConfigError(f"Cloud Run service {self.config.service} mounts secret {self.config.url_secret} "
                                      f"as volume {volume.get('name')}; remove that mount, then rerun")

        def edit(service: dict[str, Any]) -> None:
            container = self._container(service)
            container["env"] = [e for e in container.get("env") or [] if e.get("name") not in keys]

        # the revision must stop reading the secret before the secret goes
        self._roll(edit, f"removing {', '.join(keys)} from {self.config.service}", service)
        if self.ctx.url_var in keys:
            self._call("secrets", "DELETE", self._secret_path, allow=(404,))

    def restart(self) -> None:
        self._roll(lambda service: None, f"rolling a new revision of {self.config.service}")

    def attach_url(self, credential: Credential, var: str) -> bool:
        return False

    def detach_url(self, credential_name: str, var: str) -> bool:
        return False

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
