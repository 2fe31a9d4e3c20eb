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
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Literal, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from providers.aws import Aws, AwsError, aws_region
from providers.base import Credential, IntentApp, OpenContext, Progress, check_url_places
from runbook.durations import format_duration, parse_duration
from runbook.errors import CheckFailed, ConfigError, NotYetLive, ProviderError, RunbookError
from runbook.secret import Secret

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
    url_name: str | None = Field(default=None, description="Secrets Manager secret name/ARN, or SSM parameter name, for the URL "
                                 "(one role; with several, url_names)", examples=['raptor/prod/database-url'])
    url_names: dict[str, str] | None = Field(
        default=None, description="several roles: each role's url_var → its own secret / parameter (instead of "
        "url_name); the task definition has one secrets entry per variable",
        examples=[{"APP_DATABASE_URL": "raptor/prod/app-url", "READONLY_DATABASE_URL": "raptor/prod/readonly-url"}])
    flag_parameter: str = Field(description="SSM String parameter holding the feature flag", examples=['/raptor/prod/role-separation'])
    kms_key: str | None = Field(default=None, description="KMS key for the secret / SecureString (default: the AWS-managed key)", examples=['alias/raptor'])
    recovery_window_days: int = Field(default=7, ge=7, le=30, description="Secrets Manager recovery window on retire")
    container: str | None = Field(default=None, description="the app's container in the task definition (default: "
                                  "the one container, or those that name the URL variable)", examples=["web"])
    register_task_definition: bool = Field(
        default=False, description="register a new task-definition revision with the URL/flag references (or without "
        "them, on retire) and deploy it; default false: the task definition belongs to your IaC, and pg-runbook "
        "prints the exact entry to add")
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
        def check(what: str, name: str) -> None:
            if self.url_store == "ssm":
                _check_parameter_name(name, what)
            elif not _SECRET_NAME.match(name):
                raise ValueError(f"{what} {name!r} is not a Secrets Manager secret name or ARN")

        check_url_places("url_name", self.url_name, "url_names", self.url_names, check)
        return self

    def name_for(self, var: str) -> str | None:
        """The secret / parameter that holds `var`'s URL (None: url_names has no entry for it)."""
        return self.url_name if self.url_names is None else self.url_names.get(var)

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


# how RDS names its endpoints: instance, cluster (writer/reader/custom) and proxy endpoints
_RDS_HOST = re.compile(r"^(?P<id>[a-z][a-z0-9-]{0,62})\.(?P<kind>cluster-ro-|cluster-custom-|cluster-|proxy-)?"
                       r"[a-z0-9]+\.[a-z0-9-]+\.rds\.amazonaws\.com(\.cn)?$")


def url_to_secret(url: str) -> dict[str, Any]:
    """A postgresql:// URL as the standard RDS secret JSON (engine, host, port, username,
    password, dbname, and dbInstanceIdentifier / dbClusterIdentifier when the host is an RDS
    endpoint), its query parameters (sslmode, …), and the whole URL under `url` (what a task
    definition's `secrets` entry hands the app: `valueFrom: <secret ARN>:url::`).
    Errors never quote the URL."""
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
    # libpq's default would be the user name; RDS's is the instance's database, else postgres
    body["dbname"] = unquote(parts.path.lstrip("/")) or "postgres"
    try:
        body["port"] = int(port or 5432)
    except ValueError:
        raise ConfigError("the URL to store has a non-numeric port") from None
    endpoint = _RDS_HOST.match(host.lower())
    if endpoint and endpoint["kind"] in ("cluster-", "cluster-ro-", "cluster-custom-"):
        body["dbClusterIdentifier"] = endpoint["id"]
    elif endpoint and endpoint["kind"] == "proxy-":
        body["proxyHost"] = host
    elif endpoint:
        body["dbInstanceIdentifier"] = endpoint["id"]
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in body and key != "url":
            body[key] = value
    body["url"] = url
    return body


