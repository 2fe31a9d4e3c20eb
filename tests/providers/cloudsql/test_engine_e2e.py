"""provision → diagnose → rollback → retire through runbook.commands, with the Cloud SQL, Secret
Manager and Cloud Run fakes and the SQL side on the real PostgreSQL (a Cloud SQL-like admin)."""

from __future__ import annotations

import logging

import psycopg
import pytest

from runbook import commands, project as projects
from runbook.errors import ConfigError, ProviderError, Refused
from tests.providers.cloudsql.conftest import FLAG, PASSWORD_ENV, URL_VAR
from tests.providers.cloudsql.fake_google import INSTANCE, PROJECT, REGION, SERVICE
from tests.providers.conftest import (
    assert_not_shown, diagnosed_clean, free_port, owned_database, ran_ok, role_exists, write_project as write_runbook,
)

SECRET = "raptor-database-url"


def write_project(tmp_path, pg, admin, role: str, *, port: int | None = None, database: dict | None = None,
                  app: dict | None = None) -> projects.Project:
    """The tool reaches the test cluster as it would a Cloud SQL Auth Proxy (`connect`, sslmode
    disable); `database`/`app` add or override keys (`connect: None` drops it)."""
    db = {"project": PROJECT, "instance": INSTANCE, "admin_user": admin.name,
          "admin_password_env": PASSWORD_ENV, "database": pg.dbname, "sslmode": "disable",
          "connect": {"host": "127.0.0.1", "port": port or pg.port}, "poll_interval": "10ms", **(database or {})}
    if "app_host" not in db:
        # the app reaches the test cluster on loopback too (its URL never takes `connect`)
        db.update(app_host="127.0.0.1", app_port=port or pg.port, app_sslmode="prefer")
    return projects.load(write_runbook(tmp_path, role, {
        "provider": "cloudsql",
        "database": {k: v for k, v in db.items() if v is not None},
        "app": {"region": REGION, "service": SERVICE, "url_secret": SECRET, "poll_interval": "10ms", **(app or {})},
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


# -- what real Cloud SQL users run into ------------------------------------------------------------

CONNECTION = f"{PROJECT}:{REGION}:{INSTANCE}"
ACCOUNT = f"raxx-api@{PROJECT}.iam.gserviceaccount.com"
# the app's private address: TEST-NET-1 (RFC 5737), so a login wrongly aimed at it reaches nothing
APP_ADDRESS = "192.0.2.10"


def nothing_changed(fake, pg, role: str) -> None:
    assert not role_exists(pg, role)
    assert fake.secretmanager.requests == [] and fake.run.calls("PATCH") == []


def via_tool_endpoint(url: str, pg) -> str:
    """The app's URL with only its endpoint swapped for the test cluster: what the socket or the
    private address would reach. The role, password and database are the app's, unchanged."""
    parts = psycopg.conninfo.conninfo_to_dict(url)
    return psycopg.conninfo.make_conninfo(url, host="127.0.0.1", port=str(pg.port), sslmode="disable") \
        if parts else url


def logs_in(url: str, role: str) -> None:
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")


def test_a_legacy_require_ssl_instance_is_refused_before_any_change(world, fake, tmp_path, pg, admin):
    fake.instances[(PROJECT, INSTANCE)]["settings"]["ipConfiguration"] = {"ipv4Enabled": True, "requireSsl": True}
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role, database={"connect": None, "sslmode": "require"})
    with pytest.raises(Refused) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert err.value.exit_code == 2
    assert "requires client certificates (sslMode TRUSTED_CLIENT_CERTIFICATE_REQUIRED); run the Cloud SQL Auth " \
           f"Proxy (`cloud-sql-proxy {CONNECTION} --port 15432`)" in err.value.message
    nothing_changed(fake, pg, role)


def test_a_read_pool_is_refused_naming_the_primary(world, fake, tmp_path, pg, admin):
    fake.instances[(PROJECT, INSTANCE)].update(instanceType="READ_POOL_INSTANCE", masterInstanceName="raxx-pg-primary")
    role = pg.role("raptor_app")
    with pytest.raises(Refused) as err:
        commands.provision(write_project(tmp_path, pg, admin, role), "staging", yes=True, environ=world)
    assert err.value.message == (f"Cloud SQL instance {PROJECT}:{INSTANCE} is a read pool; roles can only be created "
                                 "on the primary: set database.instance to raxx-pg-primary")
    nothing_changed(fake, pg, role)


def mount_cloudsql(fake) -> None:
    template = fake.service()["template"]
    template["volumes"] = [{"name": "cloudsql", "cloudSqlInstance": {"instances": [CONNECTION]}}]
    next(c for c in template["containers"] if c["name"] == "app")["volumeMounts"] = [
        {"name": "cloudsql", "mountPath": "/cloudsql"}]


def test_socket_app_host_proves_the_login_over_the_tools_endpoint(world, fake, tmp_path, pg, admin):
    """From the operator's machine /cloudsql does not exist: the app's role and password are proven
    over the tool's connect path, and the service must mount the instance's Cloud SQL volume."""
    mount_cloudsql(fake)
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role, database={"app_host": "socket"})
    ran_ok(commands.provision, project, world)
    url = fake.latest_env()[URL_VAR]
    parts = psycopg.conninfo.conninfo_to_dict(url)
    assert parts["host"] == f"/cloudsql/{CONNECTION}" and parts["user"] == role and parts["sslmode"] == "disable"
    logs_in(via_tool_endpoint(url, pg), role)
    diagnosed_clean(project, world)
    rerun = commands.provision(project, "staging", yes=True, environ=world)
    assert rerun.status == "unchanged", rerun.messages                 # the rerun sees the URL in place
    assert fake.store.states(SECRET) == ["ENABLED"]


def test_socket_app_host_without_the_volume_mount_is_refused(world, fake, tmp_path, pg, admin):
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role, database={"app_host": "socket"})
    with pytest.raises(ConfigError) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert err.value.exit_code == 2
    assert f"--add-cloudsql-instances={CONNECTION}` and rerun" in err.value.message
    assert fake.secretmanager.requests == [] and fake.run.calls("PATCH") == []   # the app side is untouched
    mount_cloudsql(fake)                                                        # the operator's fix
    ran_ok(commands.provision, project, world)
    diagnosed_clean(project, world)


