"""`platform: ecs` — an app on Amazon ECS, configured from Secrets Manager / SSM.

The role's URL lives in a Secrets Manager secret in the standard RDS JSON shape (engine, host,
username, password, dbname, port; the task definition maps its keys into the container) or in
an SSM SecureString; the feature flag is an SSM String parameter. Tasks read them at start, so a
change takes effect through a new deployment (`update_service(forceNewDeployment=True)`), which
restart() waits out.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import timedelta
from typing import Any, Callable, Literal, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from providers.aws import Aws, AwsError, aws_region
from providers.base import Credential, OpenContext
from runbook.durations import format_duration, parse_duration
from runbook.errors import ConfigError, ProviderError
from runbook.secret import Secret, reveal

log = logging.getLogger(__name__)

_SSM_NAME = re.compile(r"^[A-Za-z0-9_.\-/]{1,1011}$")
_SECRET_NAME = re.compile(r"^(arn:[^\s]+|[A-Za-z0-9/_+=.@-]{1,512})$")
# the standard RDS secret keys; other keys of a secret are libpq parameters from the URL's query
_STANDARD = ("engine", "host", "username", "password", "dbname", "port")
# keys AWS writes into RDS secrets that are not connection parameters
_NOT_URL_PARAMS = {"masterarn", "dbInstanceIdentifier", "dbClusterIdentifier", "proxyHost"}


class WaitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout: timedelta = Field(default=timedelta(minutes=10), description="how long restart waits for a stable deployment")
    poll: timedelta = Field(default=timedelta(seconds=15), description="interval between describe_services calls")

    @field_validator("timeout", "poll", mode="before")
    @classmethod
    def _dur(cls, v: object) -> timedelta:
        return parse_duration(v)

    @model_validator(mode="after")
    def _bounds(self) -> "WaitSpec":
        if self.poll <= timedelta(0) or self.timeout <= timedelta(0):
            raise ValueError("wait.timeout and wait.poll must be positive")
        if self.poll > self.timeout:
            raise ValueError("wait.poll is longer than wait.timeout")
        return self


class EcsAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="ecs app")
    platform: Literal["ecs"] = "ecs"
    cluster: str = Field(description="ECS cluster name or ARN", examples=['raptor'])
    service: str = Field(description="ECS service name or ARN", examples=['web'])
    region: str | None = Field(default=None, description="AWS region (default: the rds database's, else AWS_REGION)", examples=['eu-west-1'])
    profile: str | None = Field(default=None, description="AWS profile (default: the rds database's, else boto3's chain)", examples=['prod-admin'])
    url_store: Literal["secretsmanager", "ssm"] = Field(default="secretsmanager", description="where the role's URL lives")
    url_name: str = Field(description="Secrets Manager secret name/ARN, or SSM parameter name, for the URL", examples=['raptor/prod/database-url'])
    flag_parameter: str = Field(description="SSM String parameter holding the feature flag", examples=['/raptor/prod/role-separation'])
    kms_key: str | None = Field(default=None, description="KMS key for the secret / SecureString (default: the AWS-managed key)", examples=['alias/raptor'])
    recovery_window_days: int = Field(default=7, ge=7, le=30, description="Secrets Manager recovery window on retire")
    wait: WaitSpec = Field(default_factory=WaitSpec, description="how long and how often to follow a deployment")

    @model_validator(mode="before")
    @classmethod
    def _from_database(cls, data: Any, info: ValidationInfo) -> Any:
        # an RDS database in the same environment already names the account's region/profile
        database = (info.context or {}).get("database") if info.context else None
        if isinstance(data, dict) and isinstance(database, dict) and database.get("provider") == "rds":
            data = dict(data)
            for key in ("region", "profile"):
                if data.get(key) is None and database.get(key):
                    data[key] = database[key]
        return data

    @field_validator("flag_parameter")
    @classmethod
    def _flag(cls, v: str) -> str:
        return _check_parameter_name(v, "flag_parameter")

    @model_validator(mode="after")
    def _url_name(self) -> "EcsAppConfig":
        if self.url_store == "ssm":
            _check_parameter_name(self.url_name, "url_name")
        elif not _SECRET_NAME.match(self.url_name):
            raise ValueError(f"url_name {self.url_name!r} is not a Secrets Manager secret name or ARN")
        return self

    def open(self, ctx: OpenContext) -> "EcsApp":
        return EcsApp(self, ctx)


def _check_parameter_name(v: str, what: str) -> str:
    if v.startswith("arn:"):
        return v
    if not _SSM_NAME.match(v):
        raise ValueError(f"{what} {v!r} is not an SSM parameter name (letters, digits, _ . - /)")
    if "/" in v and not v.startswith("/"):
        raise ValueError(f"{what} {v!r}: a hierarchical SSM name starts with /")
    if v.lstrip("/").lower().startswith(("aws", "ssm")):
        raise ValueError(f"{what} {v!r}: SSM names cannot begin with aws or ssm")
    return v


def url_to_secret(url: str) -> dict[str, Any]:
    """A postgresql:// URL as the standard RDS secret JSON (engine, host, username, password,
    dbname, port), plus its query parameters (sslmode, …). Errors never quote the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError("the URL to store is not a postgresql:// URL")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or not userinfo:
        raise ConfigError("the URL to store names no user")
    if "," in hostport:
        raise ConfigError("the URL to store names several hosts; an RDS secret holds one")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise ConfigError("the URL to store names no host")
    user, has_password, password = userinfo.partition(":")
    body: dict[str, Any] = {"engine": "postgres", "host": host, "username": unquote(user)}
    if has_password:
        body["password"] = unquote(password)
    body["dbname"] = unquote(parts.path.lstrip("/")) or body["username"]
    try:
        body["port"] = int(port or 5432)
    except ValueError:
        raise ConfigError("the URL to store has a non-numeric port") from None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in body:
            body[key] = value
    return body


