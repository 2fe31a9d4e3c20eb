"""`platform: cloudrun` — a Cloud Run service: the URL in Secret Manager, the flag as an env var.

- The role's URL (`ctx.url_var`) is a Secret Manager secret (`url_secret`): created when missing
  (automatic replication), each value a new version, read through `versions/latest:access`. The
  service's container gets the env var `url_var` from that secret at version `latest`.
- The flag (`ctx.flag_name`) and any other plain key are env vars of the service's container.
- Every change is one PATCH of the service template, which makes Cloud Run roll a new revision:
  that is the restart (`config_change_restarts`). A new secret version alone does not reach the
  app, because a revision resolves `latest` when it starts; so setting the URL also rolls a
  revision (the template gets a fresh `runbook-restart` label). The PATCH's long-running operation
  is polled until the revision is ready, and its error (e.g. the service account may not read the
  secret) is surfaced.
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
from providers.gcp_auth import GoogleAuth, google_error
from providers.http import ApiClient, RateBudget, shared_budget
from runbook.durations import format_duration, parse_duration
from runbook.errors import ConfigError, ProviderError
from runbook.secret import Secret

SECRETMANAGER_API = "https://secretmanager.googleapis.com"
CLOUDRUN_API = "https://run.googleapis.com"
RESTART_LABEL = "runbook-restart"

_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_PROJECT = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CloudRunAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="cloudrun app")
    platform: Literal["cloudrun"] = "cloudrun"
    project: str = Field(description="Google Cloud project id (default: the cloudsql database's project)")
    region: str = Field(description="region of the Cloud Run service, e.g. europe-west1")
    service: str = Field(description="Cloud Run service name")
    url_secret: str = Field(description="Secret Manager secret that holds the role's URL")
    container: str | None = Field(default=None, description="container that gets the env vars "
                                  "(default: the one serving traffic)")
    poll_interval: timedelta = Field(default=timedelta(seconds=2), description="between operation polls")
    operation_timeout: timedelta = Field(default=timedelta(minutes=10), description="longest wait for a revision")

    @model_validator(mode="before")
    @classmethod
    def _project_from_database(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, dict) and "project" not in v:
            database = (info.context or {}).get("database") or {}
            if database.get("provider") == "cloudsql" and database.get("project"):
                v = {**v, "project": database["project"]}
        return v

    @field_validator("poll_interval", "operation_timeout", mode="before")
    @classmethod
    def _dur(cls, v: object) -> timedelta:
        return parse_duration(v)

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _PROJECT.match(v):
            raise ValueError(f"project {v!r} is not a Google Cloud project id")
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
            var, default, title = {
                "secrets": ("SECRETMANAGER_API_URL", SECRETMANAGER_API, "Secret Manager API"),
                "run": ("CLOUDRUN_API_URL", CLOUDRUN_API, "Cloud Run Admin API"),
            }[name]
            self._clients[name] = ApiClient(
                title, self.ctx.environ.get(var) or default, headers={"Accept": "application/json"},
                retry=self.ctx.retry, transport=self.ctx.http_transport,   # type: ignore[arg-type]
                budget=self._budget or shared_budget(self.ctx.budget_key or self.auth.account_key),
                describe_error=google_error,
            )
        return self._clients[name]

    def _call(self, api: str, method: str, path: str, **kw: Any):
        return self._client(api).request(method, path, headers=self.auth.headers(), **kw)

    @staticmethod
    def _json(response: Any, what: str) -> dict[str, Any]:
        try:
            body = response.json() if response.content else {}
        except ValueError:
            raise ProviderError(f"{what} answered with something that is not JSON") from None
        return body if isinstance(body, dict) else {}

    # -- Secret Manager --------------------------------------------------------------------

    @property
    def _secret_path(self) -> str:
        return f"/v1/projects/{self.config.project}/secrets/{self.config.url_secret}"

    def _read_secret(self) -> str | None:
        response = self._call("secrets", "GET", f"{self._secret_path}/versions/latest:access", allow=(404,))
        if response.status_code == 404:
            return None
        data = (self._json(response, "Secret Manager API").get("payload") or {}).get("data")
        if data is None:
            return None
        try:
            return base64.b64decode(data).decode()
        except (ValueError, UnicodeDecodeError):
            raise ProviderError(f"Secret Manager: the latest version of {self.config.url_secret} is not UTF-8 text") from None

    def _write_secret(self, value: str) -> None:
        if self._read_secret() == value:
            return   # no new version for an unchanged URL
        self._call("secrets", "POST", f"/v1/projects/{self.config.project}/secrets",
                   params={"secretId": self.config.url_secret},
                   json={"replication": {"automatic": {}}, "labels": {"managed-by": "pg-runbook"}},
                   allow=(409,))   # 409 ALREADY_EXISTS: keep the secret, add a version
        self._call("secrets", "POST", f"{self._secret_path}:addVersion",
                   json={"payload": {"data": base64.b64encode(value.encode()).decode()}})

    # -- Cloud Run service -----------------------------------------------------------------

    @property
    def _service_name(self) -> str:
        c = self.config
        return f"projects/{c.project}/locations/{c.region}/services/{c.service}"

    def _service(self) -> dict[str, Any]:
        return self._json(self._call("run", "GET", f"/v2/{self._service_name}"), "Cloud Run Admin API")

    def _container(self, service: dict[str, Any]) -> dict[str, Any]:
        containers = (service.get("template") or {}).get("containers") or []
        if self.config.container:
            for container in containers:
                if container.get("name") == self.config.container:
                    return container
            names = ", ".join(str(c.get("name") or "?") for c in containers) or "none"
            raise ConfigError(f"Cloud Run service {self.config.service} has no container {self.config.container!r} "
                              f"(app.container); it has: {names}")
        if not containers:
            raise ConfigError(f"Cloud Run service {self.config.service} has no container in its template")
        # with sidecars, the ingress container is the one that declares a port
        return next((c for c in containers if c.get("ports")), containers[0])

    def _wait(self, operation: dict[str, Any], what: str) -> None:
        name = operation.get("name")
        timeout, interval = self.config.operation_timeout.total_seconds(), self.config.poll_interval.total_seconds()
        deadline, polls_left = time.monotonic() + timeout, max(1, int(timeout / max(interval, 1e-3)))
        while not operation.get("done"):
            if not name:
                raise ProviderError(f"Cloud Run: {what} returned no operation to follow")
            polls_left -= 1
            if time.monotonic() >= deadline or polls_left < 0:
                raise ProviderError(f"Cloud Run: {what} is still in progress after "
                                    f"{format_duration(self.config.operation_timeout)}; follow it with "
                                    f"`gcloud run services describe {self.config.service} --region={self.config.region}`")
            self._sleep(interval)
            operation = self._json(self._call("run", "GET", f"/v2/{name}"), "Cloud Run Admin API")
        error = operation.get("error")
        if error:
            raise ProviderError(f"Cloud Run: {what} failed: {error.get('message') or error.get('code') or error}")

    def _roll(self, edit: Callable[[dict[str, Any]], None], what: str) -> None:
        """Read the service, edit its template, PATCH it (= a new revision) and wait until ready.
        The etag makes a concurrent deploy fail with 409 instead of being overwritten; then re-read."""
        for attempt in range(3):
            service = self._service()
            template = service.setdefault("template", {})
            edit(service)
            labels = template.setdefault("labels", {})
            labels[RESTART_LABEL] = f"{int(time.time())}-{secrets.token_hex(3)}"
            template.pop("revision", None)   # a fixed revision name would collide with the last one
            response = self._call("run", "PATCH", f"/v2/{self._service_name}", json=service, allow=(409,))
            if response.status_code == 409 and attempt < 2:
                continue
            if response.status_code == 409:
                raise ProviderError(f"Cloud Run: {what}: the service kept changing under us (409); rerun")
            self._wait(self._json(response, "Cloud Run Admin API"), what)
            return

    @staticmethod
    def _put_env(container: dict[str, Any], entry: dict[str, Any]) -> None:
        env = container.setdefault("env", [])
        for i, existing in enumerate(env):
            if existing.get("name") == entry["name"]:
                env[i] = entry
                return
        env.append(entry)

    def _url_entry(self, var: str) -> dict[str, Any]:
        return {"name": var, "valueSource": {"secretKeyRef": {"secret": self.config.url_secret, "version": "latest"}}}

    # -- AppPlatform -----------------------------------------------------------------------

    def describe(self) -> dict[str, str]:
        out = {"cloudrun": self._service_name,
               "url": f"secret projects/{self.config.project}/secrets/{self.config.url_secret} (version latest)"}
        if self.ctx.flag_name:
            out["flag"] = f"env {self.ctx.flag_name}" + (f" of container {self.config.container}" if self.config.container else "")
        return out

    def get_config(self, keys: list[str]) -> dict[str, str | Digest | None]:
        out: dict[str, str | Digest | None] = {}
        plain = [k for k in keys if k != self.ctx.url_var]
        env: dict[str, Any] = {}
        if plain:
            env = {e.get("name"): e for e in self._container(self._service()).get("env") or []}
        for key in keys:
            if key == self.ctx.url_var:
                out[key] = self._read_secret()
            else:
                entry = env.get(key)
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
        self._container(self._service())   # fail on a wrong container before writing anything
        url = changes.get(self.ctx.url_var) if self.ctx.url_var else None
        if url is not None:
            self._write_secret(url.reveal() if isinstance(url, Secret) else url)

        def edit(service: dict[str, Any]) -> None:
            container = self._container(service)
            for key, value in changes.items():
                if key == self.ctx.url_var:
                    self._put_env(container, self._url_entry(key))
                else:
                    self._put_env(container, {"name": key, "value": str(value)})

        self._roll(edit, f"setting {', '.join(changes)} on {self.config.service}")

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
        self._roll(edit, f"removing {', '.join(keys)} from {self.config.service}")
        if self.ctx.url_var in keys:
            self._call("secrets", "DELETE", self._secret_path, allow=(404,))

    def _secret_ref(self) -> str:
        return f"projects/{self.config.project}/secrets/{self.config.url_secret}"

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
