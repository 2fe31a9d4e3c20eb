"""`provider: rds` against moto (RDS, Secrets Manager) with the SQL side on real PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError

from providers.base import DatabaseInfo
from providers.rds import RdsDatabase, RdsDatabaseConfig
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret
from tests.providers.rds.conftest import (
    ACCOUNT,
    REGION,
    client,
    create_instance,
    create_parameter_group,
    ensure_role,
    outside_rds_superuser,
)


def open_db(ctx, **block) -> RdsDatabase:
    return RdsDatabaseConfig.model_validate({"provider": "rds", **block}).open(ctx)


def test_import_leaves_boto3_unloaded():
    code = "import sys, providers.rds, providers.ecs; print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[3]))
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("block, message", [
    ({"region": REGION}, "exactly one of instance"),
    ({"instance": "a", "cluster": "b", "region": REGION}, "exactly one of instance"),
    ({"instance": "bad_name!", "region": REGION}, "not an RDS identifier"),
    ({"instance": "a", "auth": "iam", "sslmode": "disable"}, "IAM authentication needs SSL"),
    ({"instance": "a", "connect": {"host": "h", "port": 0}}, "greater than or equal to 1"),
    ({"instance": "a", "password": "x"}, "Extra inputs are not permitted"),
])
def test_config_is_validated(block, message):
    with pytest.raises(ValidationError, match=message):
        RdsDatabaseConfig.model_validate({"provider": "rds", **block})


def test_region_falls_back_to_environment_then_the_profile_and_is_required(make_ctx, monkeypatch, tmp_path):
    cfg = RdsDatabaseConfig.model_validate({"instance": "a"})
    assert cfg.open(make_ctx(AWS_DEFAULT_REGION="us-east-2")).aws.region == "us-east-2"
    # as boto3 resolves it: the profile's region in ~/.aws/config
    config = tmp_path / "aws-config"
    config.write_text("[profile ops]\nregion = ap-southeast-2\n[default]\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    env = {k: v for k, v in make_ctx().environ.items() if k != "AWS_DEFAULT_REGION"}
    ctx = dataclasses.replace(make_ctx(), environ={**env, "AWS_PROFILE": "ops"})
    assert cfg.open(ctx).aws.region == "ap-southeast-2"
    assert RdsDatabaseConfig.model_validate({"instance": "a", "profile": "ops"}).open(
        dataclasses.replace(ctx, environ={})).aws.region == "ap-southeast-2"
    with pytest.raises(ConfigError, match="no AWS region: set database.region"):
        cfg.open(dataclasses.replace(ctx, environ={})).aws.region


def test_clients_honour_endpoint_retry_and_timeouts(make_ctx):
    ctx = make_ctx(AWS_ENDPOINT_URL="http://127.0.0.1:4566", AWS_ENDPOINT_URL_SECRETS_MANAGER="http://127.0.0.1:4567")
    db = open_db(ctx, instance="a", region=REGION)
    rds = db.aws.client("rds")
    assert rds.meta.endpoint_url == "http://127.0.0.1:4566"
    assert db.aws.client("secretsmanager").meta.endpoint_url == "http://127.0.0.1:4567"
    assert rds.meta.region_name == REGION
    config = rds.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": ctx.retry.attempts}
    assert config.connect_timeout == ctx.retry.timeout_seconds == config.read_timeout
    # the chatty libraries are clamped once a client exists
    assert logging.getLogger("botocore").level >= logging.WARNING
    assert logging.getLogger("urllib3").level >= logging.WARNING
    # without the variable, the regional AWS endpoint
    plain = open_db(make_ctx(), instance="a", region=REGION).aws.client("rds")
    assert plain.meta.endpoint_url == f"https://rds.{REGION}.amazonaws.com"


def test_missing_credentials_and_profiles_are_config_errors(make_ctx, monkeypatch, tmp_path):
    # nothing in the chain, and no instance-metadata lookup off this machine
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    ctx = dataclasses.replace(make_ctx(), environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    with pytest.raises(ConfigError, match="no usable AWS credentials"):
        open_db(ctx, instance="a", region=REGION).describe()
    with pytest.raises(ConfigError, match="AWS profile 'nope' is not configured"):
        open_db(ctx, instance="a", region=REGION, profile="nope").describe()


def test_describe_instance_reports_version_class_and_parameters(aws, ctx):
    create_parameter_group("raptor-pg", **{"rds.force_ssl": "0", "rds.restrict_password_commands": "1"})
    create_instance(parameter_group="raptor-pg")
    info = open_db(ctx, instance="raptor-staging", region=REGION).describe()
    assert isinstance(info, DatabaseInfo)
    assert (info.engine, info.version, info.plan, info.credentials) == ("postgres", "16.3", "db.t4g.micro", "sql")
    assert info.password_auth is True and info.role_grants == ()
    d = info.details
    assert d["instance"] == "raptor-staging" and d["class"] == "db.t4g.micro" and d["region"] == REGION
    assert d["parameter_group"] == "raptor-pg"
    assert d["rds.force_ssl"] == "0" and d["rds.restrict_password_commands"] == "1"
    assert d["master_secret"].startswith(f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds!db-")
    assert "iam_policy" not in d


def test_describe_reports_engine_defaults_for_unset_parameters(aws, ctx):
    create_instance()     # default.postgres16: nothing set
    d = open_db(ctx, instance="raptor-staging", region=REGION).describe().details
    assert d["parameter_group"] == "default.postgres16"
    assert d["rds.force_ssl"] == "1 (engine default)"          # RDS for PostgreSQL >= 15
    assert d["rds.restrict_password_commands"] == "0 (engine default)"
    assert "note_parameters" not in d
    create_instance("raptor-old", version="14.10")
    assert open_db(ctx, instance="raptor-old", region=REGION).describe().details["rds.force_ssl"] == "0 (engine default)"


def test_describe_goes_on_when_the_parameter_group_is_unreadable(aws, ctx):
    from botocore.exceptions import ClientError

    create_parameter_group("raptor-pg", **{"rds.restrict_password_commands": "1"})
    create_instance(parameter_group="raptor-pg")
    db = open_db(ctx, instance="raptor-staging", region=REGION)

    def deny(**kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, "DescribeDBParameters")

    db.aws.client("rds").meta.events.register("before-call.rds.DescribeDBParameters", deny)
    d = db.describe().details
    assert d["rds.restrict_password_commands"] == "0 (engine default)"
    assert d["note_parameters"] == "parameter group raptor-pg unreadable (AccessDenied)"

    def throttle(**kwargs):
        raise ClientError({"Error": {"Code": "InternalFailure", "Message": "boom"}}, "DescribeDBParameters")

    db = open_db(ctx, instance="raptor-staging", region=REGION)
    db.aws.client("rds").meta.events.register("before-call.rds.DescribeDBParameters", throttle)
    with pytest.raises(ProviderError, match="AWS rds DescribeDBParameters failed: InternalFailure: boom"):
        db.describe()


def test_describe_aurora_cluster(aws, ctx):
    rds = client("rds")
    rds.create_db_cluster_parameter_group(DBClusterParameterGroupName="raptor-apg", Description="t",
                                          DBParameterGroupFamily="aurora-postgresql16")
    rds.modify_db_cluster_parameter_group(DBClusterParameterGroupName="raptor-apg", Parameters=[
        {"ParameterName": "rds.force_ssl", "ParameterValue": "1", "ApplyMethod": "pending-reboot"}])
    rds.create_db_cluster(DBClusterIdentifier="raptor-aurora", Engine="aurora-postgresql", EngineVersion="16.4",
                          MasterUsername="postgres", ManageMasterUserPassword=True, DatabaseName="raptor",
                          DBClusterParameterGroupName="raptor-apg")
    rds.create_db_instance(DBInstanceIdentifier="raptor-aurora-1", DBClusterIdentifier="raptor-aurora",
                           DBInstanceClass="db.r6g.large", Engine="aurora-postgresql")
    db = open_db(ctx, cluster="raptor-aurora", region=REGION)
    info = db.describe()
    assert (info.engine, info.version, info.plan) == ("aurora-postgresql", "16.4", "db.r6g.large")
    assert info.details["cluster"] == "raptor-aurora"
    assert info.details["rds.force_ssl"] == "1"
    assert info.details["rds.restrict_password_commands"] == "0 (engine default)"
    assert db.credential_for("app", None).host.startswith("raptor-aurora.cluster-")
    assert db.credential_for("app", None).database == "raptor"


def test_describe_refuses_other_engines_and_stopped_instances(aws, ctx):
    create_instance("raptor-mysql", engine="mysql", version="8.0.35")
    with pytest.raises(Refused, match="runs mysql; pg-runbook supports postgres and aurora-postgresql"):
        open_db(ctx, instance="raptor-mysql", region=REGION).describe()
    create_instance()
    client("rds").stop_db_instance(DBInstanceIdentifier="raptor-staging")
    with pytest.raises(Refused, match="is stopped; start it: aws rds start-db-instance --db-instance-identifier raptor-staging"):
        open_db(ctx, instance="raptor-staging", region=REGION).describe()


def test_describe_missing_instance_is_a_config_error(aws, ctx):
    with pytest.raises(ConfigError, match=r"database.instance: no RDS instance nope in eu-west-1 \(DBInstanceNotFound\)"):
        open_db(ctx, instance="nope", region=REGION).describe()


def test_force_ssl_refuses_sslmode_disable(aws, ctx):
    create_parameter_group("raptor-pg", **{"rds.force_ssl": "1"})
    create_instance(parameter_group="raptor-pg")
    with pytest.raises(Refused, match="rds.force_ssl=1 .* set sslmode: require"):
        open_db(ctx, instance="raptor-staging", region=REGION, sslmode="disable").describe()


def test_iam_auth_describe_gives_policy_and_rds_iam(aws, ctx):
    db_desc = create_instance(iam=True)
    db = open_db(ctx, instance="raptor-staging", region=REGION, auth="iam")
    info = db.describe()
    assert info.password_auth is False and info.role_grants == ("rds_iam",) and info.credentials == "sql"
    resource = f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:{db_desc['DbiResourceId']}/raptor_app"
    assert json.loads(db.iam_policy("raptor_app")) == {
        "Effect": "Allow", "Action": "rds-db:connect", "Resource": resource}
    assert json.loads(info.details["iam_policy"])["Resource"] == resource.replace("raptor_app", "<role>")
    assert info.details["note_iam"].endswith(info.details["iam_policy"])
    cred = db.credential_for("raptor_app", None)
    assert cred.password is None and cred.sslmode == "require"
    assert cred.url().reveal() == f"postgresql://raptor_app@{db_desc['Endpoint']['Address']}:5432/raptor?sslmode=require"


def test_iam_auth_refused_when_disabled_on_the_instance(aws, ctx):
    create_instance(iam=False)
    with pytest.raises(Refused, match="aws rds modify-db-instance --db-instance-identifier raptor-staging "
                                      "--enable-iam-database-authentication --apply-immediately"):
        open_db(ctx, instance="raptor-staging", region=REGION, auth="iam").describe()


def test_the_app_url_keeps_the_endpoint_while_the_tool_goes_through_connect(aws, ctx):
    desc = create_instance(dbname=None)
    endpoint = desc["Endpoint"]["Address"]
    db = open_db(ctx, instance="raptor-staging", region=REGION)
    cred = db.credential_for("raptor_app", Secret("s3cret-value"))
    assert (cred.host, cred.port, cred.database, cred.sslmode) == (endpoint, 5432, "postgres", "require")
    # a tunnel: the tool's session goes there, the app's URL still names the RDS endpoint
    db = open_db(ctx, instance="raptor-staging", region=REGION, database="appdb", sslmode="verify-full",
                 connect={"host": "127.0.0.1", "port": 6543})
    cred = db.credential_for("raptor_app", Secret("s3cret-value"))
    assert (cred.host, cred.port, cred.database, cred.sslmode) == (endpoint, 5432, "appdb", "verify-full")
    assert db._address() == ("127.0.0.1", 6543)
    # the tool proves the app's URL through the tunnel; TLS still checks the endpoint's name
    from psycopg.conninfo import conninfo_to_dict
    proof = conninfo_to_dict(db.login_route(cred.url()).reveal())
    assert (proof["host"], proof["hostaddr"], proof["port"], proof["user"]) == (endpoint, "127.0.0.1", "6543", "raptor_app")
    # app_host / app_port override what the app uses (a private DNS name, a local pooler)
    db = open_db(ctx, instance="raptor-staging", region=REGION, app_host="db.internal", app_port=6432)
    cred = db.credential_for("raptor_app", Secret("s3cret-value"))
    assert (cred.host, cred.port) == ("db.internal", 6432)


def test_admin_dsn_logs_in_as_the_master_from_the_managed_secret(aws, ctx, pg, master, db_config):
    create_instance(master=master)
    db = RdsDatabaseConfig.model_validate(db_config()).open(ctx)
    dsn = db.admin_dsn()
    assert isinstance(dsn, Secret) and master.password not in str(dsn)
    with psycopg.connect(dsn.reveal()) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (master.name, pg.dbname)


def test_admin_dsn_from_a_named_secret_and_master_user_override(aws, ctx, pg, master, db_config):
    create_instance()   # the managed secret holds someone else
    client("secretsmanager").create_secret(
        Name="raptor/master", SecretString=json.dumps({"username": "ignored", "password": master.password}))
    db = RdsDatabaseConfig.model_validate(
        db_config(master_secret="raptor/master", master_user=master.name)).open(ctx)
    with psycopg.connect(db.admin_dsn().reveal()) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == master.name


def test_master_secret_that_is_not_json_is_refused_without_quoting_it(aws, ctx, canary_password):
    create_instance()
    client("secretsmanager").create_secret(Name="raptor/bad", SecretString=f"password={canary_password}")
    db = open_db(ctx, instance="raptor-staging", region=REGION, master_secret="raptor/bad")
    with pytest.raises(ConfigError, match="not JSON with a username and a password") as err:
        db.admin_dsn()
    assert canary_password not in str(err.value)


def test_missing_master_secret_is_a_provider_error_with_aws_code(aws, ctx):
    create_instance()
    db = open_db(ctx, instance="raptor-staging", region=REGION, master_secret="raptor/none")
    with pytest.raises(ProviderError, match=r"AWS secretsmanager GetSecretValue failed: ResourceNotFoundException: "):
        db.admin_dsn()


def test_client_error_quotes_code_and_message_never_params(aws, ctx, canary_password):
    from botocore.stub import Stubber

    db = open_db(ctx, instance="raptor-staging", region=REGION, master_secret=f"raptor/{canary_password}")
    sm = db.aws.client("secretsmanager")
    with Stubber(sm) as stub:
        stub.add_client_error("get_secret_value", service_error_code="AccessDeniedException",
                              service_message="User is not authorized to perform secretsmanager:GetSecretValue",
                              http_status_code=400)
        with pytest.raises(ProviderError) as err:
            db.aws.call("secretsmanager", "get_secret_value", SecretId=f"raptor/{canary_password}")
    assert str(err.value) == ("AWS secretsmanager GetSecretValue failed: AccessDeniedException: "
                              "User is not authorized to perform secretsmanager:GetSecretValue")
    assert err.value.__cause__ is None and err.value.__suppress_context__


# -- preflight over the real PostgreSQL -------------------------------------------------------

def _snapshot(pg) -> list[tuple]:
    return pg.execute("""
        SELECT r.rolname, r.rolpassword IS NOT NULL, m.roleid::regrole::text
        FROM pg_authid r LEFT JOIN pg_auth_members m ON m.member = r.oid ORDER BY 1, 3""")


def test_preflight_stops_when_password_commands_are_restricted(aws, ctx, pg, master, db_config, caplog):
    create_parameter_group("raptor-pg", **{"rds.restrict_password_commands": "1"})
    create_instance(parameter_group="raptor-pg", master=master, pg=pg)
    outside_rds_superuser(pg, master)     # a master_secret login without rds_password
    db = RdsDatabaseConfig.model_validate(db_config()).open(ctx)
    before = _snapshot(pg)
    info = db.describe()
    assert info.details["rds.restrict_password_commands"] == "1"
    with psycopg.connect(db.admin_dsn().reveal()) as conn:
        problems = db.preflight_sql(conn)
    assert problems == [
        f"master user {master.name} is not a member of rds_password; password commands are restricted "
        f"(rds.restrict_password_commands=1 in parameter group raptor-pg). "
        f'Fix: GRANT rds_password TO "{master.name}";']
    assert _snapshot(pg) == before     # nothing changed
    assert master.password not in caplog.text

    # the printed fix, run as the administrator, clears the problem
    pg.execute(f'GRANT rds_password TO "{master.name}";')
    with psycopg.connect(db.admin_dsn().reveal()) as conn:
        assert db.preflight_sql(conn) == []


def test_preflight_reads_the_server_setting_when_the_group_is_unreadable(aws, ctx, pg, master, db_config):
    create_instance(master=master)    # default group: moto cannot describe it
    outside_rds_superuser(pg, master)
    pg.execute(sql.SQL("ALTER DATABASE {} SET rds.restrict_password_commands = 'on'").format(sql.Identifier(pg.dbname)))
    db = RdsDatabaseConfig.model_validate(db_config()).open(ctx)
    db.describe()
    with psycopg.connect(db.admin_dsn().reveal()) as conn:
        problems = db.preflight_sql(conn)
    assert len(problems) == 1
    assert "(rds.restrict_password_commands is on)" in problems[0]
    assert problems[0].endswith(f'Fix: GRANT rds_password TO "{master.name}";')


def test_preflight_passes_when_unrestricted(aws, ctx, pg, master, db_config):
    create_parameter_group("raptor-pg", **{"rds.restrict_password_commands": "0"})
    create_instance(parameter_group="raptor-pg", master=master, pg=pg)
    outside_rds_superuser(pg, master)     # unrestricted: rds_password membership is not needed
    db = RdsDatabaseConfig.model_validate(db_config()).open(ctx)
    with psycopg.connect(db.admin_dsn().reveal()) as conn:
        assert db.preflight_sql(conn) == []


def test_preflight_iam_needs_rds_iam_not_rds_password(aws, ctx, pg, master, db_config):
    create_parameter_group("raptor-pg", **{"rds.restrict_password_commands": "1"})
    create_instance(parameter_group="raptor-pg", master=master, iam=True, pg=pg)
    outside_rds_superuser(pg, master)     # neither rds_password nor rds_iam's admin option
    db = RdsDatabaseConfig.model_validate(db_config(auth="iam", sslmode="require")).open(ctx)
    pg.execute("DROP ROLE IF EXISTS rds_iam")    # cluster-wide; only these tests use it
    with psycopg.connect(db.admin_dsn().reveal(), sslmode="disable") as conn:
        assert db.preflight_sql(conn) == [
            "role rds_iam does not exist on this server, so IAM authentication cannot work; "
            "connect to the RDS endpoint (database.connect) or use auth: password"]
    ensure_role(pg, "rds_iam")
    with psycopg.connect(db.admin_dsn().reveal(), sslmode="disable") as conn:
        # granting rds_iam needs ADMIN OPTION on it, which RDS gives rds_superuser
        assert db.preflight_sql(conn) == [
            f"master user {master.name} cannot grant rds_iam (it needs ADMIN OPTION, which members of "
            f'rds_superuser have). Fix: GRANT rds_superuser TO "{master.name}";']
    pg.execute(sql.SQL("GRANT rds_iam TO {} WITH ADMIN OPTION").format(sql.Identifier(master.name)))
    with psycopg.connect(db.admin_dsn().reveal(), sslmode="disable") as conn:
        # no password is sent for an IAM role, so rds_password membership does not matter
        assert db.preflight_sql(conn) == []
