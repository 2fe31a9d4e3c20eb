"""provision → diagnose → rollback → retire through runbook.commands, with the Supabase
Management API fake (every request and answer checked against the official OpenAPI document),
the Supavisor-like front door, and the database laid out like a hosted project (a non-superuser
`postgres` with BYPASSRLS, platform roles, an RLS table)."""

from __future__ import annotations

import logging
import secrets

import psycopg
import pytest
from psycopg import sql

from runbook import commands, project as projects
from runbook.errors import CheckFailed, ProviderError, Refused
from tests.logins import set_password
from tests.providers.conftest import (
    assert_not_shown, free_port, owned_database, ran_ok, role_exists, write_project as write_runbook,
)
from tests.providers.supabase.conftest import FLAG, PASSWORD_ENV, URL_VAR
from tests.providers.supabase.fake_supabase import REF, FakeSupabase

SECRETS = f"/v1/projects/{REF}/secrets"
PROFILES = "CREATE TABLE public.profiles (id bigserial PRIMARY KEY, name text)"


def write_project(tmp_path, pg, admin, role: str, *, port: int | None = None, direct: bool = False,
                  settings: dict | None = None, **database) -> projects.Project:
    """The defaults: the tool on the session pooler, the app (Edge Functions) on the transaction
    pooler; `connect` points both at the front door (or, `direct`, at PostgreSQL itself)."""
    block = {"project_ref": REF, "password_env": PASSWORD_ENV, "admin_user": admin.name, "database": pg.dbname,
             "sslmode": "disable", "connect": {"host": "127.0.0.1", "port": port or pg.port},
             # the app (the fake's Edge Function) reaches the same front door on loopback
             "app_host": "127.0.0.1", "app_port": port or pg.port, **database}
    if direct:
        block.update(admin_form="direct", url_form="direct")
    return projects.load(write_runbook(tmp_path, role, {"provider": "supabase", "database": block},
                                       url_var=URL_VAR, flag=FLAG, settings=settings))


@pytest.fixture
def world(fake, pg, admin, platform_roles):
    """The app's migrations have run as postgres: orders, and profiles with RLS on and a policy for
    `authenticated` (Supabase's default shape), none yet for the new role."""
    owned_database(pg, admin)
    with psycopg.connect(pg.tcp_dsn(admin.name, admin.password), autocommit=True) as conn:
        conn.execute(PROFILES)
        conn.execute("ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY")
        conn.execute(sql.SQL("CREATE POLICY signed_in ON public.profiles TO {} USING (true)").format(
            sql.Identifier(platform_roles["authenticated"])))
        conn.execute("INSERT INTO public.profiles (name) VALUES ('ada')")
    return {**fake.environ(), PASSWORD_ENV: admin.password}


def allow_the_role(pg, admin, role: str) -> None:
    with psycopg.connect(pg.tcp_dsn(admin.name, admin.password), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE POLICY app ON public.profiles TO {} USING (true) WITH CHECK (true)").format(
            sql.Identifier(role)))


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


