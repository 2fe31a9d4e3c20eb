"""Several roles on RDS + ECS with the operator's task definition referencing every role's secret
from the start (issue 18): a task can start only once every one of those secrets holds a URL, so
provision writes every role's URL before it restarts, and restarts once. `runbook` as a
subprocess against moto in server mode with ECS's deployment model (server_world.py)."""

from __future__ import annotations

import pytest

from tests.pg.test_alternating import _logins_dropped_first  # noqa: F401  (an autouse fixture)
from tests.providers.conftest import as_login
from tests.providers.rds.conftest import REGION
from tests.providers.rds.test_roles_ecs import FLAG, NAMES, as_task, stored
from tests.providers.rds.test_server_mode import (  # noqa: F401  (fixtures)
    PARAM, aws, moto_server, runbook, task_login, world,
)
from tests.providers.three_roles import (
    APP_URL, CI_URL, RO_URL, check_app, check_catalog_only, check_readonly, roles_block, write_roles_project,
)

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def _setup(world, tmp_path, pg, *, rotation: bool = False):
    """The operator's IaC: an empty secret per role and the flag, all referenced by the service's
    task definition before pg-runbook ever ran (and no task can start on it yet: the secrets
    hold no `url` key, which is the state ECS's circuit breaker fails a deployment on)."""
    as_login(pg.tcp_dsn(world.master.name, world.master.password),
             "CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
    aws("ssm").put_parameter(Name=PARAM, Value="0", Type="String")
    entries = [{"name": FLAG, "valueFrom": aws("ssm").get_parameter(Name=PARAM)["Parameter"]["ARN"]}]
    for var, name in NAMES.items():
        placeholder = aws("secretsmanager").create_secret(Name=name, SecretString="{}")["ARN"]
        entries.append({"name": var, "valueFrom": f"{placeholder}:url::"})
    world.service(entries)
    app, ro, ci = pg.role("raptor_app"), pg.role("raptor_ro"), pg.role("raptor_ci")
    roles = roles_block(app, ro, flag=FLAG, ci=ci)
    if rotation:
        roles[app]["rotation"] = "alternating"
    write_roles_project(tmp_path, roles, {
        "provider": "rds",
        "database": {"instance": "raptor-staging", "region": REGION, "sslmode": "disable",
                     "connect": {"host": "127.0.0.1", "port": world.tunnel.port}},
        "app": {"cluster": "raptor", "service": "web", "url_store": "secretsmanager", "url_names": NAMES,
                "flag_parameter": PARAM, "wait": {"timeout": "30s", "poll": "1s"}},
    }, settings={"drain_timeout": "30s"} if rotation else None)
    return app, ro, ci


@pytest.mark.parametrize("rotation", [False, True], ids=["single", "alternating"])
def test_every_role_url_is_written_before_the_one_restart(world, tmp_path, pg, rotation):
    app, ro, ci = _setup(world, tmp_path, pg, rotation=rotation)
    assert world.roll()["rolloutState"] == "FAILED"      # as the operator left it: no task can start
    updates = len(world.deployments.updates)
    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    assert len(world.deployments.updates) == updates + 1            # one restart for the three roles
    received = world.deployments.received[-1]
    assert received[FLAG] == "1"
    app_login = f"{app}_a" if rotation else app
    for var, role in ((APP_URL, app_login), (RO_URL, ro), (CI_URL, ci)):
        assert task_login(received[var]) == role
        assert stored(var)["url"] == received[var]
    check_app(as_task(received[APP_URL]), app_login)
    check_readonly(as_task(received[RO_URL]), ro)
    check_catalog_only(as_task(received[CI_URL]), ci)
    assert all(u["taskDefinition"] is None for u in world.deployments.updates)   # the task definition stayed theirs

    # a rerun changes nothing and restarts nothing
    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    assert len(world.deployments.updates) == updates + 1
