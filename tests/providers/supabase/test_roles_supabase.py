"""Several roles on Supabase (the Management API fake checked against the OpenAPI document, a
database laid out like a hosted project): app, readonly and a catalog-only CI role, each URL an
Edge Function secret of its own. A migrator cannot be a member of `postgres` (the admin, with
CREATEROLE and BYPASSRLS): refused at plan time; a migrator needs an owner role of its own."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from runbook import commands, project as projects
from runbook.errors import CheckFailed, Refused
from tests.providers.supabase.conftest import PASSWORD_ENV
from tests.providers.supabase.fake_supabase import REF
from tests.providers.supabase.test_engine_e2e import world  # noqa: F401  (a fixture)
from tests.providers.three_roles import (
    APP_URL, CI_URL, RO_URL, check_catalog_only, roles_block, write_roles_project,
)

FLAG = "RAPTOR_NEW_ROLE"


def _environment(pg, admin) -> dict:
    return {"provider": "supabase", "database": {
        "project_ref": REF, "password_env": PASSWORD_ENV, "admin_user": admin.name, "database": pg.dbname,
        "sslmode": "disable", "connect": {"host": "127.0.0.1", "port": pg.port},
        "app_host": "127.0.0.1", "app_port": pg.port, "admin_form": "direct", "url_form": "direct"}}


def test_three_roles_as_three_edge_function_secrets(world, fake, tmp_path, pg, admin):  # noqa: F811
    app, ro, ci = pg.role("raptor_app"), pg.role("raptor_ro"), pg.role("raptor_ci")
    path = write_roles_project(tmp_path, roles_block(app, ro, flag=FLAG, ci=ci), _environment(pg, admin))
    # profiles has RLS: each role that reads it stops at its verify until it has a policy, and a
    # rerun picks up where the run stopped
    for role in (app, ro):
        with pytest.raises(CheckFailed) as err:
            commands.provision(projects.load(path), "staging", yes=True, environ=world)
        assert f"no policy for {role}" in err.value.message
        with psycopg.connect(pg.tcp_dsn(admin.name, admin.password), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE POLICY {} ON public.profiles TO {} USING (true) WITH CHECK (true)").format(
                sql.Identifier(f"p_{role}"), sql.Identifier(role)))
    res = commands.provision(projects.load(path), "staging", yes=True, environ=world)
    assert res.status == "ok", res.messages
    assert {s.role for s in res.steps} == {app, ro, ci}
    assert {s.role for s in res.steps if s.status == "applied"} == {ro, ci}   # app converged on the first run
    assert fake.secrets[(REF, FLAG)] == "1"
    urls = {var: fake.secrets[(REF, var)] for var in (APP_URL, RO_URL, CI_URL)}
    with psycopg.connect(urls[APP_URL], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == app
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")
        assert conn.execute("SELECT name FROM public.profiles").fetchall() == [("ada",)]
    with psycopg.connect(urls[RO_URL], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == ro
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 1
        assert conn.execute("SELECT name FROM public.profiles").fetchall() == [("ada",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.orders (total) VALUES (2)")
    check_catalog_only(urls[CI_URL], ci)
    verdicts = {(s.role, s.step): s.verdict for s in res.steps if s.verdict}
    assert all(verdicts[(r, "verify")].status == "pass" for r in (ro, ci))
    # app's URL was written by the first run into a write-only secret: this run cannot prove its login
    assert verdicts[(app, "verify")].status == "inconclusive" and "login not proved" in verdicts[(app, "verify")].detail
    assert commands.drift(projects.load(path), "staging", environ=world).status == "ok"

    # retire one: its secret goes, the others stay
    commands.retire(projects.load(path), "staging", yes=True, environ=world, role=ci)
    assert (REF, CI_URL) not in fake.secrets and (REF, RO_URL) in fake.secrets


def test_a_migrator_in_postgres_is_refused_at_plan_time(world, fake, tmp_path, pg, admin):  # noqa: F811
    app, ro, mig = pg.role("raptor_app"), pg.role("raptor_ro"), pg.role("raptor_mig")
    roles = roles_block(app, ro, flag=FLAG, migrator=mig, member_of=admin.name)
    path = write_roles_project(tmp_path, roles, _environment(pg, admin))
    with pytest.raises(Refused) as err:
        commands.plan(projects.load(path), "staging", environ=world)
    assert f"member_of names {admin.name}" in err.value.message and "\n" not in err.value.message
    with pytest.raises(Refused):
        commands.provision(projects.load(path), "staging", yes=True, environ=world)
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", ([app, ro, mig],)) == [(0,)]
    assert fake.server.calls("POST") == [] and fake.secrets == {}
