"""provision → diagnose → rollback → retire through runbook.commands, with the Cloud SQL, Secret
Manager and Cloud Run fakes and the SQL side on the real PostgreSQL (a Cloud SQL-like admin)."""

from __future__ import annotations

import logging

import psycopg
import pytest

from runbook import commands, project as projects
from runbook.errors import Refused
from tests.providers.cloudsql.conftest import FLAG, PASSWORD_ENV, URL_VAR
from tests.providers.cloudsql.fake_google import INSTANCE, PROJECT, REGION, SERVICE
from tests.providers.conftest import (
    assert_not_shown, diagnosed_clean, free_port, owned_database, ran_ok, role_exists, write_project as write_runbook,
)

SECRET = "raptor-database-url"


def write_project(tmp_path, pg, admin, role: str, *, port: int | None = None) -> projects.Project:
    return projects.load(write_runbook(tmp_path, role, {
        "provider": "cloudsql",
        "database": {"project": PROJECT, "instance": INSTANCE, "admin_user": admin.name,
                     "admin_password_env": PASSWORD_ENV, "database": pg.dbname, "sslmode": "disable",
                     "connect": {"host": "127.0.0.1", "port": port or pg.port}, "poll_interval": "10ms"},
        "app": {"region": REGION, "service": SERVICE, "url_secret": SECRET, "poll_interval": "10ms"},
    }, url_var=URL_VAR, flag=FLAG))


@pytest.fixture
def world(fake, pg, admin):
    """The admin owns the database and a table, as postgres does on a fresh Cloud SQL instance."""
    owned_database(pg, admin)
    return {**fake.environ(), PASSWORD_ENV: admin.password}


def test_a_mysql_instance_is_refused_before_any_change(world, fake, tmp_path, pg, admin):
    fake.instances[(PROJECT, INSTANCE)]["databaseVersion"] = "MYSQL_8_0"
    role = pg.role("raptor_app")
    with pytest.raises(Refused) as err:
        commands.provision(write_project(tmp_path, pg, admin, role), "staging", yes=True, environ=world)
    assert err.value.exit_code == 2 and "not PostgreSQL" in err.value.message
    assert not role_exists(pg, role)
    assert fake.secretmanager.requests == [] and fake.run.calls("PATCH") == []


def test_provision_diagnose_rollback_retire(world, fake, tmp_path, pg, admin, caplog):
    caplog.set_level(logging.DEBUG)
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role)

    # provision: role in SQL, URL as a secret version, flag as an env var, each change a revision
    result = ran_ok(commands.provision, project, world)
    env = fake.latest_env()
    assert env[FLAG] == "1"
    url = env[URL_VAR]
    assert fake.secret_value(SECRET) == url
    with psycopg.connect(url) as conn:   # the revision's resolved env, as the app sees it
        assert conn.execute("SELECT current_user").fetchone()[0] == role
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")
    container = next(c for c in fake.service()["template"]["containers"] if c["name"] == "app")
    assert {"name": URL_VAR, "valueSource": {"secretKeyRef": {"secret": SECRET, "version": "1"}}} in container["env"]
    assert "restart" not in {s.step for s in result.steps if s.status == "applied"}   # PATCH already rolled
    revisions = len(fake.revisions)

    # diagnose: the four checks pass
    diag = diagnosed_clean(project, world)

    # rollback with the database unreachable: flag off, a new revision
    dead = write_project(tmp_path, pg, admin, role, port=free_port())
    rb = ran_ok(commands.rollback, dead, world)
    assert fake.latest_env()[FLAG] == "0"
    assert len(fake.revisions) == revisions + 1

    # retire: the URL leaves the service, then the secret goes, then the role
    ret = ran_ok(commands.retire, project, world)
    assert URL_VAR not in fake.latest_env()
    assert (PROJECT, SECRET) not in fake.secrets
    assert not role_exists(pg, role)

    password = psycopg.conninfo.conninfo_to_dict(url)["password"]
    assert_not_shown(caplog, (result, diag, rb, ret), admin.password, password)


def test_a_revision_that_fails_stops_provision_in_one_line_and_the_rerun_converges(world, fake, tmp_path, pg, admin):
    """The URL's revision fails to start: the run stops with Cloud Run's reason; the secret already
    holds the URL, but no serving revision reads it, so the rerun writes it again and rolls out."""
    from runbook.errors import ProviderError

    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role)
    fake.fail_next_revision = "Revision 'raxx-api-00002-x1z' is not ready and cannot serve traffic."
    with pytest.raises(ProviderError) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert err.value.message == (f"Cloud Run: setting {URL_VAR} on {SERVICE} failed: Revision 'raxx-api-00002-x1z' "
                                 "is not ready and cannot serve traffic.")
    assert fake.secret_value(SECRET) is not None and URL_VAR not in fake.latest_env()

    result = ran_ok(commands.provision, project, world)
    env = fake.latest_env()
    assert env[FLAG] == "1"
    with psycopg.connect(env[URL_VAR]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role
    assert fake.service()["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"
