"""Several roles on Cloud SQL (the Admin API fake, real PostgreSQL behind a Cloud SQL-like
admin): app, readonly and a catalog-only CI role with the app's config in a dotenv file. Cloud
Run keeps one URL per environment (`app.url_secret`): a `roles:` project is refused there
before anything changes."""

from __future__ import annotations

import psycopg
import pytest

from runbook import commands, project as projects
from runbook.errors import ConfigError
from tests.providers.cloudsql.conftest import PASSWORD_ENV
from tests.providers.cloudsql.fake_google import INSTANCE, PROJECT, REGION, SERVICE
from tests.providers.cloudsql.test_engine_e2e import world  # noqa: F401  (a fixture)
from tests.providers.three_roles import (
    APP_URL, CI_URL, RO_URL, check_app, check_catalog_only, check_readonly, diagnosed_clean_roles, roles_block,
    write_roles_project,
)
from tests.projects import dotenv

FLAG = "RAPTOR_NEW_ROLE"


def _database(pg, admin) -> dict:
    return {"project": PROJECT, "instance": INSTANCE, "admin_user": admin.name, "admin_password_env": PASSWORD_ENV,
            "database": pg.dbname, "sslmode": "disable", "connect": {"host": "127.0.0.1", "port": pg.port},
            "poll_interval": "10ms", "app_host": "127.0.0.1", "app_port": pg.port, "app_sslmode": "prefer"}


def _names(pg):
    return pg.role("raptor_app"), pg.role("raptor_ro"), pg.role("raptor_ci")


def test_three_roles_on_cloudsql(world, fake, tmp_path, pg, admin):  # noqa: F811
    app, ro, ci = _names(pg)
    path = write_roles_project(tmp_path, roles_block(app, ro, flag=FLAG, ci=ci), {
        "provider": "cloudsql", "database": _database(pg, admin),
        "app": {"platform": "dotenv", "dotenv": ".runbook/staging.env"}})
    res = commands.provision(projects.load(path), "staging", yes=True, environ=world)
    assert res.status == "ok", res.messages
    urls = dotenv(tmp_path)
    assert urls[FLAG] == "1"
    with psycopg.connect(urls[APP_URL], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == app
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")
    with psycopg.connect(urls[RO_URL], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.orders (total) VALUES (2)")
    check_catalog_only(urls[CI_URL], ci)
    diagnosed_clean_roles(commands.diagnose(projects.load(path), "staging", environ=world),
                          {app: True, ro: False, ci: False})
    assert commands.drift(projects.load(path), "staging", environ=world).status == "ok"


def test_cloud_run_keeps_one_url_so_several_roles_are_refused(world, fake, tmp_path, pg, admin):  # noqa: F811
    app, ro, _ = _names(pg)
    path = write_roles_project(tmp_path, roles_block(app, ro, flag=FLAG), {
        "provider": "cloudsql", "database": _database(pg, admin),
        "app": {"region": REGION, "service": SERVICE, "url_secret": "raptor-database-url", "poll_interval": "10ms"}})
    with pytest.raises(ConfigError) as err:
        commands.provision(projects.load(path), "staging", yes=True, environ=world)
    assert "keeps one URL per environment (app.url_secret)" in err.value.message and "\n" not in err.value.message
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", ([app, ro],)) == [(0,)]
    assert fake.secretmanager.requests == [] and fake.run.calls("PATCH") == []
