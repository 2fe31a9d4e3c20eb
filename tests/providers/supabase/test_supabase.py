"""The supabase database provider and app platform against the Management API fake."""

from __future__ import annotations

import hashlib
import json

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from providers.base import Digest
from providers.supabase import SupabaseAppConfig, SupabaseDatabaseConfig
from runbook.errors import ConfigError, ProviderError, Refused
from runbook.secret import Secret
from tests.logins import create_login
from tests.providers.supabase.conftest import FLAG, PASSWORD_ENV, URL_VAR, app_config, database_config
from tests.providers.supabase import openapi
from tests.providers.supabase.fake_supabase import ORG, POOLER, REF, REGION, TOKEN, FakeSupabase

PROJECT_PATH = f"/v1/projects/{REF}"
SECRETS_PATH = f"{PROJECT_PATH}/secrets"


# -- describe ----------------------------------------------------------------------------------------

def test_describe_reads_project_and_plan(bare_fake, open_db):
    info = open_db(bare_fake).describe()
    assert (info.engine, info.version, info.plan, info.credentials) == ("postgres", "15.8.1.085", "pro", "sql")
    assert info.details["no_superuser_clause"] == "1"
    assert info.details["project_ref"] == REF and info.details["region"] == REGION
    # the session pooler for the tool (IPv4-reachable); the transaction pooler for Edge Functions
    assert (info.details["admin_form"], info.details["url_form"]) == ("session", "transaction")
    assert [(r.method, r.path) for r in bare_fake.requests] == [("GET", PROJECT_PATH), ("GET", f"/v1/organizations/{ORG}")]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in bare_fake.requests)


def test_describe_reports_the_real_server_version(pg, fake, open_db):
    info = open_db(fake).describe()
    assert info.version.split(".")[0] == str(pg.major)


@pytest.mark.parametrize("status", ["COMING_UP", "INACTIVE", "ACTIVE_UNHEALTHY", "RESTORING", "UPGRADING"])
def test_describe_refuses_a_project_that_is_not_healthy(bare_fake, open_db, status):
    bare_fake.projects[REF]["status"] = status
    with pytest.raises(Refused) as exc:
        open_db(bare_fake).describe()
    assert f"Supabase project {REF} is {status}, not ACTIVE_HEALTHY" in str(exc.value)
    assert [r.path for r in bare_fake.requests] == [PROJECT_PATH]


def test_a_paused_project_says_how_to_restore_it(bare_fake, open_db):
    bare_fake.projects[REF]["status"] = "INACTIVE"
    with pytest.raises(Refused, match="it is paused: restore it from the dashboard"):
        open_db(bare_fake).describe()


@pytest.mark.parametrize("status, needle", [
    ("INIT_FAILED", "its set-up failed and waiting will not fix it: contact Supabase support or create a new project"),
    ("REMOVED", "it was deleted: point database.project_ref at an existing project"),
    ("RESTORE_FAILED", "its restore failed and waiting will not fix it: retry the restore from the dashboard"),
    ("PAUSE_FAILED", "pausing it failed and waiting will not fix it: restore it from the dashboard"),
])
def test_states_that_waiting_does_not_fix_say_what_to_do(bare_fake, open_db, status, needle):
    bare_fake.projects[REF]["status"] = status
    with pytest.raises(Refused) as exc:
        open_db(bare_fake).describe()
    assert needle in str(exc.value) and "wait for it" not in str(exc.value)


def test_an_unreadable_organization_leaves_the_plan_unknown(bare_fake, open_db):
    bare_fake.org_forbidden = True
    assert open_db(bare_fake).describe().plan is None


def test_a_missing_token_is_a_config_error(bare_fake, open_db):
    with pytest.raises(ConfigError, match="SUPABASE_ACCESS_TOKEN is not set"):
        open_db(bare_fake, environ={"SUPABASE_ACCESS_TOKEN": ""}).describe()
    assert bare_fake.requests == []


def test_a_wrong_token_quotes_the_api_message(bare_fake, open_db):
    with pytest.raises(ProviderError) as exc:
        open_db(bare_fake, environ={"SUPABASE_ACCESS_TOKEN": "sbp_wrong"}).describe()
    assert str(exc.value) == f"Supabase Management API: GET {PROJECT_PATH} failed: HTTP 401: Unauthorized"


# -- the tool's own session --------------------------------------------------------------------------

