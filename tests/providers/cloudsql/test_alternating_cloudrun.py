"""Alternating rotation on Cloud SQL + Cloud Run (issue 15 item 9): the old login is invalidated,
and the secret's older versions disabled, only once the new revision serves all traffic. A
revision that never becomes ready stops the run with a typed error; what serves keeps working
on the old login, and the rerun converges."""

from __future__ import annotations

import psycopg
import pytest
import yaml

from runbook import commands, project as projects
from runbook.errors import ProviderError
from tests.pg.test_alternating import _logins_dropped_first  # noqa: F401
from tests.providers.cloudsql.conftest import URL_VAR
from tests.providers.cloudsql.test_engine_e2e import SECRET, logs_in, world, write_project  # noqa: F401
from tests.providers.conftest import diagnosed_clean, ran_ok


def alternating(project) -> None:
    data = yaml.safe_load(project.path.read_text())
    data["role"]["rotation"] = "alternating"
    data["settings"] = {"drain_timeout": "30s"}
    project.path.write_text(yaml.safe_dump(data, sort_keys=False))


def can_login(pg, name: str) -> bool:
    rows = pg.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (name,))
    return bool(rows and rows[0][0])


def test_a_revision_that_fails_keeps_the_old_login_and_its_secret_version(world, fake, tmp_path, pg, admin):
    role = pg.role("raptor_app")
    a, b = f"{role}_a", f"{role}_b"
    project = write_project(tmp_path, pg, admin, role)
    alternating(project)
    project = projects.load(project.path)
    ran_ok(commands.provision, project, world)
    serving = fake.latest_env()[URL_VAR]
    logs_in(serving, a)

    fake.fail_next_revision = "Revision 'raxx-api-00004-abc' is not ready and cannot serve traffic."
    with pytest.raises(ProviderError):
        commands.rotate(project, "staging", yes=True, environ=world)
    assert fake.latest_env()[URL_VAR] == serving          # the serving revision still reads version 1 …
    assert set(fake.store.states(SECRET)) == {"ENABLED"}  # … which stays enabled
    logs_in(serving, a)                                   # and its login still works
    assert can_login(pg, b)

    ran_ok(commands.rotate, project, world)
    current = fake.latest_env()[URL_VAR]
    logs_in(current, b)
    assert fake.store.states(SECRET)[-1] == "ENABLED" and set(fake.store.states(SECRET)[:-1]) == {"DISABLED"}
    assert not can_login(pg, a)
    with pytest.raises(psycopg.OperationalError):
        logs_in(serving, a)
    diagnosed_clean(project, world)

    ran_ok(commands.rotate, project, world)               # and back to a
    logs_in(fake.latest_env()[URL_VAR], a)
    assert not can_login(pg, b)
