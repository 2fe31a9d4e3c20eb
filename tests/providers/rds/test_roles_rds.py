"""Several roles on RDS (moto for the AWS side, real PostgreSQL behind a non-superuser master):
app, readonly and a migrator that is a member of an owner role the master made, with the app's
config in a dotenv file. ECS keeps one URL per environment (`app.url_name`): a `roles:` project
is refused there before anything changes."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from runbook import commands, project as projects
from runbook.errors import ConfigError
from tests.providers.conftest import as_login
from tests.providers.rds.conftest import REGION, client, create_instance
from tests.providers.three_roles import (
    APP_URL, MIG_URL, RO_URL, check_app, check_readonly, denied, diagnosed_clean_roles, login, roles_block,
    write_roles_project,
)
from tests.projects import dotenv

FLAG = "RAPTOR_NEW_ROLE"


@pytest.fixture
def world(aws, pg, master, request):
    """The RDS instance, and an owner role the master created (so, on 16+, it may grant it) that
    owns the app's tables."""
    create_instance(master=master, pg=pg)
    owner = pg.role("app_owner")
    master_dsn = pg.tcp_dsn(master.name, master.password)
    as_login(master_dsn, f'CREATE ROLE "{owner}" NOLOGIN', f'GRANT "{owner}" TO "{master.name}"')
    pg.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(owner)))   # as the DBA would
    as_login(master_dsn, f'SET ROLE "{owner}"', "CREATE TABLE orders (id bigserial PRIMARY KEY, total int)",
             "CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
    names = {"owner": owner, "app": pg.role("raptor_app"), "ro": pg.role("raptor_ro"), "mig": pg.role("raptor_mig")}
    # PostgreSQL 16+ keeps who granted a membership: the migrator goes before the master that granted it
    request.addfinalizer(lambda: pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(names["mig"]))))
    return names


def _database(pg) -> dict:
    return {"instance": "raptor-staging", "region": REGION, "sslmode": "disable", "database": pg.dbname,
            "connect": {"host": "127.0.0.1", "port": pg.port},
            "app_host": "127.0.0.1", "app_port": pg.port}      # the "app" here reaches the database on loopback


def test_three_roles_on_rds(world, tmp_path, pg, aws_environ):
    n = world
    roles = roles_block(n["app"], n["ro"], flag=FLAG, owner=n["owner"], migrator=n["mig"])
    path = write_roles_project(tmp_path, roles, {"provider": "rds", "database": _database(pg),
                                                 "app": {"platform": "dotenv", "dotenv": ".runbook/staging.env"}})
    res = commands.provision(projects.load(path), "staging", yes=True, environ=aws_environ)
    assert res.status == "ok", res.messages
    assert {s.role for s in res.steps} == {n["app"], n["ro"], n["mig"]}
    urls = dotenv(tmp_path)
    assert urls[FLAG] == "1"
    check_app(urls[APP_URL], n["app"])
    check_readonly(urls[RO_URL], n["ro"])
    with login(urls[MIG_URL]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == n["mig"]
        denied(conn, "SELECT * FROM alembic_version")          # nothing inherited from the owner
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(n["owner"])))
        conn.execute("CREATE TABLE invoices (id bigserial PRIMARY KEY, total int)")
    check_app(urls[APP_URL], n["app"], table="invoices")
    check_readonly(urls[RO_URL], n["ro"], table="invoices")
    diagnosed_clean_roles(commands.diagnose(projects.load(path), "staging", environ=aws_environ),
                          {n["app"]: True, n["ro"]: False, n["mig"]: False})
    assert commands.drift(projects.load(path), "staging", environ=aws_environ).status == "ok"


def test_ecs_keeps_one_url_so_several_roles_are_refused_changing_nothing(world, tmp_path, pg, aws_environ):
    n = world
    ecs = client("ecs")
    ecs.create_cluster(clusterName="raptor")
    ecs.register_task_definition(family="raptor-web", containerDefinitions=[{"name": "web", "image": "raptor:1",
                                                                               "memory": 256}])
    ecs.create_service(cluster="raptor", serviceName="web", taskDefinition="raptor-web", desiredCount=1)
    roles = roles_block(n["app"], n["ro"], flag=FLAG, owner=n["owner"])
    app = {"cluster": "raptor", "service": "web", "url_store": "secretsmanager", "url_name": "raptor/staging/url",
           "flag_parameter": "/raptor/staging/FLAG", "wait": {"timeout": "1m", "poll": "1s"}}
    path = write_roles_project(tmp_path, roles, {"provider": "rds", "database": _database(pg), "app": app})
    for verb in (commands.plan, commands.provision):
        kw = {"yes": True} if verb is commands.provision else {}
        with pytest.raises(ConfigError) as err:
            verb(projects.load(path), "staging", environ=aws_environ, **kw)
        assert "keeps one URL per environment (app.url_name)" in err.value.message
        assert "\n" not in err.value.message
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", ([n["app"], n["ro"]],)) == [(0,)]
    assert pg.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'runbook'") == [(0,)]
    assert client("secretsmanager").list_secrets()["SecretList"] == [
        s for s in client("secretsmanager").list_secrets()["SecretList"] if "raptor/staging/url" not in s["Name"]]
    # one role of the map is fine there
    one = write_roles_project(tmp_path, {n["app"]: roles[n["app"]]}, {"provider": "rds", "database": _database(pg),
                                                                       "app": app})
    assert commands.plan(projects.load(one), "staging", environ=aws_environ).status == "planned"
