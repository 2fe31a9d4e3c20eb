"""`provider: rds` — Amazon RDS for PostgreSQL and Aurora PostgreSQL.

The instance (or cluster) is read with boto3; the application role is created over SQL as the
master user, whose password comes from Secrets Manager (the RDS-managed MasterUserSecret unless
`master_secret` names another). `auth: iam` makes a password-less role in `rds_iam`.

boto3 is imported only inside the code that calls AWS (providers.aws, shared with providers.ecs),
so `import providers.rds` stays light.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from providers.aws import Aws, AwsError, aws_region
from providers.base import AppAddress, Credential, DatabaseBase, DatabaseInfo, OpenContext, SslMode
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret

_NOT_CONNECTABLE = {
    "stopped", "stopping", "starting", "creating", "deleting", "failed",
    "inaccessible-encryption-credentials", "incompatible-network", "incompatible-restore",
}
_PARAMS = ("rds.force_ssl", "rds.restrict_password_commands")
# parameter groups may be unreadable (IAM policy, or a local endpoint without the group):
# describe then falls back to what the server itself says in preflight_sql
_PARAM_UNREADABLE = {"DBParameterGroupNotFound", "DBClusterParameterGroupNotFound", "AccessDenied",
                     "AccessDeniedException", "UnauthorizedOperation"}
_SECURE_SSLMODES = ("require", "verify-ca", "verify-full")


class RdsDatabaseConfig(AppAddress):
    model_config = ConfigDict(extra="forbid", frozen=True, title="rds database")
    provider: Literal["rds"] = "rds"
    instance: str | None = Field(default=None, description="DB instance identifier (RDS for PostgreSQL)", examples=['raptor-prod'])
    cluster: str | None = Field(default=None, description="DB cluster identifier (Aurora PostgreSQL)", examples=['raptor-aurora'])
    region: str | None = Field(default=None, description="AWS region (default: AWS_REGION)", examples=['eu-west-1'])
    profile: str | None = Field(default=None, description="AWS profile (default: boto3's credential chain)", examples=['prod-admin'])
    master_secret: str | None = Field(
        default=None,
        description="Secrets Manager ARN or name of the master credentials (JSON with username, password); "
        "default: the instance's RDS-managed MasterUserSecret", examples=["raptor/prod/master"])
    master_user: str | None = Field(default=None, description="master user name, overriding the secret's", examples=['postgres'])
    auth: Literal["password", "iam"] = Field(default="password", description="how the app role logs in")
    sslmode: SslMode = Field(default="require", description="sslmode of the master session and the app URL")
    proxy: str | None = Field(default=None, description="RDS Proxy name: the app's URL points at the proxy's "
                              "endpoint and the role's secret joins its Auth list (the tool's own session never "
                              "goes through it)", examples=["raptor-proxy"])
    database: str | None = Field(default=None, description="database name (default: the instance's DBName, else postgres)", examples=['raptor'])

    @model_validator(mode="after")
    def _target(self) -> "RdsDatabaseConfig":
        if bool(self.instance) == bool(self.cluster):
            raise ValueError("give exactly one of instance (RDS) or cluster (Aurora)")
        for name in ("instance", "cluster", "proxy"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,62}", value):
                raise ValueError(f"{name} {value!r} is not an RDS identifier (letters, digits and hyphens)")
        if self.auth == "iam" and self.sslmode not in _SECURE_SSLMODES:
            raise ValueError("IAM authentication needs SSL: sslmode must be require, verify-ca or verify-full")
        return self

    def open(self, ctx: OpenContext) -> "RdsDatabase":
        return RdsDatabase(self, ctx)


@dataclass(frozen=True)
class _Target:
    """What describe_db_instances/clusters said, in one shape for both."""

    kind: str                 # "instance" | "cluster"
    ident: str
    arn: str
    engine: str
    version: str
    klass: str | None
    status: str
    host: str | None
    port: int
    master_username: str | None
    dbname: str | None
    secret_arn: str | None
    parameter_group: str | None
    resource_id: str | None
    iam_enabled: bool

    @property
    def partition(self) -> str:
        return self.arn.split(":")[1] if self.arn.count(":") >= 5 else "aws"

    @property
    def account(self) -> str:
        return self.arn.split(":")[4] if self.arn.count(":") >= 5 else ""


class RdsDatabase(DatabaseBase):
    key = "rds"
    routes_logins = True

    def __init__(self, config: RdsDatabaseConfig, ctx: OpenContext, *, session: Any = None) -> None:
        self.config = config
        self.ctx = ctx
        self.aws = Aws(ctx, region=aws_region(config.region, ctx.environ), profile=config.profile,
                       session=session, region_key="database.region")
        self._target: _Target | None = None
        self._params: dict[str, str | None] | None = None
        self._params_note: str | None = None
        self._master: tuple[str, Secret] | None = None
        self._proxy: dict[str, Any] | None = None

    # -- reads ------------------------------------------------------------------------------

    @property
    def _what(self) -> str:
        return f"cluster {self.config.cluster}" if self.config.cluster else f"instance {self.config.instance}"

    def target(self) -> _Target:
        if self._target is None:
            self._target = self._read_cluster() if self.config.cluster else self._read_instance()
        return self._target

    def _not_found(self, exc: AwsError) -> ConfigError:
        key = "cluster" if self.config.cluster else "instance"
        return ConfigError(f"database.{key}: no RDS {self._what} in {self.aws.region} ({exc.code})")

    def _read_instance(self) -> _Target:
        try:
            out = self.aws.call("rds", "describe_db_instances", DBInstanceIdentifier=self.config.instance)
        except AwsError as exc:
            if exc.code == "DBInstanceNotFound":
                raise self._not_found(exc) from None
            raise
        db = out["DBInstances"][0]
        if db.get("DBClusterIdentifier"):
            # an Aurora member's own endpoint is a writer today and maybe a reader after a failover
            raise Refused(f"RDS instance {self.config.instance} is a member of Aurora cluster "
                          f"{db['DBClusterIdentifier']}; the app must use the cluster's writer endpoint: "
                          f"set database.cluster: {db['DBClusterIdentifier']} instead of database.instance")
        endpoint = db.get("Endpoint") or {}
        groups = db.get("DBParameterGroups") or []
        return _Target(
            kind="instance", ident=db["DBInstanceIdentifier"], arn=db.get("DBInstanceArn", ""),
            engine=db.get("Engine", ""), version=db.get("EngineVersion", ""), klass=db.get("DBInstanceClass"),
            status=db.get("DBInstanceStatus", ""), host=endpoint.get("Address"), port=int(endpoint.get("Port") or 5432),
            master_username=db.get("MasterUsername"), dbname=db.get("DBName"),
            secret_arn=(db.get("MasterUserSecret") or {}).get("SecretArn"),
            parameter_group=groups[0].get("DBParameterGroupName") if groups else None,
            resource_id=db.get("DbiResourceId"), iam_enabled=bool(db.get("IAMDatabaseAuthenticationEnabled")),
        )

    def _read_cluster(self) -> _Target:
        try:
            out = self.aws.call("rds", "describe_db_clusters", DBClusterIdentifier=self.config.cluster)
        except AwsError as exc:
            if exc.code == "DBClusterNotFoundFault":
                raise self._not_found(exc) from None
            raise
        db = out["DBClusters"][0]
        klass = db.get("DBClusterInstanceClass")
        if not klass:
            # Aurora: the class is the writer instance's
            writer = next((m["DBInstanceIdentifier"] for m in db.get("DBClusterMembers") or []
                           if m.get("IsClusterWriter")), None)
            if writer:
                inst = self.aws.call("rds", "describe_db_instances", DBInstanceIdentifier=writer)["DBInstances"]
                klass = inst[0].get("DBInstanceClass") if inst else None
        return _Target(
            kind="cluster", ident=db["DBClusterIdentifier"], arn=db.get("DBClusterArn", ""),
            engine=db.get("Engine", ""), version=db.get("EngineVersion", ""), klass=klass,
            status=db.get("Status", ""), host=db.get("Endpoint"), port=int(db.get("Port") or 5432),
            master_username=db.get("MasterUsername"), dbname=db.get("DatabaseName"),
            secret_arn=(db.get("MasterUserSecret") or {}).get("SecretArn"),
            parameter_group=db.get("DBClusterParameterGroup"),
            resource_id=db.get("DbClusterResourceId"), iam_enabled=bool(db.get("IAMDatabaseAuthenticationEnabled")),
        )

    def parameters(self) -> dict[str, str | None]:
        """rds.force_ssl and rds.restrict_password_commands as set in the parameter group
        (None: engine default or unreadable)."""
        if self._params is None:
            target = self.target()
            found: dict[str, str | None] = {name: None for name in _PARAMS}
            if target.parameter_group:
                if target.kind == "cluster":
                    op, arg = "describe_db_cluster_parameters", "DBClusterParameterGroupName"
                else:
                    op, arg = "describe_db_parameters", "DBParameterGroupName"
                try:
                    for page in self.aws.pages("rds", op, **{arg: target.parameter_group}):
                        for param in page.get("Parameters") or []:
                            if param.get("ParameterName") in found:
                                found[param["ParameterName"]] = param.get("ParameterValue")
                except AwsError as exc:
                    if exc.code not in _PARAM_UNREADABLE:
                        raise
                    self._params_note = f"parameter group {target.parameter_group} unreadable ({exc.code})"
            self._params = found
        return self._params

    def _param_shown(self, name: str, value: str | None, target: _Target) -> str:
        if value is not None:
            return value
        if name == "rds.force_ssl":
            # RDS for PostgreSQL turned it on by default from 15; Aurora leaves it off
            major = int(re.match(r"\d*", target.version).group() or 0)
            return "1 (engine default)" if target.engine == "postgres" and major >= 15 else "0 (engine default)"
        return "0 (engine default)"

    def describe(self) -> DatabaseInfo:
        target = self.target()
        cfg = self.config
        if target.engine not in ("postgres", "aurora-postgresql"):
            raise Refused(f"RDS {self._what} runs {target.engine or 'an unknown engine'}; "
                          "pg-runbook supports postgres and aurora-postgresql")
        if target.status in _NOT_CONNECTABLE:
            verb = "start-db-cluster --db-cluster-identifier" if target.kind == "cluster" else "start-db-instance --db-instance-identifier"
            fix = f"; start it: aws rds {verb} {target.ident}" if target.status in ("stopped", "stopping") else ""
            raise Refused(f"RDS {self._what} is {target.status}{fix}")
        params = self.parameters()
        if params["rds.force_ssl"] == "1" and cfg.sslmode == "disable":
            raise Refused(f"rds.force_ssl=1 in parameter group {target.parameter_group} refuses unencrypted "
                          "connections but database.sslmode is disable; set sslmode: require")
        details: dict[str, str] = {
            target.kind: target.ident,
            "region": self.aws.region,
            "engine": f"{target.engine} {target.version}".strip(),
            "class": target.klass or "unknown",
            "status": target.status,
            "endpoint": f"{target.host}:{target.port}" if target.host else "none",
            "parameter_group": target.parameter_group or "none",
            "auth": cfg.auth,
            "sslmode": cfg.sslmode,
        }
        if cfg.connect:
            details["connect"] = f"{cfg.connect.host}:{cfg.connect.port}"
        for name in _PARAMS:
            details[name] = self._param_shown(name, params[name], target)
        if self._params_note:
            # "note…" keys are shown by preflight: the SQL-side check in preflight_sql still runs
            details["note_parameters"] = self._params_note
        details["master_secret"] = cfg.master_secret or target.secret_arn or "none"
        if cfg.auth == "iam":
            if not target.iam_enabled:
                cmd = (f"aws rds modify-db-cluster --db-cluster-identifier {target.ident}" if target.kind == "cluster"
                       else f"aws rds modify-db-instance --db-instance-identifier {target.ident}")
                raise Refused(f"IAM database authentication is off on RDS {self._what}; turn it on: "
                              f"{cmd} --enable-iam-database-authentication --apply-immediately")
            role = self.ctx.role_name or "<role>"
            details["iam_resource"] = self.iam_resource(role)
            details["iam_policy"] = self.iam_policy(role)
            details["note_iam"] = "the app's IAM role needs this policy statement: " + details["iam_policy"]
        return DatabaseInfo(
            engine=target.engine, version=target.version, plan=target.klass, credentials="sql",
            password_auth=cfg.auth != "iam", role_grants=("rds_iam",) if cfg.auth == "iam" else (),
            details=details,
        )

    # -- IAM ----------------------------------------------------------------------------------

    def iam_resource(self, role: str) -> str:
        target = self.target()
        return (f"arn:{target.partition}:rds-db:{self.aws.region}:{target.account}:dbuser:"
                f"{target.resource_id}/{role}")

    def iam_policy(self, role: str) -> str:
        """The IAM policy statement the app's task role needs to log in as `role`."""
        return json.dumps({"Effect": "Allow", "Action": "rds-db:connect", "Resource": self.iam_resource(role)})

    # -- connections --------------------------------------------------------------------------

    def _endpoint(self) -> tuple[str, int]:
        """The instance's endpoint, or the Aurora cluster's writer endpoint."""
        target = self.target()
        if not target.host:
            raise ProviderError(f"RDS {self._what} has no endpoint yet (status {target.status})")
        return target.host, target.port

    def proxy_endpoint(self) -> tuple[str, int] | None:
        """The RDS Proxy's endpoint, when database.proxy names one (its port is the engine's, 5432)."""
        if not self.config.proxy:
            return None
        if self._proxy is None:
            try:
                out = self.aws.call("rds", "describe_db_proxies", DBProxyName=self.config.proxy)
            except AwsError as exc:
                if exc.code == "DBProxyNotFoundFault":
                    raise ConfigError(f"database.proxy: no RDS Proxy {self.config.proxy} in {self.aws.region}") from None
                raise
            proxies = out.get("DBProxies") or []
            if not proxies:
                raise ConfigError(f"database.proxy: no RDS Proxy {self.config.proxy} in {self.aws.region}")
            self._proxy = proxies[0]
        proxy = self._proxy
        if proxy.get("EngineFamily") not in (None, "POSTGRESQL"):
            raise Refused(f"RDS Proxy {self.config.proxy} is for {proxy.get('EngineFamily')}, not POSTGRESQL")
        if proxy.get("Status") not in (None, "available", "modifying"):
            raise Refused(f"RDS Proxy {self.config.proxy} is {proxy.get('Status')}")
        if not proxy.get("Endpoint"):
            raise ProviderError(f"RDS Proxy {self.config.proxy} has no endpoint yet")
        return str(proxy["Endpoint"]), 5432

    def _address(self) -> tuple[str, int]:
        """Where the tool's own session goes: `connect`, else the endpoint itself. Never the
        proxy: it pins sessions and multiplexes them, and the tool relies on its own session."""
        return self.config.tool_address(self._endpoint())

    def app_address(self) -> tuple[str, int]:
        """What the app's URL names: app_host/app_port, else the proxy's endpoint, else the
        instance's (or the cluster's writer) endpoint. Never the tunnel the tool came in by."""
        return self.config.app_address(self.proxy_endpoint() or self._endpoint())

    def _dbname(self) -> str:
        return self.config.database or self.target().dbname or "postgres"

    def master(self) -> tuple[str, Secret]:
        """(user, password) of the master, from Secrets Manager."""
        if self._master is None:
            target = self.target()
            secret_id = self.config.master_secret or target.secret_arn
            if not secret_id:
                raise ConfigError(
                    f"RDS {self._what} has no RDS-managed master secret (no MasterUserSecret: it was created "
                    "without ManageMasterUserPassword): set database.master_secret to the ARN or name of a "
                    "Secrets Manager secret holding {\"username\", \"password\"}")
            out = self.aws.call("secretsmanager", "get_secret_value", SecretId=secret_id)
            try:
                body = json.loads(out.get("SecretString") or "")
                password = body["password"]
                if not isinstance(password, str) or not password:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"master secret {secret_id} is not JSON with a username and a password") from None
            password_secret = Secret(password)
            user = self.config.master_user or body.get("username") or target.master_username
            if not user:
                raise ConfigError(f"master secret {secret_id} names no username; set database.master_user")
            self._master = (str(user), password_secret)
        return self._master

    def admin_dsn(self) -> Secret:
        from psycopg.conninfo import make_conninfo

        user, password = self.master()
        host, port = self._address()
        return Secret(make_conninfo(host=host, port=str(port), user=user, password=password.reveal(),
                                    dbname=self._dbname(), sslmode=self.config.sslmode))

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        host, port = self.app_address()
        return Credential(name=user, user=user, host=host, port=port, database=self._dbname(),
                          password=password, sslmode=self.config.sslmode)

    def login_route(self, url: Secret) -> Secret:
        """The URL the tool logs in with to prove the app's `url`: exactly it, reached through
        `connect` when the tool comes in by a tunnel (hostaddr/port, so TLS still checks the
        endpoint's name), and under `auth: iam` with a token from generate_db_auth_token for the
        app's endpoint as the password, as the app itself would."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        parts = conninfo_to_dict(url.reveal())
        extra: dict[str, str] = {}
        if self.config.auth == "iam" and not parts.get("password"):
            host = str(parts.get("host") or "")
            port = int(str(parts.get("port") or 5432))
            token = self._auth_token(host, port, str(parts.get("user") or ""))
            extra["password"] = token.reveal()
            extra["require_auth"] = "password"    # RDS takes the token as a cleartext password, over TLS
        if self.config.connect:
            import ipaddress

            try:
                ipaddress.ip_address(self.config.connect.host)
                extra["hostaddr"] = self.config.connect.host
            except ValueError:
                extra["host"] = self.config.connect.host
            extra["port"] = str(self.config.connect.port)
        return Secret(make_conninfo(url.reveal(), **extra)) if extra else url

    def _auth_token(self, host: str, port: int, user: str) -> Secret:
        """An IAM auth token (a presigned rds-db:connect URL, valid 15 minutes), signed locally."""
        client = self.aws.client("rds")
        try:
            token = client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=self.aws.region)
        except Exception as exc:   # botocore: no credentials to sign with
            raise ConfigError(f"cannot sign an IAM auth token for {user}: {type(exc).__name__}") from None
        return Secret(token)

    def preflight_sql(self, conn: Any) -> list[str]:
        """Read-only: can the master send the commands the engine is about to send?"""
        from psycopg import sql

        row = conn.execute(
            """
            SELECT current_user::text,
                   r.rolsuper,
                   EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_password'),
                   (SELECT pg_has_role(current_user, p.oid, 'MEMBER') FROM pg_roles p WHERE p.rolname = 'rds_password'),
                   current_setting('rds.restrict_password_commands', true),
                   EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam')
            FROM pg_roles r WHERE r.rolname = current_user
            """
        ).fetchone()
        user, superuser, has_pw_role, in_pw_role, server_setting, has_iam_role = row
        problems: list[str] = []
        if self.config.auth == "iam":
            # the role gets no password, so the password-command restriction does not apply
            if not has_iam_role:
                problems.append("role rds_iam does not exist on this server, so IAM authentication cannot work; "
                                "connect to the RDS endpoint (database.connect) or use auth: password")
            elif not superuser and not conn.execute(
                    "SELECT pg_has_role(current_user, 'rds_iam', 'MEMBER WITH ADMIN OPTION')").fetchone()[0]:
                # on RDS, rds_superuser holds rds_iam with admin option; a master outside it cannot grant it
                problems.append(f"master user {user} cannot grant rds_iam (it needs ADMIN OPTION, which members of "
                                f"rds_superuser have). Fix: GRANT rds_superuser TO {sql.Identifier(user).as_string(conn)};")
            return problems
        group_value = self.parameters()["rds.restrict_password_commands"]
        server_on = str(server_setting or "").lower() in ("1", "on", "true", "yes")
        if not (group_value == "1" or server_on) or superuser:
            return problems
        source = (f"rds.restrict_password_commands=1 in parameter group {self.target().parameter_group}"
                  if group_value == "1" else "rds.restrict_password_commands is on")
        ident = sql.Identifier(user).as_string(conn)
        if not has_pw_role:
            problems.append(f"password commands are restricted ({source}) but this server has no rds_password "
                            "role; set rds.restrict_password_commands to 0 in the parameter group")
        elif not in_pw_role:
            problems.append(f"master user {user} is not a member of rds_password; password commands are "
                            f"restricted ({source}). Fix: GRANT rds_password TO {ident};")
        return problems

    def read_log(self, since: float, role: str, *, asked: bool = True, admin_dsn: Secret | None = None):
        if not asked:
            return None      # the log API and its permission are the operator's to grant: on when written
        from providers import rds_logs

        target = self.target()
        if target.kind == "cluster":
            out = self.aws.call("rds", "describe_db_clusters", DBClusterIdentifier=target.ident)
            members = [m["DBInstanceIdentifier"] for m in (out["DBClusters"][0].get("DBClusterMembers") or [])]
        else:
            members = [target.ident]
        return rds_logs.read(self.aws, members, since, role)

    def close(self) -> None:
        self.aws.close()

    # credentials are created in SQL for this provider
    def credential(self, name: str) -> Credential | None:
        raise NotImplementedError("rds credentials are SQL roles")

    create_credential = rotate = destroy = credential
