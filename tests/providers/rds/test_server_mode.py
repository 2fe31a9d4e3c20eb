"""The `runbook` command as a subprocess against moto in server mode (AWS_ENDPOINT_URL at a
ThreadedMotoServer on 127.0.0.1), with ECS deployments that roll out and fail as ECS's do
(tests/providers/rds/server_world.py) and an RDS-like role model in the real PostgreSQL:
`rds_superuser` (holding rds_password, rds_replication and pg_signal_backend WITH ADMIN OPTION),
`rds_iam`, a master that is NOSUPERUSER CREATEROLE CREATEDB in rds_superuser, and
rds.restrict_password_commands = 1. The app's side is what a started task received."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

from tests.providers.conftest import new_login, owned_database, role_exists, write_project
from tests.providers.rds.conftest import ACCOUNT, AWS_ENV, FLAG, REGION, URL_VAR, ensure_role
from tests.providers.rds.server_world import (
    CIRCUIT_BREAKER, EcsDeployments, Tunnel, install_modify_db_proxy,
)
from tests.providers.rds.rds_server import IamCheck, RdsFront

pytestmark = [pytest.mark.pg, pytest.mark.slow]

SECRET = "raptor/staging/database-url"
PARAM = "/raptor/staging/FLAG"
EXECUTION_ROLE = f"arn:aws:iam::{ACCOUNT}:role/raptor-task-execution"


@pytest.fixture
def moto_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import httpx

    # the backends are this process's globals; the first request loads them all (slow on a busy machine)
    httpx.post(f"{url}/moto-api/reset", timeout=120).raise_for_status()
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL_RDS", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                 "AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_ECS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**AWS_ENV, "AWS_ENDPOINT_URL": url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "2")     # the service as it was before the tool came
    yield url
    server.stop()


def aws(service: str):
    import boto3

    return boto3.client(service, region_name=REGION)    # AWS_ENDPOINT_URL: the moto server


@pytest.fixture
def world(moto_server, pg, canary_password, monkeypatch):
    """An RDS instance on the test cluster, its master in rds_superuser, an ECS service."""
    deployments = EcsDeployments(ACCOUNT, REGION)
    deployments.install(monkeypatch)
    for role in ("rds_superuser", "rds_password", "rds_replication", "rds_iam"):
        ensure_role(pg, role)
    pg.execute("GRANT rds_password, rds_replication, rds_iam, pg_signal_backend TO rds_superuser WITH ADMIN OPTION")
    master = new_login(pg, "postgres", canary_password, "NOSUPERUSER CREATEROLE CREATEDB")
    pg.execute(sql.SQL("GRANT rds_superuser TO {}").format(sql.Identifier(master.name)))
    pg.execute(sql.SQL("ALTER DATABASE {} SET rds.restrict_password_commands = '1'").format(sql.Identifier(pg.dbname)))
    owned_database(pg, master)

    rds = aws("rds")
    rds.create_db_parameter_group(DBParameterGroupName="raptor-pg", DBParameterGroupFamily="postgres16",
                                  Description="test")
    rds.modify_db_parameter_group(DBParameterGroupName="raptor-pg", Parameters=[
        {"ParameterName": "rds.restrict_password_commands", "ParameterValue": "1", "ApplyMethod": "pending-reboot"}])
    rds.create_db_instance(DBInstanceIdentifier="raptor-staging", DBInstanceClass="db.t4g.micro", Engine="postgres",
                           EngineVersion="16.3", MasterUsername=master.name, ManageMasterUserPassword=True,
                           AllocatedStorage=20, DBName=pg.dbname, Port=pg.port, DBParameterGroupName="raptor-pg")
    db = rds.describe_db_instances(DBInstanceIdentifier="raptor-staging")["DBInstances"][0]
    aws("secretsmanager").put_secret_value(SecretId=db["MasterUserSecret"]["SecretArn"], SecretString=json.dumps(
        {"username": master.name, "password": master.password}))
    aws("ecs").create_cluster(clusterName="raptor")
    tunnel = Tunnel(pg.port)
    yield World(deployments, db["Endpoint"]["Address"], db["Endpoint"]["Port"], tunnel, master)
    tunnel.close()


class World:
    def __init__(self, deployments: EcsDeployments, host: str, port: int, tunnel: Tunnel, master) -> None:
        self.deployments, self.host, self.port, self.tunnel, self.master = deployments, host, port, tunnel, master

    def service(self, secrets: list[dict[str, str]] | None, *, desired: int = 2) -> str:
        ecs = aws("ecs")
        ecs.register_task_definition(family="raptor-web", executionRoleArn=EXECUTION_ROLE, containerDefinitions=[
            {"name": "web", "image": "raptor:1", "memory": 256, "secrets": secrets or []}])
        ecs.create_service(cluster="raptor", serviceName="web", taskDefinition="raptor-web", desiredCount=desired)
        return "raptor-web:1"

    def describe(self) -> dict:
        return aws("ecs").describe_services(cluster="raptor", services=["web"])["services"][0]

    def containers(self) -> list[dict]:
        arn = self.describe()["taskDefinition"]
        return aws("ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]["containerDefinitions"]

    def deploy(self, secrets: list[dict[str, str]]) -> None:
        """The operator's IaC: a revision with these secrets, deployed."""
        ecs = aws("ecs")
        made = ecs.register_task_definition(family="raptor-web", executionRoleArn=EXECUTION_ROLE, containerDefinitions=[
            {"name": "web", "image": "raptor:1", "memory": 256, "secrets": secrets}])["taskDefinition"]
        ecs.update_service(cluster="raptor", service="web", taskDefinition=made["taskDefinitionArn"])

    def roll(self) -> dict:
        """A forced deployment, followed until it ends: the service is (or is not) deployable."""
        aws("ecs").update_service(cluster="raptor", service="web", forceNewDeployment=True)
        for _ in range(10):
            primary = next(d for d in self.describe()["deployments"] if d["status"] == "PRIMARY")
            if primary["rolloutState"] != "IN_PROGRESS":
                return primary
        raise AssertionError("the model never ended the deployment")


