"""Alternating rotation on RDS + ECS (issue 14 item 10), `runbook` as a subprocess against moto in
server mode with the ECS deployment model (tests/providers/rds/server_world.py): the old login is
invalidated only after the new deployment COMPLETED. A deployment that FAILS stops the run with a
typed error and leaves the old login valid for the tasks still running; the rerun converges."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.pg.test_alternating import _logins_dropped_first  # noqa: F401
from tests.providers.rds.server_world import CIRCUIT_BREAKER
from tests.providers.rds.test_server_mode import (  # noqa: F401  (fixtures)
    FLAG, PARAM, SECRET, URL_VAR, aws, moto_server, project, runbook, task_login, world,
)

pytestmark = [pytest.mark.pg, pytest.mark.slow]

API_KEY = "raptor/staging/api-key"


def alternating(tmp_path) -> None:
    path = tmp_path / "runbook.yaml"
    data = yaml.safe_load(path.read_text())
    data["role"]["rotation"] = "alternating"
    data["settings"] = {"drain_timeout": "30s"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def can_login(pg, name: str) -> bool:
    rows = pg.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (name,))
    return bool(rows and rows[0][0])


def test_a_failed_deployment_leaves_the_old_login_valid_and_the_rerun_converges(world, tmp_path, pg):
    sm = aws("secretsmanager")
    placeholder = sm.create_secret(Name=SECRET, SecretString="{}")["ARN"]
    api_key = sm.create_secret(Name=API_KEY, SecretString=json.dumps({"key": "k"}))["ARN"]
    aws("ssm").put_parameter(Name=PARAM, Value="0", Type="String")
    flag_arn = aws("ssm").get_parameter(Name=PARAM)["Parameter"]["ARN"]
    world.service([{"name": URL_VAR, "valueFrom": f"{placeholder}:url::"}, {"name": FLAG, "valueFrom": flag_arn},
                   {"name": "API_KEY", "valueFrom": f"{api_key}:key::"}])
    role = pg.role("raptor_app")
    a, b = f"{role}_a", f"{role}_b"
    project(tmp_path, pg, world, role)
    alternating(tmp_path)

    out = runbook(tmp_path, "provision")
    assert out.returncode == 0, out.stderr
    running = world.deployments.received[-1]
    assert task_login(running[URL_VAR]) == a

    # something else the tasks need goes away: the rotation's deployment fails by circuit breaker
    sm.delete_secret(SecretId=API_KEY, RecoveryWindowInDays=7)
    out = runbook(tmp_path, "rotate")
    assert out.returncode == 1, out.stderr
    assert CIRCUIT_BREAKER in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed" in errors[0], out.stderr      # one line, the typed error's
    assert can_login(pg, a) and task_login(running[URL_VAR]) == a     # the running tasks keep working
    stored = json.loads(sm.get_secret_value(SecretId=SECRET)["SecretString"])
    assert stored["username"] == b                                    # the new URL is written, not yet live

    sm.restore_secret(SecretId=API_KEY)
    out = runbook(tmp_path, "rotate")
    assert out.returncode == 0, out.stderr
    started = world.deployments.received[-1]
    assert task_login(started[URL_VAR]) == b                          # what a new task receives logs in as b
    assert not can_login(pg, a)                                       # and only then was a invalidated
    assert "COMPLETED" in json.dumps([d.get("rolloutState") for d in world.describe()["deployments"]])

    # a second rotation goes back to a, with the same ordering
    out = runbook(tmp_path, "rotate")
    assert out.returncode == 0, out.stderr
    assert task_login(world.deployments.received[-1][URL_VAR]) == a and not can_login(pg, b)
