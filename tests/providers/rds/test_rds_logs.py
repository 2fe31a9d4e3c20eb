"""RDS log files for the soak's `errors` check: moto for the instance and cluster, the log-file
calls answered by tests/providers/rds/logfiles.py (validated against botocore's model)."""

from __future__ import annotations

import time

import boto3
import pytest

from providers.rds import RdsDatabaseConfig
from runbook import dblog
from tests.providers.rds.conftest import REGION, client, create_instance
from tests.providers.rds.logfiles import RdsLogFiles

NOW = time.time()


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def rds_line(at: float, user: str, level: str, message: str) -> str:
    return f"{stamp(at)}:10.0.3.7(51234):{user}@raptor:[4242]:{level}:  {message}\n"


@pytest.fixture
def logs() -> RdsLogFiles:
    return RdsLogFiles()


def make_db(ctx, logs, **block):
    from providers.rds import RdsDatabase

    session = boto3.session.Session(region_name=REGION)
    logs.install(session)
    return RdsDatabase(RdsDatabaseConfig.model_validate({"provider": "rds", "region": REGION, **block}), ctx,
                       session=session)


def test_the_roles_errors_across_files_and_pages(aws, ctx, logs):
    create_instance("raptor-staging")
    since = NOW - 3600
    logs.add("raptor-staging", "error/postgresql.log.old", rds_line(since - 60, "app", "ERROR", "permission denied for table t"),
             since - 60)
    logs.add("raptor-staging", "error/postgresql.log.1", "".join([
        rds_line(since + 1, "app", "ERROR", "permission denied for table orders"),
        rds_line(since + 1, "app", "STATEMENT", "SELECT * FROM orders"),
        rds_line(since + 2, "owner", "ERROR", "permission denied for table orders"),
        "\t" + rds_line(since + 3, "app", "ERROR", "permission denied forged by a message"),
        rds_line(since + 4, "app", "FATAL", 'password authentication failed for user "app"'),
    ]), since + 4)
    logs.add("raptor-staging", "error/postgresql.log.2", rds_line(since + 10, "app", "ERROR", "permission denied for schema s"),
             since + 10)
    logs.add("raptor-staging", "slowquery/ignored.log", rds_line(since + 10, "app", "ERROR", "permission denied x"), since + 10)
    db = make_db(ctx, logs, instance="raptor-staging")
    lines = db.read_log(since, "app")
    assert lines.problem is None and lines.text
    found = dblog.count(lines.records, "app", since)
    assert (found.permission_denied, found.auth_failed) == (2, 1)
    downloads = [p for op, p in logs.calls if op == "DownloadDBLogFilePortion"]
    assert {p["LogFileName"] for p in downloads} == {"error/postgresql.log.1", "error/postgresql.log.2"}
    assert any(p["Marker"] != "0" for p in downloads)          # the 5-line file came in pages
    described = [p for op, p in logs.calls if op == "DescribeDBLogFiles"]
    assert described[0]["FileLastWritten"] == int(since * 1000)


def test_csvlog_files_are_preferred(aws, ctx, logs):
    create_instance("raptor-staging")
    row = (f'{stamp(NOW)},app,raptor,4242,"10.0.3.7:51234",a.b,1,SELECT,{stamp(NOW)},3/4,0,ERROR,42501,'
           '"permission denied for table orders",,,,,,,,,"web",client backend,,0\n')
    logs.add("raptor-staging", "error/postgresql.log.1.csv", row, NOW)
    logs.add("raptor-staging", "error/postgresql.log.1", rds_line(NOW, "app", "ERROR", "permission denied x"), NOW)
    lines = make_db(ctx, logs, instance="raptor-staging").read_log(NOW - 60, "app")
    assert not lines.text
    assert dblog.count(lines.records, "app", NOW - 60).permission_denied == 1


def test_every_aurora_member_is_read(aws, ctx, logs):
    rds = client("rds")
    rds.create_db_cluster(DBClusterIdentifier="raptor-aurora", Engine="aurora-postgresql", EngineVersion="16.4",
                          MasterUsername="postgres", ManageMasterUserPassword=True, DatabaseName="raptor")
    for ident in ("raptor-aurora-1", "raptor-aurora-2"):
        rds.create_db_instance(DBInstanceIdentifier=ident, DBClusterIdentifier="raptor-aurora",
                               DBInstanceClass="db.r6g.large", Engine="aurora-postgresql")
        logs.add(ident, "error/postgresql.log.1", rds_line(NOW, "app", "ERROR", f"permission denied on {ident}"), NOW)
    lines = make_db(ctx, logs, cluster="raptor-aurora").read_log(NOW - 60, "app")
    assert dblog.count(lines.records, "app", NOW - 60).permission_denied == 2


def test_no_permission_to_read_is_inconclusive_with_the_iam_actions(aws, ctx, logs):
    create_instance("raptor-staging")
    logs.files["raptor-staging"] = {}
    logs.deny = True
    lines = make_db(ctx, logs, instance="raptor-staging").read_log(NOW - 60, "app")
    assert "may not read" in lines.problem
    assert "rds:DescribeDBLogFiles" in lines.fix and "rds:DownloadDBLogFilePortion" in lines.fix


def test_not_asked_it_reads_nothing(aws, ctx, logs):
    create_instance("raptor-staging")
    assert make_db(ctx, logs, instance="raptor-staging").read_log(NOW - 60, "app", asked=False) is None
    assert logs.calls == []
