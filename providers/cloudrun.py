"""`platform: cloudrun` — a Cloud Run service: the URL in Secret Manager, the flag as an env var.

- The role's URL (`ctx.url_var`) is a Secret Manager secret (`url_secret`): created when missing
  with `replication` (automatic, or user-managed locations; `kms_key` / per-replica keys for
  CMEK), each new value a new version sent with its CRC32C. The service's container gets the env
  var `url_var` from that secret *pinned to the version written*: env vars are resolved when an
  instance starts, so with `latest` a version added later would reach some instances and not others
  (Google recommends pinning), and a version whose PATCH never landed would pass for the app's URL.
  A reference by version alias stays an alias: the alias is moved to the version written.
- Regional secrets (`projects.locations.secrets` in the v1 document, served from
  secretmanager.LOCATION.rep.googleapis.com) are not offered: Cloud Run's SecretKeySelector
  documents only `{secret}` and `projects/{project}/secrets/{secret}`, so a revision cannot read one.
- The runtime service account (the template's, else the project's default compute account) needs
  roles/secretmanager.secretAccessor on the secret: checked in the secret's IAM policy and granted
  there (setIamPolicy with the policy's etag), or, when the tool may not, refused with the gcloud
  command, before any version is written. `grant_access: false` leaves the policy alone (a
  project-wide grant, which the secret's policy does not show).
- The flag (`ctx.flag_name`) and any other plain key are env vars of the service's container.
- Every change is one PATCH of the service's template (`updateMask=template`, the etag read, never
  an output-only field nor `client`/`clientVersion`, which would attribute the revision to another
  tool) with `forceNewRevision`, so that Cloud Run rolls a new revision: that is the restart
  (`config_change_restarts`). The PATCH's long-running operation is polled until the rollout
  ends, each state reported through `OpenContext.progress`. Its error (e.g. the service account
  may not read the secret), or a finished rollout whose newest revision is not ready or does not
  take all the traffic, is one ProviderError line.
- Once the revision with a new URL version serves all the traffic, the older enabled versions of
  the secret are disabled (`disable_old_versions`): they hold passwords the role no longer uses.
- Reading config looks at what serves, not at the template. The template counts only once its
  rollout is over: `reconciling` false, `terminalCondition` CONDITION_SUCCEEDED, the latest created
  revision is the latest ready one and `trafficStatuses` send all traffic to it. Otherwise (a run
  that lost a PATCH's answer, a rollout still going, a revision that failed, traffic pinned
  elsewhere) the revisions that take traffic are read, so a value that is only in the template reads
  as absent and the engine writes it again.
- The URL counts as set only when the serving env entry reads `url_secret` (by id, or as
  `projects/<id or number>/secrets/<id>`) and that version (number, `latest` or alias) holds a
  value whose CRC32C matches. A URL over /cloudsql/<connection name> is of use only where the
  serving revision mounts that instance's Cloud SQL volume at /cloudsql: `url_problem` says so
  (the engine then treats the URL as not working), and set_config refuses, before any write, a
  template that does not.
- `restart()` rolls a revision with nothing else changed.

Base URLs: SECRETMANAGER_API_URL (default https://secretmanager.googleapis.com) and
CLOUDRUN_API_URL (default https://run.googleapis.com); token: see providers.gcp_auth.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from providers.base import Credential, Digest, IntentApp, OpenContext, Progress, check_url_places
from providers.gcp import Duration, ProjectId, api_client, json_body, wait_operation
from providers.gcp_auth import GoogleAuth, google_error
from providers.http import ApiClient, RateBudget
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret, redact

SECRETMANAGER_API = "https://secretmanager.googleapis.com"
CLOUDRUN_API = "https://run.googleapis.com"
LATEST_TRAFFIC = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
ACCESSOR = "roles/secretmanager.secretAccessor"
CLOUDSQL_MOUNT = "/cloudsql"

_SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
# a version: its number, `latest`, or an alias (a letter, then letters, digits, - and _; at most 63)
_SECRET_VERSION = re.compile(r"^(?:latest|[1-9][0-9]{0,18}|[A-Za-z][A-Za-z0-9_-]{0,62})$")
_SECRET_REF = re.compile(r"^projects/(?P<project>[^/]+)/secrets/(?P<secret>[^/]+)$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KMS_KEY = re.compile(r"^projects/[^/]+/locations/(?P<location>[^/]+)/keyRings/[^/]+/cryptoKeys/[^/]+$")


def _short(name: object) -> str:
    """`rev-00002-abc` from `projects/…/services/svc/revisions/rev-00002-abc` (or from itself)."""
    return str(name or "").rsplit("/", 1)[-1]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of `data`, as Secret Manager's dataCrc32c carries it."""
    try:
        import google_crc32c
    except ImportError:
        raise ConfigError("google-crc32c is not installed (pip install 'pg-runbook[gcp]'); it checks "
                          "that Secret Manager's payloads arrive intact") from None
    return int(google_crc32c.value(data))


