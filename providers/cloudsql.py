"""`provider: cloudsql` — Cloud SQL for PostgreSQL through the Cloud SQL Admin API.

The instance is read with `instances.get` (must be PostgreSQL, RUNNABLE, started, a primary:
replicas and read pools are refused, naming the primary). The application role is created in SQL
by the admin user (`postgres` by default, password from `admin_password_env`; or, with
`admin_auth: iam`, an IAM principal logging in with its OAuth access token, which needs the
instance's cloudsql.iam_authentication flag on), never through the API: users created through
the API land in `cloudsqlsuperuser` with CREATEROLE and CREATEDB. `adjust_existing_role` takes those powers
away from a role that already exists that way (in SQL where PostgreSQL allows it; from PG 16 a
membership granted by Cloud SQL's own superuser cannot be revoked by `postgres`, and with
`replace_api_users: true` such a role that owns nothing is deleted through the Admin API so that
the engine creates it again in SQL). Admin API operations are polled until DONE.

Two endpoints. Where the tool connects: `connect: {host, port}` (a Cloud SQL Auth Proxy or tunnel),
else the instance's address of kind `ip` (public = PRIMARY, private = PRIVATE, psc = its Private
Service Connect DNS name; unset: public, else private, else psc), port 5432, with `sslmode`. What
the app uses: `app_host` (an address, a socket folder, or `socket` = the /cloudsql/<connection
name> folder Cloud Run mounts), `app_port` (default 5432, never the proxy's port) and
`app_sslmode` (default require for an address: the tool's `disable` behind its own proxy is not
the app's); without `app_host` the app uses the tool's endpoint (a sidecar proxy at the same
address). When the app's endpoint is not the tool's, the app's login is proven over the tool's
endpoint with the same user, password and database (`login_route`): from the operator's machine
neither /cloudsql nor a private address need exist.

SSL: `settings.ipConfiguration.sslMode`, or, when only the legacy `requireSsl: true` is set,
TRUSTED_CLIENT_CERTIFICATE_REQUIRED (the document: "only allow connections encrypted with SSL/TLS
and with valid client certificates"). Client certificates are the Auth Proxy's or a connector's
business: such an instance is refused unless both endpoints go through one. `sslmode: verify-ca`
/ `verify-full` verify the server with the instance's CA from the API (`serverCaCert`, else
`instances.listServerCas`), written beside the project file under .runbook/.

IAM database authentication for the app (`auth: iam`): `role.name` is the app's service account
as Cloud SQL names its database user (the email without .gserviceaccount.com), and it must be
one of this project's. The role is created through `users.insert` (type CLOUD_IAM_SERVICE_ACCOUNT:
Cloud SQL logs a role in with IAM only if it made it), then marked and granted in SQL like any
other. The app's URL has no password: the app reaches the instance through the Cloud SQL Auth
Proxy with `--auto-iam-authn` (or a connector with IAM authentication), which logs in with the
service account's token. Verify proves that login over the tool's endpoint with a short-lived
token for the service account from the IAM Credentials API (generateAccessToken, which needs
roles/iam.serviceAccountTokenCreator on the account) as the password.

Base URLs: CLOUDSQL_API_URL (default https://sqladmin.googleapis.com), IAMCREDENTIALS_API_URL
(default https://iamcredentials.googleapis.com); token: see providers.gcp_auth.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from providers.base import Connect, Credential, DatabaseBase, DatabaseInfo, EnvVarName, OpenContext, Progress, SslMode
from providers.gcp import Duration, ProjectId, api_client, json_body, wait_operation
from providers.gcp_auth import GoogleAuth
from providers.http import ApiClient, RateBudget
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret

DEFAULT_API = "https://sqladmin.googleapis.com"
DEFAULT_IAMCREDENTIALS_API = "https://iamcredentials.googleapis.com"
SUPERUSER_GROUP = "cloudsqlsuperuser"
IAM_SERVICE_ACCOUNT_GROUP = "cloudsqliamserviceaccount"   # where Cloud SQL puts the users it makes for service accounts
LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"   # what an IAM database login's token must carry

_INSTANCE = re.compile(r"^[a-z][a-z0-9-]{0,97}$")
_SA_SUFFIX = ".gserviceaccount.com"


class CloudSqlDatabaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="cloudsql database")
    provider: Literal["cloudsql"] = "cloudsql"
    project: ProjectId = Field(description="Google Cloud project id", examples=['raptor-prod-123'])
    instance: str = Field(description="Cloud SQL instance id", examples=['main'])
    admin_user: str = Field(default="postgres", description="the user that creates the role and runs the grants")
    admin_password_env: EnvVarName | None = Field(default=None, description="environment variable holding the "
                                                  "admin user's password (admin_auth: password)",
                                                  examples=["CLOUDSQL_ADMIN_PASSWORD"])
    admin_auth: Literal["password", "iam"] = Field(
        default="password", description="how the admin logs in: its password, or IAM database authentication "
        "(admin_user is an IAM principal, e.g. ops@example.com or sa@project.iam, and the OAuth access token "
        "is its password)")
    auth: Literal["password", "iam"] = Field(
        default="password", description="how the app role logs in: a password in its URL, or IAM database "
        "authentication (role.name is the app's service account without .gserviceaccount.com, e.g. "
        "raxx-api@raxx-prod-123.iam; the app runs the Cloud SQL Auth Proxy with --auto-iam-authn or a connector "
        "with IAM authentication, and its URL has no password)")
    database: str = Field(default="postgres", description="database the role is granted in")
    sslmode: SslMode = Field(default="require", description="sslmode of the tool's session, and of the app's "
                             "URL when there is no app_host (disable behind the Cloud SQL Auth Proxy, which "
                             "encrypts by itself; verify-ca/verify-full use the instance's server CA)")
    connect: Connect | None = Field(default=None, description="where the tool connects: a Cloud SQL Auth Proxy "
                                    "or tunnel (the app's URL never takes its port or sslmode)")
    ip: Literal["public", "private", "psc"] | None = Field(
        default=None, description="which address of the instance the tool uses without connect (default: "
        "public, else private, else psc)", examples=["private"])
    app_host: str | None = Field(default=None, description="host in the app's URL: an address, a socket "
                                 "folder, or `socket` for /cloudsql/<connection name> (Cloud Run)",
                                 examples=["socket", "10.0.0.5"])
    app_port: int | None = Field(default=None, ge=1, le=65535, description="port in the app's URL when app_host "
                                 "is an address (default 5432)", examples=[5432])
    app_sslmode: SslMode | None = Field(default=None, description="sslmode in the app's URL when app_host is an "
                                        "address (default require; with verify-*, also set app_sslrootcert)",
                                        examples=["require"])
    app_sslrootcert: str | None = Field(default=None, description="path of the server CA inside the app's "
                                        "container, for app_sslmode verify-ca / verify-full",
                                        examples=["/etc/ssl/cloudsql/server-ca.pem"])
    replace_api_users: bool = Field(default=False, description="delete an API-created role that owns nothing "
                                    "(so it is created again in SQL) when its cloudsqlsuperuser membership "
                                    "cannot be revoked in SQL")
    poll_interval: Duration = Field(default=timedelta(seconds=2), description="between operation polls")
    operation_timeout: Duration = Field(default=timedelta(minutes=10), description="longest wait for an operation")

    @model_validator(mode="after")
    def _admin_login(self) -> "CloudSqlDatabaseConfig":
        if self.admin_auth == "password" and not self.admin_password_env:
            raise ValueError("admin_password_env is required (or admin_auth: iam to log in with an IAM token)")
        if self.admin_auth == "iam" and self.admin_user.endswith(".gserviceaccount.com"):
            raise ValueError(f"admin_user {self.admin_user!r}: Cloud SQL names a service account's database user "
                             f"without .gserviceaccount.com ({self.admin_user.removesuffix('.gserviceaccount.com')})")
        return self

    @model_validator(mode="after")
    def _app_tls(self) -> "CloudSqlDatabaseConfig":
        if self.app_sslmode in ("verify-ca", "verify-full") and not self.app_sslrootcert:
            raise ValueError(f"app_sslmode {self.app_sslmode} needs app_sslrootcert: the path of the instance's "
                             "server CA inside the app's container")
        return self

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


class CloudSqlDatabase(DatabaseBase):
    key = "cloudsql"
    routes_logins = True
    adjusts_existing_roles = True

    def __init__(self, config: CloudSqlDatabaseConfig, ctx: OpenContext, *,
                 sleep: Callable[[float], None] = time.sleep, budget: RateBudget | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.auth = GoogleAuth(ctx.environ)
        self._sleep = sleep          # between operation polls (tests pass a recorder)
        self._budget = budget        # default: the budget shared by every client of this identity
        self._api: ApiClient | None = None
        self._instance: dict[str, Any] | None = None
        self._logging: ApiClient | None = None   # Cloud Logging, for the soak's errors check

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
        if self._logging is not None:
            self._logging.close()
            self._logging = None

    def read_log(self, since: float, role: str, *, asked: bool = True, admin_dsn: Secret | None = None):
        if not asked:
            return None      # the log API and its permission are the operator's to grant: on when written
        from providers import cloudsql_logs

        if self._logging is None:
            self._logging = api_client(self.ctx, self.auth, self._budget, title="Cloud Logging API",
                                       url_env="LOGGING_API_URL", default_url=cloudsql_logs.DEFAULT_API)
        return cloudsql_logs.read(self._logging, self.auth.headers(), self.config.project, self.config.instance,
                                  since, role)

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
            follow=f"gcloud sql operations describe {operation['name']} --project={self.config.project}",
            report=lambda state, left, done: self.ctx.progress(Progress(f"cloud sql: {what}", state, left, done)))
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
        kind = inst.get("instanceType") or "CLOUD_SQL_INSTANCE"
        if kind != "CLOUD_SQL_INSTANCE":
            # replicas and read pools are read-only: CREATE ROLE there dies with ReadOnlySqlTransaction
            what = {"READ_REPLICA_INSTANCE": "a read replica", "READ_POOL_INSTANCE": "a read pool"}.get(kind, kind)
            primary = str(inst.get("masterInstanceName") or "").split(":")[-1]
            fix = f"set database.instance to {primary}" if primary else "set database.instance to its primary"
            raise Refused(f"{where} is {what}; roles can only be created on the primary: {fix}")
        state = inst.get("state")
        if state != "RUNNABLE":
            raise Refused(f"{where} is {state or 'in an unknown state'}, not RUNNABLE; wait until "
                          f"`gcloud sql instances describe {self.config.instance}` shows RUNNABLE and rerun")
        settings = inst.get("settings") or {}
        if settings.get("activationPolicy") == "NEVER":
            raise Refused(f"{where} is stopped (activation policy NEVER); start it with `gcloud sql instances "
                          f"patch {self.config.instance} --activation-policy=ALWAYS` and rerun")
        ssl_mode = self.ssl_mode()
        self._refuse_unreachable_tls(where, ssl_mode)
        if self.config.auth == "iam":
            self._refuse_unless_service_account_user(where)
        iam_keys = [k for k, on in (("admin_auth", self.config.admin_auth == "iam"), ("auth", self.config.auth == "iam")) if on]
        if iam_keys:
            flags = {f.get("name"): f.get("value") for f in settings.get("databaseFlags") or []}
            if flags.get("cloudsql.iam_authentication") != "on":
                raise Refused(f"{where} does not accept IAM logins (database flag cloudsql.iam_authentication is "
                              f"not on) but database.{' and database.'.join(iam_keys)} is iam; turn the flag on (`gcloud sql instances patch "
                              f"{self.config.instance} --database-flags=cloudsql.iam_authentication=on`, listing "
                              "the instance's other flags too: the list is replaced) or use password logins")
        installed = str(inst.get("databaseInstalledVersion") or version)
        app = self.credential_for("app", None)
        details = {
            "instance": str(inst.get("connectionName") or f"{self.config.project}:{self.config.instance}"),
            "region": str(inst.get("region") or ""),
            "tier": str(settings.get("tier") or ""),
            "edition": str(settings.get("edition") or "ENTERPRISE"),
            "availability": str(settings.get("availabilityType") or ""),
            "ssl_mode": ssl_mode,
            "admin": f"{self.config.admin_user}@{self._host()}:{self._port()}",
            "app_endpoint": (app.options.get("host") or f"{app.host}:{app.port}") + f" (sslmode {app.sslmode})",
        }
        iam = self.config.auth == "iam"
        if iam:
            details["auth"] = f"IAM database authentication as {self.ctx.role_name}{_SA_SUFFIX}"
            details["note_iam"] = ("the app must log in through the Cloud SQL Auth Proxy with --auto-iam-authn "
                                   f"(`cloud-sql-proxy --auto-iam-authn {self._connection_name()}`) or a Cloud SQL "
                                   "connector with IAM authentication, running as that service account")
        return DatabaseInfo(
            engine="postgres",
            version=installed.removeprefix("POSTGRES_").replace("_", "."),
            plan=str(settings.get("tier") or "") or None,
            credentials="sql",
            password_auth=not iam,
            role_grants=(IAM_SERVICE_ACCOUNT_GROUP,) if iam else (),
            login_role_api=iam,
            details={k: v for k, v in details.items() if v},
        )

    def _refuse_unless_service_account_user(self, where: str) -> None:
        """auth: iam logs in a service account of this project, named as Cloud SQL names its user."""
        role = self.ctx.role_name or ""
        shape = re.fullmatch(r"([a-z][a-z0-9-]{4,28}[a-z0-9])@([a-z][a-z0-9-]{4,28}[a-z0-9])\.iam", role)
        if not shape or shape.group(2) != self.config.project:
            raise Refused(f"database.auth: iam logs in one of project {self.config.project}'s service accounts, so "
                          f"role.name must be its email without {_SA_SUFFIX} (e.g. raxx-api@{self.config.project}.iam), "
                          f"not {role!r}")
        if self.config.app_host == "socket" or (self.config.app_host or "").startswith("/"):
            raise Refused(f"{where}: Cloud Run's /cloudsql socket does not log in with IAM; run the Cloud SQL Auth "
                          f"Proxy beside the app (`cloud-sql-proxy --auto-iam-authn {self._connection_name()}`) and set "
                          "database.app_host to its address (app_port, app_sslmode: disable)")

    def ssl_mode(self) -> str:
        """The instance's SSL enforcement, as `sslMode` names it. `requireSsl` is the legacy field:
        alone and true it means client certificates are required (the document pairs
        TRUSTED_CLIENT_CERTIFICATE_REQUIRED with requireSsl true for PostgreSQL)."""
        ip_config = (self.instance().get("settings") or {}).get("ipConfiguration") or {}
        mode = ip_config.get("sslMode")
        if mode and mode != "SSL_MODE_UNSPECIFIED":
            return str(mode)
        return "TRUSTED_CLIENT_CERTIFICATE_REQUIRED" if ip_config.get("requireSsl") else "ALLOW_UNENCRYPTED_AND_ENCRYPTED"

    def _refuse_unreachable_tls(self, where: str, ssl_mode: str) -> None:
        """Both endpoints must be able to log in under the instance's SSL mode, before any change."""
        c = self.config
        encrypted = ssl_mode != "ALLOW_UNENCRYPTED_AND_ENCRYPTED"
        if c.connect is None:
            if ssl_mode == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED":
                raise Refused(f"{where} requires client certificates (sslMode {ssl_mode}); run the Cloud SQL Auth "
                              f"Proxy (`cloud-sql-proxy {self._connection_name()} --port 15432`) and set "
                              "database.connect to its address with sslmode: disable, or use a Cloud SQL connector")
            if encrypted and c.sslmode in ("disable", "allow"):
                raise Refused(f"{where} only accepts encrypted connections (sslMode {ssl_mode}) but "
                              f"database.sslmode is {c.sslmode}; use require, or connect through "
                              "the Cloud SQL Auth Proxy with database.connect")
        if c.app_host and c.app_host != "socket" and not c.app_host.startswith("/") and c.auth != "iam":
            # (auth: iam: the app is behind the Auth Proxy or a connector, which brings its own TLS)
            if ssl_mode == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED":
                raise Refused(f"{where} requires client certificates (sslMode {ssl_mode}) but the app's URL names "
                              f"{c.app_host} directly; use app_host: socket (Cloud Run's Cloud SQL connection) or "
                              "the address of an Auth Proxy beside the app")
            if encrypted and self._app_sslmode() in ("disable", "allow"):
                raise Refused(f"{where} only accepts encrypted connections (sslMode {ssl_mode}) but the app's URL "
                              f"would use sslmode {self._app_sslmode()}; set database.app_sslmode to require")

    # -- the tool's endpoint ---------------------------------------------------------------

    def _instance_address(self) -> str:
        inst = self.instance()
        addresses = inst.get("ipAddresses") or []
        by_kind = {"public": "PRIMARY", "private": "PRIVATE"}

        def ip_of(kind: str) -> str | None:
            return next((str(e["ipAddress"]) for e in addresses if e.get("type") == kind and e.get("ipAddress")), None)

        def psc_name() -> str | None:
            psc = ((inst.get("settings") or {}).get("ipConfiguration") or {}).get("pscConfig") or {}
            if not psc.get("pscEnabled"):
                return None
            names = [d.get("name") for d in inst.get("dnsNames") or []
                     if d.get("connectionType") == "PRIVATE_SERVICE_CONNECT" and d.get("name")]
            return str(names[0]).rstrip(".") if names else (str(inst.get("dnsName") or "").rstrip(".") or None)

        want = self.config.ip
        if want == "psc":
            found = psc_name()
        elif want:
            found = ip_of(by_kind[want])
        else:
            found = ip_of("PRIMARY") or ip_of("PRIVATE") or psc_name()
        if found:
            return found
        which = f"a {want} address" if want else "an address the tool can reach"
        raise ConfigError(f"Cloud SQL instance {self.config.instance} has {'no ' + which.split(' ', 1)[1]}"
                          f"{' (database.ip)' if want else ''}; run the Cloud SQL Auth Proxy and set "
                          "database.connect to its address")

    def _host(self) -> str:
        return self.config.connect.host if self.config.connect else self._instance_address()

    def _port(self) -> int:
        return self.config.connect.port if self.config.connect else 5432

    def _tls(self) -> dict[str, str]:
        """sslmode (and sslrootcert for verify-*) of the tool's own sessions."""
        mode = self.config.sslmode
        if mode not in ("verify-ca", "verify-full"):
            return {"sslmode": mode}
        return {"sslmode": mode, "sslrootcert": str(self._server_ca_file())}

    def _server_ca_file(self) -> Path:
        """The instance's server CA, from the API, as a PEM file under .runbook/ (re-read each run)."""
        inst = self.instance()
        pem = str((inst.get("serverCaCert") or {}).get("cert") or "")
        if not pem:
            listed = self._call("GET", f"{self._base}/instances/{self.config.instance}/listServerCas")
            pem = "\n".join(str(c.get("cert") or "") for c in listed.get("certs") or [] if c.get("cert"))
        if "BEGIN CERTIFICATE" not in pem:
            raise ProviderError(f"Cloud SQL Admin API: instance {self.config.instance} reports no server CA "
                                "certificate, so the server cannot be verified; use sslmode: require")
        folder = Path(str(self.ctx.base_dir)) / ".runbook"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"cloudsql-{self.config.project}-{self.config.instance}-server-ca.pem"
        path.write_text(pem if pem.endswith("\n") else pem + "\n")
        return path

    def admin_dsn(self) -> Secret:
        from psycopg.conninfo import make_conninfo

        if self.config.admin_auth == "iam":
            # IAM database authentication: the OAuth access token of the identity running the tool
            password = self.auth.access_token().reveal()
        else:
            password = self.ctx.environ.get(self.config.admin_password_env or "")
        if not password:
            raise ConfigError(f"environment variable {self.config.admin_password_env} (database.admin_password_env) "
                              f"is not set; it holds the password of {self.config.admin_user}")
        return Secret(make_conninfo(
            host=self._host(), port=str(self._port()), user=self.config.admin_user, password=password,
            dbname=self.config.database, **self._tls(),
        ))

    # -- the app's endpoint ----------------------------------------------------------------

    def _app_sslmode(self) -> str:
        c = self.config
        if c.app_sslmode:
            return c.app_sslmode
        # behind its own proxy the tool may say disable; the app's direct connection is not proxied
        return "require" if c.connect is not None else c.sslmode

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        c = self.config
        app_host = c.app_host
        if app_host == "socket":
            app_host = f"/cloudsql/{self._connection_name()}"
        if app_host and app_host.startswith("/"):
            # a Unix socket folder: libpq takes it as ?host=, and TLS does not apply to sockets
            return Credential(name=user, user=user, host="", port=5432, database=c.database,
                              password=password, sslmode="disable", options={"host": app_host})
        if app_host:
            sslmode = self._app_sslmode()
            options = {"sslrootcert": c.app_sslrootcert} if sslmode.startswith("verify") and c.app_sslrootcert else {}
            return Credential(name=user, user=user, host=app_host, port=c.app_port or 5432, database=c.database,
                              password=password, sslmode=sslmode, options=options)
        if c.connect is not None:
            # the tool's Auth Proxy or tunnel is the tool's: the app's URL names the instance's
            # reported address (or app_port), with the app's sslmode, never connect's port or sslmode
            sslmode = self._app_sslmode()
            options = {"sslrootcert": c.app_sslrootcert} if sslmode.startswith("verify") and c.app_sslrootcert else {}
            return Credential(name=user, user=user, host=self._instance_address(), port=c.app_port or 5432,
                              database=c.database, password=password, sslmode=sslmode, options=options)
        # no app_host, no connect: the app reaches the instance where the tool does
        tls = self._tls()
        sslmode = tls.pop("sslmode")
        return Credential(name=user, user=user, host=self._host(), port=self._port(), database=c.database,
                          password=password, sslmode=sslmode, options=tls)

    def login_route(self, url: Secret) -> Secret:
        """Where the tool proves the app's login: the app's URL itself when the app uses the tool's
        endpoint; when it names the app's own endpoint (a /cloudsql socket, a private app_host, the
        app's port), the tool's endpoint with the URL's user, password and database. A URL that
        names any other endpoint is tried as it is: the tool does not vouch for a server it did not
        choose by logging in somewhere else."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        try:
            parts = conninfo_to_dict(url.reveal())
        except Exception:
            return url    # a malformed URL fails its login as it is
        user = str(parts.get("user") or "")
        app = self.credential_for(user, None)
        expected = (app.options.get("host") or app.host, str(app.port))
        if (str(parts.get("host") or ""), str(parts.get("port") or "5432")) != expected:
            return url
        keep = {k: str(parts[k]) for k in ("user", "password", "dbname") if parts.get(k)}
        if self.config.auth == "iam" and not parts.get("password") and user == self.ctx.role_name:
            # what the Auth Proxy does for the app: the service account's token as the password
            keep["password"] = self.service_account_token(user).reveal()
        elif expected == (self._host(), str(self._port())):
            return url
        return Secret(make_conninfo(host=self._host(), port=str(self._port()), **keep, **self._tls()))

    def service_account_token(self, user: str) -> Secret:
        """A short-lived access token of the service account behind Cloud SQL user `user`, with the
        scope an IAM database login needs (IAM Credentials API generateAccessToken)."""
        from urllib.parse import quote

        email = user + _SA_SUFFIX
        client = api_client(self.ctx, self.auth, self._budget, title="IAM Service Account Credentials API",
                            url_env="IAMCREDENTIALS_API_URL", default_url=DEFAULT_IAMCREDENTIALS_API)
        try:
            response = client.request(
                "POST", f"/v1/projects/-/serviceAccounts/{quote(email, safe='@.')}:generateAccessToken",
                headers=self.auth.headers(), json={"scope": [LOGIN_SCOPE], "lifetime": "300s"})
        except ProviderError as exc:
            raise ProviderError(f"no login token for {email}: {exc.message.rsplit(' failed: ', 1)[-1]}; the tool proves "
                                f"{user}'s IAM login with one, which needs roles/iam.serviceAccountTokenCreator on it: "
                                f"`gcloud iam service-accounts add-iam-policy-binding {email} "
                                f"--project={self.config.project} --member=user:YOU "
                                "--role=roles/iam.serviceAccountTokenCreator`") from None
        finally:
            client.close()
        token = json_body(response, "IAM Credentials API: generateAccessToken").get("accessToken")
        if not isinstance(token, str) or not token:
            raise ProviderError(f"IAM Credentials API: generateAccessToken for {email} returned no accessToken")
        return Secret(token)

    def create_login_role(self, conn: Any, role: str) -> None:
        """auth: iam — the service account's Cloud SQL user, made through users.insert (only a user
        Cloud SQL made logs in with IAM); it appears in PostgreSQL as a LOGIN role in
        cloudsqliamserviceaccount, which the engine then marks and grants like any other."""
        operation = self._call("POST", f"{self._base}/instances/{self.config.instance}/users",
                               json={"name": role, "type": "CLOUD_IAM_SERVICE_ACCOUNT"})
        self.wait_operation(operation, f"creating IAM user {role}")
        if self._facts(conn, role) is None:
            raise ProviderError(f"Cloud SQL: the operation creating IAM user {role} finished but the role does not exist")

    def _connection_name(self) -> str:
        inst = self.instance()
        if inst.get("connectionName"):
            return str(inst["connectionName"])
        return f"{self.config.project}:{inst.get('region') or 'REGION'}:{self.config.instance}"

    def preflight_sql(self, conn: Any) -> list[str]:
        row = conn.execute("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not row or not row[0]:
            return [f"the admin user {self.config.admin_user} lacks CREATEROLE, so it cannot create the "
                    "application role; set database.admin_user to postgres (or to a user created through "
                    "Cloud SQL, which has CREATEROLE)"]
        c = self.config
        if c.connect is not None and not c.app_host and self.ssl_mode() == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED":
            # the tool's proxy presents the certificate; the app's URL names the instance itself
            return [f"Cloud SQL instance {c.instance} requires client certificates and the app's URL would name its "
                    f"address {self._instance_address()} directly (database.connect is the tool's own way in); set "
                    "database.app_host to the app's Auth Proxy (e.g. app_host: 127.0.0.1, app_sslmode: disable) "
                    "or to socket on Cloud Run"]
        if self.config.auth == "iam":
            # verify will need a token for the app's account: find out now, before anything changes
            try:
                self.service_account_token(self.ctx.role_name)
            except ProviderError as exc:
                return [exc.message]
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
