"""IAM database authentication for the app role on Cloud SQL (`database.auth: iam`), end to end
through runbook.commands with the discovery-document fakes and the real PostgreSQL behind them.

The role is a service account's Cloud SQL user (`sa-id@project.iam`), made through users.insert;
the app's URL has no password (the app runs the Auth Proxy with --auto-iam-authn); verify proves
the login over the tool's endpoint with a token from generateAccessToken, and the database takes
exactly the token the fake's token endpoint issued (see fake_google's docstring)."""

from __future__ import annotations

import logging

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from runbook import commands, project as projects
from runbook.errors import ConfigError, Refused
from tests.providers.cloudsql.conftest import FLAG, PASSWORD_ENV, URL_VAR
from tests.providers.cloudsql.fake_google import IAM_GROUP, INSTANCE, PROJECT, REGION, SERVICE
from tests.providers.conftest import assert_not_shown, diagnosed_clean, owned_database, ran_ok, role_exists
from tests.providers.conftest import write_project as write_runbook

SECRET = "raptor-database-url"
LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"


@pytest.fixture
def world(fake, pg, admin):
    owned_database(pg, admin)
    fake.instances[(PROJECT, INSTANCE)]["settings"]["databaseFlags"] = [
        {"name": "cloudsql.iam_authentication", "value": "on"}]
    return {**fake.environ(), PASSWORD_ENV: admin.password}


@pytest.fixture
def account(pg):
    """The app's service account as Cloud SQL names its user; dropped after the test (the pg
    fixture only drops names ending in the test's suffix)."""
    user = f"raxx-app-{pg.suffix}@{PROJECT}.iam"
    yield user
    if role_exists(pg, user):
        pg.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(user)))
        pg.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(user)))


def write_project(tmp_path, pg, admin, role: str, **database) -> projects.Project:
    db = {"project": PROJECT, "instance": INSTANCE, "admin_user": admin.name, "admin_password_env": PASSWORD_ENV,
          "database": pg.dbname, "sslmode": "disable", "connect": {"host": "127.0.0.1", "port": pg.port},
          "poll_interval": "10ms", "auth": "iam",
          # the app's Auth Proxy sidecar: --auto-iam-authn, on the app's localhost
          "app_host": "127.0.0.1", "app_port": 5432, "app_sslmode": "disable", **database}
    return projects.load(write_runbook(tmp_path, role, {
        "provider": "cloudsql", "database": db,
        "app": {"region": REGION, "service": SERVICE, "url_secret": SECRET, "poll_interval": "10ms"},
    }, url_var=URL_VAR, flag=FLAG))


def as_app(pg, user: str, token: str) -> psycopg.Connection:
    """What the app's Auth Proxy does: log in as the user with its token as the password."""
    return psycopg.connect(host="127.0.0.1", port=pg.port, user=user, password=token, dbname=pg.dbname,
                           sslmode="disable", autocommit=True)


def test_provision_makes_the_iam_user_and_verify_proves_its_login_with_a_token(
        world, fake, tmp_path, pg, admin, account, caplog):
    caplog.set_level(logging.DEBUG)
    project = write_project(tmp_path, pg, admin, account)
    result = ran_ok(commands.provision, project, world)

    inserted = fake.sqladmin.calls("POST", r".*/users")
    assert [r.body for r in inserted] == [{"name": account, "type": "CLOUD_IAM_SERVICE_ACCOUNT"}]
    assert pg.execute("""SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                         JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s""", (account,)) == [(IAM_GROUP,)]

    # the app's URL: the service account's user, its sidecar proxy, no password
    url = fake.latest_env()[URL_VAR]
    parts = conninfo_to_dict(url)
    assert (parts["user"], parts["host"], parts["port"], parts["sslmode"]) == (account, "127.0.0.1", "5432", "disable")
    assert "password" not in parts

    # verify logged in with a token minted for that account, with the login scope
    minted = [t for t in fake.issued if t["serviceAccount"] == f"{account}.gserviceaccount.com"]
    assert minted and all(t["scope"] == [LOGIN_SCOPE] for t in minted)
    with as_app(pg, account, minted[-1]["accessToken"]) as conn:      # the grants are the role's
        assert conn.execute("SELECT current_user").fetchone()[0] == account
        conn.execute("INSERT INTO public.orders (total) VALUES (1)")
    with pytest.raises(psycopg.OperationalError):
        as_app(pg, account, "ya29.not-the-token")

    diag = diagnosed_clean(project, world)
    again = commands.provision(project, "staging", yes=True, environ=world)
    assert again.status == "unchanged", again.messages                   # a rerun converges, no second user
    assert len(fake.sqladmin.calls("POST", r".*/users")) == 1
    assert_not_shown(caplog, (result, diag), admin.password, *(t["accessToken"] for t in fake.issued))

    ran_ok(commands.retire, project, world)
    assert not role_exists(pg, account)


