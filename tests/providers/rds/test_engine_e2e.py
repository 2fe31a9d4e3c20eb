"""provision → diagnose → rollback → rotate → retire through runbook.commands, with RDS, Secrets
Manager, SSM and ECS in moto and the SQL side on the real PostgreSQL (a non-superuser master)."""

from __future__ import annotations

import json
import logging
import socket

import psycopg
import pytest
from psycopg import sql

from runbook import commands, project as projects
from runbook.errors import Refused
from tests.providers.rds.conftest import REGION, client, create_instance, create_parameter_group

SECRET = "raptor/staging/database-url"
PARAM = "/raptor/staging/FLAG"
URL_VAR = "RAPTOR_DATABASE_URL"
FLAG = "RAPTOR_NEW_ROLE"


def write_project(tmp_path, pg, role: str, *, port: int | None = None) -> projects.Project:
    text = f"""\
version: 1
app: raptor
role:
  name: {role}
  schemas:
    public:
      tables: [SELECT, INSERT, UPDATE, DELETE]
      sequences: [USAGE, SELECT]
config:
  url_var: {URL_VAR}
flag:
  name: {FLAG}
  on_value: "1"
  off_value: "0"
environments:
  staging:
    provider: rds
    database:
      instance: raptor-staging
      region: {REGION}
      sslmode: disable
      database: {pg.dbname}
      connect: {{host: 127.0.0.1, port: {port or pg.port}}}
    app:
      cluster: raptor
      service: web
      url_store: secretsmanager
      url_name: {SECRET}
      flag_parameter: {PARAM}
      wait: {{timeout: 1m, poll: 1s}}
"""
    path = tmp_path / "runbook.yaml"
    path.write_text(text)
    return projects.load(path)


@pytest.fixture
def world(aws, pg, master):
    """An RDS instance whose parameter group restricts password commands, an ECS service, and a
    table the master owns."""
    create_parameter_group("raptor-pg", **{"rds.restrict_password_commands": "1"})
    create_instance(parameter_group="raptor-pg", master=master)
    ecs = client("ecs")
    ecs.create_cluster(clusterName="raptor")
    ecs.register_task_definition(family="raptor-web", containerDefinitions=[
        {"name": "web", "image": "raptor:1", "memory": 256}])
    ecs.create_service(cluster="raptor", serviceName="web", taskDefinition="raptor-web", desiredCount=2)
    with psycopg.connect(pg.tcp_dsn(master.name, master.password)) as conn:
        conn.execute("CREATE TABLE public.orders (id bigserial PRIMARY KEY, total numeric)")
        conn.commit()
    return ecs


def deployment_id(ecs) -> str:
    return ecs.describe_services(cluster="raptor", services=["web"])["services"][0]["deployments"][0]["id"]


def secret_versions(stage: str) -> dict:
    return json.loads(client("secretsmanager").get_secret_value(SecretId=SECRET, VersionStage=stage)["SecretString"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def role_state(pg, role: str) -> list[tuple]:
    return pg.execute(sql.SQL("""
        SELECT r.rolname, m.roleid::regrole::text FROM pg_roles r
        LEFT JOIN pg_auth_members m ON m.member = r.oid
        WHERE r.rolname = {} OR r.rolname LIKE 'master\\_%' ORDER BY 1, 2""").format(sql.Literal(role)))


def test_restricted_password_commands_refuse_provision_and_change_nothing(world, tmp_path, pg, master, aws_environ):
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, role)
    before_roles, before_deployment = role_state(pg, role), deployment_id(world)
    with pytest.raises(Refused) as err:
        commands.provision(project, "staging", yes=True, environ=aws_environ)
    assert err.value.exit_code == 2
    assert f'GRANT rds_password TO "{master.name}";' in err.value.message
    assert role_state(pg, role) == before_roles           # no role, no membership
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
    result = commands.provision(project, "staging", yes=True, environ=aws_environ)
    assert result.status == "ok", result.messages
    assert {s.step: s.status for s in result.steps}["restart"] == "applied"
    stored = secret_versions("AWSCURRENT")
    assert set(stored) == {"engine", "host", "username", "password", "dbname", "port", "sslmode"}
    assert (stored["engine"], stored["host"], stored["username"], stored["dbname"], stored["port"]) == (
        "postgres", "127.0.0.1", role, pg.dbname, pg.port)
    with psycopg.connect(pg.tcp_dsn(role, stored["password"])) as conn:
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")
    param = client("ssm").get_parameter(Name=PARAM)["Parameter"]
    assert (param["Type"], param["Value"]) == ("String", "1")
    assert deployment_id(world) != first_deployment
    passwords = [stored["password"]]

    # diagnose: the four checks pass
    diag = commands.diagnose(project, "staging", environ=aws_environ)
    assert [(c.name, c.status) for c in diag.checks] == [
        ("role", "pass"), ("grants", "pass"), ("url", "pass"), ("flag", "pass")], [c.detail for c in diag.checks]

    # rollback works with the database unreachable: flag off and a new deployment
    dead = write_project(tmp_path, pg, role, port=free_port())
    before = deployment_id(world)
    rb = commands.rollback(dead, "staging", yes=True, environ=aws_environ)
    assert rb.status == "ok"
    assert client("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == "0"
    assert deployment_id(world) != before
    assert any("journalled locally" in m for m in rb.messages)

    # rotate: a new password; the secret's previous version keeps the old one
    project = write_project(tmp_path, pg, role)
    rot = commands.rotate(project, "staging", yes=True, environ=aws_environ)
    assert rot.status == "ok", rot.messages
    current, previous = secret_versions("AWSCURRENT"), secret_versions("AWSPREVIOUS")
    assert previous["password"] == passwords[0] != current["password"]
    passwords.append(current["password"])
    with psycopg.connect(pg.tcp_dsn(role, current["password"])) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role

    # retire: the secret is scheduled for deletion (recoverable), the role is dropped
    ret = commands.retire(project, "staging", yes=True, environ=aws_environ)
    assert ret.status == "ok", ret.messages
    assert "DeletedDate" in sm.describe_secret(SecretId=SECRET)
    assert pg.execute(sql.SQL("SELECT 1 FROM pg_roles WHERE rolname = {}").format(sql.Literal(role))) == []

    shown = caplog.text + json.dumps([r.to_json() for r in (result, diag, rb, rot, ret)])
    for secret in (master.password, *passwords):
        assert secret not in shown