def _kms_key(value: str | None) -> str | None:
    if value is not None and not _KMS_KEY.match(value):
        raise ValueError(f"{value!r} is not a Cloud KMS key name "
                         "(projects/P/locations/L/keyRings/R/cryptoKeys/K)")
    return value


class Replica(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    location: str = Field(description="a Secret Manager location, e.g. europe-west1", examples=["europe-west1"])
    kms_key: str | None = Field(default=None, description="Cloud KMS key in the same location (CMEK)",
                                examples=["projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k"])

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, v: Any) -> Any:
        return {"location": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _key_location(self) -> "Replica":
        if self.kms_key is not None:
            match = _KMS_KEY.match(self.kms_key)
            if not match:
                _kms_key(self.kms_key)
            elif match["location"] != self.location:
                raise ValueError(f"kms_key of replica {self.location} is in {match['location']}; Secret Manager "
                                 "needs the key in the replica's own location")
        return self


class UserManaged(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    user_managed: list[Replica] = Field(min_length=1, description="the locations the secret may live in",
                                        examples=[["europe-west1", {"location": "europe-west4"}]])


class CloudRunAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="cloudrun app")
    platform: Literal["cloudrun"] = "cloudrun"
    project: ProjectId = Field(description="Google Cloud project id (default: the cloudsql database's project)", examples=['raptor-prod-123'])
    region: str = Field(description="region of the Cloud Run service, e.g. europe-west1", examples=['europe-west1'])
    service: str = Field(description="Cloud Run service name", examples=['web'])
    url_secret: str | None = Field(default=None, description="Secret Manager secret that holds the role's URL (one "
                                   "role; with several, url_secrets)", examples=['raptor-database-url'])
    url_secrets: dict[str, str] | None = Field(
        default=None, description="several roles: each role's url_var → its own Secret Manager secret (instead of "
        "url_secret), each an env var of the serving revision",
        examples=[{"APP_DATABASE_URL": "raptor-app-url", "READONLY_DATABASE_URL": "raptor-readonly-url"}])
    container: str | None = Field(default=None, description="container that gets the env vars "
                                  "(default: the one serving traffic)", examples=["app"])
    replication: Literal["automatic"] | UserManaged = Field(
        default="automatic", description="replication of a secret the tool creates: automatic, or "
        "{user_managed: [location, or {location, kms_key}]} where an organisation policy restricts locations")
    kms_key: str | None = Field(default=None, description="Cloud KMS key (CMEK) of an automatically replicated "
                                "secret the tool creates",
                                examples=["projects/p/locations/global/keyRings/r/cryptoKeys/k"])
    grant_access: bool = Field(default=True, description="check that the service's runtime account holds "
                               "roles/secretmanager.secretAccessor on the secret and grant it there when it does "
                               "not (false: it is granted project-wide; the tool leaves the secret's policy alone)")
    disable_old_versions: bool = Field(default=True, description="disable the secret's older versions once "
                                       "the revision with the new one serves all traffic")
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

    @model_validator(mode="after")
    def _cmek(self) -> "CloudRunAppConfig":
        _kms_key(self.kms_key)
        if self.kms_key and self.replication != "automatic":
            raise ValueError("kms_key is for automatic replication; with user_managed give each replica its "
                             "own kms_key (a key in that replica's location)")
        return self

    @field_validator("region", "service")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} is not a Cloud Run region or service name (lower-case letters, digits, -)")
        return v

    @model_validator(mode="after")
    def _secrets(self) -> "CloudRunAppConfig":
        def check(what: str, v: str) -> None:
            if not _SECRET_ID.match(v):
                raise ValueError(f"{what} {v!r} is not a Secret Manager secret id (letters, digits, _ and -)")

        check_url_places("url_secret", self.url_secret, "url_secrets", self.url_secrets, check)
        return self

    def secret_for(self, var: str) -> str | None:
        """The secret that holds `var`'s URL (None: url_secrets has no entry for it)."""
        return self.url_secret if self.url_secrets is None else self.url_secrets.get(var)

    def replication_body(self) -> dict[str, Any]:
        """Secret.replication as the v1 document spells it."""
        if self.replication == "automatic":
            auto: dict[str, Any] = {"customerManagedEncryption": {"kmsKeyName": self.kms_key}} if self.kms_key else {}
            return {"automatic": auto}
        return {"userManaged": {"replicas": [
            {"location": r.location, **({"customerManagedEncryption": {"kmsKeyName": r.kms_key}} if r.kms_key else {})}
            for r in self.replication.user_managed]}}

    def open(self, ctx: OpenContext) -> "CloudRunApp":
        return CloudRunApp(self, ctx)


