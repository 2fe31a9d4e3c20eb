"""The cloudsql database provider against the sqladmin fake (and the real PostgreSQL for SQL)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from providers.cloudsql import CloudSqlDatabaseConfig
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret
from tests.providers.cloudsql.conftest import (
    GROUP, PASSWORD_ENV, api_created_user, database_config, role_state,
)
from tests.providers.cloudsql.fake_google import INSTANCE, PRIVATE_IP, PROJECT, PUBLIC_IP, REGION, TOKEN

INSTANCE_PATH = f"/v1/projects/{PROJECT}/instances/{INSTANCE}"


def test_importing_the_providers_does_not_import_google_auth():
    code = ("import sys, providers.cloudsql, providers.cloudrun, providers.gcp_auth; "
            "print(any(m == 'google' or m.startswith('google.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "False"


def test_describe_reads_the_instance(bare_fake, open_db):
    info = open_db(bare_fake, connect={"host": "127.0.0.1", "port": 6432}).describe()
    assert info.engine == "postgres"
    assert info.version == "16.4"
    assert info.plan == "db-custom-2-7680"
    assert info.credentials == "sql"
    assert info.details["tier"] == "db-custom-2-7680"
    assert info.details["edition"] == "ENTERPRISE"
    assert info.details["ssl_mode"] == "ENCRYPTED_ONLY"
    assert info.details["instance"] == f"{PROJECT}:{REGION}:{INSTANCE}"
    assert info.details["admin"] == "postgres@127.0.0.1:6432"
    (req,) = bare_fake.sqladmin.requests
    assert (req.method, req.path) == ("GET", INSTANCE_PATH)
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.body is None


@pytest.mark.parametrize("change, needle", [
    ({"databaseVersion": "MYSQL_8_0"}, "runs MYSQL_8_0, not PostgreSQL"),
    ({"databaseVersion": "SQLSERVER_2019_STANDARD"}, "not PostgreSQL"),
    ({"state": "MAINTENANCE"}, "is MAINTENANCE, not RUNNABLE"),
    ({"state": "SUSPENDED"}, "is SUSPENDED, not RUNNABLE"),
    ({"state": "PENDING_CREATE"}, "wait until"),
    ({"instanceType": "READ_REPLICA_INSTANCE", "masterInstanceName": f"{PROJECT}:raxx-pg-primary"},
     "is a read replica; roles can only be created on the primary: set database.instance to raxx-pg-primary"),
    ({"instanceType": "READ_POOL_INSTANCE", "masterInstanceName": "raxx-pg-primary"},
     "is a read pool; roles can only be created on the primary: set database.instance to raxx-pg-primary"),
    ({"instanceType": "ON_PREMISES_INSTANCE"}, "is ON_PREMISES_INSTANCE; roles can only be created on the primary"),
])
def test_describe_refuses_what_is_not_a_runnable_postgres_primary(bare_fake, open_db, change, needle):
    bare_fake.instances[(PROJECT, INSTANCE)].update(change)
    with pytest.raises(Refused) as exc:
        open_db(bare_fake).describe()
    assert needle in str(exc.value)
    assert exc.value.exit_code == 2


def test_describe_refuses_a_stopped_instance(bare_fake, open_db):
    bare_fake.instances[(PROJECT, INSTANCE)]["settings"]["activationPolicy"] = "NEVER"
    with pytest.raises(Refused, match="activation-policy=ALWAYS"):
        open_db(bare_fake).describe()


def test_describe_refuses_client_certificates_without_a_proxy(bare_fake, open_db):
    bare_fake.instances[(PROJECT, INSTANCE)]["settings"]["ipConfiguration"]["sslMode"] = \
        "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    with pytest.raises(Refused, match="Auth Proxy"):
        open_db(bare_fake).describe()
    # through the proxy it is fine: the proxy presents the certificate
    assert open_db(bare_fake, connect={"host": "127.0.0.1", "port": 5433}, sslmode="disable").describe()


def test_describe_refuses_sslmode_disable_against_an_encrypted_only_instance(bare_fake, open_db):
    with pytest.raises(Refused, match="only accepts encrypted connections"):
        open_db(bare_fake, sslmode="disable").describe()


def test_missing_instance_is_one_line_with_googles_message(bare_fake, open_db):
    with pytest.raises(ProviderError) as exc:
        open_db(bare_fake, instance="nope-pg").describe()
    assert str(exc.value) == ("Cloud SQL Admin API: GET /v1/projects/raxx-prod-123/instances/nope-pg failed: "
                              "HTTP 404 NOT_FOUND: The Cloud SQL instance does not exist.")


def test_a_bad_token_is_a_provider_error(bare_fake, open_db):
    with pytest.raises(ProviderError, match="401 UNAUTHENTICATED"):
        open_db(bare_fake, environ={"GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.wrong"}).describe()


def test_admin_dsn_defaults_to_the_public_address(bare_fake, open_db):
    db = open_db(bare_fake, environ={PASSWORD_ENV: "s3cret-pw"})
    parts = conninfo_to_dict(db.admin_dsn().reveal())
    assert parts == {"host": PUBLIC_IP, "port": "5432", "user": "postgres", "password": "s3cret-pw",
                     "dbname": "postgres", "sslmode": "require"}


def test_admin_dsn_uses_the_private_address_when_there_is_no_public_one(bare_fake, open_db):
    bare_fake.instances[(PROJECT, INSTANCE)]["ipAddresses"] = [{"type": "PRIVATE", "ipAddress": PRIVATE_IP}]
    db = open_db(bare_fake, environ={PASSWORD_ENV: "s3cret-pw"})
    assert conninfo_to_dict(db.admin_dsn().reveal())["host"] == PRIVATE_IP


def test_admin_dsn_without_any_address_asks_for_a_proxy(bare_fake, open_db):
    bare_fake.instances[(PROJECT, INSTANCE)]["ipAddresses"] = []
    with pytest.raises(ConfigError, match="Auth Proxy"):
        open_db(bare_fake, environ={PASSWORD_ENV: "s3cret-pw"}).admin_dsn()


def test_admin_dsn_needs_the_password_variable(bare_fake, open_db):
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        open_db(bare_fake, connect={"host": "127.0.0.1", "port": 5432}).admin_dsn()
    assert bare_fake.sqladmin.requests == []   # connect given: no need to ask the API for an address


def test_credential_for_names_the_same_address_or_the_app_host(bare_fake, open_db):
    pw = Secret("app-pw-123456")
    cred = open_db(bare_fake, connect={"host": "127.0.0.1", "port": 5433}, sslmode="disable").credential_for("raptor_app", pw)
    # issue 14 item 4: the instance's address, never the tool's proxy (was 127.0.0.1:5433, disable)
    assert (cred.user, cred.host, cred.port, cred.database, cred.sslmode) == ("raptor_app", PUBLIC_IP, 5432, "postgres", "require")
    cred = open_db(bare_fake, app_host="10.9.8.7", database="raptor").credential_for("raptor_app", pw)
    assert (cred.host, cred.port, cred.database, cred.sslmode) == ("10.9.8.7", 5432, "raptor", "require")


def test_credential_for_the_cloud_run_socket(bare_fake, open_db):
    cred = open_db(bare_fake, app_host="socket", database="raptor").credential_for("raptor_app", Secret("app-pw-123456"))
    parts = conninfo_to_dict(cred.url().reveal())
    assert parts["host"] == f"/cloudsql/{PROJECT}:{REGION}:{INSTANCE}"
    assert (parts["user"], parts["password"], parts["dbname"]) == ("raptor_app", "app-pw-123456", "raptor")


@pytest.mark.parametrize("block, needle", [
    ({"instance": f"{PROJECT}:{REGION}:{INSTANCE}"}, "not the connection name"),
    ({"project": "Raxx Prod"}, "not a Google Cloud project id"),
    ({"admin_password_env": "hunter2 is my password"}, "must name an environment variable"),
    ({"sslmode": "required"}, "sslmode"),
    ({"admin_password_env": None}, "admin_password_env is required \\(or admin_auth: iam"),
    ({"admin_auth": "iam", "admin_user": "sa@raxx-prod-123.iam.gserviceaccount.com"},
     "without .gserviceaccount.com \\(sa@raxx-prod-123.iam\\)"),
    ({"ip": "ipv6"}, "ip"),
    ({"app_port": 70000}, "app_port"),
])
def test_config_rejects_mistakes(block, needle):
    with pytest.raises(ValueError, match=needle):
        database_config(**block)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="extra"):
        CloudSqlDatabaseConfig.model_validate({"project": PROJECT, "instance": INSTANCE,
                                               "admin_password_env": PASSWORD_ENV, "tier": "db-f1-micro"})


# -- SQL: preflight and roles created through the Admin API ------------------------------------------

def _connect(pg, admin) -> psycopg.Connection:
    return psycopg.connect(pg.tcp_dsn(admin.name, admin.password), autocommit=True)


def test_preflight_wants_createrole(pg, admin, bare_fake, open_db):
    db = open_db(bare_fake, admin_user=admin.name)
    with _connect(pg, admin) as conn:
        assert db.preflight_sql(conn) == []
    pg.execute(sql.SQL("ALTER ROLE {} NOCREATEROLE").format(sql.Identifier(admin.name)))
    with _connect(pg, admin) as conn:
        (problem,) = db.preflight_sql(conn)
    assert f"{admin.name} lacks CREATEROLE" in problem and "admin_user" in problem


def test_adjust_leaves_a_missing_or_plain_role_alone(pg, admin, bare_fake, open_db):
    db = open_db(bare_fake, admin_user=admin.name)
    plain = pg.role("plain")
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(plain)))
    with _connect(pg, admin) as conn:
        assert db.adjust_existing_role(conn, pg.role("absent")) == []
        assert db.adjust_existing_role(conn, plain) == []
    assert bare_fake.sqladmin.requests == []


def test_adjust_revokes_cloudsqlsuperuser_in_sql_when_allowed(pg, admin, bare_fake, open_db, canary_password):
    """PG 15: CREATEROLE may revoke any membership. PG 16+: only grants the admin made itself
    (and the admin needs ADMIN OPTION on the role to alter it)."""
    user = pg.role("apiuser")
    api_created_user(pg, user, canary_password, grantor=admin.name)
    if pg.major >= 16:
        pg.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(user), sql.Identifier(admin.name)))
    db = open_db(bare_fake, admin_user=admin.name)
    with _connect(pg, admin) as conn:
        (said,) = db.adjust_existing_role(conn, user)
        assert db.adjust_existing_role(conn, user) == []   # converged
    assert said == (f"{user} already existed with {GROUP}, CREATEROLE, CREATEDB (as Cloud SQL gives users "
                    f"created through its API); revoked {GROUP}, CREATEROLE, CREATEDB from it")
    assert role_state(pg, user) == (False, False, False)
    with psycopg.connect(pg.tcp_dsn(user, canary_password)) as conn:   # still logs in
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    assert bare_fake.sqladmin.requests == []


def _unrevocable(pg, admin, user, password) -> None:
    """A membership the admin cannot revoke: PG 16+ as on Cloud SQL (granted by the superuser);
    PG 15 needs an admin without CREATEROLE for the same refusal."""
    api_created_user(pg, user, password)
    if pg.major < 16:
        pg.execute(sql.SQL("ALTER ROLE {} NOCREATEROLE").format(sql.Identifier(admin.name)))


def test_adjust_refuses_with_the_fix_and_changes_nothing(pg, admin, bare_fake, open_db, canary_password):
    user = pg.role("apiuser")
    _unrevocable(pg, admin, user, canary_password)
    db = open_db(bare_fake, admin_user=admin.name)
    with _connect(pg, admin) as conn, pytest.raises(Refused) as exc:
        db.adjust_existing_role(conn, user)
    message = str(exc.value)
    assert f"{admin.name} cannot revoke {GROUP}, CREATEROLE, CREATEDB from {user} in SQL" in message
    assert f"gcloud sql users delete {user} --instance={INSTANCE} --project={PROJECT}" in message
    assert "replace_api_users: true" in message
    assert role_state(pg, user) == (True, True, True)
    assert bare_fake.sqladmin.requests == []


def test_adjust_replaces_an_api_user_that_owns_nothing(pg, admin, fake, open_db, canary_password, sleeps):
    user = pg.role("apiuser")
    _unrevocable(pg, admin, user, canary_password)
    db = open_db(fake, admin_user=admin.name, replace_api_users=True)
    with _connect(pg, admin) as conn:
        (said,) = db.adjust_existing_role(conn, user)
    assert "it owned nothing, so it was deleted through the Admin API and must be created again in SQL" in said
    assert role_state(pg, user) is None
    delete, *polls = fake.sqladmin.requests
    assert (delete.method, delete.path, delete.query) == ("DELETE", f"{INSTANCE_PATH}/users", {"name": user})
    assert delete.headers["authorization"] == f"Bearer {TOKEN}"
    (op,) = fake.sql_ops
    assert [(r.method, r.path) for r in polls] == [("GET", f"/v1/projects/{PROJECT}/operations/{op}")] * 2
    assert fake.op_statuses == ["RUNNING", "DONE"]
    assert sleeps == [0.01, 0.01]


def test_adjust_never_deletes_a_role_that_owns_something(pg, admin, fake, open_db, canary_password):
    user = pg.role("apiuser")
    _unrevocable(pg, admin, user, canary_password)
    pg.execute(sql.SQL("CREATE TABLE owned_by_api_user (id int)"))
    pg.execute(sql.SQL("ALTER TABLE owned_by_api_user OWNER TO {}").format(sql.Identifier(user)))
    db = open_db(fake, admin_user=admin.name, replace_api_users=True)
    with _connect(pg, admin) as conn, pytest.raises(Refused) as exc:
        db.adjust_existing_role(conn, user)
    assert "owns or holds privileges on 1 object(s)" in str(exc.value)
    assert f"REASSIGN OWNED BY {user}" in str(exc.value)
    assert fake.sqladmin.requests == []
    assert role_state(pg, user) == (True, True, True)


def test_operation_errors_are_surfaced(pg, admin, fake, open_db, canary_password):
    user = pg.role("apiuser")
    _unrevocable(pg, admin, user, canary_password)
    fake.fail_next_operation = "The user cannot be deleted while the instance is being backed up."
    db = open_db(fake, admin_user=admin.name, replace_api_users=True)
    with _connect(pg, admin) as conn, pytest.raises(ProviderError) as exc:
        db.adjust_existing_role(conn, user)
    assert str(exc.value) == (f"Cloud SQL: deleting user {user} failed: "
                              "The user cannot be deleted while the instance is being backed up.")
    assert fake.op_statuses == ["RUNNING", "DONE"]
    assert role_state(pg, user) == (True, True, True)


def test_postgres_errors_of_the_operation_are_surfaced(bare_fake, open_db):
    """The fake without a database fails the drop: the operation's error text reaches the user."""
    db = open_db(bare_fake)
    op = db._call("DELETE", f"{INSTANCE_PATH}/users", params={"name": "someone"})
    assert op["status"] == "PENDING" and op["operationType"] == "DELETE_USER"
    with pytest.raises(ProviderError, match="deleting user someone failed: no database behind this fake"):
        db.wait_operation(op, "deleting user someone")