def test_provision_diagnose_rollback_retire_through_supavisor(world, fake, supavisor, tmp_path, pg, admin, caplog):
    caplog.set_level(logging.DEBUG)
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role, port=supavisor.port)

    # plan shows the RLS table the role would reach without a policy; provision stops before the URL
    planned = commands.plan(project, "staging", environ=world)
    assert any("public.profiles has row-level security and no policy for" in n for s in planned.steps for n in s.notes)
    with pytest.raises(CheckFailed) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert err.value.exit_code == 4 and "public.profiles has row-level security" in err.value.message
    assert "CREATE POLICY" in err.value.hint and (REF, FLAG) not in fake.secrets

    # with a policy for the role it goes through; every login went through the pooler as {role}.{ref}
    allow_the_role(pg, admin, role)
    result = ran_ok(commands.provision, project, world)
    assert f"{admin.name}.{REF}" in supavisor.logins and f"{role}.{REF}" in supavisor.logins
    url = fake.secrets[(REF, URL_VAR)]
    parts = psycopg.conninfo.conninfo_to_dict(url)
    assert (parts["user"], parts["port"]) == (f"{role}.{REF}", str(supavisor.port))
    # diagnose: the secrets are write-only and the app has not connected yet: never a pass
    diag = commands.diagnose(project, "staging", environ=world)
    assert [(c.name, c.status) for c in diag.checks] == [
        ("role", "pass"), ("grants", "pass"), ("url", "inconclusive"), ("flag", "pass")]
    assert diag.exit_code == 4 and "runbook rotate --env staging" in diag.checks[2].fix
    # a session the app opened as the role since the URL was written proves it (without
    # pg_read_all_stats the admin cannot see when another role's session started)
    pg.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(admin.name)))
    with psycopg.connect(url, application_name="edge-function") as app:
        app.execute("SELECT 1")
        proved = commands.diagnose(project, "staging", environ=world)
    assert proved.exit_code == 0, [c.detail for c in proved.checks]
    assert "login proved by 1 session(s) the app opened as" in proved.checks[2].detail

    verdicts = {s.step: s.verdict for s in result.steps if s.verdict}
    assert "checked with the URL written" in verdicts["url"].detail
    assert verdicts["verify"].status == "pass" and f"logged in as {role}" in verdicts["verify"].detail
    assert fake.invoke_function(URL_VAR, FLAG) == role        # the function connects as the role
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")
        assert conn.execute("SELECT name FROM public.profiles").fetchall() == [("ada",)]
    statements = [c.sql_text() or "" for s in result.steps for c in s.changes]
    creates = [t for t in statements if t.startswith("CREATE ROLE")]
    assert creates == [] or "NOSUPERUSER" not in creates[0]   # created by the failed first run

    # rollback with the database unreachable: the flag secret alone
    dead = write_project(tmp_path, pg, admin, role, port=free_port())
    rb = ran_ok(commands.rollback, dead, world)
    assert fake.secrets[(REF, FLAG)] == "0"
    assert fake.invoke_function(URL_VAR, FLAG) is None

    # retire: the URL secret is deleted, the role dropped
    ret = ran_ok(commands.retire, project, world)
    assert (REF, URL_VAR) not in fake.secrets
    assert not role_exists(pg, role)
    deletes = fake.server.calls("DELETE", SECRETS)
    assert deletes and deletes[-1].body == [URL_VAR]
    assert_not_shown(caplog, (result, diag, proved, rb, ret), admin.password, parts["password"])


def test_supavisor_refusing_the_new_role_fails_provision_before_the_flag(world, fake, supavisor, tmp_path, pg, admin):
    role = pg.role("raptor_app")
    allow = [sql.SQL("CREATE POLICY everyone ON public.profiles USING (true) WITH CHECK (true)")]
    with psycopg.connect(pg.tcp_dsn(admin.name, admin.password), autocommit=True) as conn:
        for statement in allow:
            conn.execute(statement)
    supavisor.refuse(f"{role}.{REF}")
    project = write_project(tmp_path, pg, admin, role, port=supavisor.port)
    with pytest.raises(CheckFailed) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert err.value.exit_code == 4
    assert err.value.message.startswith(f"url: the URL just written to {URL_VAR} does not log in")
    assert "Tenant or user not found" in err.value.message
    assert (REF, FLAG) not in fake.secrets                    # the app was never switched to it
    supavisor.refused.clear()
    assert commands.provision(project, "staging", yes=True, environ=world).exit_code == 0