def test_a_token_the_database_does_not_take_fails_verify(world, fake, tmp_path, pg, admin, account):
    project = write_project(tmp_path, pg, admin, account)
    ran_ok(commands.provision, project, world)
    # the database now takes only a token the fake never issued: verify's fresh token must fail
    fake.issued.clear()
    accept = fake._accept_token
    fake._accept_token = lambda user, token, expires: accept(user, "ya29.someone-elses", expires)
    diag = commands.diagnose(project, "staging", environ=world)
    url = next(c for c in diag.checks if c.name == "url")
    assert url.status == "fail" and "does not log in" in url.detail, url.detail
    assert fake.issued                                                   # it did try, with a new token


def test_an_expired_token_does_not_log_in(world, fake, tmp_path, pg, admin, account):
    project = write_project(tmp_path, pg, admin, account)
    ran_ok(commands.provision, project, world)
    token = fake.issued[-1]["accessToken"]
    pg.execute(sql.SQL("ALTER ROLE {} VALID UNTIL '2000-01-01'").format(sql.Identifier(account)))   # its expireTime passed
    with pytest.raises(psycopg.OperationalError):
        as_app(pg, account, token)


def test_no_token_creator_role_is_refused_before_any_change_with_the_fix(world, fake, tmp_path, pg, admin, account):
    project = write_project(tmp_path, pg, admin, account)
    fake.token_creator_denied.add(f"{account}.gserviceaccount.com")
    with pytest.raises(Refused) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert "PERMISSION_DENIED" in err.value.message and "roles/iam.serviceAccountTokenCreator" in err.value.message
    assert f"add-iam-policy-binding {account}.gserviceaccount.com --project={PROJECT}" in err.value.message
    assert fake.sqladmin.calls("POST") == [] and not role_exists(pg, account)


@pytest.mark.parametrize("name", ["raxx-app-0001@other-project-1.iam", "raxx_app"])
def test_a_role_that_is_not_a_service_account_of_the_project_is_refused_before_any_change(
        world, fake, tmp_path, pg, admin, name):
    project = write_project(tmp_path, pg, admin, name)
    with pytest.raises(Refused) as err:
        commands.provision(project, "staging", yes=True, environ=world)
    assert f"one of project {PROJECT}'s service accounts" in err.value.message
    assert fake.sqladmin.calls("POST") == [] and not role_exists(pg, name)


def test_the_cloudsql_socket_cannot_carry_an_iam_login(world, fake, tmp_path, pg, admin, account):
    project = write_project(tmp_path, pg, admin, account, app_host="socket", app_port=None, app_sslmode=None)
    with pytest.raises(Refused, match="does not log in with IAM.*--auto-iam-authn"):
        commands.provision(project, "staging", yes=True, environ=world)
    assert fake.sqladmin.calls("POST") == []