def test_an_operation_that_never_finishes_times_out(bare_fake, open_db, sleeps):
    bare_fake.stuck_operations = True
    db = open_db(bare_fake, operation_timeout="10m", poll_interval="2m")
    op = db._call("DELETE", f"{INSTANCE_PATH}/users", params={"name": "someone"})
    with pytest.raises(ProviderError, match=r"deleting user someone is still RUNNING after .*gcloud sql operations describe"):
        db.wait_operation(op, "deleting user someone")
    assert sleeps == [120.0] * 5   # the timeout's worth of polls, however little time really passed


# -- retries -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 429, "headers": {"Retry-After": "1"},
     "body": {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded"}}},
    {"kind": "status", "status": 500, "body": {"error": {"code": 500, "status": "INTERNAL", "message": "boom"}}},
    {"kind": "status", "status": 503, "body": {"error": {"code": 503, "status": "UNAVAILABLE", "message": "later"}}},
    {"kind": "slow"},
    {"kind": "reset"},
], ids=["429", "500", "503", "timeout", "reset"])
def test_transient_faults_are_retried(bare_fake, open_db, fault):
    bare_fake.sqladmin.fail("GET", INSTANCE_PATH, **fault)
    assert open_db(bare_fake).describe().plan == "db-custom-2-7680"
    assert len(bare_fake.sqladmin.calls("GET", INSTANCE_PATH)) == 2