def test_an_out_of_band_password_change_never_passes_diagnose(world, fake, tmp_path, pg, admin):
    role = pg.role("raptor_app")
    allow_the_role_later = write_project(tmp_path, pg, admin, role, direct=True)
    with psycopg.connect(pg.tcp_dsn(admin.name, admin.password), autocommit=True) as conn:
        conn.execute("CREATE POLICY everyone ON public.profiles USING (true) WITH CHECK (true)")
    ran_ok(commands.provision, allow_the_role_later, world)
    set_password(pg, role, "changed-behind-the-tools-back-1")
    with pytest.raises(psycopg.OperationalError):
        fake.invoke_function(URL_VAR, FLAG)                   # the functions are broken now
    diag = commands.diagnose(allow_the_role_later, "staging", environ=world)
    assert diag.exit_code == 4 and dict((c.name, c.status) for c in diag.checks)["url"] == "inconclusive"
    # a second provision holds no URL to log in with: its verify says so rather than passing
    again = commands.provision(allow_the_role_later, "staging", yes=True, environ=world)
    verify = next(s.verdict for s in again.steps if s.step == "verify")
    assert verify.status == "inconclusive" and "login not proved" in verify.detail
    assert "runbook rotate --env staging" in verify.fix
    # what the fix says proves it: rotate writes a new URL and logs in with it before counting it done
    ran_ok(commands.rotate, allow_the_role_later, world)
    assert fake.invoke_function(URL_VAR, FLAG) == role


def _limited_world(pg, admin, window: float) -> FakeSupabase:
    # a token of its own: the process-wide budget of the usual test token must not carry this window
    return FakeSupabase(admin_dsn=pg.admin_dsn, token="sbp_" + secrets.token_hex(20), rate_window=window).start()


def _flag_on(fake: FakeSupabase) -> None:
    fake.secrets[(REF, FLAG)] = "1"


def test_rollback_waits_out_a_rate_limit_window_that_fits_its_budget(pg, admin, tmp_path):
    """The issue's 45 s window, shrunk to 3 s with the same semantics (429 for the rest of the window,
    X-RateLimit-Reset, no Retry-After); the 45 s arithmetic is in tests/unit/test_http_bounds.py.
    Five attempts of backoff at 0.2 s would all land inside the window; the reset wait does not."""
    fake = _limited_world(pg, admin, 3.0)
    try:
        _flag_on(fake)
        role = pg.role("raptor_app")
        project = write_project(tmp_path, pg, admin, role, port=free_port(),
                                settings={"http_attempts": 5, "retry_budget": "20s", "http_timeout": "5s"})
        fake.exhaust("POST", SECRETS)            # the write that turns the flag off
        environ = {**fake.environ(), PASSWORD_ENV: admin.password}
        ran_ok(commands.rollback, project, environ)
        assert fake.secrets[(REF, FLAG)] == "0"
        assert [r.status for r in fake.server.calls("POST", SECRETS)] == [429, 201]   # one wait, then through
        assert all(r.status == 200 for r in fake.server.calls("GET", SECRETS))
        assert all("retry-after" not in {k.lower() for k in r.headers} for r in fake.server.calls())
    finally:
        fake.stop()
    assert fake.errors == []


def test_a_window_past_the_retry_budget_fails_at_once_naming_the_header(pg, admin, tmp_path):
    fake = _limited_world(pg, admin, 60.0)
    try:
        _flag_on(fake)
        project = write_project(tmp_path, pg, admin, pg.role("raptor_app"), port=free_port(),
                                settings={"http_attempts": 5, "retry_budget": "5s", "http_timeout": "5s"})
        fake.exhaust("GET", SECRETS)
        with pytest.raises(ProviderError) as err:
            commands.rollback(project, "staging", yes=True, environ={**fake.environ(), PASSWORD_ENV: admin.password})
        assert err.value.exit_code == 1
        assert "(X-RateLimit-Reset), more than the" in err.value.message and "5s retry budget" in err.value.message
        assert len(fake.server.calls("GET", SECRETS)) == 1     # no attempt wasted inside the window
        assert fake.secrets[(REF, FLAG)] == "1"
    finally:
        fake.stop()
    assert fake.errors == []


def test_a_paused_project_refuses_every_pooler_login(world, fake, supavisor, tmp_path, pg, admin):
    fake.projects[REF]["status"] = "INACTIVE"
    url = f"postgresql://{admin.name}.{REF}:{admin.password}@127.0.0.1:{supavisor.port}/{pg.dbname}?sslmode=disable"
    with pytest.raises(psycopg.OperationalError, match="is not available: the project is INACTIVE"):
        psycopg.connect(url, connect_timeout=5)
    fake.projects[REF]["status"] = "ACTIVE_HEALTHY"
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == admin.name
