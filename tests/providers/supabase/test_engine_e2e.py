"""provision → diagnose → rollback → retire through runbook.commands, with the Supabase
Management API fake and the SQL side on the real PostgreSQL (a non-superuser `postgres`-like admin)."""

from __future__ import annotations

import logging

import psycopg
import pytest

from runbook import commands, project as projects
from runbook.errors import Refused
from tests.providers.conftest import (
    assert_not_shown, diagnosed_clean, free_port, owned_database, ran_ok, role_exists, write_project as write_runbook,
)
from tests.providers.supabase.conftest import FLAG, PASSWORD_ENV, URL_VAR
from tests.providers.supabase.fake_supabase import REF


def write_project(tmp_path, pg, admin, role: str, *, port: int | None = None, admin_form: str = "direct") -> projects.Project:
    return projects.load(write_runbook(tmp_path, role, {
        "provider": "supabase",
        "database": {"project_ref": REF, "password_env": PASSWORD_ENV, "admin_user": admin.name,
                     "admin_form": admin_form, "url_form": "direct", "database": pg.dbname, "sslmode": "disable",
                     "connect": {"host": "127.0.0.1", "port": port or pg.port}},
    }, url_var=URL_VAR, flag=FLAG))


@pytest.fixture
def world(fake, pg, admin):
    owned_database(pg, admin)
    return {**fake.environ(), PASSWORD_ENV: admin.password}


@pytest.mark.parametrize("setup, needle", [
    (lambda fake: fake.projects[REF].update(status="COMING_UP"), "is COMING_UP, not ACTIVE_HEALTHY"),
    (None, "transaction-mode pooler"),
], ids=["not-healthy", "transaction-pooler"])
def test_refusals_change_nothing(world, fake, tmp_path, pg, admin, setup, needle):
    role = pg.role("raptor_app")
    if setup:
        setup(fake)
        project = write_project(tmp_path, pg, admin, role)
    else:
        project = write_project(tmp_path, pg, admin, role, admin_form="transaction")
    with pytest.raises(Refused) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert err.value.exit_code == 2 and needle in err.value.message
    assert not role_exists(pg, role)
    assert fake.server.calls("POST") == [] and fake.secrets == {}


def test_provision_diagnose_rollback_retire(world, fake, tmp_path, pg, admin, caplog):
    caplog.set_level(logging.DEBUG)
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role)

    # provision: role in SQL (no NOSUPERUSER sent), URL and flag as Edge Function secrets
    result = ran_ok(commands.provision, project, world)
    assert fake.invoke_function(URL_VAR, FLAG) == role        # the function connects as the role
    url = fake.secrets[(REF, URL_VAR)]
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")
    statements = [c.sql_text() or "" for s in result.steps for c in s.changes]
    creates = [t for t in statements if t.startswith("CREATE ROLE")]
    assert len(creates) == 1 and "NOCREATEROLE" in creates[0] and "NOSUPERUSER" not in creates[0]

    # diagnose: the URL is verified by digest (the API never returns values)
    diag = diagnosed_clean(project, world)

    # rollback with the database unreachable: the flag secret alone
    dead = write_project(tmp_path, pg, admin, role, port=free_port())
    rb = ran_ok(commands.rollback, dead, world)
    assert fake.secrets[(REF, FLAG)] == "0"
    assert fake.invoke_function(URL_VAR, FLAG) is None

    # retire: the URL secret is deleted, the role dropped
    ret = ran_ok(commands.retire, project, world)
    assert (REF, URL_VAR) not in fake.secrets
    assert not role_exists(pg, role)
    deletes = fake.server.calls("DELETE", f"/v1/projects/{REF}/secrets")
    assert deletes and deletes[-1].body == [URL_VAR]

    password = psycopg.conninfo.conninfo_to_dict(url)["password"]
    assert_not_shown(caplog, (result, diag, rb, ret), admin.password, password)