def _socket_instance(url: str) -> str | None:
    """The Cloud SQL connection name a URL reaches over /cloudsql/<name>, else None."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        host = str(conninfo_to_dict(url).get("host") or "")
    except Exception:
        return None
    prefix = CLOUDSQL_MOUNT + "/"
    if not host.startswith(prefix):
        return None
    return host[len(prefix):].rstrip("/") or None


class CloudRunApp(IntentApp):
    key = "cloudrun"
    other_keys = True       # any other key is a plain env var of the container
    config_change_restarts = True

    def __init__(self, config: CloudRunAppConfig, ctx: OpenContext, *,
                 sleep: Callable[[float], None] = time.sleep, budget: RateBudget | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.auth = GoogleAuth(ctx.environ)
        self._sleep = sleep          # between operation polls (tests pass a recorder)
        self._budget = budget        # default: the budget shared by every client of this identity
        self._clients: dict[str, ApiClient] = {}
        self._project_number: str | None = None
        # the selected role's secret (the Context reopens the app for each role with its url_var)
        self.url_secret = config.secret_for(ctx.url_var) or ""

    def several_urls(self, url_vars: list[str]) -> str | None:
        """Several roles need one secret each: url_secrets, with an entry per role's url_var."""
        if self.config.url_secrets is None:
            return ("the cloudrun platform keeps one URL per environment (app.url_secret); give each role's url_var "
                    "its own secret in app.url_secrets")
        missing = [var for var in url_vars if var not in self.config.url_secrets]
        if missing:
            return f"app.url_secrets has no entry for {', '.join(missing)}; each role's URL needs its own secret"
        return None

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

    def _get(self, api: str, path: str, **kw: Any) -> dict[str, Any]:
        return json_body(self._call(api, "GET", path, **kw), self._client(api).name)

    # -- Secret Manager --------------------------------------------------------------------

    @property
    def _secret_path(self) -> str:
        return f"/v1/projects/{self.config.project}/secrets/{self.url_secret}"

    def _secret_ref(self) -> str:
        return f"projects/{self.config.project}/secrets/{self.url_secret}"

    def _learn_number(self, name: object) -> None:
        """Secret Manager names resources by project number: remember ours."""
        match = re.match(r"^projects/(\d+)/", str(name or ""))
        if match:
            self._project_number = match.group(1)

    def _secret(self) -> dict[str, Any] | None:
        """secrets.get; None when there is no such secret."""
        response = self._call("secrets", "GET", self._secret_path, allow=(404,))
        if response.status_code == 404:
            return None
        body = json_body(response, "Secret Manager API")
        self._learn_number(body.get("name"))
        return body

    def project_number(self) -> str | None:
        if self._project_number is None:
            self._secret()
        return self._project_number

    def _read_secret(self, version: str = "latest") -> tuple[str | None, str | None]:
        """(value, version number) of one version of the URL secret; (None, None) when there is no
        such version (no secret, no version or alias yet, or that version disabled or destroyed)."""
        response = self._call("secrets", "GET", f"{self._secret_path}/versions/{version}:access", allow=(400, 404))
        body = json_body(response, "Secret Manager API")
        if response.status_code == 400:
            # FAILED_PRECONDITION: the version is disabled or destroyed; any other 400 is a real error
            if (body.get("error") or {}).get("status") != "FAILED_PRECONDITION":
                raise ProviderError(f"Secret Manager API: reading {self.url_secret} (version {version}) "
                                    f"failed: {redact(google_error(response))}")
            return None, None
        payload = body.get("payload") or {} if response.status_code == 200 else {}
        data = payload.get("data")
        if data is None:
            return None, None
        self._learn_number(body.get("name"))
        try:
            raw = base64.b64decode(data)
        except ValueError:
            raise ProviderError(f"Secret Manager: version {version} of {self.url_secret} is not base64") from None
        checksum = payload.get("dataCrc32c")
        if checksum is not None and str(crc32c(raw)) != str(checksum):
            raise ProviderError(f"Secret Manager: version {version} of {self.url_secret} arrived damaged "
                                "(its CRC32C does not match dataCrc32c); rerun")
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            raise ProviderError(f"Secret Manager: version {version} of {self.url_secret} is not UTF-8 text") from None
        return value, _short(body.get("name")) or None

    def _ensure_secret(self) -> dict[str, Any]:
        """The URL secret, created (with the configured replication) when missing. An existing one
        whose replication differs from an explicitly configured one is refused: it is immutable."""
        secret = self._secret()
        if secret is None:
            response = self._call("secrets", "POST", f"/v1/projects/{self.config.project}/secrets",
                                  params={"secretId": self.url_secret},
                                  json={"replication": self.config.replication_body(),
                                        "labels": {"managed-by": "pg-runbook"}},
                                  allow=(409,))   # 409 ALREADY_EXISTS: a concurrent run made it; keep it
            secret = json_body(response, "Secret Manager API") if response.status_code != 409 else self._secret()
            self._learn_number((secret or {}).get("name"))
            return secret or {}
        configured = self.config.model_fields_set & {"replication", "kms_key"}
        if configured and secret.get("replication") != self.config.replication_body():
            raise Refused(f"Secret Manager secret {self.url_secret} exists with another replication "
                          f"({_one_line(secret.get('replication'))}) than app.replication asks for; replication "
                          "cannot change: delete the secret, or make app.replication match it")
        return secret

    def _add_version(self, value: str) -> str:
        raw = value.encode()
        response = self._call("secrets", "POST", f"{self._secret_path}:addVersion",
                              json={"payload": {"data": base64.b64encode(raw).decode(),
                                                "dataCrc32c": str(crc32c(raw))}})
        version = _short(json_body(response, "Secret Manager API").get("name"))
        if not version.isdigit():
            raise ProviderError(f"Secret Manager API: adding a version to {self.url_secret} "
                                "answered without the version's name")
        return version

    def _move_alias(self, alias: str, version: str) -> None:
        secret = self._secret() or {}       # read now: its etag guards the aliases of this moment
        aliases = {**(secret.get("versionAliases") or {}), alias: version}
        body: dict[str, Any] = {"versionAliases": aliases}
        if secret.get("etag"):
            body["etag"] = secret["etag"]
        self._call("secrets", "PATCH", self._secret_path, params={"updateMask": "versionAliases"}, json=body)

    def _disable_older(self, keep: str) -> list[str]:
        """Disable every enabled version of the URL secret but `keep`; the numbers disabled."""
        enabled, token = [], None
        while True:   # every page first: disabling while paging a filtered list would shift its pages
            params = {"filter": "state:ENABLED", "pageSize": "100", **({"pageToken": token} if token else {})}
            page = self._get("secrets", f"{self._secret_path}/versions", params=params)
            enabled += [_short(v.get("name")) for v in page.get("versions") or [] if v.get("state") == "ENABLED"]
            token = page.get("nextPageToken")
            if not token:
                break
        disabled = [n for n in enabled if n.isdigit() and n != keep]
        for number in disabled:
            self._call("secrets", "POST", f"{self._secret_path}/versions/{number}:disable", json={})
        return disabled

    # -- access for the runtime ------------------------------------------------------------

    def runtime_account(self, service: dict[str, Any]) -> str:
        account = (service.get("template") or {}).get("serviceAccount")
        if account:
            return str(account)
        number = self.project_number()
        if not number:
            raise ProviderError(f"Cloud Run service {self.config.service} names no service account and the "
                                "project number (for the default compute account) is unknown")
        return f"{number}-compute@developer.gserviceaccount.com"

    def _ensure_access(self, service: dict[str, Any]) -> None:
        """The runtime account may read the URL secret (a binding on the secret), else it is granted
        there, else refused with the command; before any version is written."""
        c = self.config
        if not c.grant_access:
            return    # granted elsewhere (project-wide): a missing grant surfaces as the rollout's error
        member = f"serviceAccount:{self.runtime_account(service)}"
        command = (f"gcloud secrets add-iam-policy-binding {self.url_secret} --project={c.project} "
                   f"--member={member} --role={ACCESSOR}")
        for _ in range(3):
            policy = self._get("secrets", f"{self._secret_path}:getIamPolicy",
                               params={"options.requestedPolicyVersion": "3"})
            bindings = list(policy.get("bindings") or [])
            if any(b.get("role") == ACCESSOR and member in (b.get("members") or []) and not b.get("condition")
                   for b in bindings):
                return
            plain = next((b for b in bindings if b.get("role") == ACCESSOR and not b.get("condition")), None)
            if plain is None:
                bindings.append({"role": ACCESSOR, "members": [member]})
            else:
                plain["members"] = [*plain.get("members", []), member]
            new: dict[str, Any] = {"bindings": bindings, "version": policy.get("version") or 1}
            if policy.get("etag"):
                new["etag"] = policy["etag"]
            response = self._call("secrets", "POST", f"{self._secret_path}:setIamPolicy",
                                  json={"policy": new}, allow=(403, 409))
            if response.status_code == 403:
                raise Refused(f"{member.split(':', 1)[1]} (the runtime account of {c.service}) may not read secret "
                              f"{self.url_secret}, and the tool may not grant it ({redact(google_error(response))}); "
                              f"run `{command}` and rerun (or, if it holds the role project-wide, set "
                              "app.grant_access: false)")
            if response.status_code != 409:    # 409 ABORTED: the policy changed since read; read it again
                return
        raise ProviderError(f"Secret Manager: the IAM policy of {self.url_secret} kept changing under us; rerun")

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

    def _mounts_cloudsql(self, source: dict[str, Any], instance: str) -> bool:
        """`source` (a template or a revision) mounts the Cloud SQL volume of `instance` at /cloudsql
        in the container that gets the env."""
        volumes = {v.get("name") for v in source.get("volumes") or []
                   if instance in ((v.get("cloudSqlInstance") or {}).get("instances") or [])}
        container = self._pick(source.get("containers") or []) or {}
        # the document: for Cloud SQL volumes the mount path "can be left empty, or must otherwise be /cloudsql"
        return any(m.get("name") in volumes and (m.get("mountPath") or CLOUDSQL_MOUNT) == CLOUDSQL_MOUNT
                   for m in container.get("volumeMounts") or [])

    def _mount_fix(self, instance: str) -> str:
        c = self.config
        return (f"Cloud Run service {c.service} does not mount Cloud SQL instance {instance} at {CLOUDSQL_MOUNT} "
                f"in its container{' ' + c.container if c.container else ''}, so the app cannot reach the socket "
                f"its URL names; add it with `gcloud run services update {c.service} --region={c.region} "
                f"--add-cloudsql-instances={instance}` and rerun")

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

    def _serving(self, service: dict[str, Any]) -> list[dict[str, Any]]:
        """What every revision that takes traffic runs: the template once its rollout is over (no
        further call), else each serving revision (one GET each)."""
        if self._template_serves(service):
            return [service.get("template") or {}]
        return [self._get("run", f"/v2/{self._service_name}/revisions/{name}")
                for name in sorted(self._traffic(service))]

    def _env(self, source: dict[str, Any]) -> dict[str, dict[str, Any]]:
        container = self._pick(source.get("containers") or []) or {}
        return {e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)}

    def _wait(self, operation: dict[str, Any], what: str) -> None:
        c = self.config

        def state(op: dict[str, Any]) -> str:
            if op.get("done"):
                return "failed" if op.get("error") else "done"
            condition = ((op.get("metadata") or {}).get("terminalCondition") or {}).get("state")
            return str(condition or "rolling out").removeprefix("CONDITION_").lower()

        operation = wait_operation(
            operation, api="Cloud Run", what=what, poll=lambda name: self._get("run", f"/v2/{name}"),
            done=lambda op: bool(op.get("done")), interval=c.poll_interval, timeout=c.operation_timeout,
            sleep=self._sleep, follow=f"gcloud run services describe {c.service} --region={c.region}", state=state,
            report=lambda st, left, done: self.ctx.progress(Progress(f"cloud run: {what}", st, left, done)))
        error = operation.get("error")
        if error:
            detail = (error.get("message") or error.get("code")) if isinstance(error, dict) else None
            raise ProviderError(f"Cloud Run: {what} failed: {_one_line(detail or error)}")
        served = operation.get("response")
        if isinstance(served, dict) and served.get("latestCreatedRevision"):
            self._check_rollout(served, what)
        else:
            # no service in the answer: what serves must be read, never assumed
            self._check_rollout(self._service(), what)

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
        """Edit the service's template (as read, or read now), PATCH only the template (= a new
        revision) and wait until it serves. The etag makes a concurrent deploy fail with 409
        instead of being overwritten; then re-read and edit again."""
        for attempt in range(3):
            if service is None:
                service = self._service()
            template = service.setdefault("template", {})
            edit(service)
            template.pop("revision", None)   # a fixed revision name would collide with the last one
            body: dict[str, Any] = {"template": template}
            if service.get("etag"):
                body["etag"] = service["etag"]
            response = self._call("run", "PATCH", f"/v2/{self._service_name}", json=body, allow=(409,),
                                  params={"updateMask": "template", "forceNewRevision": "true"})
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

    def _ref(self, entry: dict[str, Any] | None) -> str | None:
        """The version the env entry reads from the URL secret; None when it reads anything else.
        A bare id is a secret of the service's project; `projects/<id or number>/secrets/<id>` is
        ours only when the project is ours (its number as Secret Manager names it)."""
        ref = ((entry or {}).get("valueSource") or {}).get("secretKeyRef") or {}
        secret = str(ref.get("secret") or "")
        if secret != self.url_secret:
            match = _SECRET_REF.match(secret)
            if not match or match["secret"] != self.url_secret:
                return None
            if match["project"] != self.config.project and match["project"] != self.project_number():
                return None
        version = str(ref.get("version") or "latest")
        return version if _SECRET_VERSION.match(version) else None

    def _url_value(self, entry: dict[str, Any] | None) -> str | None:
        """The URL the serving env entry reads, or None when it does not read the URL secret."""
        version = self._ref(entry)
        return None if version is None else self._read_secret(version)[0]

    # -- AppPlatform -----------------------------------------------------------------------

    def describe(self) -> dict[str, str]:
        out = {"cloudrun": self._service_name,
               "url": f"secret {self._secret_ref()} (the version the service pins)"}
        if self.ctx.flag_name:
            out["flag"] = f"env {self.ctx.flag_name}" + (f" of container {self.config.container}" if self.config.container else "")
        return out

    def places(self) -> tuple[str, str]:
        return (f"(secret {self.url_secret})", "(an env var)")

    def read(self, *, url: bool, flag: bool, others: list[str]) -> dict[str, str | Digest | None]:
        """What the revisions taking traffic hand the app: the URL secret's version their env
        entry pins, and plain env values."""
        sources = self._serving(self._service())
        envs = [self._env(source) for source in sources]

        def serving(name: str) -> dict[str, Any] | None:
            entries = [env.get(name) for env in envs]
            # in place only when every revision taking traffic holds it the same way
            return entries[0] if entries and all(e == entries[0] for e in entries) else None

        def plain(entry: dict[str, Any] | None) -> str | None:
            return entry.get("value") if entry and "value" in entry else None

        out: dict[str, str | Digest | None] = {}
        if url:
            out["url"] = self._url_value(serving(self.ctx.url_var))
        if flag:
            out["flag"] = plain(serving(self.ctx.flag_name))
        for name in others:
            out[name] = plain(serving(name))
        return out

    def url_problem(self, url: str) -> str | None:
        """Why the app could not use `url` although its login works, else None: a /cloudsql socket
        that a revision taking traffic does not mount."""
        instance = _socket_instance(url)
        if instance is None:
            return None
        if all(self._mounts_cloudsql(source, instance) for source in self._serving(self._service())):
            return None
        return self._mount_fix(instance)

    def _check_keys(self, keys: list[str]) -> None:
        for key in keys:
            if not _ENV_KEY.match(key):
                raise ConfigError(f"{key!r} is not a valid environment variable name")

    def write(self, *, url: Secret | None = None, flag: str | None = None,
              others: Mapping[str, str | Secret] | None = None) -> None:
        plain = {**({self.ctx.flag_name: flag} if flag is not None else {}), **(others or {})}
        names = ([self.ctx.url_var] if url is not None else []) + list(plain)
        self._check_keys(names)
        for key, value in plain.items():
            if isinstance(value, Secret):
                raise ConfigError(f"{key} holds a secret; on Cloud Run only {self.ctx.url_var or 'the URL'} "
                                  "is stored in Secret Manager, other keys are plain env vars")
        service = self._service()
        container = self._container(service)   # fail on a wrong container before writing anything
        entries, written = [], None
        if url is not None:
            instance = _socket_instance(url.reveal())
            if instance and not self._mounts_cloudsql(service.get("template") or {}, instance):
                raise ConfigError(self._mount_fix(instance))
            written, entry = self._write_url(service, container, self.ctx.url_var, url.reveal())
            entries.append(entry)
        entries.extend({"name": key, "value": str(value)} for key, value in plain.items())

        def edit(service: dict[str, Any]) -> None:
            container = self._container(service)
            for entry in entries:
                self._put_env(container, entry)

        self._roll(edit, f"setting {', '.join(names)} on {self.config.service}", service)
        if written and written != "1" and self.config.disable_old_versions:   # version 1 has no elders
            # the revision reading `written` serves all the traffic now (_check_rollout): the older
            # versions hold passwords nothing serving reads
            self._disable_older(written)

    def _write_url(self, service: dict[str, Any], container: dict[str, Any], key: str,
                   url: str) -> tuple[str, dict[str, Any]]:
        """Make `url` a version of the URL secret the runtime may read; (its number, the env entry)."""
        secret = self._ensure_secret()
        self._ensure_access(service)
        current, number = self._read_secret()
        if current != url or not number:
            number = self._add_version(url)    # a rerun adds no version for an unchanged URL
        pinned = self._ref(self._env({"containers": [container]}).get(key))
        if pinned and not pinned.isdigit() and pinned != "latest":
            # the service reads an alias: keep reading it, and move it to the version written
            if (secret.get("versionAliases") or {}).get(pinned) != number:
                self._move_alias(pinned, number)
            version = pinned
        else:
            version = number
        ref = {"secret": self.url_secret, "version": version}
        return number, {"name": key, "valueSource": {"secretKeyRef": ref}}

    def remove(self, *, url: bool = False, flag: bool = False, others: list[str] | None = None) -> None:
        keys = ([self.ctx.url_var] if url else []) + ([self.ctx.flag_name] if flag else []) + list(others or [])
        self._check_keys(keys)
        service = self._service()
        if url:
            for volume in (service.get("template") or {}).get("volumes") or []:
                if (volume.get("secret") or {}).get("secret") in (self.url_secret, self._secret_ref()):
                    raise ConfigError(f"Cloud Run service {self.config.service} mounts secret {self.url_secret} "
                                      f"as volume {volume.get('name')}; remove that mount, then rerun")

        def edit(service: dict[str, Any]) -> None:
            container = self._container(service)
            container["env"] = [e for e in container.get("env") or [] if e.get("name") not in keys]

        # the revision must stop reading the secret before the secret goes
        self._roll(edit, f"removing {', '.join(keys)} from {self.config.service}", service)
        if url:
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