def test_admin_dsn_is_the_session_pooler_by_default(bare_fake, open_db):
    """The direct host is IPv6-only without the IPv4 add-on: the default works from IPv4-only runners."""
    dsn = open_db(bare_fake, environ={PASSWORD_ENV: "db-pw-123456"}).admin_dsn()
    assert conninfo_to_dict(dsn.reveal()) == {"host": POOLER, "port": "5432", "user": f"postgres.{REF}",
                                              "password": "db-pw-123456", "dbname": "postgres", "sslmode": "require"}
    assert [r.path for r in bare_fake.requests] == [f"{PROJECT_PATH}/config/database/pooler"]


def test_admin_dsn_direct_uses_the_projects_database_host(bare_fake, open_db):
    bare_fake.projects[REF]["database"]["host"] = "db.elsewhere.example"
    dsn = open_db(bare_fake, environ={PASSWORD_ENV: "db-pw-123456"}, admin_form="direct").admin_dsn()
    parts = conninfo_to_dict(dsn.reveal())
    assert (parts["host"], parts["port"], parts["user"]) == ("db.elsewhere.example", "5432", "postgres")
    note = open_db(bare_fake, admin_form="direct").describe().details["note_direct"]
    assert "db.elsewhere.example, which is IPv6-only without Supabase's IPv4 add-on" in note
    assert "admin_form: session (the default)" in note
    assert "note_direct" not in open_db(bare_fake).describe().details


def test_the_pooler_host_comes_from_the_api_never_from_the_region(bare_fake, open_db):
    """Newer projects are on aws-1-…: a host built from the region would be wrong."""
    bare_fake.pooler_host = "aws-1-us-east-1.pooler.supabase.com"
    dsn = open_db(bare_fake, environ={PASSWORD_ENV: "db-pw-123456"}, region="us-east-1").admin_dsn()
    assert conninfo_to_dict(dsn.reveal())["host"] == "aws-1-us-east-1.pooler.supabase.com"


def test_a_pooler_config_without_a_primary_is_one_clear_line(bare_fake, open_db):
    bare_fake.pooler_host = ""
    with pytest.raises(ProviderError, match="names no PRIMARY db_host; set database.pooler_host"):
        open_db(bare_fake, environ={PASSWORD_ENV: "db-pw-123456"}).admin_dsn()


def test_the_transaction_pooler_is_refused_for_the_tools_session(bare_fake, open_db):
    db = open_db(bare_fake, environ={PASSWORD_ENV: "db-pw-123456"}, admin_form="transaction")
    for call in (db.describe, db.admin_dsn):
        with pytest.raises(Refused) as exc:
            call()
        assert "transaction-mode pooler (port 6543)" in str(exc.value)
        assert "session-level advisory lock" in str(exc.value) and "lock_timeout" in str(exc.value)
        assert "admin_form: session (the default" in str(exc.value)


def test_a_connect_override_on_port_6543_is_refused_too(bare_fake, open_db):
    db = open_db(bare_fake, environ={PASSWORD_ENV: "db-pw-123456"}, connect={"host": POOLER, "port": 6543})
    with pytest.raises(Refused, match="transaction-mode pooler"):
        db.admin_dsn()


def test_admin_dsn_needs_the_password_variable(bare_fake, open_db):
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        open_db(bare_fake).admin_dsn()


def test_preflight_wants_createrole(pg, admin, bare_fake, open_db):
    db = open_db(bare_fake, admin_user=admin.name)
    with psycopg.connect(pg.tcp_dsn(admin.name, admin.password)) as conn:
        assert db.preflight_sql(conn) == []
    pg.execute(sql.SQL("ALTER ROLE {} NOCREATEROLE").format(sql.Identifier(admin.name)))
    with psycopg.connect(pg.tcp_dsn(admin.name, admin.password)) as conn:
        (problem,) = db.preflight_sql(conn)
    assert f"{admin.name} lacks CREATEROLE" in problem


# -- the app's URL -----------------------------------------------------------------------------------

PW = Secret("app-pw-1234567")


def test_direct_url(bare_fake, open_db):
    cred = open_db(bare_fake, url_form="direct").credential_for("raptor_app", PW)
    assert (cred.user, cred.host, cred.port, cred.database, cred.sslmode) == (
        "raptor_app", f"db.{REF}.supabase.co", 5432, "postgres", "require")
    assert [r.path for r in bare_fake.requests] == [PROJECT_PATH]     # database.host, from the project


def test_session_pooler_url_from_the_api(bare_fake, open_db):
    cred = open_db(bare_fake, url_form="session", region="eu-central-1").credential_for("raptor_app", PW)
    assert (cred.user, cred.host, cred.port) == (f"raptor_app.{REF}", POOLER, 5432)
    assert conninfo_to_dict(cred.url().reveal())["user"] == f"raptor_app.{REF}"


