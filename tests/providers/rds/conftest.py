"""moto (in-process, no network) for RDS, Secrets Manager, SSM and ECS; the SQL side on real
PostgreSQL clusters laid out as RDS lays them out (tests/providers/rds/rds_server.py): bootstrap
superuser rdsadmin, a NOSUPERUSER CREATEROLE CREATEDB master in rds_superuser, and the server's
front door enforcing rds.restrict_password_commands. `pg.port` is that front door's port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg import sql

from providers.base import OpenContext, RetryPolicy
from tests.conftest import VERSIONS, PgTarget, _clusters, _retire_cluster, _start
from tests.providers.rds.rds_server import ADMIN, LAYOUT, RdsFront
from tests.providers.conftest import FLAG, URL_VAR  # noqa: F401 (tests import them from here)
from tests.providers.conftest import Login, fake_context, new_login

REGION = "eu-west-1"
ACCOUNT = "123456789012"     # moto's default account

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


# -- the RDS-like server ---------------------------------------------------------------------------

_fronts: dict[str, RdsFront] = {}


@pytest.fixture(scope="session", params=[v[0] for v in VERSIONS])
def cluster(request: pytest.FixtureRequest, cluster_base):
    """Overrides tests/conftest.py's: one cluster per version and worker whose bootstrap
    superuser is rdsadmin, with RDS's roles, behind the front door."""
    label = f"rds-{request.param}"
    if label not in _clusters:
        import psycopg

        rc = _clusters[label] = _start(label, dict(VERSIONS)[request.param], cluster_base, admin_user=ADMIN)
        with psycopg.connect(rc.admin(), autocommit=True) as conn:
            conn.execute(LAYOUT)
        _fronts[label] = RdsFront(rc.cluster, cluster_base / label)

        def retire() -> None:
            _fronts.pop(label).close()
            _retire_cluster(label)

        request.addfinalizer(retire)
    yield _clusters[label]


@dataclass
class RdsTarget(PgTarget):
    """The test's database, reached (`port`, `tcp_dsn`) through RDS's front door."""
    front: RdsFront | None = None

    @property
    def port(self) -> int:
        assert self.front is not None
        return self.front.port


@pytest.fixture
def pg(pg, cluster) -> RdsTarget:
    """Overrides tests/conftest.py's: the same fresh database, behind the front, with the RDS
    role layout as the cluster started (a test may have dropped rds_iam and made it again)."""
    pg.execute(LAYOUT)
    return RdsTarget(pg.rc, pg.dbname, pg.suffix, pg.roles, front=_fronts[cluster.label])


def restrict_password_commands(pg, on: bool = True) -> None:
    """What a parameter group's rds.restrict_password_commands means on the server: the setting
    the front's guard reads, for the test's database."""
    pg.execute(sql.SQL("ALTER DATABASE {} SET rds.restrict_password_commands = {}").format(
        sql.Identifier(pg.dbname), sql.Literal("1" if on else "0")))


def outside_rds_superuser(pg, login) -> None:
    """An admin login that is not (or no longer) in rds_superuser: not the master RDS made, but a
    CREATEROLE user given as master_secret, which is how a tool meets a master without rds_password."""
    pg.execute(sql.SQL("REVOKE rds_superuser FROM {}").format(sql.Identifier(login.name)))


# -- AWS ---------------------------------------------------------------------------------------------

@pytest.fixture
def aws_environ(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment handed to providers (ctx.environ); os.environ gets the same because
    moto and botocore's default chain read it."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_RDS", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                 "AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_ECS", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    # a fresh moto ECS service reports this many running tasks (its deployments COMPLETED)
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "2")
    return dict(AWS_ENV)


@pytest.fixture
def aws(aws_environ: dict[str, str]) -> Iterator[None]:
    from moto import mock_aws

    with mock_aws():
        yield


def client(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION)


