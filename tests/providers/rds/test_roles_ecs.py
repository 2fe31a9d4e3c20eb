"""Several roles on RDS + ECS (issue 18 item 5), `runbook` as a subprocess against moto in server
mode with ECS's deployment model (tests/providers/rds/server_world.py): each role's URL in its own
Secrets Manager secret (`app.url_names`), one `secrets` entry per role's url_var in the operator's
task definition, and each role verified with exactly what a started task received. An
alternating rotate of the app role changes its secret only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from psycopg.conninfo import make_conninfo

from tests.pg.test_alternating import _logins_dropped_first  # noqa: F401  (an autouse fixture)
from tests.providers.conftest import as_login
from tests.providers.rds.conftest import REGION
from tests.providers.rds.test_server_mode import (  # noqa: F401  (fixtures)
    PARAM, aws, moto_server, runbook, task_login, world,
)
from tests.providers.three_roles import (
    APP_URL, CI_URL, RO_URL, check_app, check_catalog_only, check_readonly, roles_block, write_roles_project,
)

pytestmark = [pytest.mark.pg, pytest.mark.slow]

FLAG = "RAPTOR_NEW_ROLE"
NAMES = {APP_URL: "raptor/staging/app-url", RO_URL: "raptor/staging/readonly-url", CI_URL: "raptor/staging/ci-url"}


def as_task(url: str) -> str:
    """The URL a task received, with 127.0.0.1 standing in for the VPC's DNS answer."""
    return make_conninfo(url, hostaddr="127.0.0.1")