def test_edge_functions_get_the_transaction_pooler_by_default_other_apps_the_session_one():
    assert database_config().url_form == "transaction"      # app: supabase (Edge Functions)
    other = SupabaseDatabaseConfig.model_validate({"project_ref": REF, "password_env": PASSWORD_ENV},
                                                  context={"env": "staging", "app": {"platform": "ecs"}})
    assert other.url_form == "session" and other.admin_form == "session"
    assert database_config(url_form="session").url_form == "session"     # an explicit form wins


def test_transaction_pooler_url_from_the_api(bare_fake, open_db):
    db = open_db(bare_fake, url_form="transaction")
    cred = db.credential_for("raptor_app", PW)
    assert (cred.user, cred.host, cred.port) == (f"raptor_app.{REF}", POOLER, 6543)
    db.credential_for("raptor_app", PW)
    assert [r.path for r in bare_fake.requests] == [f"{PROJECT_PATH}/config/database/pooler"]   # asked once


def test_an_explicit_pooler_host_wins(bare_fake, open_db):
    cred = open_db(bare_fake, pooler_host="pooler.example.net", url_form="session").credential_for("raptor_app", PW)
    assert (cred.host, cred.port) == ("pooler.example.net", 5432)
    assert bare_fake.requests == []


def test_connect_overrides_host_and_port_in_every_form(bare_fake, open_db):
    # issue 14 item 4: `connect` is where the tool connects; the app's URL keeps the form's address
    # (it was 127.0.0.1:6000 here before, the tunnel leaking into the app's URL)
    for form, user, address in (("direct", "raptor_app", (f"db.{REF}.supabase.co", 5432)),
                                ("session", f"raptor_app.{REF}", (POOLER, 5432)),
                                ("transaction", f"raptor_app.{REF}", (POOLER, 6543))):
        db = open_db(bare_fake, url_form=form, connect={"host": "127.0.0.1", "port": 6000})
        cred = db.credential_for("raptor_app", PW)
        assert (cred.user, cred.host, cred.port) == (user, *address)
        routed = conninfo_to_dict(db.login_route(cred.url()).reveal())
        assert (routed["hostaddr"], routed["port"]) == ("127.0.0.1", "6000")


def test_the_direct_url_logs_in_for_real(pg, bare_fake, open_db, canary_password):
    role = pg.role("raptor_app")
    create_login(pg, role, canary_password)
    db = open_db(bare_fake, url_form="direct", connect={"host": "127.0.0.1", "port": pg.port}, sslmode="disable",
                 database=pg.dbname, app_host="127.0.0.1", app_port=pg.port)
    url = db.credential_for(role, Secret(canary_password)).url()
    with psycopg.connect(url.reveal()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)


@pytest.mark.parametrize("block, needle", [
    ({"project_ref": "https://abcdefghijklmnopqrst.supabase.co"}, "not a Supabase project reference"),
    ({"project_ref": "abcdefghij0123456789"}, "not a Supabase project reference"),   # the spec: ^[a-z]+$
    ({"password_env": "my password"}, "must name an environment variable"),
    ({"url_form": "pooled"}, "url_form"),
    ({"sslmode": "on"}, "sslmode"),
])
def test_config_rejects_mistakes(block, needle):
    with pytest.raises(ValueError, match=needle):
        database_config(**block)


# -- Edge Function secrets ---------------------------------------------------------------------------

URL = "postgresql://raptor_app.abcdefghijklmnopqrst:pw-1234567@aws-0-eu-west-2.pooler.supabase.com:5432/postgres"


def test_set_config_posts_name_value_pairs(bare_fake, open_app):
    open_app(bare_fake).set_config({URL_VAR: Secret(URL), FLAG: "1"})
    (req,) = bare_fake.requests
    assert (req.method, req.path) == ("POST", SECRETS_PATH)
    assert req.body == [{"name": URL_VAR, "value": URL}, {"name": FLAG, "value": "1"}]
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.headers["content-type"] == "application/json"


def test_get_config_returns_digests_that_verify(bare_fake, open_app):
    app = open_app(bare_fake)
    app.set_config({URL_VAR: Secret(URL), FLAG: "1"})
    got = app.get_config([URL_VAR, FLAG, "OTHER"])
    assert got == {URL_VAR: Digest.of(Secret(URL)), FLAG: Digest.of("1"), "OTHER": None}
    assert got[FLAG] != Digest.of("0")
    assert bare_fake.requests[-1].method == "GET" and bare_fake.requests[-1].path == SECRETS_PATH