def secret_to_url(body: Mapping[str, Any]) -> str:
    """The URL a secret holds: its `url` key, else built from the standard keys (a secret
    written by RDS or by an earlier pg-runbook), quoting as Credential.url() does."""
    if isinstance(body.get("url"), str) and body["url"]:
        return body["url"]
    user = quote(str(body["username"]), safe="")
    password = body.get("password")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    host = str(body["host"])
    host = f"[{host}]" if ":" in host else host
    query = {k: str(v) for k, v in body.items() if k not in _STANDARD and k not in _NOT_URL_PARAMS and k != "url"}
    tail = f"?{urlencode(query)}" if query else ""
    dbname = quote(str(body.get("dbname") or "postgres"), safe="")
    return f"postgresql://{auth}@{host}:{int(body.get('port') or 5432)}/{dbname}{tail}"


@dataclass(frozen=True)
class Reference:
    """Where a task definition's container gets one variable from, as ECS reads it.

    `kind`: "secretsmanager" (ARN, JSON key, version stage, version id), "ssm" (name or ARN) or
    "environment" (a literal in the task definition)."""

    kind: str
    source: str                     # the secret's ARN (without the key/stage/id), the parameter, or the literal
    json_key: str = ""
    version_stage: str = ""
    version_id: str = ""

    @staticmethod
    def parse(value_from: str) -> "Reference":
        if value_from.startswith("arn:") and ":secretsmanager:" in value_from:
            fields = value_from.split(":")
            key, stage, vid = (fields[7:10] + ["", "", ""])[:3]
            return Reference("secretsmanager", ":".join(fields[:7]), key, stage, vid)
        return Reference("ssm", value_from)

    @property
    def parameter_name(self) -> str:
        """An SSM reference's parameter name (ECS takes a name or an ARN)."""
        if self.source.startswith("arn:"):
            tail = self.source.split(":", 5)[5]          # parameter/name or parameter//a/b
            name = tail.split("/", 1)[1] if "/" in tail else tail
            return name if name.startswith("/") or "/" not in name else "/" + name
        return self.source

    def shown(self) -> str:
        if self.kind == "environment":
            return "a literal environment value in the task definition"
        if self.kind == "ssm":
            return f"SSM parameter {self.source}"
        extra = f", JSON key {self.json_key!r}" if self.json_key else " (the whole SecretString)"
        pin = f", version {self.version_id}" if self.version_id else (f", stage {self.version_stage}" if self.version_stage else "")
        return f"secret {self.source}{extra}{pin}"


@dataclass
class TaskView:
    """The service's current task definition, and what each of its app containers reads."""

    service: dict[str, Any]
    definition: dict[str, Any]
    containers: list[dict[str, Any]]

    @property
    def label(self) -> str:
        d = self.definition
        return f"{d.get('family')}:{d.get('revision')}"

    def reference(self, var: str) -> Reference | None:
        """The entry for `var`: the same in every app container, else None."""
        found = {_reference_in(c, var) for c in self.containers}
        return found.pop() if len(found) == 1 else None


def _reference_in(container: Mapping[str, Any], var: str) -> Reference | None:
    # ECS refuses a name given both ways; `secrets` is what the app receives when it happens anyway
    for entry in container.get("secrets") or []:
        if entry.get("name") == var:
            return Reference.parse(str(entry.get("valueFrom") or ""))
    for entry in container.get("environment") or []:
        if entry.get("name") == var:
            return Reference("environment", str(entry.get("value") or ""))
    return None


