"""The soak's `errors` check on real PostgreSQL (18 and 15): the app role meets `permission
denied`, the server writes it to its log, the checkpoint fails with the line; no readable log is
inconclusive; lines the owner forges do not count and do not reach the output raw."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from providers.embedded import Cluster
from runbook import commands
from tests.conftest import VERSIONS, PgTarget, RunningCluster
from tests.pg.conftest import make_env
from tests.pg.test_soak_promote import shift_soak, soak

# checkpoints far apart, so a slow machine never finds two due at once
SHORT = {"duration": "30s", "checkpoints": ["10s", "20s", "30s"], "valid_for": "1h"}


def with_log(env, *, checks=None, server_log="cluster", soak=None) -> None:
    """The env's project with soak checks and database.server_log (the test cluster's own log)."""
    data = yaml.safe_load(env.path.read_text())
    data["soak"] = {**(soak or SHORT), "valid_for": "1h", **({"checks": checks} if checks is not None else {})}
    db = data["environments"]["staging"]["database"]
    if server_log == "cluster":
        db["server_log"] = str(env.pg.rc.cluster.log_file)
    elif server_log:
        db["server_log"] = server_log
    env.path.write_text(yaml.safe_dump(data, sort_keys=False))


def deny_as_app(env) -> None:
    with env.app_conn() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM alembic_version")


def errors_result(res) -> dict:
    point = res.data["soak"]["checkpoints"][0]
    return next(c for c in point["checks"] if c["check"] == "errors")


def test_permission_denied_as_the_role_fails_the_checkpoint(su_env):
    with_log(su_env, checks=["diagnose", "errors"])
    assert commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ).exit_code == 0
    deny_as_app(su_env)
    shift_soak(su_env, 10.5)
    res = soak(su_env)
    check = errors_result(res)
    assert res.exit_code == 4, res.data
    assert check["status"] == "fail"
    assert "1 permission denied" in check["detail"]
    assert "permission denied for table alembic_version" in check["detail"]
    assert res.data["soak"]["checkpoints"][0]["status"] == "fail"


def test_a_clean_log_passes_and_max_allows_expected_errors(su_env):
    with_log(su_env, checks=[{"errors": {"max": 1}}])
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 10.5)
    first = errors_result(soak(su_env))
    assert first["status"] == "pass" and "0 permission denied, 0 authentication" in first["detail"], first
    deny_as_app(su_env)
    shift_soak(su_env, 10)
    second = soak(su_env).data["soak"]["checkpoints"][1]["checks"][0]
    assert second["status"] == "pass" and "1 permission denied" in second["detail"], second


def test_authentication_failures_of_the_role_count(su_env):
    with_log(su_env, checks=["errors"])
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(su_env.pg.tcp_dsn(su_env.role, "not-the-password"), connect_timeout=5).close()
    shift_soak(su_env, 10.5)
    check = errors_result(soak(su_env))
    assert check["status"] == "fail" and "1 authentication failure" in check["detail"], check
    assert "password authentication failed" in check["detail"]


def test_errors_before_the_flag_went_on_do_not_count(su_env):
    import time

    with_log(su_env, checks=["errors"], soak={"duration": "10s", "checkpoints": ["1s", "10s"]})
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    deny_as_app(su_env)
    time.sleep(1.3)
    # the soak (re)started after the denied query, and its first checkpoint is due
    su_env.pg.execute("UPDATE runbook.soaks SET started_at = extract(epoch FROM clock_timestamp()) - 1.1 "
                      "WHERE status = 'running'")
    check = errors_result(soak(su_env))
    assert check["status"] == "pass" and "0 permission denied" in check["detail"], check


def test_no_readable_log_is_inconclusive_never_a_pass(su_env):
    with_log(su_env, checks=["errors"], server_log=None)   # a DSN server without a logging collector
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 10.5)
    res = soak(su_env)
    check = errors_result(res)
    assert check["status"] == "inconclusive" and "no database log the tool can read" in check["detail"]
    assert res.data["soak"]["checkpoints"][0]["status"] == "inconclusive"


def test_a_missing_log_file_is_inconclusive(su_env, tmp_path):
    with_log(su_env, checks=["errors"], server_log=str(tmp_path / "nowhere.log"))
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 10.5)
    check = errors_result(soak(su_env))
    assert check["status"] == "inconclusive" and "cannot read" in check["detail"]


def test_default_checks_gain_errors_only_where_the_log_is_readable(su_env):
    with_log(su_env, server_log=None)          # checks not written: diagnose, drift (+ errors when readable)
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 10.5)
    names = [c["check"] for c in soak(su_env).data["soak"]["checkpoints"][0]["checks"]]
    assert names == ["diagnose", "drift"]
    with_log(su_env)
    deny_as_app(su_env)
    shift_soak(su_env, 10)
    res = soak(su_env)
    point = res.data["soak"]["checkpoints"][1]
    assert [c["check"] for c in point["checks"]] == ["diagnose", "drift", "errors"]
    assert point["status"] == "fail" and res.exit_code == 4


def test_diagnose_gains_the_errors_check(su_env):
    with_log(su_env)
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    clean = commands.diagnose(su_env.project(), "staging", environ=su_env.environ)
    assert [c.name for c in clean.checks] == ["role", "grants", "url", "flag", "errors"]
    assert clean.exit_code == 0, [c.to_json() for c in clean.checks]
    deny_as_app(su_env)
    res = commands.diagnose(su_env.project(), "staging", environ=su_env.environ)
    errors = res.checks[-1]
    assert res.exit_code == 4 and errors.status == "fail" and "alembic_version" in errors.detail


def test_lines_the_owner_forges_do_not_count_or_escape(su_env):
    with_log(su_env, checks=["errors"])
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    role, db = su_env.role, su_env.pg.dbname
    forged = (f"2030-01-01 00:00:00.000 UTC [1] {role}@{db} ERROR:  permission denied for table forged")
    with su_env.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(su_env.owner)))
        conn.execute("SELECT set_config('application_name', %s, false)", (f"x {role}@{db} ERROR:  permission denied",))
        # a message that starts a new "line" of the role's, and one that is the role's error text
        conn.execute(sql.SQL("DO $$ BEGIN RAISE LOG {}; END $$").format(sql.Literal("\n" + forged + "\x1b[2J")))
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute(sql.SQL("DO $$ BEGIN RAISE EXCEPTION {}; END $$").format(
                sql.Literal("permission denied for table " + role)))
    shift_soak(su_env, 10.5)
    check = errors_result(soak(su_env))
    assert check["status"] == "pass", check
    # the role's own denial on a table whose name carries control characters: counted, shown clean
    table = "evil\x1b[31m\nFATAL:  x"
    with su_env.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(su_env.owner)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(table)))
    su_env.pg.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(table), sql.Identifier(role)))
    with su_env.app_conn() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
    shift_soak(su_env, 10)
    res = soak(su_env)
    failed = res.data["soak"]["checkpoints"][1]["checks"][0]
    assert failed["status"] == "fail" and "1 permission denied" in failed["detail"], failed
    assert "\x1b" not in failed["detail"] and "\n" not in failed["detail"]
    assert "forged" not in failed["detail"]


def test_a_lookalike_role_makes_a_text_log_inconclusive(su_env):
    with_log(su_env, checks=["errors"])
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    su_env.pg.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(su_env.pg.role(su_env.role + "@x"))))
    shift_soak(su_env, 10.5)
    check = errors_result(soak(su_env))
    assert check["status"] == "inconclusive" and "could pass for" in check["detail"]


# --- a server with a logging collector, read over SQL ------------------------------------------

@pytest.fixture(scope="module", params=[v[0] for v in VERSIONS])
def collector(request):
    """A cluster whose collector writes stderr lines without the user in the prefix; the tests
    switch log_destination (ALTER SYSTEM) to jsonlog and csvlog."""
    label = request.param
    bin_dir = dict(VERSIONS)[label]
    base = Path(tempfile.mkdtemp(prefix="rb-log-"))
    base.chmod(0o755)
    cluster = Cluster(bin_dir, base / "pg")
    cluster.start(settings={"logging_collector": "on", "log_line_prefix": "'%m [%p] '"})
    cluster.wait_ready()
    with psycopg.connect(cluster.admin_conninfo(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE rb_template")
    yield RunningCluster(label, cluster, cluster.version())
    cluster.destroy()
    shutil.rmtree(base, ignore_errors=True)


def collector_env(collector, tmp_path, *, admin="superuser", destination="stderr"):
    suffix = uuid.uuid4().hex[:8]
    pg = PgTarget(collector, f"t_{suffix}", suffix)
    with psycopg.connect(collector.admin(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE rb_template").format(sql.Identifier(pg.dbname)))
        conn.execute(sql.SQL("ALTER SYSTEM SET log_destination = {}").format(sql.Literal(destination)))
        conn.execute("SELECT pg_reload_conf()")
        for _ in range(100):    # the collector opens the new format's file once it has reloaded
            with psycopg.connect(collector.admin(), autocommit=True) as probe:
                fmt = destination.split(",")[0]
                if probe.execute("SELECT pg_current_logfile(%s)", (fmt,)).fetchone()[0]:
                    break
            time.sleep(0.05)
    env = make_env(pg, tmp_path, admin=admin)
    with_log(env, checks=["errors"], server_log=None)
    return env


@pytest.mark.parametrize("destination", ["jsonlog", "csvlog"])
def test_the_collector_log_read_over_sql(collector, tmp_path, destination):
    env = collector_env(collector, tmp_path, destination=destination)
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    shift_soak(env, 10.5)
    clean_check = errors_result(soak(env))
    assert clean_check["status"] == "pass", clean_check
    assert destination in clean_check["detail"]
    deny_as_app(env)
    for _ in range(100):       # the collector writes what backends send it a moment later
        res = soak_once_more(env)
        if res is not None:
            break
        time.sleep(0.05)
    assert res is not None and res["status"] == "fail" and "alembic_version" in res["detail"], res


def soak_once_more(env):
    """diagnose's errors result once it counts the denial, else None."""
    checks = commands.diagnose(env.project(), "staging", environ=env.environ).checks
    errors = [c for c in checks if c.name == "errors"]
    return errors[0].to_json() if errors and errors[0].status == "fail" else None


def test_a_prefix_without_the_user_is_inconclusive_with_the_fix(collector, tmp_path):
    env = collector_env(collector, tmp_path, destination="stderr")
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    shift_soak(env, 10.5)
    check = errors_result(soak(env))
    assert check["status"] == "inconclusive"
    assert "does not carry the user" in check["detail"]
    assert check["fix"] == "log_line_prefix = '%m [%p] %q%u@%d '"


def test_an_admin_that_may_not_read_the_log_is_told_what_it_needs(collector, tmp_path):
    env = collector_env(collector, tmp_path, admin="createrole", destination="jsonlog")
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    shift_soak(env, 10.5)
    check = errors_result(soak(env))
    assert check["status"] == "inconclusive", check
    assert "pg_monitor" in check["fix"] and "pg_read_server_files" in check["fix"]