def test_get_config_accepts_upper_case_digests_and_plain_values(bare_fake, open_app):
    bare_fake.listing = [
        {"name": URL_VAR, "value": hashlib.sha256(URL.encode()).hexdigest().upper()},
        {"name": FLAG, "value": "1"},
    ]
    got = open_app(bare_fake).get_config([URL_VAR, FLAG])
    assert got[URL_VAR] == Digest.of(URL)
    assert got[FLAG] == "1"


def test_unset_sends_the_names_as_a_json_array(bare_fake, open_app):
    app = open_app(bare_fake)
    app.set_config({URL_VAR: URL, FLAG: "1"})
    app.unset_config([URL_VAR, FLAG])
    req = bare_fake.requests[-1]
    assert (req.method, req.path, req.body) == ("DELETE", SECRETS_PATH, [URL_VAR, FLAG])
    assert app.get_config([URL_VAR, FLAG]) == {URL_VAR: None, FLAG: None}


def test_restart_is_a_documented_no_op(bare_fake, open_app):
    app = open_app(bare_fake)
    app.restart()
    assert bare_fake.requests == []
    assert app.config_change_restarts is True
    assert app.attach_url(None, URL_VAR) is False and app.detach_url("raptor_app", URL_VAR) is False   # type: ignore[arg-type]
    assert app.describe() == {"supabase": f"Edge Function secrets of project {REF}"}


def test_reserved_names_are_refused_before_any_request(bare_fake, open_app):
    with pytest.raises(ConfigError, match="SUPABASE_ are reserved"):
        open_app(bare_fake).set_config({"SUPABASE_DB_URL": URL})
    with pytest.raises(ConfigError, match="not a valid secret name"):
        open_app(bare_fake).unset_config(["bad name"])
    assert bare_fake.requests == []


def test_an_api_rejection_quotes_its_message(bare_fake, open_app):
    bare_fake.server.fail("POST", SECRETS_PATH, status=400, body={"message": "Secret value is too large"})
    with pytest.raises(ProviderError) as exc:
        open_app(bare_fake).set_config({FLAG: "1"})
    assert str(exc.value) == f"Supabase Management API: POST {SECRETS_PATH} failed: HTTP 400: Secret value is too large"


def test_project_ref_defaults_from_the_database_block():
    assert app_config().project_ref == REF
    assert app_config(project_ref="zyxwvutsrqponmlkjihg").project_ref == "zyxwvutsrqponmlkjihg"
    with pytest.raises(ValueError, match="project_ref"):
        SupabaseAppConfig.model_validate({}, context={"env": "staging", "database": {"provider": "rds"}})


def test_an_edge_function_connects_with_the_url_it_was_given(pg, fake, open_db, open_app, canary_password,
                                                             caplog, capsys):
    caplog.set_level("DEBUG")
    role = pg.role("raptor_app")
    create_login(pg, role, canary_password)
    db = open_db(fake, url_form="direct", connect={"host": "127.0.0.1", "port": pg.port}, sslmode="disable",
                 database=pg.dbname, app_host="127.0.0.1", app_port=pg.port)
    app = open_app(fake)
    app.set_config({URL_VAR: db.credential_for(role, Secret(canary_password)).url(), FLAG: "1"})
    assert fake.invoke_function(URL_VAR, FLAG) == role
    app.set_config({FLAG: "0"})   # rollback: the flag alone, without the database
    assert fake.invoke_function(URL_VAR, FLAG) is None
    out = capsys.readouterr()
    assert canary_password not in caplog.text + out.out + out.err


# -- retries -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 429, "headers": {"Retry-After": "1"}, "body": {"message": "Too many requests"}},
    {"kind": "status", "status": 500, "body": {"message": "Internal error"}},
    {"kind": "status", "status": 503},
    {"kind": "slow"},
    {"kind": "reset"},
], ids=["429", "500", "503", "timeout", "reset"])
def test_transient_faults_are_retried(bare_fake, open_db, open_app, fault):
    bare_fake.server.fail("GET", PROJECT_PATH, **fault)
    bare_fake.server.fail("POST", SECRETS_PATH, **fault)
    assert open_db(bare_fake).describe().plan == "pro"
    open_app(bare_fake).set_config({FLAG: "1"})
    assert len(bare_fake.server.calls("GET", PROJECT_PATH)) == 2
    assert len(bare_fake.server.calls("POST", SECRETS_PATH)) == 2
    assert bare_fake.secrets[(REF, FLAG)] == "1"