def test_a_proxy_port_never_reaches_the_apps_url(world, fake, tmp_path, pg, admin):
    """The tool goes through an Auth Proxy on 127.0.0.1:<port> with sslmode disable; the app
    connects to the private address on 5432, encrypted (the instance is ENCRYPTED_ONLY)."""
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role, database={"app_host": APP_ADDRESS})
    ran_ok(commands.provision, project, world)
    url = fake.latest_env()[URL_VAR]
    parts = psycopg.conninfo.conninfo_to_dict(url)
    assert (parts["host"], parts["port"], parts["sslmode"]) == (APP_ADDRESS, "5432", "require")
    logs_in(via_tool_endpoint(url, pg), role)
    diagnosed_clean(project, world)


def test_a_runtime_account_without_secret_accessor_is_refused_with_the_command(world, fake, tmp_path, pg, admin):
    fake.store.deny_set_iam = True
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role)
    with pytest.raises(Refused) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert (f"`gcloud secrets add-iam-policy-binding {SECRET} --project={PROJECT} --member=serviceAccount:{ACCOUNT} "
            "--role=roles/secretmanager.secretAccessor`") in err.value.message
    assert fake.secretmanager.calls("POST", f"/v1/projects/{PROJECT}/secrets/{SECRET}:addVersion") == []
    assert fake.run.calls("PATCH") == []
    # the operator runs the command; the rerun converges
    fake.secrets[(PROJECT, SECRET)]["policy"]["bindings"] = [
        {"role": "roles/secretmanager.secretAccessor", "members": [f"serviceAccount:{ACCOUNT}"]}]
    ran_ok(commands.provision, project, world)
    logs_in(fake.latest_env()[URL_VAR], role)


def test_user_managed_replication_from_the_project_file(world, fake, tmp_path, pg, admin):
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role, app={"replication": {"user_managed": ["europe-west1", "europe-west4"]}})
    ran_ok(commands.provision, project, world)
    assert fake.secrets[(PROJECT, SECRET)]["replication"] == {
        "userManaged": {"replicas": [{"location": "europe-west1"}, {"location": "europe-west4"}]}}
    logs_in(fake.latest_env()[URL_VAR], role)