def test_the_iam_flag_must_be_on(world, fake, tmp_path, pg, admin, account):
    fake.instances[(PROJECT, INSTANCE)]["settings"]["databaseFlags"] = []
    with pytest.raises(Refused, match="cloudsql.iam_authentication is not on.*database.auth is iam"):
        commands.provision(write_project(tmp_path, pg, admin, account), "staging", yes=True, environ=world)
    assert not role_exists(pg, account)


def test_a_service_account_name_needs_auth_iam(tmp_path, pg, admin, account):
    with pytest.raises(ConfigError, match="needs database.provider: cloudsql with auth: iam"):
        write_project(tmp_path, pg, admin, account, auth="password")


def test_an_iam_admin_whose_token_the_database_refuses_changes_nothing(fake, tmp_path, pg, account):
    """admin_auth: iam — the admin's password is the OAuth access token the tool runs with; the
    database here takes only the token it was given (Cloud SQL asks IAM), so a token it refuses
    ends in one line before any change."""
    from runbook.errors import RunbookError
    from tests.logins import create_login
    from tests.providers.cloudsql.conftest import GROUP
    from tests.providers.conftest import Login

    name = f"{pg.role('ops')}@example.com"
    create_login(pg, name, "ya29.the-token-iam-would-take", "CREATEROLE CREATEDB")
    pg.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP), sql.Identifier(name)))
    fake.instances[(PROJECT, INSTANCE)]["settings"]["databaseFlags"] = [
        {"name": "cloudsql.iam_authentication", "value": "on"}]
    project = write_project(tmp_path, pg, Login(name, ""), account, admin_auth="iam", admin_password_env=None)
    with pytest.raises(RunbookError) as err:
        commands.provision(project, "staging", yes=True, environ=fake.environ())
    assert "\n" not in err.value.message and "password authentication failed" in err.value.message
    assert fake.token not in err.value.message
    assert fake.sqladmin.calls("POST") == [] and not role_exists(pg, account)


def test_an_iam_user_made_outside_the_tool_is_adopted_only_when_asked(world, fake, tmp_path, pg, admin, account):
    """`gcloud sql users create … --type=cloud_iam_service_account` before the tool came (or a run
    killed between users.insert and the mark): refused until role.adopt, then taken over without a
    second users.insert."""
    import httpx

    httpx.post(f"{fake.sqladmin.url}/v1/projects/{PROJECT}/instances/{INSTANCE}/users",
               headers={"authorization": f"Bearer {fake.token}"},
               json={"name": account, "type": "CLOUD_IAM_SERVICE_ACCOUNT"}).raise_for_status()
    for op in list(fake.sql_ops):
        while httpx.get(f"{fake.sqladmin.url}/v1/projects/{PROJECT}/operations/{op}",
                        headers={"authorization": f"Bearer {fake.token}"}).json()["status"] != "DONE":
            pass
    assert role_exists(pg, account)
    fake.sqladmin.clear()

    with pytest.raises(Refused, match="role.adopt: true"):
        commands.provision(write_project(tmp_path, pg, admin, account), "staging", yes=True, environ=world)
    path = write_runbook(tmp_path, account, {
        "provider": "cloudsql",
        "database": {"project": PROJECT, "instance": INSTANCE, "admin_user": admin.name,
                     "admin_password_env": PASSWORD_ENV, "database": pg.dbname, "sslmode": "disable",
                     "connect": {"host": "127.0.0.1", "port": pg.port}, "poll_interval": "10ms", "auth": "iam",
                     "app_host": "127.0.0.1", "app_port": 5432, "app_sslmode": "disable"},
        "app": {"region": REGION, "service": SERVICE, "url_secret": SECRET, "poll_interval": "10ms"},
    }, url_var=URL_VAR, flag=FLAG)
    text = path.read_text().replace(f"name: {account}", f"name: {account}\n  adopt: true", 1)
    path.write_text(text)
    ran_ok(commands.provision, projects.load(path), world)
    assert fake.sqladmin.calls("POST") == []
    diagnosed_clean(projects.load(path), world)
