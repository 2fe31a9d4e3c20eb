"""`platform: ecs` against moto (Secrets Manager, SSM, ECS); stored URLs logged into real PostgreSQL."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import psycopg
import pytest

from tests.logins import create_login, set_password
from psycopg import sql
from pydantic import ValidationError

from providers.base import AppPlatform, Credential
from providers.ecs import EcsApp, EcsAppConfig, _rollout, secret_to_url, url_to_secret
from runbook.errors import ConfigError, NotYetLive, ProviderError
from runbook.secret import Secret
from tests.providers.rds.conftest import ACCOUNT, FLAG, REGION, URL_VAR, client

SECRET = "raptor/staging/database-url"
PARAM = "/raptor/staging/FLAG"


def app_config(**over) -> EcsAppConfig:
    block = {"platform": "ecs", "cluster": "raptor", "service": "web", "region": REGION,
             "url_name": SECRET, "flag_parameter": PARAM, "wait": {"timeout": "1m", "poll": "5s"},
             # these tests are about the stores; the references are the server-mode tests' subject
             "register_task_definition": True}
    block.update(over)
    return EcsAppConfig.model_validate(block)


def open_app(ctx, *, sleep=None, clock=None, **over) -> EcsApp:
    kwargs = {k: v for k, v in (("sleep", sleep), ("clock", clock)) if v is not None}
    return EcsApp(app_config(**over), ctx, **kwargs)


@pytest.fixture
def service(aws):
    ecs = client("ecs")
    ecs.create_cluster(clusterName="raptor")
    ecs.register_task_definition(family="raptor-web", containerDefinitions=[
        {"name": "web", "image": "raptor:1", "memory": 256}])
    ecs.create_service(cluster="raptor", serviceName="web", taskDefinition="raptor-web", desiredCount=2)
    return ecs


def moto_deployment(cluster: str = "raptor", name: str = "web") -> dict:
    from moto.ecs.models import ecs_backends

    return ecs_backends[ACCOUNT][REGION].services[f"{cluster}:{name}"].deployments[0]


@pytest.fixture
def app_role(pg, canary_password):
    """A real login the stored URL must reach."""
    name = pg.role("raptor_app")
    create_login(pg, name, canary_password)

    def credential(password: str = canary_password) -> Credential:
        return Credential(name=name, user=name, host="127.0.0.1", port=pg.port, database=pg.dbname,
                          password=Secret(password), sslmode="disable")

    return credential


def offline(password: str) -> Credential:
    """A credential whose URL is only stored, never used to log in."""
    return Credential(name="raptor_app", user="raptor_app", host="raptor.abc.eu-west-1.rds.amazonaws.com", port=5432,
                      database="raptor", password=Secret(password))


# -- config model -------------------------------------------------------------------------------

def test_region_and_profile_default_from_an_rds_database():
    ctx = {"env": "staging", "database": {"provider": "rds", "region": "us-west-2", "profile": "ops"}}
    block = {"cluster": "c", "service": "s", "url_name": "n", "flag_parameter": PARAM}
    cfg = EcsAppConfig.model_validate(block, context=ctx)
    assert (cfg.region, cfg.profile) == ("us-west-2", "ops")
    assert EcsAppConfig.model_validate({**block, "region": "eu-central-1"}, context=ctx).region == "eu-central-1"
    other = {"env": "staging", "database": {"provider": "supabase", "region": "us-west-2"}}
    assert EcsAppConfig.model_validate(block, context=other).region is None


@pytest.mark.parametrize("over, message", [
    ({"flag_parameter": "raptor/FLAG"}, "hierarchical SSM name starts with /"),
    ({"flag_parameter": "/aws/FLAG"}, "cannot begin with aws or ssm"),
    ({"flag_parameter": "/raptor/FL AG"}, "not an SSM parameter name"),
    ({"url_store": "ssm", "url_name": "has space"}, "not an SSM parameter name"),
    ({"url_name": "bad name!"}, "not a Secrets Manager secret name"),
    ({"wait": {"timeout": "10s", "poll": "1m"}}, "wait.poll is longer than wait.timeout"),
    ({"recovery_window_days": 3}, "greater than or equal to 7"),
    ({"url_store": "parameterstore"}, "'secretsmanager' or 'ssm'"),
])
def test_config_is_validated(over, message):
    with pytest.raises(ValidationError, match=message):
        app_config(**over)


def test_platform_shape(ctx):
    app = open_app(ctx)
    assert isinstance(app, AppPlatform)
    assert app.config_change_restarts is False
    assert app.attach_url(Credential("a", "a", "h", 5432, "d"), URL_VAR) is False
    assert app.detach_url("a", URL_VAR) is False
    assert app.describe() == {"ecs": f"raptor/web ({REGION})",
                              "url": f"secretsmanager:{SECRET} (as the service's task definition references it)",
                              "flag": f"ssm:{PARAM}", "task_definition": "registered by pg-runbook"}


# -- the URL in Secrets Manager -------------------------------------------------------------------

def test_url_round_trips_through_the_standard_rds_secret_shape():
    url = "postgresql://raptor_app:p%40ss%2Fw0rd@db.example.com:6432/my%20db?sslmode=verify-full"
    body = url_to_secret(url)
    assert body == {"engine": "postgres", "host": "db.example.com", "username": "raptor_app",
                    "password": "p@ss/w0rd", "dbname": "my db", "port": 6432, "sslmode": "verify-full", "url": url}
    assert secret_to_url(body) == url
    assert secret_to_url({k: v for k, v in body.items() if k != "url"}) == url    # from the standard keys alone
    # RDS endpoints name their instance / cluster; the default database is postgres, not the user
    rds = url_to_secret("postgresql://u:pw@raptor-prod.c9akciq32.eu-west-1.rds.amazonaws.com:5432")
    assert (rds["dbInstanceIdentifier"], rds["dbname"]) == ("raptor-prod", "postgres")
    aurora = url_to_secret("postgresql://u:pw@raptor.cluster-c9akciq32.eu-west-1.rds.amazonaws.com:5432/app")
    assert aurora["dbClusterIdentifier"] == "raptor" and "dbInstanceIdentifier" not in aurora
    iam = "postgresql://raptor_app@[::1]:5432/app?sslmode=require"
    assert "password" not in url_to_secret(iam) and secret_to_url(url_to_secret(iam)) == iam
    # secrets written by RDS carry keys that are not connection parameters
    rds_made = {"engine": "postgres", "host": "h", "username": "u", "password": "pw1234567", "dbname": "d",
                "port": "5432", "masterarn": "arn:aws:rds:x", "dbInstanceIdentifier": "db1"}
    assert secret_to_url(rds_made) == "postgresql://u:pw1234567@h:5432/d"
    with pytest.raises(ConfigError, match="several hosts"):
        url_to_secret("postgresql://u:secretpw@h1:5432,h2:5432/d")
    with pytest.raises(ConfigError, match="not a postgresql:// URL") as err:
        url_to_secret("mysql://u:secretpw@h/d")
    assert "secretpw" not in str(err.value)


def test_secret_store_round_trip_login_and_previous_version(service, ctx, pg, app_role, canary_password):
    app = open_app(ctx)
    first = app_role()
    app.set_config({URL_VAR: first.url()})
    sm = client("secretsmanager")
    stored = json.loads(sm.get_secret_value(SecretId=SECRET)["SecretString"])
    assert stored == {"engine": "postgres", "host": "127.0.0.1", "username": first.user, "password": canary_password,
                      "dbname": pg.dbname, "port": pg.port, "sslmode": "disable", "url": first.url().reveal()}
    assert "pg-runbook" in sm.describe_secret(SecretId=SECRET)["Description"]

    got = app.get_config([URL_VAR])[URL_VAR]
    assert type(got) is str and got == first.url().reveal()
    with psycopg.connect(got) as conn:      # what the engine does to test the stored login
        assert conn.execute("SELECT current_user").fetchone()[0] == first.user

    # rotate: a second version becomes AWSCURRENT, the first AWSPREVIOUS
    rotated_pw = canary_password + "-rotated"
    set_password(pg, first.user, rotated_pw)
    app.set_config({URL_VAR: app_role(rotated_pw).url()})
    current = json.loads(sm.get_secret_value(SecretId=SECRET, VersionStage="AWSCURRENT")["SecretString"])
    previous = json.loads(sm.get_secret_value(SecretId=SECRET, VersionStage="AWSPREVIOUS")["SecretString"])
    assert (current["password"], previous["password"]) == (rotated_pw, canary_password)
    with psycopg.connect(app.get_config([URL_VAR])[URL_VAR]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_retire_schedules_deletion_and_provision_restores(service, ctx, canary_password):
    app = open_app(ctx)
    app.set_config({URL_VAR: offline(canary_password).url()})
    app.unset_config([URL_VAR])
    sm = client("secretsmanager")
    deleted = sm.describe_secret(SecretId=SECRET)["DeletedDate"]
    assert 6 <= (deleted - datetime.now(timezone.utc)).days <= 7      # recovery window, not gone
    assert app.get_config([URL_VAR]) == {URL_VAR: None}
    app.unset_config([URL_VAR])        # idempotent while scheduled
    # provisioning again within the window brings the secret back with the new value
    app.set_config({URL_VAR: offline(canary_password + "-2").url()})
    assert "DeletedDate" not in sm.describe_secret(SecretId=SECRET)
    assert json.loads(sm.get_secret_value(SecretId=SECRET)["SecretString"])["password"] == canary_password + "-2"


def test_absent_secret_reads_as_none_and_an_unknown_arn_is_not_created(service, ctx, canary_password):
    assert open_app(ctx).get_config([URL_VAR, FLAG]) == {URL_VAR: None, FLAG: None}
    open_app(ctx).unset_config([URL_VAR, FLAG])    # nothing to delete is fine
    arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:raptor-url-AbCdEf"
    with pytest.raises(ConfigError, match="no secret arn:.*give a name and pg-runbook creates it"):
        open_app(ctx, url_name=arn).set_config({URL_VAR: offline(canary_password).url()})


# -- the URL in SSM, and the flag ------------------------------------------------------------------

def test_ssm_store_is_a_securestring(service, ctx, canary_password):
    app = open_app(ctx, url_store="ssm", url_name="/raptor/staging/DATABASE_URL")
    cred = offline(canary_password)
    app.set_config({URL_VAR: cred.url(), FLAG: "1"})
    ssm = client("ssm")
    assert ssm.get_parameter(Name="/raptor/staging/DATABASE_URL")["Parameter"]["Type"] == "SecureString"
    assert app.get_config([URL_VAR, FLAG]) == {URL_VAR: cred.url().reveal(), FLAG: "1"}
    app.set_config({URL_VAR: cred.url()})    # overwrite
    assert ssm.get_parameter(Name="/raptor/staging/DATABASE_URL")["Parameter"]["Version"] == 2
    app.unset_config([URL_VAR])
    assert app.get_config([URL_VAR]) == {URL_VAR: None}


def test_flag_is_an_ssm_string(service, ctx):
    app = open_app(ctx)
    app.set_config({FLAG: "on"})
    param = client("ssm").get_parameter(Name=PARAM)["Parameter"]
    assert (param["Type"], param["Value"]) == ("String", "on")
    app.set_config({FLAG: "off"})          # rollback: no database needed
    assert app.get_config([FLAG]) == {FLAG: "off"}
    app.unset_config([FLAG])
    assert app.get_config([FLAG]) == {FLAG: None}
    with pytest.raises(ConfigError, match="SSM parameters cannot be empty"):
        app.set_config({FLAG: ""})


def test_other_keys_are_refused_before_anything_is_written(service, ctx, canary_password):
    app = open_app(ctx)
    with pytest.raises(ConfigError, match=f"keeps only {URL_VAR} .* and {FLAG} .*'OTHER' has no place"):
        app.set_config({URL_VAR: offline(canary_password).url(), FLAG: "1", "OTHER": "x"})
    assert client("secretsmanager").list_secrets()["SecretList"] == []
    assert client("ssm").describe_parameters()["Parameters"] == []
    with pytest.raises(ConfigError):
        app.get_config(["OTHER"])
    with pytest.raises(ConfigError):
        app.unset_config(["OTHER"])


def test_no_secret_reaches_the_logs_at_debug(service, ctx, canary_password, caplog):
    logging.getLogger("botocore").setLevel(logging.NOTSET)    # as a fresh process has it
    caplog.set_level(logging.DEBUG)
    app = open_app(ctx)
    app.set_config({URL_VAR: offline(canary_password).url(), FLAG: "1"})
    app.get_config([URL_VAR, FLAG])
    app.set_config({URL_VAR: offline(canary_password + "-2").url()})
    app.restart()
    ssm_app = open_app(ctx, url_store="ssm", url_name="/raptor/staging/DATABASE_URL")
    ssm_app.set_config({URL_VAR: offline(canary_password).url()})
    ssm_app.get_config([URL_VAR])
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.WARNING
    assert any(r.name == "providers.ecs" for r in caplog.records)     # progress was logged
    assert canary_password not in caplog.text


# -- restart -----------------------------------------------------------------------------------

def test_restart_forces_a_new_deployment(service, ctx):
    app = open_app(ctx, sleep=lambda s: pytest.fail("a completed deployment needs no wait"))
    sent = []
    app.aws.client("ecs").meta.events.register(
        "provide-client-params.ecs.UpdateService", lambda params, **kw: sent.append(dict(params)))
    before = moto_deployment()["id"]
    app.restart()
    assert sent == [{"cluster": "raptor", "service": "web", "forceNewDeployment": True}]
    assert moto_deployment()["id"] != before


def test_restart_waits_until_the_rollout_completes(service, ctx, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="providers.ecs")
    deployment = moto_deployment()
    deployment.update(rolloutState="IN_PROGRESS", runningCount=0, pendingCount=2)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:     # tasks came up while we waited
            moto_deployment().update(rolloutState="COMPLETED", runningCount=2, pendingCount=0)

    open_app(ctx, sleep=sleep).restart()
    assert sleeps == [5.0, 5.0]
    progress = [r.getMessage() for r in caplog.records if r.name == "providers.ecs"]
    assert any("IN_PROGRESS, 0/2 tasks running" in m for m in progress)
    assert "COMPLETED, 2/2 tasks running" in progress[-1]


def test_restart_gives_up_after_wait_timeout(service, ctx):
    moto_deployment().update(rolloutState="IN_PROGRESS", runningCount=1)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    app = open_app(ctx, sleep=sleep, clock=lambda: now[0], wait={"timeout": "1m", "poll": "15s"})
    calls = []
    app.aws.client("ecs").meta.events.register("provide-client-params.ecs.DescribeServices",
                                               lambda params, **kw: calls.append(params))
    with pytest.raises(NotYetLive, match=r"still rolling after 1m \(restarting web: "
                                         r"deployment ecs-svc/\d+ IN_PROGRESS, 1/2 tasks running\)") as err:
        app.restart()
    assert err.value.exit_code == 7 and "aws ecs wait services-stable --cluster raptor --services web" in err.value.hint
    assert len(calls) == 5 and now[0] == 60.0      # the first read, then one per poll


def test_restart_reports_a_failed_rollout(service, ctx):
    def fail(seconds: float) -> None:
        moto_deployment().update(rolloutState="FAILED", rolloutStateReason="ECS deployment circuit breaker: tasks failed to start.")

    moto_deployment().update(rolloutState="IN_PROGRESS", runningCount=0)
    with pytest.raises(ProviderError, match="failed: ECS deployment circuit breaker: tasks failed to start."):
        open_app(ctx, sleep=fail).restart()


def test_restart_of_a_missing_service_quotes_the_aws_error(service, ctx):
    with pytest.raises(ProviderError, match="AWS ecs UpdateService failed: ServiceNotFoundException: Service not found."):
        open_app(ctx, service="nope").restart()


@pytest.mark.parametrize("deployments, done", [
    # no rolloutState (classic load balancer): one PRIMARY at full count
    ([{"id": "d2", "status": "PRIMARY", "runningCount": 2, "desiredCount": 2}], True),
    ([{"id": "d2", "status": "PRIMARY", "runningCount": 2, "desiredCount": 2},
      {"id": "d1", "status": "ACTIVE", "runningCount": 1, "desiredCount": 0}], False),
    ([{"id": "d2", "status": "PRIMARY", "runningCount": 1, "desiredCount": 2}], False),
    # superseded by d3: follow the newer deployment
    ([{"id": "d3", "status": "PRIMARY", "rolloutState": "COMPLETED", "runningCount": 2, "desiredCount": 2}], True),
])
def test_rollout_judgement(deployments, done):
    assert _rollout({"status": "ACTIVE", "deployments": deployments}, "d2")[0] is done


def test_restart_reports_each_state_change_to_the_progress_sink(service, ctx):
    import dataclasses

    events = []
    ctx = dataclasses.replace(ctx, progress=events.append)
    moto_deployment().update(rolloutState="IN_PROGRESS", runningCount=0)
    now = [0.0]
    steps = iter([dict(runningCount=0), dict(runningCount=1), dict(runningCount=1),
                  dict(rolloutState="COMPLETED", runningCount=2)])

    def sleep(seconds: float) -> None:
        now[0] += seconds
        moto_deployment().update(**next(steps))

    open_app(ctx, sleep=sleep, clock=lambda: now[0]).restart()
    states = [(e.what, e.state.split(", ")[1], e.done) for e in events]
    # one event per change, not per poll: 0/2 twice and 1/2 twice are reported once each
    assert states == [("ecs deployment", "0/2 tasks running", False), ("ecs deployment", "1/2 tasks running", False),
                      ("ecs deployment", "2/2 tasks running", True)]
    assert [e.remaining for e in events] == [60.0, 50.0, 40.0]      # seconds left of the 1m wait (5s polls)
    assert events[-1].fields["rollout"] == "COMPLETED" and events[-1].fields["desired"] == 2