def task_login(url: str) -> str:
    """Log in exactly as a task would with what it received; 127.0.0.1 stands in for the VPC's DNS
    answer for the RDS endpoint's name."""
    with psycopg.connect(url, hostaddr="127.0.0.1", connect_timeout=5) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def project(tmp_path, pg, world: World, role: str, **app) -> None:
    write_project(tmp_path, role, {
        "provider": "rds",
        "database": {"instance": "raptor-staging", "region": REGION, "sslmode": "disable",
                     "connect": {"host": "127.0.0.1", "port": world.tunnel.port}},
        "app": {"cluster": "raptor", "service": "web", "url_store": "secretsmanager", "url_name": SECRET,
                "flag_parameter": PARAM, "wait": {"timeout": "30s", "poll": "1s"}, **app},
    }, url_var=URL_VAR, flag=FLAG)


def runbook(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "CI": "true"}
    return subprocess.run([sys.executable, "-m", "runbook.cli", *args, "--env", "staging", "--yes"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def secret_arn() -> str:
    return aws("secretsmanager").describe_secret(SecretId=SECRET)["ARN"]


def test_the_task_logs_in_with_what_it_receives_and_retire_keeps_the_service_deployable(world, tmp_path, pg):
    # the operator's IaC made the (empty) secret and the flag, and references both
    placeholder = aws("secretsmanager").create_secret(Name=SECRET, SecretString="{}")["ARN"]
    aws("ssm").put_parameter(Name=PARAM, Value="0", Type="String")
    flag_arn = aws("ssm").get_parameter(Name=PARAM)["Parameter"]["ARN"]
    world.service([{"name": URL_VAR, "valueFrom": f"{placeholder}:url::"}, {"name": FLAG, "valueFrom": flag_arn}])
    role = pg.role("raptor_app")
    project(tmp_path, pg, world, role)

    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    received = world.deployments.received[-1]
    assert task_login(received[URL_VAR]) == role          # what the task got is a URL that logs in
    assert received[FLAG] == "1"
    stored = json.loads(aws("secretsmanager").get_secret_value(SecretId=SECRET)["SecretString"])
    assert {k: stored[k] for k in ("engine", "host", "port", "username", "dbname", "dbInstanceIdentifier")} == {
        "engine": "postgres", "host": world.host, "port": world.port, "username": role, "dbname": pg.dbname,
        "dbInstanceIdentifier": "raptor-staging"}
    assert stored["url"] == received[URL_VAR]
    assert f":{world.tunnel.port}" not in stored["url"]    # the tunnel the tool came in by is not the app's
    assert all(u["taskDefinition"] is None for u in world.deployments.updates)   # the task definition stayed theirs

    # retire refuses while the task definition reads the secret: nothing deleted, the role stays
    out = runbook(tmp_path, "retire")
    assert out.returncode == 2, out.stderr
    assert "still reads secret" in out.stderr and json.dumps({"name": URL_VAR, "valueFrom": f"{placeholder}:url::"}) in out.stderr
    assert "DeletedDate" not in aws("secretsmanager").describe_secret(SecretId=SECRET)
    assert role_exists(pg, role)

    # the operator drops the reference and deploys; the rerun converges
    world.deploy([{"name": FLAG, "valueFrom": flag_arn}])
    out = runbook(tmp_path, "retire")
    assert out.returncode == 0, out.stderr
    assert "DeletedDate" in aws("secretsmanager").describe_secret(SecretId=SECRET)
    assert not role_exists(pg, role)
    assert world.roll()["rolloutState"] == "COMPLETED"     # every later deployment still starts its tasks


def test_a_missing_reference_fails_verify_with_the_exact_entry_or_is_registered(world, tmp_path, pg):
    world.service(None)
    role = pg.role("raptor_app")
    project(tmp_path, pg, world, role)

    out = runbook(tmp_path, "provision")
    assert out.returncode == 4, out.stderr
    entry = {"name": URL_VAR, "valueFrom": f"{secret_arn()}:url::"}
    assert "raptor-web:1 (container web) does not hand the app" in out.stderr
    assert json.dumps(entry) in out.stderr                 # the exact JSON for the task definition
    assert world.containers()[0]["secrets"] == []          # not touched

    # register_task_definition: the tool adds the references in a new revision and deploys it
    project(tmp_path, pg, world, role, register_task_definition=True)
    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    refs = {e["name"]: e["valueFrom"] for e in world.containers()[0]["secrets"]}
    assert refs[URL_VAR] == entry["valueFrom"] and refs[FLAG].endswith(f":parameter{PARAM}")
    received = world.deployments.received[-1]
    assert task_login(received[URL_VAR]) == role and received[FLAG] == "1"

    # retire: a revision without the references, its deployment COMPLETED, then the secret goes
    out = runbook(tmp_path, "retire")
    assert out.returncode == 0, out.stderr
    assert [e["name"] for e in world.containers()[0]["secrets"]] == [FLAG]
    assert "DeletedDate" in aws("secretsmanager").describe_secret(SecretId=SECRET)
    assert not role_exists(pg, role)
    assert world.roll()["rolloutState"] == "COMPLETED"
    assert runbook(tmp_path, "retire").returncode == 0     # a rerun has nothing left to do


def test_a_secret_deleted_under_a_reference_fails_the_deployment_as_ecs_does(world, tmp_path, pg):
    """The model's failure path (and what the old retire did): the circuit breaker, reported."""
    placeholder = aws("secretsmanager").create_secret(Name=SECRET, SecretString="{}")["ARN"]
    aws("ssm").put_parameter(Name=PARAM, Value="1", Type="String")
    flag_arn = aws("ssm").get_parameter(Name=PARAM)["Parameter"]["ARN"]
    world.service([{"name": URL_VAR, "valueFrom": f"{placeholder}:url::"}, {"name": FLAG, "valueFrom": flag_arn}])
    assert world.roll()["rolloutState"] == "FAILED"        # missing JSON key
    assert "did not contain json key url" in world.deployments.stopped[-1]
    aws("secretsmanager").put_secret_value(SecretId=SECRET, SecretString=json.dumps({"url": "postgresql://x@h/d"}))
    assert world.roll()["rolloutState"] == "COMPLETED"
    aws("secretsmanager").delete_secret(SecretId=SECRET, RecoveryWindowInDays=7)
    assert world.roll()["rolloutState"] == "FAILED"        # pending deletion
    assert "marked deleted" in world.deployments.stopped[-1]
    # the tool's restart says what failed and where to look
    project(tmp_path, pg, world, pg.role("raptor_app"))
    out = runbook(tmp_path, "rollback")
    assert out.returncode == 1
    assert CIRCUIT_BREAKER in out.stderr and "secretsmanager:GetSecretValue" in out.stderr

    # what an old retire left behind converges: the reference goes in a revision that deploys
    project(tmp_path, pg, world, pg.role("raptor_app"), register_task_definition=True)
    out = runbook(tmp_path, "retire")
    assert out.returncode == 0, out.stderr
    assert [e["name"] for e in world.containers()[0]["secrets"]] == [FLAG]
    assert world.roll()["rolloutState"] == "COMPLETED"


def test_a_rollback_whose_deployment_is_still_rolling_is_done_not_yet_live(world, tmp_path, pg):
    aws("ssm").put_parameter(Name=PARAM, Value="1", Type="String")
    flag_arn = aws("ssm").get_parameter(Name=PARAM)["Parameter"]["ARN"]
    world.service([{"name": FLAG, "valueFrom": flag_arn}], desired=20)
    project(tmp_path, pg, world, pg.role("raptor_app"), wait={"timeout": "2s", "poll": "1s"})
    out = runbook(tmp_path, "rollback")
    assert out.returncode == 7, out.stderr
    assert f"{FLAG} is '0' in SSM {PARAM}, but the ecs deployment is still rolling" in out.stderr
    assert "aws ecs wait services-stable --cluster raptor --services web" in out.stderr
    assert aws("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == "0"


def test_an_aurora_member_is_refused_and_the_cluster_gives_the_writer_endpoint(world, tmp_path, pg):
    rds = aws("rds")
    cluster = rds.create_db_cluster(
        DBClusterIdentifier="raptor-aurora", Engine="aurora-postgresql", EngineVersion="16.3", Port=pg.port,
        MasterUsername=world.master.name, ManageMasterUserPassword=True, DatabaseName=pg.dbname)["DBCluster"]
    aws("secretsmanager").put_secret_value(SecretId=cluster["MasterUserSecret"]["SecretArn"], SecretString=json.dumps(
        {"username": world.master.name, "password": world.master.password}))
    rds.create_db_instance(DBInstanceIdentifier="raptor-aurora-1", DBInstanceClass="db.r6g.large",
                           Engine="aurora-postgresql", DBClusterIdentifier="raptor-aurora")
    world.service(None)
    write_project(tmp_path, pg.role("raptor_app"), {
        "provider": "rds", "database": {"instance": "raptor-aurora-1", "region": REGION},
        "app": {"cluster": "raptor", "service": "web", "url_name": SECRET, "flag_parameter": PARAM},
    }, url_var=URL_VAR, flag=FLAG)
    out = runbook(tmp_path, "provision")
    assert out.returncode == 2, out.stderr
    assert "member of Aurora cluster raptor-aurora" in out.stderr and "database.cluster: raptor-aurora" in out.stderr
    assert not role_exists(pg, pg.role("raptor_app"))

    # the fix: the cluster; the app's URL names its writer endpoint, which a failover moves
    role = pg.role("raptor_app")
    write_project(tmp_path, role, {
        "provider": "rds", "database": {"cluster": "raptor-aurora", "region": REGION, "sslmode": "disable",
                                        "connect": {"host": "127.0.0.1", "port": world.tunnel.port}},
        "app": {"cluster": "raptor", "service": "web", "url_name": SECRET, "flag_parameter": PARAM,
                "register_task_definition": True, "wait": {"timeout": "30s", "poll": "1s"}},
    }, url_var=URL_VAR, flag=FLAG)
    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    received = world.deployments.received[-1][URL_VAR]
    assert f"@{cluster['Endpoint']}:{pg.port}/" in received and task_login(received) == role
    stored = json.loads(aws("secretsmanager").get_secret_value(SecretId=SECRET)["SecretString"])
    assert stored["dbClusterIdentifier"] == "raptor-aurora" and "dbInstanceIdentifier" not in stored


def test_a_cluster_without_a_master_secret_names_what_is_missing(world, tmp_path, pg):
    aws("rds").create_db_cluster(DBClusterIdentifier="raptor-aurora", Engine="aurora-postgresql",
                                 MasterUsername="postgres", MasterUserPassword="not-managed-pw")
    world.service(None)
    write_project(tmp_path, pg.role("raptor_app"), {
        "provider": "rds", "database": {"cluster": "raptor-aurora", "region": REGION},
        "app": {"cluster": "raptor", "service": "web", "url_name": SECRET, "flag_parameter": PARAM},
    }, url_var=URL_VAR, flag=FLAG)
    out = runbook(tmp_path, "provision")
    assert out.returncode == 2, out.stderr
    assert "RDS cluster raptor-aurora has no RDS-managed master secret (no MasterUserSecret" in out.stderr
    assert "database.master_secret" in out.stderr


def test_through_an_rds_proxy_the_app_uses_its_endpoint_and_the_secret_joins_its_auth(world, tmp_path, pg, monkeypatch):
    sent = install_modify_db_proxy(monkeypatch, ACCOUNT, REGION)
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    master_secret = aws("rds").describe_db_instances(DBInstanceIdentifier="raptor-staging")["DBInstances"][0][
        "MasterUserSecret"]["SecretArn"]
    proxy = aws("rds").create_db_proxy(
        DBProxyName="raptor-proxy", EngineFamily="POSTGRESQL", RoleArn=f"arn:aws:iam::{ACCOUNT}:role/proxy",
        Auth=[{"AuthScheme": "SECRETS", "SecretArn": master_secret, "IAMAuth": "DISABLED"}],
        VpcSubnetIds=[subnet])["DBProxy"]
    world.service(None)
    # the proxy is a port-forward here too; app_port names it (an RDS Proxy listens on 5432)
    as_proxy = Tunnel(pg.port)
    role = pg.role("raptor_app")
    try:
        project(tmp_path, pg, world, role, register_task_definition=True)
        write_project(tmp_path, role, {
            "provider": "rds",
            "database": {"instance": "raptor-staging", "region": REGION, "sslmode": "disable", "proxy": "raptor-proxy",
                         "app_port": as_proxy.port, "connect": {"host": "127.0.0.1", "port": world.tunnel.port}},
            "app": {"cluster": "raptor", "service": "web", "url_name": SECRET, "flag_parameter": PARAM,
                    "register_task_definition": True, "wait": {"timeout": "30s", "poll": "1s"}},
        }, url_var=URL_VAR, flag=FLAG)
        out = runbook(tmp_path, "provision")
        assert out.returncode == 0, out.stderr
        received = world.deployments.received[-1][URL_VAR]
        assert f"@{proxy['Endpoint']}:{as_proxy.port}/" in received
        with psycopg.connect(received, hostaddr="127.0.0.1", connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == role
        ours = secret_arn()
        assert [a["SecretArn"] for a in sent[-1]] == [master_secret, ours]
        assert runbook(tmp_path, "provision").returncode == 0 and len(sent) == 1    # already registered

        out = runbook(tmp_path, "retire")
        assert out.returncode == 0, out.stderr
        assert [a["SecretArn"] for a in sent[-1]] == [master_secret]
        assert "DeletedDate" in aws("secretsmanager").describe_secret(SecretId=SECRET)
    finally:
        as_proxy.close()


def test_iam_auth_is_proven_with_a_signed_token_as_the_task_would_log_in(world, tmp_path, pg):
    """auth: iam end to end: RDS's front (IamFront) accepts a member of rds_iam only with a valid
    SigV4 token for the instance's endpoint, checked as RDS checks it; the tool's verify signs one
    for the role (generate_db_auth_token) and logs in with it, and so does the task."""
    front = RdsFront(pg.rc.cluster, tmp_path, iam=IamCheck(REGION, AWS_ENV))
    try:
        rds = aws("rds")
        master_secret = rds.describe_db_instances(DBInstanceIdentifier="raptor-staging")["DBInstances"][0][
            "MasterUserSecret"]["SecretArn"]
        rds.create_db_instance(DBInstanceIdentifier="raptor-iam", DBInstanceClass="db.t4g.micro", Engine="postgres",
                               EngineVersion="16.3", MasterUsername=world.master.name, AllocatedStorage=20,
                               DBName=pg.dbname, Port=front.port, EnableIAMDatabaseAuthentication=True)
        endpoint = rds.describe_db_instances(DBInstanceIdentifier="raptor-iam")["DBInstances"][0]["Endpoint"]
        front.endpoint = f"{endpoint['Address']}:{endpoint['Port']}"
        world.service(None)
        role = pg.role("raptor_app")
        write_project(tmp_path, role, {
            "provider": "rds",
            "database": {"instance": "raptor-iam", "region": REGION, "auth": "iam", "sslmode": "require",
                         "master_secret": master_secret, "connect": {"host": "127.0.0.1", "port": front.port}},
            "app": {"cluster": "raptor", "service": "web", "url_name": SECRET, "flag_parameter": PARAM,
                    "register_task_definition": True, "wait": {"timeout": "30s", "poll": "1s"}},
        }, url_var=URL_VAR, flag=FLAG)
        out = runbook(tmp_path, "provision")
        assert out.returncode == 0, out.stderr
        assert role in front.accepted and front.refused == []    # verify logged in with a token it signed
        assert "login not tried" not in out.stderr

        received = world.deployments.received[-1][URL_VAR]
        assert ":" not in received.split("@")[0].removeprefix("postgresql://")   # no password in the URL
        token = aws("rds").generate_db_auth_token(DBHostname=endpoint["Address"], Port=endpoint["Port"],
                                                  DBUsername=role)
        with psycopg.connect(received, hostaddr="127.0.0.1", password=token, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == role
        # from the attacker's side: anything that is not a valid token for this role is refused
        other = aws("rds").generate_db_auth_token(DBHostname=endpoint["Address"], Port=endpoint["Port"],
                                                  DBUsername=world.master.name)
        for password in ("guess", other):
            with pytest.raises(psycopg.OperationalError, match="PAM authentication failed"):
                psycopg.connect(received, hostaddr="127.0.0.1", password=password, connect_timeout=5).close()
        assert len(front.refused) == 2
    finally:
        front.close()