def _setup(world, tmp_path, pg, *, rotation: bool = False):
    """The operator's IaC: the flag, referenced by the service's task definition; pg-runbook
    creates each role's secret (named in url_names) and registers the revisions that reference
    them. (A task definition of yours that references a secret holding no URL yet stops every task
    from starting, the other roles' included: ECS fails the deployment by circuit breaker.)"""
    as_login(pg.tcp_dsn(world.master.name, world.master.password),
             "CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
    aws("ssm").put_parameter(Name=PARAM, Value="0", Type="String")
    world.service([{"name": FLAG, "valueFrom": aws("ssm").get_parameter(Name=PARAM)["Parameter"]["ARN"]}])
    app, ro, ci = pg.role("raptor_app"), pg.role("raptor_ro"), pg.role("raptor_ci")
    roles = roles_block(app, ro, flag=FLAG, ci=ci)
    if rotation:
        roles[app]["rotation"] = "alternating"
    write_roles_project(tmp_path, roles, {
        "provider": "rds",
        "database": {"instance": "raptor-staging", "region": REGION, "sslmode": "disable",
                     "connect": {"host": "127.0.0.1", "port": world.tunnel.port}},
        "app": {"cluster": "raptor", "service": "web", "url_store": "secretsmanager", "url_names": NAMES,
                "flag_parameter": PARAM, "register_task_definition": True, "wait": {"timeout": "30s", "poll": "1s"}},
    }, settings={"drain_timeout": "30s"} if rotation else None)
    return app, ro, ci


def arn(var: str) -> str:
    return aws("secretsmanager").describe_secret(SecretId=NAMES[var])["ARN"]


def stored(var: str) -> dict:
    return json.loads(aws("secretsmanager").get_secret_value(SecretId=NAMES[var])["SecretString"])


def versions(var: str) -> dict:
    return aws("secretsmanager").describe_secret(SecretId=NAMES[var])["VersionIdsToStages"]


def test_three_roles_each_from_its_own_secret_as_the_task_receives_them(world, tmp_path, pg):
    app, ro, ci = _setup(world, tmp_path, pg)
    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    received = world.deployments.received[-1]          # what a task started now got, entry by entry
    assert received[FLAG] == "1"
    for var, role in ((APP_URL, app), (RO_URL, ro), (CI_URL, ci)):
        assert task_login(received[var]) == role
        assert stored(var)["url"] == received[var] and stored(var)["username"] == role
    check_app(as_task(received[APP_URL]), app)
    check_readonly(as_task(received[RO_URL]), ro)
    check_catalog_only(as_task(received[CI_URL]), ci)
    # one secrets entry per role's url_var, each reading its own secret's url key
    entries = {e["name"]: e["valueFrom"] for e in world.containers()[0]["secrets"]}
    assert entries == {**{var: f"{arn(var)}:url::" for var in NAMES}, FLAG: entries[FLAG]}

    # verify reads each role's URL through the task definition's own reference: a rerun changes nothing
    before = {var: versions(var) for var in NAMES}
    deployments = len(world.deployments.received)
    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    assert {var: versions(var) for var in NAMES} == before and len(world.deployments.received) == deployments
    out = subprocess.run([sys.executable, "-m", "runbook.cli", "diagnose", "--env", "staging"], cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1", "CI": "true"}, capture_output=True, text=True,
                         timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr      # each role's url check passes from the task's side

    # someone points the readonly variable at the app's secret: that role's verify sees it (the
    # task would log in as the app) and the readonly role's rerun puts its own reference back
    world.deploy([{**e, "valueFrom": f"{arn(APP_URL)}:url::"} if e["name"] == RO_URL else e
                  for e in world.containers()[0]["secrets"]])
    assert task_login(world.deployments.start_task(world.containers())[RO_URL]) == app
    out = runbook(tmp_path, "provision", "--role", ro)
    assert out.returncode == 0, out.stderr
    received = world.deployments.received[-1]
    assert task_login(received[RO_URL]) == ro and task_login(received[APP_URL]) == app
    check_readonly(as_task(received[RO_URL]), ro)


def test_an_alternating_rotate_of_the_app_role_leaves_the_other_secrets_alone(world, tmp_path, pg):
    app, ro, ci = _setup(world, tmp_path, pg, rotation=True)
    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    first = world.deployments.received[-1]
    assert task_login(first[APP_URL]) == f"{app}_a"
    others = {var: (versions(var), stored(var)) for var in (RO_URL, CI_URL)}

    out = runbook(tmp_path, "rotate", "--role", app)
    assert out.returncode == 0, out.stderr
    started = world.deployments.received[-1]
    assert task_login(started[APP_URL]) == f"{app}_b"
    check_app(as_task(started[APP_URL]), f"{app}_b")
    assert {var: (versions(var), stored(var)) for var in (RO_URL, CI_URL)} == others     # untouched
    assert started[RO_URL] == first[RO_URL] and started[CI_URL] == first[CI_URL]
    check_readonly(as_task(started[RO_URL]), ro)
    check_catalog_only(as_task(started[CI_URL]), ci)


def test_a_role_missing_from_url_names_is_refused_in_one_line_before_any_change(world, tmp_path, pg):
    names = _setup(world, tmp_path, pg)
    data = yaml.safe_load((tmp_path / "runbook.yaml").read_text())
    app_block = data["environments"]["staging"]["app"]
    app_block["url_names"] = {APP_URL: NAMES[APP_URL], RO_URL: NAMES[RO_URL]}    # the CI role's is missing
    (tmp_path / "runbook.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    out = runbook(tmp_path, "provision")
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"app.url_names has no entry for {CI_URL}" in errors[0], out.stderr
    # nothing made: no secret but the master user's, which RDS itself keeps (`rds!db-…`), and no role
    made = [x["Name"] for x in aws("secretsmanager").list_secrets()["SecretList"] if not x["Name"].startswith("rds!")]
    assert made == [] and pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (list(names),)) == [(0,)]


@pytest.mark.parametrize(("app", "why"), [
    ({"url_name": "a", "url_names": {APP_URL: "b"}}, "not both"),
    ({}, "url_name is required (or url_names"),
    ({"url_names": {APP_URL: "same", RO_URL: "same"}}, "same is named for several variables"),
    ({"url_names": {APP_URL: "bad name!"}}, "url_names.RAPTOR_APP_DATABASE_URL 'bad name!' is not a Secrets Manager"),
    ({"url_store": "ssm", "url_names": {APP_URL: "aws/x"}}, "url_names.RAPTOR_APP_DATABASE_URL 'aws/x'"),
])
def test_url_names_is_checked_when_the_file_loads(tmp_path, app, why):
    from runbook import project as projects
    from runbook.errors import ConfigError

    path = write_roles_project(tmp_path, roles_block("raptor_app", "raptor_ro", flag=FLAG), {
        "provider": "rds", "database": {"instance": "raptor-staging", "region": REGION},
        "app": {"platform": "ecs", "cluster": "raptor", "service": "web", "flag_parameter": PARAM, **app}})
    with pytest.raises(ConfigError) as err:
        projects.load(path)
    assert why in err.value.message and "\n" not in err.value.message