FAST = RetryPolicy(attempts=3, total_seconds=10, timeout_seconds=2, max_backoff_seconds=0.2)


@pytest.fixture
def make_ctx(tmp_path, aws_environ):
    def make(**environ: str) -> OpenContext:
        return fake_context({**aws_environ, **environ}, tmp_path, retry=FAST)

    return make


@pytest.fixture
def ctx(make_ctx) -> OpenContext:
    return make_ctx()


Master = Login        # RDS calls its admin login the master user


def ensure_role(pg, name: str) -> None:
    """rds_password / rds_iam are cluster-wide, as on RDS (LAYOUT makes them)."""
    with pg.connect() as conn:
        conn.execute(sql.SQL("""
            DO $$ BEGIN
              IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {name}) THEN
                CREATE ROLE {ident} NOLOGIN;
              END IF;
            EXCEPTION WHEN duplicate_object THEN NULL;  -- another test got there first
            END $$""").format(name=sql.Literal(name), ident=sql.Identifier(name)))


@pytest.fixture
def master(pg, canary_password) -> Master:
    """The master user as RDS makes it: NOSUPERUSER CREATEROLE CREATEDB, a member of rds_superuser."""
    master = new_login(pg, "postgres", canary_password, "NOSUPERUSER CREATEROLE CREATEDB")
    ident = sql.Identifier(master.name)
    pg.execute(sql.SQL("GRANT rds_superuser TO {}").format(ident))
    pg.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(sql.Identifier(pg.dbname), ident))
    pg.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
    return master


def create_parameter_group(name: str, family: str = "postgres16", **params: str) -> str:
    rds = client("rds")
    rds.create_db_parameter_group(DBParameterGroupName=name, DBParameterGroupFamily=family, Description="test")
    if params:
        rds.modify_db_parameter_group(DBParameterGroupName=name, Parameters=[
            {"ParameterName": k, "ParameterValue": v, "ApplyMethod": "pending-reboot"} for k, v in params.items()])
    return name


def create_instance(ident: str = "raptor-staging", *, engine: str = "postgres", version: str = "16.3",
                    parameter_group: str | None = None, dbname: str | None = "raptor", iam: bool = False,
                    master: Master | None = None, pg=None) -> dict[str, Any]:
    """An RDS instance with an RDS-managed master secret; the secret holds `master`'s login. With
    `pg` (the database behind it), the server enforces the group's rds.restrict_password_commands."""
    rds = client("rds")
    kwargs: dict[str, Any] = dict(
        DBInstanceIdentifier=ident, DBInstanceClass="db.t4g.micro", Engine=engine, EngineVersion=version,
        MasterUsername=master.name if master else "postgres", ManageMasterUserPassword=True,
        AllocatedStorage=20, EnableIAMDatabaseAuthentication=iam)
    if parameter_group:
        kwargs["DBParameterGroupName"] = parameter_group
    if dbname:
        kwargs["DBName"] = dbname
    rds.create_db_instance(**kwargs)
    db = rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]
    if master:
        client("secretsmanager").put_secret_value(
            SecretId=db["MasterUserSecret"]["SecretArn"],
            SecretString=json.dumps({"username": master.name, "password": master.password}))
    if pg is not None and parameter_group:
        values = {p["ParameterName"]: p.get("ParameterValue") for page in rds.get_paginator(
            "describe_db_parameters").paginate(DBParameterGroupName=parameter_group) for p in page["Parameters"]}
        restrict_password_commands(pg, values.get("rds.restrict_password_commands") == "1")
    return db


@pytest.fixture
def db_config(pg, master):
    """A database block pointed at the test cluster (`connect`), for an instance made by the test."""
    def make(**overrides: Any) -> dict[str, Any]:
        block = {"provider": "rds", "instance": "raptor-staging", "region": REGION, "sslmode": "disable",
                 "connect": {"host": "127.0.0.1", "port": pg.port}, "database": pg.dbname}
        block.update(overrides)
        return block

    return make
