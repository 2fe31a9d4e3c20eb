"""`provider: cloudsql` — Cloud SQL for PostgreSQL through the Cloud SQL Admin API.

The instance is read with `instances.get` (must be PostgreSQL, RUNNABLE, started, a primary).
The application role is created in SQL by the admin user (`postgres` by default, password from
`admin_password_env`), never through the API: users created through the API land in
`cloudsqlsuperuser` with CREATEROLE and CREATEDB. `adjust_existing_role` takes those powers
away from a role that already exists that way (in SQL where PostgreSQL allows it; from PG 16 a
membership granted by Cloud SQL's own superuser cannot be revoked by `postgres`, and with
`replace_api_users: true` such a role that owns nothing is deleted through the Admin API so that
the engine creates it again in SQL). Admin API operations are polled until DONE.

Addresses: `connect: {host, port}` points the SQL session at a Cloud SQL Auth Proxy or tunnel;
otherwise the instance's PRIMARY (public) address, else its PRIVATE one. `app_host` sets the host
the app's URL names (`socket` = the /cloudsql/<connection name> socket Cloud Run mounts).

Base URL: CLOUDSQL_API_URL (default https://sqladmin.googleapis.com); token: see providers.gcp_auth.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from providers.base import Credential, DatabaseInfo, EnvVarName, OpenContext, SslMode
from providers.gcp import Duration, ProjectId, api_client, json_body, wait_operation
from providers.gcp_auth import GoogleAuth
from providers.http import ApiClient, RateBudget
from providers.local import Connect
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret

DEFAULT_API = "https://sqladmin.googleapis.com"
SUPERUSER_GROUP = "cloudsqlsuperuser"

_INSTANCE = re.compile(r"^[a-z][a-z0-9-]{0,97}$")


class CloudSqlDatabaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="cloudsql database")
    provider: Literal["cloudsql"] = "cloudsql"
    project: ProjectId = Field(description="Google Cloud project id", examples=['raptor-prod-123'])
    instance: str = Field(description="Cloud SQL instance id", examples=['main'])
    admin_user: str = Field(default="postgres", description="the user that creates the role and runs the grants")
    admin_password_env: EnvVarName = Field(description="environment variable holding the admin user's password", examples=['CLOUDSQL_ADMIN_PASSWORD'])
    database: str = Field(default="postgres", description="database the role is granted in")
    sslmode: SslMode = Field(default="require", description="sslmode of the admin session and the app URL "
                         "(disable behind the Cloud SQL Auth Proxy, which encrypts by itself)")
    connect: Connect | None = Field(default=None, description="address of a Cloud SQL Auth Proxy or tunnel")
    app_host: str | None = Field(default=None, description="host in the app's URL: an address, a socket "
                                 "folder, or `socket` for /cloudsql/<connection name> (Cloud Run)", examples=["socket", "10.0.0.5"])
    replace_api_users: bool = Field(default=False, description="delete an API-created role that owns nothing "
                                    "(so it is created again in SQL) when its cloudsqlsuperuser membership "
                                    "cannot be revoked in SQL")
    poll_interval: Duration = Field(default=timedelta(seconds=2), description="between operation polls")
    operation_timeout: Duration = Field(default=timedelta(minutes=10), description="longest wait for an operation")

    @field_validator("instance")
    @classmethod
    def _instance(cls, v: str) -> str:
        if not _INSTANCE.match(v):
            raise ValueError(f"instance {v!r} is not a Cloud SQL instance id (lower-case letters, digits, -); "
                             "give the id, not the connection name")
        return v

    def open(self, ctx: OpenContext) -> "CloudSqlDatabase":
        return CloudSqlDatabase(self, ctx)


class _RoleFacts(NamedTuple):
    createrole: bool
    createdb: bool
    in_group: bool
    dependencies: int      # pg_shdepend rows in every database: owned objects, privileges, policies


class CloudSqlDatabase:
    key = "cloudsql"

    def __init__(self, config: CloudSqlDatabaseConfig, ctx: OpenContext, *,
                 sleep: Callable[[float], None] = time.sleep, budget: RateBudget | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.auth = GoogleAuth(ctx.environ)
        self._sleep = sleep          # between operation polls (tests pass a recorder)
        self._budget = budget        # default: the budget shared by every client of this identity
        self._api: ApiClient | None = None
        self._instance: dict[str, Any] | None = None

    # -- Admin API -------------------------------------------------------------------------

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            self._api = api_client(self.ctx, self.auth, self._budget, title="Cloud SQL Admin API",
                                   url_env="CLOUDSQL_API_URL", default_url=DEFAULT_API)
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        response = self.api.request(method, path, headers=self.auth.headers(), **kw)
        return json_body(response, f"Cloud SQL Admin API: {method} {path}")

    @property
    def _base(self) -> str:
        return f"/v1/projects/{self.config.project}"

    def instance(self) -> dict[str, Any]:
        if self._instance is None:
            self._instance = self._call("GET", f"{self._base}/instances/{self.config.instance}")
        return self._instance

    def wait_operation(self, operation: dict[str, Any], what: str) -> dict[str, Any]:
        """Poll an sqladmin operation (PENDING → RUNNING → DONE) and surface its errors."""
        if not operation.get("name"):
            raise ProviderError(f"Cloud SQL Admin API: {what} returned no operation to follow")
        operation = wait_operation(
            operation, api="Cloud SQL", what=what,
            poll=lambda name: self._call("GET", f"{self._base}/operations/{name}"),
            done=lambda op: op.get("status") == "DONE", state=lambda op: op.get("status") or "pending",
            interval=self.config.poll_interval, timeout=self.config.operation_timeout, sleep=self._sleep,
            follow=f"gcloud sql operations describe {operation['name']} --project={self.config.project}")
        errors = (operation.get("error") or {}).get("errors") or []
        if errors:
            messages = "; ".join(str(e.get("message") or e.get("code") or "unknown error") for e in errors)
            raise ProviderError(f"Cloud SQL: {what} failed: {messages}")
        return operation

    # -- DatabaseProvider ------------------------------------------------------------------

    def describe(self) -> DatabaseInfo:
        inst = self.instance()
        where = f"Cloud SQL instance {self.config.project}:{self.config.instance}"
        version = str(inst.get("databaseVersion") or "")
        if not version.startswith("POSTGRES_"):
            raise Refused(f"{where} runs {version or 'an unknown engine'}, not PostgreSQL; "
                          "point database.instance at a Cloud SQL for PostgreSQL instance")
        if inst.get("instanceType") == "READ_REPLICA_INSTANCE":
            primary = str(inst.get("masterInstanceName") or "its primary").split(":")[-1]
            raise Refused(f"{where} is a read replica; roles can only be created on the primary: "
                          f"set database.instance to {primary}")
        state = inst.get("state")
        if state != "RUNNABLE":
            raise Refused(f"{where} is {state or 'in an unknown state'}, not RUNNABLE; wait until "
                          f"`gcloud sql instances describe {self.config.instance}` shows RUNNABLE and rerun")
        settings = inst.get("settings") or {}
        if settings.get("activationPolicy") == "NEVER":
            raise Refused(f"{where} is stopped (activation policy NEVER); start it with `gcloud sql instances "
                          f"patch {self.config.instance} --activation-policy=ALWAYS` and rerun")
        ip_config = settings.get("ipConfiguration") or {}
        ssl_mode = ip_config.get("sslMode") or (
            "ENCRYPTED_ONLY" if ip_config.get("requireSsl") else "ALLOW_UNENCRYPTED_AND_ENCRYPTED")
        if self.config.connect is None:
            if ssl_mode == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED":
                raise Refused(f"{where} requires client certificates (sslMode {ssl_mode}); run the Cloud SQL "
                              "Auth Proxy and set database.connect to its address (and sslmode: disable)")
            if ssl_mode != "ALLOW_UNENCRYPTED_AND_ENCRYPTED" and self.config.sslmode in ("disable", "allow"):
                raise Refused(f"{where} only accepts encrypted connections (sslMode {ssl_mode}) but "
                              f"database.sslmode is {self.config.sslmode}; use require, or connect through "
                              "the Cloud SQL Auth Proxy with database.connect")
        installed = str(inst.get("databaseInstalledVersion") or version)
        details = {
            "instance": str(inst.get("connectionName") or f"{self.config.project}:{self.config.instance}"),
            "region": str(inst.get("region") or ""),
            "tier": str(settings.get("tier") or ""),
            "edition": str(settings.get("edition") or "ENTERPRISE"),
            "availability": str(settings.get("availabilityType") or ""),
            "ssl_mode": ssl_mode,
            "admin": f"{self.config.admin_user}@{self._host()}:{self._port()}",
        }
        return DatabaseInfo(
            engine="postgres",
            version=installed.removeprefix("POSTGRES_").replace("_", "."),
            plan=str(settings.get("tier") or "") or None,
            credentials="sql",
            details={k: v for k, v in details.items() if v},
        )

    def _instance_address(self) -> str:
        addresses = self.instance().get("ipAddresses") or []
        for kind in ("PRIMARY", "PRIVATE"):
            for entry in addresses:
                if entry.get("type") == kind and entry.get("ipAddress"):
                    return str(entry["ipAddress"])
        raise ConfigError(f"Cloud SQL instance {self.config.instance} has no IP address the tool can reach; "
                          "run the Cloud SQL Auth Proxy and set database.connect to its address")

    def _host(self) -> str:
        return self.config.connect.host if self.config.connect else self._instance_address()

    def _port(self) -> int:
        return self.config.connect.port if self.config.connect else 5432

    def admin_dsn(self) -> Secret:
        from psycopg.conninfo import make_conninfo

        password = self.ctx.environ.get(self.config.admin_password_env)
        if not password:
            raise ConfigError(f"environment variable {self.config.admin_password_env} (database.admin_password_env) "
                              f"is not set; it holds the password of {self.config.admin_user}")
        return Secret(make_conninfo(
            host=self._host(), port=str(self._port()), user=self.config.admin_user, password=password,
            dbname=self.config.database, sslmode=self.config.sslmode,
        ))

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        app_host = self.config.app_host
        if app_host == "socket":
            app_host = f"/cloudsql/{self.instance().get('connectionName') or self._connection_name()}"
        if app_host and app_host.startswith("/"):
            # a Unix socket folder: libpq takes it as ?host=, and TLS does not apply to sockets
            return Credential(name=user, user=user, host="", port=5432, database=self.config.database,
                              password=password, sslmode="disable", options={"host": app_host})
        return Credential(name=user, user=user, host=app_host or self._host(), port=self._port(),
                          database=self.config.database, password=password, sslmode=self.config.sslmode)

    def _connection_name(self) -> str:
        region = self.instance().get("region") or "REGION"
        return f"{self.config.project}:{region}:{self.config.instance}"

    def preflight_sql(self, conn: Any) -> list[str]:
        row = conn.execute("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not row or not row[0]:
            return [f"the admin user {self.config.admin_user} lacks CREATEROLE, so it cannot create the "
                    "application role; set database.admin_user to postgres (or to a user created through "
                    "Cloud SQL, which has CREATEROLE)"]
        return []

    # -- roles created through the Admin API -----------------------------------------------

    @staticmethod
    def _facts(conn: Any, role: str) -> _RoleFacts | None:
        row = conn.execute(
            """
            SELECT r.rolcreaterole, r.rolcreatedb,
                   EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                           WHERE m.member = r.oid AND g.rolname = %(group)s),
                   (SELECT count(*) FROM pg_shdepend d
                     WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid)
              FROM pg_roles r WHERE r.rolname = %(role)s
            """, {"group": SUPERUSER_GROUP, "role": role}).fetchone()
        return _RoleFacts(bool(row[0]), bool(row[1]), bool(row[2]), int(row[3])) if row else None

    def adjust_existing_role(self, conn: Any, role: str) -> list[str]:
        """Take cloudsqlsuperuser, CREATEROLE and CREATEDB away from an existing `role`.

        Returns what was done, as sentences (empty: nothing to do, or no such role). When
        PostgreSQL does not let the admin user revoke them (PG 16+: the membership was granted by
        Cloud SQL's own superuser), either deletes the role through the Admin API (with
        `replace_api_users`, and only if it owns and holds nothing; the sentence says so and the
        caller must then create it again) or raises Refused with the fix, having changed nothing.
        """
        from psycopg import errors, sql

        facts = self._facts(conn, role)
        if facts is None or not (facts.in_group or facts.createrole or facts.createdb):
            return []
        powers = [p for p, on in ((SUPERUSER_GROUP, facts.in_group), ("CREATEROLE", facts.createrole),
                                  ("CREATEDB", facts.createdb)) if on]

        class _NotEffective(Exception):
            pass

        try:
            with conn.transaction():
                if facts.in_group:
                    conn.execute(sql.SQL("REVOKE {} FROM {}").format(
                        sql.Identifier(SUPERUSER_GROUP), sql.Identifier(role)))
                if facts.createrole or facts.createdb:
                    conn.execute(sql.SQL("ALTER ROLE {} NOCREATEROLE NOCREATEDB").format(sql.Identifier(role)))
                after = self._facts(conn, role)
                # from PG 16 a REVOKE only removes grants made by the current user: verify, never assume
                if after is None or after.in_group or after.createrole or after.createdb:
                    raise _NotEffective()
            return [f"{role} already existed with {', '.join(powers)} (as Cloud SQL gives users created through "
                    f"its API); revoked {', '.join(powers)} from it"]
        except (errors.InsufficientPrivilege, _NotEffective):
            pass

        who = f"{self.config.admin_user} cannot revoke {', '.join(powers)} from {role} in SQL"
        gcloud = (f"gcloud sql users delete {role} --instance={self.config.instance} "
                  f"--project={self.config.project}")
        if facts.dependencies:
            raise Refused(f"{role} was created through the Cloud SQL API ({', '.join(powers)}) and {who}; it owns "
                          f"or holds privileges on {facts.dependencies} object(s). Move them away (REASSIGN OWNED "
                          f"BY {role} TO {self.config.admin_user}; DROP OWNED BY {role}; in every database), run "
                          f"`{gcloud}`, then rerun to create it in SQL")
        if not self.config.replace_api_users:
            raise Refused(f"{role} was created through the Cloud SQL API ({', '.join(powers)}) and {who}; it owns "
                          f"nothing, so run `{gcloud}` (or set database.replace_api_users: true) and rerun to "
                          "create it in SQL")
        operation = self._call("DELETE", f"{self._base}/instances/{self.config.instance}/users",
                               params={"name": role})
        self.wait_operation(operation, f"deleting user {role}")
        if self._facts(conn, role) is not None:
            raise ProviderError(f"Cloud SQL: the operation deleting user {role} finished but the role still exists")
        return [f"{role} was created through the Cloud SQL API ({', '.join(powers)}) and {who}; it owned "
                "nothing, so it was deleted through the Admin API and must be created again in SQL"]

    # credentials are SQL roles for this provider
    def credential(self, name: str) -> Credential | None:
        raise NotImplementedError("Cloud SQL application roles are created in SQL")

    create_credential = rotate = destroy = credential