def test_retries_are_bounded(bare_fake, open_app):
    bare_fake.server.fail("GET", SECRETS_PATH, status=503, times=10, body={"message": "Service Unavailable"})
    with pytest.raises(ProviderError) as exc:
        open_app(bare_fake).get_config([FLAG])
    assert str(exc.value) == (f"Supabase Management API: GET {SECRETS_PATH} still failing after 4 attempts: "
                              "HTTP 503: Service Unavailable")
    assert len(bare_fake.requests) == 4


def test_the_listing_just_read_is_reused_until_a_write(bare_fake, open_app):
    app = open_app(bare_fake)

    def listings() -> int:
        return len(bare_fake.server.calls("GET", SECRETS_PATH))

    assert app.get_config([FLAG]) == {FLAG: None}
    assert app.get_config([URL_VAR, FLAG]) == {URL_VAR: None, FLAG: None}    # the next step's look
    assert listings() == 1
    app.set_config({FLAG: "1"})
    assert app.get_config([FLAG]) == {FLAG: Digest.of("1")} and listings() == 2
    app.unset_config([FLAG])
    assert app.get_config([FLAG]) == {FLAG: None} and listings() == 3
    # a write that failed may still have landed: the listing is read again
    bare_fake.server.fail("POST", SECRETS_PATH, status=400, body={"message": "Secret value is too large"})
    with pytest.raises(ProviderError):
        app.set_config({FLAG: "1"})
    app.get_config([FLAG])
    assert listings() == 4


# -- the contract --------------------------------------------------------------------------------

def test_the_openapi_document_is_the_recorded_one():
    record = openapi.source()
    assert record["repository"] == "https://github.com/supabase/cli"
    assert record["path"] == "packages/api/src/generated/openapi.json" and len(record["commit"]) == 40
    doc = openapi.load()                 # refuses a file whose sha256 is not the recorded one
    assert doc["info"]["title"] == "Supabase API (v1)"
    for path in ("/v1/projects/{ref}", "/v1/projects/{ref}/secrets", "/v1/projects/{ref}/config/database/pooler",
                 "/v1/organizations/{slug}"):
        assert path in doc["paths"]


def test_requests_the_document_refuses_are_violations():
    fake = FakeSupabase().start()
    try:
        with httpx.Client(base_url=fake.server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            client.get("/v1/projects/abcdefghij0123456789")                        # ref pattern ^[a-z]+$
            client.post(SECRETS_PATH, json=[{"name": "SUPABASE_URL", "value": "x"}])   # reserved prefix
            client.post(SECRETS_PATH, json={"name": "A", "value": "x"})            # not an array
            client.get(f"{PROJECT_PATH}/no-such-thing")
            client.get(SECRETS_PATH, params={"page": "2"})                         # no such query parameter
        problems = "\n".join(fake.errors)
        assert "path parameter ref" in problems and "does not match '^[a-z]+$'" in problems
        assert "'SUPABASE_URL' does not match" in problems
        assert "is not of type 'array'" in problems
        assert f"GET {PROJECT_PATH}/no-such-thing: no such operation" in problems
        assert "unknown query parameter page" in problems
    finally:
        fake.stop()
        fake.errors.clear()


def test_answers_the_document_refuses_are_violations():
    fake = FakeSupabase().start()
    try:
        fake.listing = [{"name": "NO_VALUE"}]              # SecretResponse requires value
        fake.projects[REF]["status"] = "SLEEPING"           # not in the status enum
        with httpx.Client(base_url=fake.server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            client.get(SECRETS_PATH)
            client.get(PROJECT_PATH)
        problems = "\n".join(fake.errors)
        assert "'value' is a required property" in problems
        assert "'SLEEPING' is not one of" in problems
    finally:
        fake.stop()
        fake.errors.clear()


def test_every_answer_carries_the_documented_rate_headers_and_429s_have_no_retry_after(bare_fake):
    limited = FakeSupabase(rate_limit=2, rate_window=30).start()
    try:
        with httpx.Client(base_url=limited.server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            first, second, third = (client.get(SECRETS_PATH) for _ in range(3))
            other = client.get(PROJECT_PATH)                                # another endpoint: its own window
        assert [r.status_code for r in (first, second, third, other)] == [200, 200, 429, 200]
        assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("2", "1")
        assert third.headers["X-RateLimit-Remaining"] == "0" and 1 <= int(third.headers["X-RateLimit-Reset"]) <= 30
        assert "Retry-After" not in third.headers
        assert other.headers["X-RateLimit-Remaining"] == "1"
    finally:
        limited.stop()
    assert limited.errors == []