class EcsApp(IntentApp):
    key = "ecs"
    #: config lives in Secrets Manager / SSM; tasks only see it after a new deployment
    config_change_restarts = False
    #: a task whose definition references a secret without its `url` key does not start
    restart_reads_every_url = True

    def __init__(self, config: EcsAppConfig, ctx: OpenContext, *, session: Any = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.ctx = ctx
        self.aws = Aws(ctx, region=aws_region(config.region, ctx.environ), profile=config.profile,
                       session=session, region_key="app.region")
        self._sleep = sleep
        self._clock = clock
        self._deploying: str | None = None     # a deployment this process started by updating the service
        # the selected role's store (the Context reopens the app for each role with its url_var)
        self.url_name = config.name_for(ctx.url_var) or ""

    def several_urls(self, url_vars: list[str]) -> str | None:
        """Several roles need one store each: url_names, with an entry per role's url_var."""
        if self.config.url_names is None:
            return ("the ecs platform keeps one URL per environment (app.url_name); give each role's url_var its "
                    f"own {'secret' if self.config.url_store == 'secretsmanager' else 'parameter'} in app.url_names")
        missing = [var for var in url_vars if var not in self.config.url_names]
        if missing:
            return f"app.url_names has no entry for {', '.join(missing)}; each role's URL needs its own store"
        return None

    def describe(self) -> dict[str, str]:
        c = self.config
        return {
            "ecs": f"{c.cluster}/{c.service} ({self.aws.region})",
            "url": f"{c.url_store}:{self.url_name} (as the service's task definition references it)",
            "flag": f"ssm:{c.flag_parameter}",
            "task_definition": "registered by pg-runbook" if c.register_task_definition else "yours (pg-runbook prints the entry)",
        }

    # -- what a task receives ---------------------------------------------------------------

    def places(self) -> tuple[str, str]:
        return (f"({self.config.url_store} {self.url_name})", f"(SSM {self.config.flag_parameter})")

    def _service(self) -> dict[str, Any]:
        c = self.config
        out = self.aws.call("ecs", "describe_services", cluster=c.cluster, services=[c.service])
        failures = out.get("failures") or []
        if failures or not out.get("services"):
            reason = failures[0].get("reason") if failures else "not returned"
            raise ConfigError(f"ecs service {c.service} in cluster {c.cluster}: {reason}")
        return out["services"][0]

    def task_view(self, service: dict[str, Any] | None = None) -> TaskView:
        """The task definition new tasks of the service start from (its PRIMARY deployment's)."""
        service = service or self._service()
        # the service's taskDefinition is its PRIMARY deployment's: what tasks start from now
        arn = service.get("taskDefinition") or (_primary(service) or {}).get("taskDefinition")
        if not arn:
            raise ProviderError(f"ecs service {self.config.service} names no task definition")
        definition = self.aws.call("ecs", "describe_task_definition", taskDefinition=arn)["taskDefinition"]
        containers = definition.get("containerDefinitions") or []
        if self.config.container:
            picked = [c for c in containers if c.get("name") == self.config.container]
            if not picked:
                names = ", ".join(str(c.get("name")) for c in containers)
                raise ConfigError(f"app.container: task definition {definition.get('family')}:"
                                  f"{definition.get('revision')} has no container {self.config.container} ({names})")
        elif len(containers) == 1:
            picked = containers
        else:
            picked = [c for c in containers if _reference_in(c, self.ctx.url_var)]
            if not picked:
                names = ", ".join(str(c.get("name")) for c in containers)
                raise ConfigError(f"task definition {definition.get('family')}:{definition.get('revision')} has "
                                  f"several containers ({names}) and none names {self.ctx.url_var}; set app.container")
        return TaskView(service, definition, picked)

    def resolve(self, ref: Reference | None) -> str | None:
        """The value a task started now receives for `ref`, fetched the way ECS's agent does
        (GetSecretValue with the version stage/id and the JSON key; GetParameters with
        decryption). None where a task would fail to start, or gets nothing."""
        if ref is None:
            return None
        if ref.kind == "environment":
            return ref.source
        if ref.kind == "ssm":
            out = self.aws.call("ssm", "get_parameters", Names=[ref.source], WithDecryption=True)
            params = out.get("Parameters") or []
            if not params:
                return None
            value = params[0].get("Value")
            if value and params[0].get("Type") == "SecureString":
                Secret(value)   # register with the redactor
            return value
        params: dict[str, Any] = {"SecretId": ref.source}
        if ref.version_id:
            params["VersionId"] = ref.version_id
        elif ref.version_stage:
            params["VersionStage"] = ref.version_stage
        try:
            out = self.aws.call("secretsmanager", "get_secret_value", **params)
        except AwsError as exc:
            # absent, scheduled for deletion (InvalidRequestException), or no such version
            if exc.code in ("ResourceNotFoundException", "InvalidRequestException"):
                return None
            raise
        text = out.get("SecretString")
        if text is None:
            return None
        Secret(text)
        if not ref.json_key:
            return text
        try:
            value = json.loads(text).get(ref.json_key)
        except (ValueError, AttributeError):
            return None
        if value is None:
            return None
        value = value if isinstance(value, str) else json.dumps(value)
        Secret(value)
        return value

    def _var(self, kind: str) -> str:
        return self.ctx.url_var if kind == "url" else self.ctx.flag_name

    def read(self, *, url: bool, flag: bool, others: list[str]) -> dict[str, str | None]:
        """What a task of the service started now would receive for the URL and the flag (None:
        nothing, or a reference it could not resolve, which stops the task)."""
        kinds = [kind for kind, wanted in (("url", url), ("flag", flag)) if wanted]
        if not kinds:
            return {}
        view = self.task_view()
        out = {kind: self.resolve(view.reference(self._var(kind))) for kind in kinds}
        if out.get("url"):
            Secret(out["url"])    # a literal URL in the task definition is a secret too
        return out

    def stored(self, *, url: bool, flag: bool) -> dict[str, str | None]:
        """What the stores hold, referenced or not: retire must find a secret it left behind, and
        a reference left behind to a secret already scheduled for deletion (which fails every
        deployment) so that it can remove it."""
        out: dict[str, str | None] = {}
        for kind in [kind for kind, wanted in (("url", url), ("flag", flag)) if wanted]:
            value = self._get_url() if kind == "url" else self._get_parameter(self.config.flag_parameter, False)
            if value is None:
                view = self.task_view()
                if self._referencing(view, kind):
                    value = f"(gone from {self._our_reference(kind).shown()}, still read by task definition {view.label})"
            out[kind] = value
        return out

    # -- the references the task definition must hold --------------------------------------

    def _our_reference(self, kind: str) -> Reference:
        c = self.config
        if kind == "flag":
            return Reference("ssm", self._parameter_ref(c.flag_parameter))
        if c.url_store == "ssm":
            return Reference("ssm", self._parameter_ref(self.url_name))
        return Reference("secretsmanager", self._secret_arn() or self.url_name, "url")

    def _parameter_ref(self, name: str) -> str:
        """An SSM parameter as a task definition names it: its ARN once it exists (the name alone
        works only in the task's own region), else the name."""
        if name.startswith("arn:"):
            return name
        try:
            out = self.aws.call("ssm", "get_parameter", Name=name)
        except AwsError as exc:
            if exc.code == "ParameterNotFound":
                return name
            raise
        return out["Parameter"].get("ARN") or name

    def _is_ours(self, ref: Reference | None, kind: str) -> bool:
        if ref is None:
            return False
        want = self._our_reference(kind)
        if ref.kind != want.kind:
            return False
        if want.kind == "ssm":
            return ref.parameter_name == Reference("ssm", want.source).parameter_name
        return (ref.source == want.source and ref.json_key == "url" and not ref.version_id
                and ref.version_stage in ("", "AWSCURRENT"))

    def _entry(self, var: str, kind: str) -> dict[str, str]:
        ref = self._our_reference(kind)
        value_from = f"{ref.source}:url::" if ref.kind == "secretsmanager" else ref.source
        return {"name": var, "valueFrom": value_from}

    def _ensure_reference(self, var: str, kind: str) -> None:
        """After the value is stored: the service's task definition must hand it to the app."""
        view = self.task_view()
        ref = view.reference(var)
        if self._is_ours(ref, kind):
            return
        entry = self._entry(var, kind)
        names = ", ".join(str(c.get("name")) for c in view.containers)
        now = "no entry for it" if ref is None else f"it reads {ref.shown()}"
        if not self.config.register_task_definition:
            raise CheckFailed(
                f"task definition {view.label} (container {names}) does not hand the app {var}: {now}; tasks "
                f"would not receive what pg-runbook stored",
                hint=f"add to containerDefinitions[{names}].secrets: {json.dumps(entry)} (and drop any "
                     f"environment entry named {var}), deploy it, then rerun; or set app.register_task_definition: true")
        self._register(view, lambda c: _with_entry(c, entry), f"{var} from {self._our_reference(kind).shown()}")

    def _register(self, view: TaskView, edit: Callable[[dict[str, Any]], dict[str, Any]], why: str) -> str:
        """Register a revision of the service's task definition with `edit` applied to the app
        containers, and point the service at it (a deployment starts)."""
        names = {c.get("name") for c in view.containers}
        body = {k: v for k, v in view.definition.items() if k in _REGISTER_KEYS}
        body["containerDefinitions"] = [edit(dict(c)) if c.get("name") in names else c
                                        for c in view.definition.get("containerDefinitions") or []]
        made = self.aws.call("ecs", "register_task_definition", **body)["taskDefinition"]
        arn = made["taskDefinitionArn"]
        out = self.aws.call("ecs", "update_service", cluster=self.config.cluster, service=self.config.service,
                            taskDefinition=arn)
        self._deploying = (_primary(out.get("service") or {}) or {}).get("id") or "started"
        log.info("ecs %s: registered %s:%s (%s) and deployed it", self.config.service, made.get("family"),
                 made.get("revision"), why)
        self.ctx.progress(Progress("ecs task definition", f"registered {made.get('family')}:{made.get('revision')}",
                                   done=True, fields={"why": why}))
        return arn

    def _referencing(self, view: TaskView, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """(container, entry) of every `secrets` entry in the task definition that reads our store."""
        out = []
        for container in view.definition.get("containerDefinitions") or []:
            for entry in container.get("secrets") or []:
                if self._reads_our_store(Reference.parse(str(entry.get("valueFrom") or "")), kind):
                    out.append((str(container.get("name")), entry))
        return out

    def _reads_our_store(self, ref: Reference, kind: str) -> bool:
        want = self._our_reference(kind)
        if ref.kind != want.kind:
            return False
        if want.kind == "ssm":
            return ref.parameter_name == Reference("ssm", want.source).parameter_name
        return ref.source == want.source or ref.source == self.url_name

    # -- writes -----------------------------------------------------------------------------

    def write(self, *, url: Secret | None = None, flag: str | None = None,
              others: Mapping[str, str | Secret] | None = None) -> None:
        self.task_view()                                     # a wrong service/container before any write
        if url is not None:
            proxy = self._proxy_for(url.reveal())
            self._put_url(url)
            if proxy:
                self._proxy_auth(proxy, add=True)
            self._ensure_reference(self.ctx.url_var, "url")
        if flag is not None:
            self._put_flag(flag)
            self._ensure_reference(self.ctx.flag_name, "flag")

    # RDS Proxy: a proxy logs in to the database with the secrets in its Auth list

    def _proxy_for(self, url: str) -> dict[str, Any] | None:
        """The RDS Proxy whose endpoint the URL names, if any."""
        host = (urlsplit(url).hostname or "").lower()
        labels = host.split(".")
        if len(labels) < 3 or "proxy-" not in labels[1] or ".rds.amazonaws.com" not in host:
            return None
        for page in self.aws.pages("rds", "describe_db_proxies"):
            for proxy in page.get("DBProxies") or []:
                if str(proxy.get("Endpoint") or "").lower() == host:
                    if self.config.url_store != "secretsmanager":
                        raise ConfigError(f"RDS Proxy {proxy.get('DBProxyName')} reads logins from Secrets Manager; "
                                          "set app.url_store: secretsmanager")
                    return proxy
        raise ConfigError(f"the app's URL names an RDS Proxy endpoint ({host}) that no proxy in {self.aws.region} has")

    def _proxy_auth(self, proxy: dict[str, Any], *, add: bool) -> None:
        """Register (or remove) the URL secret in the proxy's Auth list; the others stay as they are."""
        arn = self._secret_arn()
        if not arn:
            return
        auth = [dict(a) for a in proxy.get("Auth") or []]
        has = any(a.get("SecretArn") == arn for a in auth)
        if add == has:
            return
        name = proxy["DBProxyName"]
        if add:
            auth.append({"AuthScheme": "SECRETS", "SecretArn": arn, "IAMAuth": "DISABLED",
                         "Description": f"pg-runbook: {self.ctx.app_name} {self.ctx.env_name}"})
        else:
            auth = [a for a in auth if a.get("SecretArn") != arn]
            if not auth:
                log.warning("RDS Proxy %s: the URL secret is its only Auth entry and stays (a proxy needs one)", name)
                return
        keep = ("Description", "UserName", "AuthScheme", "SecretArn", "IAMAuth", "ClientPasswordAuthType")
        self.aws.call("rds", "modify_db_proxy", DBProxyName=name,
                      Auth=[{k: v for k, v in a.items() if k in keep} for a in auth])
        log.info("RDS Proxy %s: secret %s %s its Auth list", name, self.url_name, "added to" if add else "removed from")

    def remove(self, *, url: bool = False, flag: bool = False, others: list[str] | None = None) -> None:
        for kind in [kind for kind, wanted in (("url", url), ("flag", flag)) if wanted]:
            # the task definition stops reading the store, and that deployment completes, before
            # the store goes: a task that cannot fetch a secret never starts (circuit breaker)
            self._dereference(self._var(kind), kind)
            if kind == "url" and self.config.url_store == "secretsmanager":
                stored = self._get_url()
                proxy = self._proxy_for(stored) if stored else None
                if proxy:
                    self._proxy_auth(proxy, add=False)
                self._delete_secret()
            else:
                self._delete_parameter(self.url_name if kind == "url" else self.config.flag_parameter)

    def _dereference(self, var: str, kind: str) -> None:
        service = self._service()
        view = self.task_view(service)
        found = self._referencing(view, kind)
        if found:
            if not self.config.register_task_definition:
                where = "; ".join(f"containerDefinitions[{name}].secrets: {json.dumps(entry)}" for name, entry in found)
                raise ConfigError(
                    f"task definition {view.label} still reads {self._our_reference(kind).shown()}; deleting it now "
                    f"would stop every new task of {self.config.service} from starting",
                    hint=f"remove {where}, deploy that revision, then rerun retire; or set "
                         "app.register_task_definition: true")
            drop = {id(entry) for _, entry in found}

            def edit(container: dict[str, Any]) -> dict[str, Any]:
                container["secrets"] = [e for e in container.get("secrets") or [] if id(e) not in drop]
                return container

            # every container that reads the store, not only the app's
            view = TaskView(service, view.definition, [c for c in view.definition.get("containerDefinitions") or []
                                                       if any(n == c.get("name") for n, _ in found)])
            self._register(view, edit, f"{var} no longer read from {self._our_reference(kind).shown()}")
        # older deployments may still run (and start) tasks of a revision that reads the store
        if self._deploying or self._read_by_older_deployments(service, view, kind):
            self._wait(self._deploying, f"removing {var} from {self.config.service}")

    def _read_by_older_deployments(self, service: dict[str, Any], current: TaskView, kind: str) -> bool:
        arns = {d.get("taskDefinition") for d in service.get("deployments") or []
                if d.get("status") != "INACTIVE" and d.get("taskDefinition")}
        arns.discard(current.definition.get("taskDefinitionArn"))
        for arn in arns:
            definition = self.aws.call("ecs", "describe_task_definition", taskDefinition=arn)["taskDefinition"]
            if self._referencing(TaskView(service, definition, []), kind):
                return True
        return False

    # Secrets Manager

    def _secret_arn(self) -> str | None:
        desc = self._describe_secret()
        return desc.get("ARN") if desc else None

    def _describe_secret(self) -> dict[str, Any] | None:
        try:
            return self.aws.call("secretsmanager", "describe_secret", SecretId=self.url_name)
        except AwsError as exc:
            if exc.code == "ResourceNotFoundException":
                return None
            raise

    def _secret_state(self) -> str:
        """'absent', 'deleted' (scheduled for deletion, restorable) or 'present'."""
        out = self._describe_secret()
        if out is None:
            return "absent"
        return "deleted" if out.get("DeletedDate") else "present"

    def _get_url(self) -> str | None:
        if self.config.url_store == "ssm":
            return self._get_parameter(self.url_name, True)
        if self._secret_state() != "present":
            return None
        out = self.aws.call("secretsmanager", "get_secret_value", SecretId=self.url_name)
        try:
            url = secret_to_url(json.loads(out.get("SecretString") or ""))
        except (ValueError, KeyError, TypeError):
            raise ProviderError(f"secret {self.url_name} is not RDS secret JSON (host, username, …)") from None
        return Secret(url).reveal()   # registered with the redactor before it leaves

    def _put_url(self, value: str | Secret) -> None:
        url = Secret(value)
        c = self.config
        if c.url_store == "ssm":
            params: dict[str, Any] = {"Name": self.url_name, "Value": url.reveal(), "Type": "SecureString",
                                      "Overwrite": True}
            if c.kms_key:
                params["KeyId"] = c.kms_key
            self.aws.call("ssm", "put_parameter", **params)
            log.info("ssm %s: URL stored as SecureString", self.url_name)
            return
        body = Secret(json.dumps(url_to_secret(url.reveal())))
        state = self._secret_state()
        if state == "absent":
            if self.url_name.startswith("arn:"):
                raise ConfigError(f"app.url_name: no secret {self.url_name}; give a name and pg-runbook creates it")
            params = {"Name": self.url_name, "SecretString": body.reveal(),
                      "Description": f"pg-runbook: {self.ctx.app_name} {self.ctx.env_name} application role"}
            if c.kms_key:
                params["KmsKeyId"] = c.kms_key
            try:
                self.aws.call("secretsmanager", "create_secret", **params)
                log.info("secretsmanager %s: created", self.url_name)
                return
            except AwsError as exc:
                if exc.code != "ResourceExistsException":   # created meanwhile: write a new version
                    raise
        elif state == "deleted":
            # retired earlier and still in its recovery window
            self.aws.call("secretsmanager", "restore_secret", SecretId=self.url_name)
            log.info("secretsmanager %s: restored from scheduled deletion", self.url_name)
        # a new version becomes AWSCURRENT; the one it replaces keeps AWSPREVIOUS
        self.aws.call("secretsmanager", "put_secret_value", SecretId=self.url_name, SecretString=body.reveal())
        log.info("secretsmanager %s: new version stored", self.url_name)

    def _delete_secret(self) -> None:
        if self._secret_state() != "present":
            return
        self.aws.call("secretsmanager", "delete_secret", SecretId=self.url_name,
                      RecoveryWindowInDays=self.config.recovery_window_days)
        log.info("secretsmanager %s: scheduled for deletion in %d days", self.url_name,
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
        """Tasks read their secrets when they start: a new deployment, waited out. A deployment
        this process already started (a new task-definition revision) is followed, not doubled."""
        c = self.config
        ours = self._deploying
        if ours is None:
            out = self.aws.call("ecs", "update_service", cluster=c.cluster, service=c.service, forceNewDeployment=True)
            ours = (_primary(out.get("service") or {}) or {}).get("id")
            log.info("ecs %s/%s: new deployment %s started", c.cluster, c.service, ours or "(no id)")
        self._wait(ours, f"restarting {c.service}")

    def _wait(self, ours: str | None, what: str) -> None:
        """Poll describe_services until the deployment `ours` (or the one that superseded it)
        is COMPLETED and no older one is left, reporting each state change to ctx.progress."""
        c = self.config
        deadline = self._clock() + c.wait.timeout.total_seconds()
        poll = c.wait.poll.total_seconds()
        last = None
        service = self._service()
        while True:
            remaining = max(0.0, deadline - self._clock())
            try:
                done, summary, ours = _rollout(service, ours)
            except ProviderError:
                self.ctx.progress(Progress("ecs deployment", "FAILED", remaining, done=True))
                raise
            if summary != last:
                log.info("ecs %s/%s: %s", c.cluster, c.service, summary)
                self.ctx.progress(Progress("ecs deployment", summary, remaining, done=done,
                                           fields=_progress_fields(service, ours)))
                last = summary
            if done:
                self._deploying = None
                return
            if remaining <= 0:
                raise self._not_yet_live(summary, what)
            self._sleep(min(poll, remaining))
            service = self._service()

    def _not_yet_live(self, summary: str, what: str) -> RunbookError:
        c = self.config
        try:
            flag = self._get_parameter(c.flag_parameter, False)
        except RunbookError:
            flag = None
        stored = f"{self.ctx.flag_name or 'the flag'} is {flag!r} in SSM {c.flag_parameter}" if flag is not None \
            else "the new configuration is stored"
        watch = f"aws ecs wait services-stable --cluster {c.cluster} --services {c.service}"
        return NotYetLive(
            f"{stored}, but the ecs deployment is still rolling after {format_duration(c.wait.timeout)} "
            f"({what}: {summary}); tasks take the new values as the deployment replaces them",
            hint=f"watch it: {watch}  (or aws ecs describe-services --cluster {c.cluster} --services {c.service})")

    def close(self) -> None:
        self.aws.close()

    def attach_url(self, credential: Credential, var: str) -> bool:
        return False

    def detach_url(self, credential_name: str, var: str) -> bool:
        return False


# what register_task_definition takes back from describe_task_definition
_REGISTER_KEYS = (
    "family", "taskRoleArn", "executionRoleArn", "networkMode", "volumes", "placementConstraints",
    "requiresCompatibilities", "cpu", "memory", "pidMode", "ipcMode", "proxyConfiguration", "inferenceAccelerators",
    "ephemeralStorage", "runtimePlatform",
)


def _with_entry(container: dict[str, Any], entry: dict[str, str]) -> dict[str, Any]:
    """The container with `entry` as its only source of entry["name"]."""
    container["environment"] = [e for e in container.get("environment") or [] if e.get("name") != entry["name"]]
    container["secrets"] = [e for e in container.get("secrets") or [] if e.get("name") != entry["name"]] + [entry]
    if not container["environment"]:
        container.pop("environment")
    return container


def _progress_fields(service: Mapping[str, Any], ours: str | None) -> dict[str, object]:
    d = next((d for d in service.get("deployments") or [] if d.get("id") == ours), None) or _primary(service) or {}
    return {"deployment": d.get("id"), "rollout": d.get("rolloutState") or d.get("status"),
            "running": d.get("runningCount", 0), "desired": d.get("desiredCount", 0),
            "deployments": len(service.get("deployments") or [])}


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
        raise ProviderError(
            f"ecs deployment {ours.get('id')} failed: {ours.get('rolloutStateReason') or 'no reason given'}",
            hint="a task that cannot fetch its secrets never starts: see the stopped tasks' stoppedReason "
                 "(aws ecs list-tasks --desired-status STOPPED; aws ecs describe-tasks), and that the task execution "
                 "role may secretsmanager:GetSecretValue / ssm:GetParameters (and kms:Decrypt for a customer key)")
    if state:
        return state == "COMPLETED", summary, ours.get("id")
    return (ours.get("status") == "PRIMARY" and len(deployments) == 1 and running == desired), summary, ours.get("id")