def secret_to_url(body: Mapping[str, Any]) -> str:
    """The inverse of url_to_secret, quoting as providers.base.Credential.url() does."""
    user = quote(str(body["username"]), safe="")
    password = body.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = str(body["host"])
    host = f"[{host}]" if ":" in host else host
    query = {k: str(v) for k, v in body.items() if k not in _STANDARD and k not in _NOT_URL_PARAMS}
    tail = f"?{urlencode(query)}" if query else ""
    dbname = quote(str(body.get("dbname") or body["username"]), safe="")
    return f"postgresql://{auth}@{host}:{int(body.get('port') or 5432)}/{dbname}{tail}"


class EcsApp:
    key = "ecs"
    #: config lives in Secrets Manager / SSM; tasks only see it after a new deployment
    config_change_restarts = False

    def __init__(self, config: EcsAppConfig, ctx: OpenContext, *, session: Any = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.ctx = ctx
        self.aws = Aws(ctx, region=aws_region(config.region, ctx.environ, "app.region"),
                       profile=config.profile, session=session)
        self._sleep = sleep
        self._clock = clock

    def describe(self) -> dict[str, str]:
        c = self.config
        return {
            "ecs": f"{c.cluster}/{c.service} ({self.aws.region})",
            "url": f"{c.url_store}:{c.url_name}",
            "flag": f"ssm:{c.flag_parameter}",
        }

    # -- config -----------------------------------------------------------------------------

    def _kind(self, key: str) -> str:
        if key and key == self.ctx.url_var:
            return "url"
        if key and key == self.ctx.flag_name:
            return "flag"
        raise ConfigError(
            f"the ecs platform keeps only {self.ctx.url_var or 'the URL'} ({self.config.url_store} "
            f"{self.config.url_name}) and {self.ctx.flag_name or 'the flag'} (SSM {self.config.flag_parameter}); "
            f"{key!r} has no place")

    def get_config(self, keys: list[str]) -> dict[str, str | None]:
        kinds = {key: self._kind(key) for key in keys}
        return {key: self._get_url() if kind == "url" else self._get_parameter(self.config.flag_parameter, False)
                for key, kind in kinds.items()}

    def set_config(self, changes: Mapping[str, str | Secret]) -> None:
        kinds = {key: self._kind(key) for key in changes}   # refuse unknown keys before any write
        for key, kind in kinds.items():
            if kind == "url":
                self._put_url(changes[key])
            else:
                self._put_flag(reveal(changes[key]))

    def unset_config(self, keys: list[str]) -> None:
        kinds = {key: self._kind(key) for key in keys}
        for kind in kinds.values():
            if kind == "url" and self.config.url_store == "secretsmanager":
                self._delete_secret()
            else:
                self._delete_parameter(self.config.url_name if kind == "url" else self.config.flag_parameter)

    # Secrets Manager

    def _secret_state(self) -> str:
        """'absent', 'deleted' (scheduled for deletion, restorable) or 'present'."""
        try:
            out = self.aws.call("secretsmanager", "describe_secret", SecretId=self.config.url_name)
        except AwsError as exc:
            if exc.code == "ResourceNotFoundException":
                return "absent"
            raise
        return "deleted" if out.get("DeletedDate") else "present"

    def _get_url(self) -> str | None:
        if self.config.url_store == "ssm":
            return self._get_parameter(self.config.url_name, True)
        if self._secret_state() != "present":
            return None
        out = self.aws.call("secretsmanager", "get_secret_value", SecretId=self.config.url_name)
        try:
            url = secret_to_url(json.loads(out.get("SecretString") or ""))
        except (ValueError, KeyError, TypeError):
            raise ProviderError(f"secret {self.config.url_name} is not RDS secret JSON (host, username, …)") from None
        return Secret(url).reveal()   # registered with the redactor before it leaves

    def _put_url(self, value: str | Secret) -> None:
        url = Secret(value)
        c = self.config
        if c.url_store == "ssm":
            params: dict[str, Any] = {"Name": c.url_name, "Value": url.reveal(), "Type": "SecureString",
                                      "Overwrite": True}
            if c.kms_key:
                params["KeyId"] = c.kms_key
            self.aws.call("ssm", "put_parameter", **params)
            log.info("ssm %s: URL stored as SecureString", c.url_name)
            return
        body = Secret(json.dumps(url_to_secret(url.reveal())))
        state = self._secret_state()
        if state == "absent":
            if c.url_name.startswith("arn:"):
                raise ConfigError(f"app.url_name: no secret {c.url_name}; give a name and pg-runbook creates it")
            params = {"Name": c.url_name, "SecretString": body.reveal(),
                      "Description": f"pg-runbook: {self.ctx.app_name} {self.ctx.env_name} application role"}
            if c.kms_key:
                params["KmsKeyId"] = c.kms_key
            try:
                self.aws.call("secretsmanager", "create_secret", **params)
                log.info("secretsmanager %s: created", c.url_name)
                return
            except AwsError as exc:
                if exc.code != "ResourceExistsException":   # created meanwhile: write a new version
                    raise
        elif state == "deleted":
            # retired earlier and still in its recovery window
            self.aws.call("secretsmanager", "restore_secret", SecretId=c.url_name)
            log.info("secretsmanager %s: restored from scheduled deletion", c.url_name)
        # a new version becomes AWSCURRENT; the one it replaces keeps AWSPREVIOUS
        self.aws.call("secretsmanager", "put_secret_value", SecretId=c.url_name, SecretString=body.reveal())
        log.info("secretsmanager %s: new version stored", c.url_name)

    def _delete_secret(self) -> None:
        if self._secret_state() != "present":
            return
        self.aws.call("secretsmanager", "delete_secret", SecretId=self.config.url_name,
                      RecoveryWindowInDays=self.config.recovery_window_days)
        log.info("secretsmanager %s: scheduled for deletion in %d days", self.config.url_name,
                 self.config.recovery_window_days)

    # SSM

    def _get_parameter(self, name: str, decrypt: bool) -> str | None:
        try:
            out = self.aws.call("ssm", "get_parameter", Name=name, WithDecryption=decrypt)
        except AwsError as exc:
            if exc.code == "ParameterNotFound":
                return None
            raise
        value = out["Parameter"].get("Value")
        if decrypt and value:
            Secret(value)   # register with the redactor
        return value

    def _put_flag(self, value: str) -> None:
        if value == "":
            raise ConfigError(f"SSM parameters cannot be empty; give the flag a non-empty value for "
                              f"{self.config.flag_parameter}")
        self.aws.call("ssm", "put_parameter", Name=self.config.flag_parameter, Value=value, Type="String",
                      Overwrite=True)
        log.info("ssm %s = %s", self.config.flag_parameter, value)

    def _delete_parameter(self, name: str) -> None:
        try:
            self.aws.call("ssm", "delete_parameter", Name=name)
        except AwsError as exc:
            if exc.code != "ParameterNotFound":
                raise

    # -- restart ----------------------------------------------------------------------------

    def restart(self) -> None:
        c = self.config
        out = self.aws.call("ecs", "update_service", cluster=c.cluster, service=c.service, forceNewDeployment=True)
        service = out.get("service") or {}
        ours = _primary(service)
        ours_id = ours.get("id") if ours else None
        log.info("ecs %s/%s: new deployment %s started", c.cluster, c.service, ours_id or "(no id)")
        deadline = self._clock() + c.wait.timeout.total_seconds()
        poll = c.wait.poll.total_seconds()
        while True:
            done, summary, ours_id = _rollout(service, ours_id)
            log.info("ecs %s/%s: %s", c.cluster, c.service, summary)
            if done:
                return
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ProviderError(
                    f"ecs service {c.service} did not become stable within {format_duration(c.wait.timeout)} "
                    f"({summary}); the deployment goes on: aws ecs describe-services --cluster {c.cluster} "
                    f"--services {c.service}")
            self._sleep(min(poll, remaining))
            out = self.aws.call("ecs", "describe_services", cluster=c.cluster, services=[c.service])
            failures = out.get("failures") or []
            if failures or not out.get("services"):
                reason = failures[0].get("reason") if failures else "not returned"
                raise ProviderError(f"ecs service {c.service} in cluster {c.cluster}: {reason}")
            service = out["services"][0]

    def close(self) -> None:
        self.aws.close()

    def attach_url(self, credential: Credential, var: str) -> bool:
        return False

    def detach_url(self, credential_name: str, var: str) -> bool:
        return False


def _primary(service: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((d for d in service.get("deployments") or [] if d.get("status") == "PRIMARY"), None)


def _rollout(service: Mapping[str, Any], ours_id: str | None) -> tuple[bool, str, str | None]:
    """(stable?, progress line without secrets, the deployment being followed)."""
    if service.get("status") not in (None, "ACTIVE"):
        raise ProviderError(f"ecs service {service.get('serviceName', '')} is {service.get('status')}")
    deployments = service.get("deployments") or []
    ours = next((d for d in deployments if d.get("id") == ours_id), None)
    if ours is None:
        # superseded by a newer deployment, which also starts tasks with the new config: follow it
        ours = _primary(service)
    if ours is None:
        # no ECS-controlled deployments (CODE_DEPLOY/EXTERNAL): judge by the service's counts
        running, desired = service.get("runningCount", 0), service.get("desiredCount", 0)
        return (running == desired and not service.get("pendingCount")), f"{running}/{desired} tasks running", ours_id
    running, desired = ours.get("runningCount", 0), ours.get("desiredCount", 0)
    state = ours.get("rolloutState")
    summary = f"deployment {ours.get('id')} {state or ours.get('status')}, {running}/{desired} tasks running"
    if len(deployments) > 1:
        summary += f", {len(deployments) - 1} older deployment(s) draining"
    if state == "FAILED":
        raise ProviderError(f"ecs deployment {ours.get('id')} failed: {ours.get('rolloutStateReason') or 'no reason given'}")
    if state:
        return state == "COMPLETED", summary, ours.get("id")
    return (ours.get("status") == "PRIMARY" and len(deployments) == 1 and running == desired), summary, ours.get("id")
