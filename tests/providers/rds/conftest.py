"""moto (in-process, no network) for RDS, Secrets Manager, SSM and ECS; the SQL side on the real
PostgreSQL clusters from tests/conftest.py, with a non-superuser "master" as on RDS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql

from providers.base import OpenContext, RetryPolicy
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
    """rds_password / rds_iam are cluster-wide, as on RDS; created once, never dropped."""
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
    """A non-superuser master with CREATEROLE and a password, as RDS gives you; rds_password exists."""
    ensure_role(pg, "rds_password")
    master = new_login(pg, "master", canary_password, "CREATEROLE")
    ident = sql.Identifier(master.name)
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
                    master: Master | None = None) -> dict[str, Any]:
    """An RDS instance with an RDS-managed master secret; the secret holds `master`'s login."""
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