def test_retries_are_bounded(bare_fake, open_db):
    bare_fake.sqladmin.fail("GET", INSTANCE_PATH, status=503, times=10,
                            body={"error": {"code": 503, "status": "UNAVAILABLE", "message": "The service is unavailable."}})
    with pytest.raises(ProviderError) as exc:
        open_db(bare_fake).describe()
    assert str(exc.value) == (f"Cloud SQL Admin API: GET {INSTANCE_PATH} still failing after 4 attempts: "
                              "HTTP 503 UNAVAILABLE: The service is unavailable.")
    assert len(bare_fake.sqladmin.requests) == 4


def test_operation_polls_survive_faults(bare_fake, open_db):
    db = open_db(bare_fake)
    op = db._call("DELETE", f"{INSTANCE_PATH}/users", params={"name": "someone"})
    bare_fake.sqladmin.fail("GET", f"/v1/projects/{PROJECT}/operations/.*", status=503, times=1)
    bare_fake.sqladmin.fail("GET", f"/v1/projects/{PROJECT}/operations/.*", kind="reset", times=1)
    with pytest.raises(ProviderError, match="no database behind this fake"):
        db.wait_operation(op, "deleting user someone")
    assert bare_fake.op_statuses == ["RUNNING", "DONE"]


def test_passwords_never_reach_logs_or_output(pg, admin, fake, open_db, canary_password, caplog, capsys):
    caplog.set_level("DEBUG")
    db = open_db(fake, environ={PASSWORD_ENV: canary_password}, admin_user=admin.name,
                 connect={"host": "127.0.0.1", "port": pg.port}, sslmode="disable", database=pg.dbname)
    db.describe()
    with psycopg.connect(db.admin_dsn().reveal()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (admin.name,)
    assert canary_password not in repr(db.admin_dsn())
    cred = db.credential_for("raptor_app", Secret(canary_password))
    assert canary_password not in cred.masked_url()
    out = capsys.readouterr()
    assert canary_password not in caplog.text + out.out + out.err


# -- SSL modes, the two endpoints, addresses and server verification ---------------------------------

LEGACY = {"ipv4Enabled": True, "requireSsl": True}     # no sslMode: set before sslMode existed


def ip_config(fake) -> dict:
    return fake.instances[(PROJECT, INSTANCE)]["settings"]["ipConfiguration"]


def test_legacy_require_ssl_alone_means_client_certificates(bare_fake, open_db):
    """The document: requireSsl true "only allow[s] connections encrypted with SSL/TLS and with valid
    client certificates", the pair TRUSTED_CLIENT_CERTIFICATE_REQUIRED + requireSsl true."""
    bare_fake.instances[(PROJECT, INSTANCE)]["settings"]["ipConfiguration"] = dict(LEGACY)
    with pytest.raises(Refused) as exc:
        open_db(bare_fake).describe()
    assert exc.value.message == (
        f"Cloud SQL instance {PROJECT}:{INSTANCE} requires client certificates (sslMode "
        f"TRUSTED_CLIENT_CERTIFICATE_REQUIRED); run the Cloud SQL Auth Proxy (`cloud-sql-proxy "
        f"{PROJECT}:{REGION}:{INSTANCE} --port 15432`) and set database.connect to its address with sslmode: "
        "disable, or use a Cloud SQL connector")
    proxy = {"connect": {"host": "127.0.0.1", "port": 15432}, "sslmode": "disable"}
    assert open_db(bare_fake, **proxy).describe().details["ssl_mode"] == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    # the app's URL must not go around the proxy: a direct address has no client certificate
    with pytest.raises(Refused, match="the app's URL names 10.20.0.3 directly; use app_host: socket"):
        open_db(bare_fake, app_host="10.20.0.3", **proxy).describe()
    assert open_db(bare_fake, app_host="socket", **proxy).describe()
    assert [r.method for r in bare_fake.sqladmin.requests] == ["GET"] * 4   # instances.get only: nothing changed


@pytest.mark.parametrize("pair, mode", [
    ({"sslMode": "ENCRYPTED_ONLY", "requireSsl": False}, "ENCRYPTED_ONLY"),
    ({"sslMode": "TRUSTED_CLIENT_CERTIFICATE_REQUIRED", "requireSsl": True}, "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"),
    ({"sslMode": "ALLOW_UNENCRYPTED_AND_ENCRYPTED", "requireSsl": False}, "ALLOW_UNENCRYPTED_AND_ENCRYPTED"),
    ({"requireSsl": False}, "ALLOW_UNENCRYPTED_AND_ENCRYPTED"),
    ({}, "ALLOW_UNENCRYPTED_AND_ENCRYPTED"),
])
def test_ssl_mode_has_priority_over_require_ssl(bare_fake, open_db, pair, mode):
    bare_fake.instances[(PROJECT, INSTANCE)]["settings"]["ipConfiguration"] = {"ipv4Enabled": True, **pair}
    assert open_db(bare_fake, connect={"host": "127.0.0.1", "port": 15432}, sslmode="disable").ssl_mode() == mode


def test_the_app_url_never_takes_the_proxys_port_or_sslmode(bare_fake, open_db):
    proxy = {"connect": {"host": "127.0.0.1", "port": 15432}, "sslmode": "disable"}
    pw = Secret("app-pw-123456")
    cred = open_db(bare_fake, app_host=PRIVATE_IP, **proxy).credential_for("raptor_app", pw)
    assert (cred.host, cred.port, cred.sslmode) == (PRIVATE_IP, 5432, "require")
    cred = open_db(bare_fake, app_host=PRIVATE_IP, app_port=6432, app_sslmode="verify-ca",
                   app_sslrootcert="/etc/cloudsql/server-ca.pem", **proxy).credential_for("raptor_app", pw)
    assert conninfo_to_dict(cred.url().reveal()) | {"password": "-"} == {
        "host": PRIVATE_IP, "port": "6432", "user": "raptor_app", "password": "-", "dbname": "postgres",
        "sslmode": "verify-ca", "sslrootcert": "/etc/cloudsql/server-ca.pem"}
    # an encrypted-only instance refuses the app's plaintext, before any change
    with pytest.raises(Refused, match="the app's URL would use sslmode disable; set database.app_sslmode to require"):
        open_db(bare_fake, app_host=PRIVATE_IP, app_sslmode="disable", **proxy).describe()
    # without app_host the app's URL names the instance's reported address (issue 14 item 4: it took the
    # tool's proxy, 127.0.0.1:15432 disable, before); an app-side sidecar is app_host: 127.0.0.1
    cred = open_db(bare_fake, **proxy).credential_for("raptor_app", pw)
    assert (cred.host, cred.port, cred.sslmode) == (PUBLIC_IP, 5432, "require")


def test_config_wants_the_apps_ca_path_for_verify_modes():
    with pytest.raises(ValueError, match="app_sslmode verify-full needs app_sslrootcert"):
        database_config(app_host="10.1.1.1", app_sslmode="verify-full")


def test_login_route_proves_the_apps_login_over_the_tools_endpoint(bare_fake, open_db):
    db = open_db(bare_fake, app_host="socket", connect={"host": "127.0.0.1", "port": 15432}, sslmode="disable")
    app_url = db.credential_for("raptor_app", Secret("app-pw-123456")).url()
    assert conninfo_to_dict(app_url.reveal())["host"] == f"/cloudsql/{PROJECT}:{REGION}:{INSTANCE}"
    routed = conninfo_to_dict(db.login_route(app_url).reveal())
    assert routed == {"host": "127.0.0.1", "port": "15432", "user": "raptor_app", "password": "app-pw-123456",
                      "dbname": "postgres", "sslmode": "disable"}
    # a URL naming any other server is tried as it is: the tool does not log in elsewhere on its behalf
    other = Secret("postgresql://raptor_app:app-pw-123456@evil.example:5432/postgres")
    assert db.login_route(other) is other
    # without app_host the app's URL names the instance (issue 14 item 4), proven over the tool's endpoint
    same = open_db(bare_fake, connect={"host": "127.0.0.1", "port": 15432}, sslmode="disable")
    url = same.credential_for("raptor_app", Secret("app-pw-123456")).url()
    assert conninfo_to_dict(url.reveal())["host"] == PUBLIC_IP
    assert conninfo_to_dict(same.login_route(url).reveal())["port"] == "15432"
    direct = open_db(bare_fake, sslmode="disable")
    url = direct.credential_for("raptor_app", Secret("app-pw-123456")).url()
    assert direct.login_route(url) is url       # one endpoint for both: nothing to move


@pytest.mark.parametrize("ip, addresses, extra, host", [
    ("private", [{"type": "PRIMARY", "ipAddress": PUBLIC_IP}, {"type": "PRIVATE", "ipAddress": PRIVATE_IP}], {},
     PRIVATE_IP),
    ("public", [{"type": "PRIMARY", "ipAddress": PUBLIC_IP}, {"type": "PRIVATE", "ipAddress": PRIVATE_IP}], {},
     PUBLIC_IP),
    ("psc", [], {"dnsNames": [{"name": "abc123.europe-west1.sql.goog.", "connectionType": "PRIVATE_SERVICE_CONNECT",
                               "dnsScope": "INSTANCE"}]}, "abc123.europe-west1.sql.goog"),
    (None, [], {"dnsName": "abc123.europe-west1.sql.goog."}, "abc123.europe-west1.sql.goog"),
], ids=["private", "public", "psc", "psc-only-default"])
def test_ip_chooses_the_instances_address(bare_fake, open_db, ip, addresses, extra, host):
    inst = bare_fake.instances[(PROJECT, INSTANCE)]
    inst["ipAddresses"] = addresses
    inst.update(extra)
    if not addresses:
        inst["settings"]["ipConfiguration"] = {"ipv4Enabled": False, "sslMode": "ENCRYPTED_ONLY",
                                               "pscConfig": {"pscEnabled": True}}
    db = open_db(bare_fake, environ={PASSWORD_ENV: "s3cret-pw"}, **({"ip": ip} if ip else {}))
    assert conninfo_to_dict(db.admin_dsn().reveal())["host"] == host


def test_a_missing_address_of_the_chosen_kind_is_one_line(bare_fake, open_db):
    bare_fake.instances[(PROJECT, INSTANCE)]["ipAddresses"] = [{"type": "PRIMARY", "ipAddress": PUBLIC_IP}]
    with pytest.raises(ConfigError, match=r"has no private address \(database.ip\); run the Cloud SQL Auth Proxy"):
        open_db(bare_fake, ip="private", environ={PASSWORD_ENV: "pw"}).admin_dsn()


CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def test_verify_ca_uses_the_server_ca_from_the_api(bare_fake, open_db, tmp_path):
    bare_fake.instances[(PROJECT, INSTANCE)]["serverCaCert"] = {"kind": "sql#sslCert", "cert": CA,
                                                                "commonName": "C=US,O=Google\\, Inc,CN=Google Cloud SQL Server CA"}
    parts = conninfo_to_dict(open_db(bare_fake, sslmode="verify-ca", environ={PASSWORD_ENV: "pw"}).admin_dsn().reveal())
    assert parts["sslmode"] == "verify-ca"
    assert Path(parts["sslrootcert"]).read_text() == CA and Path(parts["sslrootcert"]).is_relative_to(tmp_path)


def test_verify_full_falls_back_to_list_server_cas(bare_fake, open_db):
    bare_fake.server_cas = [CA]
    parts = conninfo_to_dict(open_db(bare_fake, sslmode="verify-full", environ={PASSWORD_ENV: "pw"}).admin_dsn().reveal())
    assert Path(parts["sslrootcert"]).read_text() == CA
    assert [r.path for r in bare_fake.sqladmin.requests] == [INSTANCE_PATH, f"{INSTANCE_PATH}/listServerCas"]


def test_no_server_ca_means_no_verification_and_says_so(bare_fake, open_db):
    with pytest.raises(ProviderError, match="reports no server CA certificate, so the server cannot be verified"):
        open_db(bare_fake, sslmode="verify-ca", environ={PASSWORD_ENV: "pw"}).admin_dsn()


def test_operation_states_reach_the_progress_sink(bare_fake, tmp_path, sleeps):
    import dataclasses

    from providers.cloudsql import CloudSqlDatabase
    from tests.providers.cloudsql.conftest import context
    from tests.providers.conftest import quick_budget

    events = []
    ctx = dataclasses.replace(context(bare_fake, tmp_path), progress=events.append)
    db = CloudSqlDatabase(database_config(), ctx, sleep=sleeps, budget=quick_budget())
    try:
        op = db._call("DELETE", f"{INSTANCE_PATH}/users", params={"name": "someone"})
        with pytest.raises(ProviderError):
            db.wait_operation(op, "deleting user someone")
    finally:
        db.close()
    assert [(e.what, e.state, e.done) for e in events] == [
        ("cloud sql: deleting user someone", "PENDING", False), ("cloud sql: deleting user someone", "RUNNING", False),
        ("cloud sql: deleting user someone", "DONE", True)]
    assert events[-1].remaining is None and events[0].remaining > 0


def test_an_iam_admin_sends_the_access_token_as_its_password(bare_fake, open_db):
    bare_fake.instances[(PROJECT, INSTANCE)]["settings"]["databaseFlags"] = [
        {"name": "cloudsql.iam_authentication", "value": "on"}]
    db = open_db(bare_fake, admin_auth="iam", admin_user="ops@example.com", admin_password_env=None)
    assert db.describe()
    parts = conninfo_to_dict(db.admin_dsn().reveal())
    assert (parts["user"], parts["password"]) == ("ops@example.com", TOKEN)
    assert TOKEN not in repr(db.admin_dsn())
