"""provision → diagnose → rollback → rotate → retire through runbook.commands, with RDS, Secrets
Manager, SSM and ECS in moto and the SQL side on the real PostgreSQL (a non-superuser master)."""

from __future__ import annotations

import json
import logging

import psycopg
import pytest
from psycopg import sql

from runbook import commands, project as projects
from runbook.errors import Refused
from tests.providers.conftest import (
    ORDERS, as_login, assert_not_shown, diagnosed_clean, free_port, ran_ok, write_project as write_runbook,
)
from tests.providers.rds.conftest import (
    FLAG, REGION, URL_VAR, client, create_instance, create_parameter_group, outside_rds_superuser,
)

SECRET = "raptor/staging/database-url"
PARAM = "/raptor/staging/FLAG"


def write_project(tmp_path, pg, role: str, *, port: int | None = None) -> projects.Project:
    return projects.load(write_runbook(tmp_path, role, {
        "provider": "rds",
        "database": {"instance": "raptor-staging", "region": REGION, "sslmode": "disable", "database": pg.dbname,
                     "connect": {"host": "127.0.0.1", "port": port or pg.port}},
        "app": {"cluster": "raptor", "service": "web", "url_store": "secretsmanager", "url_name": SECRET,
                "flag_parameter": PARAM, "wait": {"timeout": "1m", "poll": "1s"}, "register_task_definition": True},
    }, url_var=URL_VAR, flag=FLAG))


@pytest.fixture
def world(aws, pg, master):
    """An RDS instance whose parameter group restricts password commands, an ECS service, and a
    table the master owns."""
    create_parameter_group("raptor-pg", **{"rds.restrict_password_commands": "1"})
    create_instance(parameter_group="raptor-pg", master=master, pg=pg)
    ecs = client("ecs")
    ecs.create_cluster(clusterName="raptor")
    ecs.register_task_definition(family="raptor-web", containerDefinitions=[
        {"name": "web", "image": "raptor:1", "memory": 256}])
    ecs.create_service(cluster="raptor", serviceName="web", taskDefinition="raptor-web", desiredCount=2)
    as_login(pg.tcp_dsn(master.name, master.password), ORDERS)
    return ecs


def deployment_id(ecs) -> str:
    return ecs.describe_services(cluster="raptor", services=["web"])["services"][0]["deployments"][0]["id"]


def secret_versions(stage: str) -> dict:
    return json.loads(client("secretsmanager").get_secret_value(SecretId=SECRET, VersionStage=stage)["SecretString"])


def role_state(pg, role: str, master) -> list[tuple]:
    return pg.execute(sql.SQL("""
        SELECT r.rolname, m.roleid::regrole::text FROM pg_roles r
        LEFT JOIN pg_auth_members m ON m.member = r.oid
        WHERE r.rolname IN ({}, {}) ORDER BY 1, 2""").format(sql.Literal(role), sql.Literal(master.name)))


def test_restricted_password_commands_refuse_provision_and_change_nothing(world, tmp_path, pg, master, aws_environ):
    outside_rds_superuser(pg, master)     # a master_secret login without rds_password
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, role)
    before_roles, before_deployment = role_state(pg, role, master), deployment_id(world)
    with pytest.raises(Refused) as err:
        commands.provision(project, "staging", yes=True, environ=aws_environ)
    assert err.value.exit_code == 2
    assert f'GRANT rds_password TO "{master.name}";' in err.value.message
    assert role_state(pg, role, master) == before_roles           # no role, no membership
    assert client("secretsmanager").list_secrets(Filters=[{"Key": "name", "Values": [SECRET]}])["SecretList"] == []
    assert client("ssm").describe_parameters()["Parameters"] == []
    assert deployment_id(world) == before_deployment       # no restart


def test_provision_diagnose_rollback_rotate_retire(world, tmp_path, pg, master, aws_environ, caplog):
    caplog.set_level(logging.DEBUG)
    pg.execute(sql.SQL("GRANT rds_password TO {}").format(sql.Identifier(master.name)))   # the printed fix
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, role)
    sm = client("secretsmanager")

    # provision: role over SQL, URL in Secrets Manager, flag in SSM, a new ECS deployment
    first_deployment = deployment_id(world)
    result = ran_ok(commands.provision, project, aws_environ)
    assert {s.step: s.status for s in result.steps}["restart"] == "applied"
    stored = secret_versions("AWSCURRENT")
    assert set(stored) == {"engine", "host", "username", "password", "dbname", "port", "sslmode", "url",
                           "dbInstanceIdentifier"}
    endpoint = client("rds").describe_db_instances(DBInstanceIdentifier="raptor-staging")["DBInstances"][0]["Endpoint"]
    # the app's URL names the RDS endpoint, not the tunnel (`connect`) the tool came in by
    assert (stored["engine"], stored["host"], stored["username"], stored["dbname"], stored["port"]) == (
        "postgres", endpoint["Address"], role, pg.dbname, endpoint["Port"])
    assert stored["dbInstanceIdentifier"] == "raptor-staging"
    with psycopg.connect(pg.tcp_dsn(role, stored["password"])) as conn:
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")
    param = client("ssm").get_parameter(Name=PARAM)["Parameter"]
    assert (param["Type"], param["Value"]) == ("String", "1")
    # register_task_definition: a revision that hands the app both (stock moto keeps the deployment
    # id on update_service(taskDefinition); the server-mode tests model real deployments)
    service = world.describe_services(cluster="raptor", services=["web"])["services"][0]
    container = world.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"][
        "containerDefinitions"][0]
    secret_arn = sm.describe_secret(SecretId=SECRET)["ARN"]
    assert {e["name"]: e["valueFrom"] for e in container["secrets"]} == {
        URL_VAR: f"{secret_arn}:url::", FLAG: param["ARN"]}
    assert first_deployment
    passwords = [stored["password"]]

    # diagnose: the four checks pass
    diag = diagnosed_clean(project, aws_environ)

    # rollback works with the database unreachable: flag off and a new deployment
    dead = write_project(tmp_path, pg, role, port=free_port())
    before = deployment_id(world)
    rb = ran_ok(commands.rollback, dead, aws_environ)
    assert client("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == "0"
    assert deployment_id(world) != before
    assert any("journalled locally" in m for m in rb.messages)

    # rotate: a new password; the secret's previous version keeps the old one
    project = write_project(tmp_path, pg, role)
    rot = ran_ok(commands.rotate, project, aws_environ)
    current, previous = secret_versions("AWSCURRENT"), secret_versions("AWSPREVIOUS")
    assert previous["password"] == passwords[0] != current["password"]
    passwords.append(current["password"])
    with psycopg.connect(pg.tcp_dsn(role, current["password"])) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role

    # retire: the secret is scheduled for deletion (recoverable), the role is dropped
    ret = ran_ok(commands.retire, project, aws_environ)
    assert "DeletedDate" in sm.describe_secret(SecretId=SECRET)
    assert pg.execute(sql.SQL("SELECT 1 FROM pg_roles WHERE rolname = {}").format(sql.Literal(role))) == []

    assert_not_shown(caplog, (result, diag, rb, rot, ret), master.password, *passwords)