def test_a_version_alias_is_read_and_kept(world, fake, tmp_path, pg, admin):
    """The service reads the URL by alias (`current`): the tool reads it (a URL that does not log in
    is rewritten, not one that reads as unset), moves the alias, and keeps the reference."""
    fake.store.put(SECRET, "postgresql://someone:else@10.9.9.9/x", aliases={"current": "1"}, accessors=(ACCOUNT,))
    container = next(c for c in fake.service()["template"]["containers"] if c["name"] == "app")
    container["env"].append({"name": URL_VAR, "valueSource": {"secretKeyRef": {"secret": SECRET, "version": "current"}}})
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role)
    ran_ok(commands.provision, project, world)
    assert fake.secrets[(PROJECT, SECRET)]["aliases"] == {"current": "2"}
    assert {"name": URL_VAR, "valueSource": {"secretKeyRef": {"secret": SECRET, "version": "current"}}} in \
        next(c for c in fake.service()["template"]["containers"] if c["name"] == "app")["env"]
    assert fake.store.states(SECRET) == ["DISABLED", "ENABLED"]
    logs_in(fake.latest_env()[URL_VAR], role)
    diagnosed_clean(project, world)


def test_rotation_disables_the_old_versions_once_the_new_revision_serves(world, fake, tmp_path, pg, admin):
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role)
    ran_ok(commands.provision, project, world)
    first = fake.latest_env()[URL_VAR]

    # a rotation whose revision does not come up: version 1 stays enabled for what still serves
    fake.fail_next_revision = "Revision 'raxx-api-00004-abc' is not ready and cannot serve traffic."
    with pytest.raises(ProviderError):
        commands.rotate(project, "staging", yes=True, environ=world)
    assert fake.store.states(SECRET) == ["ENABLED", "ENABLED"]
    assert fake.latest_env()[URL_VAR] == first

    ran_ok(commands.rotate, project, world)
    assert fake.store.states(SECRET)[-1] == "ENABLED" and set(fake.store.states(SECRET)[:-1]) == {"DISABLED"}
    current = fake.latest_env()[URL_VAR]
    assert current != first
    logs_in(current, role)
    diagnosed_clean(project, world)


def test_an_iam_admin_logs_in_with_its_oauth_token(fake, tmp_path, pg, caplog):
    """admin_auth: iam — the admin is an IAM principal whose database password is the OAuth access
    token (here the cluster checks it as a password; Cloud SQL checks it with IAM)."""
    from psycopg import sql

    from tests.logins import create_login
    from tests.providers.cloudsql.conftest import GROUP, ensure_group
    from tests.providers.cloudsql.fake_google import TOKEN
    from tests.providers.conftest import Login

    caplog.set_level("DEBUG")
    ensure_group(pg)
    name = f"{pg.role('ops')}@example.com"
    create_login(pg, name, TOKEN, "CREATEROLE CREATEDB")
    ident = sql.Identifier(name)
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP), ident)
               + (sql.SQL(" WITH ADMIN OPTION") if pg.major >= 16 else sql.SQL("")))
    pg.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(ident))
    owned_database(pg, Login(name, TOKEN))
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, Login(name, TOKEN), role,
                            database={"admin_auth": "iam", "admin_password_env": None})
    environ = fake.environ()

    with pytest.raises(Refused, match="cloudsql.iam_authentication is not on"):    # before any change
        commands.provision(project, "staging", yes=True, environ=environ)
    assert not role_exists(pg, role)
    fake.instances[(PROJECT, INSTANCE)]["settings"]["databaseFlags"] = [
        {"name": "cloudsql.iam_authentication", "value": "on"}]
    result = ran_ok(commands.provision, project, environ)
    logs_in(fake.latest_env()[URL_VAR], role)
    diag = diagnosed_clean(project, environ)
    assert_not_shown(caplog, (result, diag), TOKEN)


def test_a_dropped_socket_mount_fails_diagnose_and_retire_still_cleans_up(world, fake, tmp_path, pg, admin):
    mount_cloudsql(fake)
    role = pg.role("raptor_app")
    project = write_project(tmp_path, pg, admin, role, database={"app_host": "socket"})
    ran_ok(commands.provision, project, world)
    fake.service()["template"].pop("volumes")         # someone redeployed without the Cloud SQL connection
    diag = commands.diagnose(project, "staging", environ=world)
    url = next(c for c in diag.checks if c.name == "url")
    assert url.status == "fail" and f"--add-cloudsql-instances={CONNECTION}" in url.detail
    ran_ok(commands.retire, project, world)
    assert URL_VAR not in fake.latest_env() and (PROJECT, SECRET) not in fake.secrets and not role_exists(pg, role)
