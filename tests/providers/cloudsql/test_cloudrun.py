"""The cloudrun app platform against the Secret Manager and Cloud Run fakes."""

from __future__ import annotations

import base64
import copy
import re

import psycopg
import pytest

from providers.cloudrun import CloudRunAppConfig, crc32c
from runbook.errors import ConfigError, ProviderError
from runbook.secret import Secret
from tests.providers.cloudsql.conftest import FLAG, URL_VAR, app_config
from tests.providers.cloudsql.fake_google import PROJECT, PROJECT_NUMBER, REGION, SERVICE, TOKEN
from tests.logins import create_login

SECRET = "raptor-database-url"
SERVICE_PATH = f"/v2/projects/{PROJECT}/locations/{REGION}/services/{SERVICE}"
SECRETS_PATH = f"/v1/projects/{PROJECT}/secrets"
SECRET_PATH = f"{SECRETS_PATH}/{SECRET}"
OPS = f"/v2/projects/{PROJECT}/locations/{REGION}/operations/.*"
URL = "postgresql://raptor_app:pw-1234567@10.0.0.3:5432/raptor?sslmode=require"
ACCOUNT = f"raxx-api@{PROJECT}.iam.gserviceaccount.com"      # the fake service's runtime account


def app_env(fake) -> list[dict]:
    containers = fake.service()["template"]["containers"]
    return next(c for c in containers if c["name"] == "app")["env"]


def url_ref(version: str = "1") -> dict:
    return {"name": URL_VAR, "valueSource": {"secretKeyRef": {"secret": SECRET, "version": version}}}


def test_set_config_writes_a_secret_version_and_rolls_a_revision(bare_fake, open_app, sleeps):
    app = open_app(bare_fake)
    app.set_config({URL_VAR: Secret(URL), FLAG: "1"})

    sm = bare_fake.secretmanager.requests
    assert [(r.method, r.path) for r in sm] == [
        ("GET", SECRET_PATH),                                   # 404: no secret yet
        ("POST", SECRETS_PATH),
        ("GET", f"{SECRET_PATH}:getIamPolicy"),                 # may the runtime account read it?
        ("POST", f"{SECRET_PATH}:setIamPolicy"),                # no: granted on the secret
        ("GET", f"{SECRET_PATH}/versions/latest:access"),      # 404: no version yet
        ("POST", f"{SECRET_PATH}:addVersion"),                 # version 1: no older one to disable after
    ]
    assert sm[1].query == {"secretId": SECRET}
    assert sm[1].body == {"replication": {"automatic": {}}, "labels": {"managed-by": "pg-runbook"}}
    assert sm[3].body["policy"]["bindings"] == [{"role": "roles/secretmanager.secretAccessor",
                                                "members": [f"serviceAccount:{ACCOUNT}"]}]
    assert sm[5].body == {"payload": {"data": base64.b64encode(URL.encode()).decode(),
                                      "dataCrc32c": str(crc32c(URL.encode()))}}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in sm)

    run = bare_fake.run.requests
    # the service is read once (checked, then edited and sent back); the operation is polled until done
    assert [(r.method, r.path) for r in run[:2]] == [("GET", SERVICE_PATH), ("PATCH", SERVICE_PATH)]
    assert [r.method for r in run[2:]] == ["GET", "GET"] and all(re.fullmatch(OPS, r.path) for r in run[2:])
    patch = run[1].body
    # only the template (and the etag read, so a concurrent deploy is not overwritten): nothing
    # output-only, no client/clientVersion to attribute the revision to another tool
    assert set(patch) == {"template", "etag"} and patch["etag"] == '"etag-1"'
    assert run[1].query == {"updateMask": "template", "forceNewRevision": "true"}
    app_container = next(c for c in patch["template"]["containers"] if c["name"] == "app")
    # the URL is pinned to the version just written: env vars resolve when an instance starts
    assert app_container["env"] == [{"name": "LOG_LEVEL", "value": "info"}, url_ref("1"), {"name": FLAG, "value": "1"}]
    assert "env" not in next(c for c in patch["template"]["containers"] if c["name"] == "otel")
    assert sleeps == [0.01, 0.01]                               # one sleep before each poll

    # the new revision is ready and resolves the URL from the secret, as the app will see it
    assert bare_fake.latest_env() == {"LOG_LEVEL": "info", URL_VAR: URL, FLAG: "1"}
    assert bare_fake.service()["latestReadyRevision"].endswith(bare_fake.revisions[-1]["name"])
    bare_fake.run.clear()
    bare_fake.secretmanager.clear()
    assert app.get_config([URL_VAR, FLAG, "LOG_LEVEL", "MISSING"]) == {
        URL_VAR: URL, FLAG: "1", "LOG_LEVEL": "info", "MISSING": None}
    # the rollout is over, so the template is what serves: one read, then the pinned version
    assert [(r.method, r.path) for r in bare_fake.run.requests] == [("GET", SERVICE_PATH)]
    assert [(r.method, r.path) for r in bare_fake.secretmanager.requests] == [("GET", f"{SECRET_PATH}/versions/1:access")]


def test_an_unchanged_url_adds_no_version_but_still_rolls(bare_fake, open_app):
    app = open_app(bare_fake)
    app.set_config({URL_VAR: URL})
    bare_fake.secretmanager.clear()
    app.set_config({URL_VAR: URL})
    assert ("POST", f"{SECRET_PATH}:addVersion") not in [(r.method, r.path) for r in bare_fake.secretmanager.requests]
    assert bare_fake.store.states(SECRET) == ["ENABLED"]
    assert len(bare_fake.revisions) == 2    # forceNewRevision: the same template rolls again


def test_a_new_url_is_a_new_version_and_reaches_the_next_revision(bare_fake, open_app):
    app = open_app(bare_fake)
    app.set_config({URL_VAR: URL, FLAG: "1"})
    new_url = URL.replace("pw-1234567", "pw-7654321")
    app.set_config({URL_VAR: Secret(new_url)})
    # the revision reading version 2 serves all the traffic: version 1 (the old password) is disabled
    assert bare_fake.store.states(SECRET) == ["DISABLED", "ENABLED"]
    assert bare_fake.latest_env()[URL_VAR] == new_url
    assert [e for e in app_env(bare_fake) if e["name"] == URL_VAR] == [url_ref("2")]


def test_an_existing_secret_is_kept(bare_fake, open_app):
    bare_fake.store.put(SECRET, labels={"owner": "terraform"}, replication={"userManaged": {"replicas": [{"location": "europe-west1"}]}})
    open_app(bare_fake).set_config({URL_VAR: URL})
    assert bare_fake.secretmanager.calls("POST", SECRETS_PATH) == []
    entry = bare_fake.secrets[(PROJECT, SECRET)]
    assert entry["labels"] == {"owner": "terraform"} and bare_fake.secret_value(SECRET) == URL


@pytest.mark.parametrize("version", ["1", "latest"])
def test_a_url_reference_is_moved_to_the_version_written(bare_fake, open_app, version):
    bare_fake.store.put(SECRET, "postgresql://old", accessors=(ACCOUNT,))
    app_env(bare_fake).append(url_ref(version))
    app = open_app(bare_fake)
    assert app.get_config([URL_VAR]) == {URL_VAR: "postgresql://old"}
    app.set_config({URL_VAR: URL})
    assert app_env(bare_fake) == [{"name": "LOG_LEVEL", "value": "info"}, url_ref("2")]
    assert bare_fake.latest_env()[URL_VAR] == URL


def test_the_flag_alone_touches_no_secret(bare_fake, open_app):
    app = open_app(bare_fake)
    app.set_config({FLAG: "0"})
    assert bare_fake.secretmanager.requests == []
    assert app.get_config([FLAG]) == {FLAG: "0"}
    assert app.config_change_restarts is True


def test_restart_rolls_a_revision_with_nothing_else_changed(bare_fake, open_app):
    before = copy.deepcopy(bare_fake.service()["template"])
    open_app(bare_fake).restart()
    assert bare_fake.service()["template"] == before
    assert bare_fake.run.calls("PATCH")[0].query == {"updateMask": "template", "forceNewRevision": "true"}
    assert bare_fake.service()["generation"] == "2"
    assert len(bare_fake.revisions) == 1


def test_a_fixed_revision_name_is_cleared(bare_fake, open_app):
    bare_fake.service()["template"]["revision"] = f"{SERVICE}-00001-abc"
    open_app(bare_fake).restart()   # the fake refuses a revision name that already exists
    assert "revision" not in bare_fake.service()["template"]


def test_unset_removes_the_env_then_the_secret(bare_fake, open_app):
    app = open_app(bare_fake)
    app.set_config({URL_VAR: URL, FLAG: "1"})
    bare_fake.secretmanager.clear()
    app.unset_config([URL_VAR, FLAG])
    assert app_env(bare_fake) == [{"name": "LOG_LEVEL", "value": "info"}]
    assert [(r.method, r.path) for r in bare_fake.secretmanager.requests] == [("DELETE", SECRET_PATH)]
    assert bare_fake.latest_env() == {"LOG_LEVEL": "info"}
    assert app.get_config([URL_VAR, FLAG]) == {URL_VAR: None, FLAG: None}
    app.unset_config([URL_VAR])   # idempotent: the secret is already gone (404)


def test_unset_refuses_a_secret_mounted_as_a_volume(bare_fake, open_app):
    bare_fake.service()["template"]["volumes"] = [{"name": "db", "secret": {"secret": SECRET}}]
    with pytest.raises(ConfigError, match="mounts secret raptor-database-url as volume db"):
        open_app(bare_fake).unset_config([URL_VAR])
    assert bare_fake.run.calls("PATCH") == [] and bare_fake.secretmanager.requests == []


# -- what serves, not what the template says ------------------------------------------------

FIRST = f"{SERVICE}-00001-abc"      # the revision the fake's service starts with


def reads(fake) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(Cloud Run, Secret Manager) requests since the last clear, then clear."""
    out = ([(r.method, r.path) for r in fake.run.requests], [(r.method, r.path) for r in fake.secretmanager.requests])
    fake.run.clear()
    fake.secretmanager.clear()
    return out


def test_the_url_counts_only_once_the_service_reads_the_secret(bare_fake, open_app):
    """A run wrote the secret, then its PATCH failed: the secret alone does not give the app its URL,
    and the rerun converges without a second version or a second env entry."""
    bare_fake.run.fail("PATCH", SERVICE_PATH, status=403,
                       body={"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "run.services.update denied"}})
    app = open_app(bare_fake)
    with pytest.raises(ProviderError, match="PATCH .* failed: HTTP 403 PERMISSION_DENIED"):
        app.set_config({URL_VAR: URL})
    assert bare_fake.secret_value(SECRET) == URL and URL_VAR not in str(app_env(bare_fake))
    reads(bare_fake)

    assert app.get_config([URL_VAR]) == {URL_VAR: None}
    assert reads(bare_fake) == ([("GET", SERVICE_PATH)], [])    # no reference: the secret is not even read

    app.set_config({URL_VAR: URL})
    run, sm = reads(bare_fake)
    assert ("POST", f"{SECRET_PATH}:addVersion") not in sm                # the value is there: no new version
    assert [m for m, _ in run] == ["GET", "PATCH", "GET", "GET"]
    app.set_config({URL_VAR: URL})                                       # and once more
    assert bare_fake.store.states(SECRET) == ["ENABLED"]
    assert [e for e in app_env(bare_fake) if e["name"] == URL_VAR] == [url_ref("1")]
    reads(bare_fake)
    assert app.get_config([URL_VAR]) == {URL_VAR: URL}
    assert reads(bare_fake) == ([("GET", SERVICE_PATH)], [("GET", f"{SECRET_PATH}/versions/1:access")])
    assert bare_fake.latest_env()[URL_VAR] == URL


@pytest.mark.parametrize("ref, destroyed, counts", [
    ({"secret": SECRET, "version": "1"}, False, True),
    ({"secret": f"projects/{PROJECT}/secrets/{SECRET}", "version": "1"}, False, True),
    ({"secret": f"projects/{PROJECT_NUMBER}/secrets/{SECRET}", "version": "1"}, False, True),
    ({"secret": f"projects/987654321098/secrets/{SECRET}", "version": "1"}, False, False),   # another project's
    ({"secret": SECRET, "version": "current"}, False, True),     # a version alias
    ({"secret": SECRET, "version": "previous"}, False, False),   # an alias that names nothing
    ({"secret": SECRET}, False, True),                           # no version: latest
    ({"secret": "another-secret", "version": "1"}, False, False),
    ({"secret": SECRET, "version": "2"}, False, False),          # no such version
    ({"secret": SECRET, "version": "1"}, True, False),           # destroyed: FAILED_PRECONDITION
    ({"secret": SECRET, "version": "../../x"}, False, False),    # never put in a path
], ids=["short-name", "resource-name", "project-number", "other-project", "alias", "unknown-alias", "no-version",
        "other-secret", "missing-version", "destroyed-version", "odd-version"])
def test_which_references_count_as_the_url(bare_fake, open_app, ref, destroyed, counts):
    entry = bare_fake.store.put(SECRET, URL, aliases={"current": "1"})
    if destroyed:
        entry["versions"][0]["state"] = "DESTROYED"
    app_env(bare_fake).append({"name": URL_VAR, "valueSource": {"secretKeyRef": ref}})
    assert open_app(bare_fake).get_config([URL_VAR]) == {URL_VAR: URL if counts else None}


def test_a_change_that_has_not_rolled_out_is_not_in_place(bare_fake, open_app):
    """The PATCH landed but its rollout never finished for this run (the answer was lost, or the run
    gave up waiting): the template has the flag, the revision that serves does not."""
    app = open_app(bare_fake)
    app.set_config({URL_VAR: URL})
    serving = bare_fake.service()["latestReadyRevision"].rsplit("/", 1)[-1]
    bare_fake.op_polls = 10 ** 6
    with pytest.raises(ProviderError, match="still reconciling after"):
        open_app(bare_fake, operation_timeout="20ms").set_config({FLAG: "1"})
    service = bare_fake.service()
    assert service["reconciling"] is True and service["terminalCondition"]["state"] == "CONDITION_RECONCILING"
    assert service["latestCreatedRevision"] != service["latestReadyRevision"]
    assert {"name": FLAG, "value": "1"} in app_env(bare_fake)
    reads(bare_fake)

    # the URL is in the serving revision, so it still counts (no needless new password); the flag is not
    assert app.get_config([FLAG, URL_VAR]) == {FLAG: None, URL_VAR: URL}
    assert reads(bare_fake) == ([("GET", SERVICE_PATH), ("GET", f"{SERVICE_PATH}/revisions/{serving}")],
                                [("GET", f"{SECRET_PATH}/versions/1:access")])

    # the rerun rolls a new revision and waits until it serves
    bare_fake.op_polls = 2
    app.set_config({FLAG: "1"})
    assert bare_fake.latest_env() == {"LOG_LEVEL": "info", URL_VAR: URL, FLAG: "1"}
    reads(bare_fake)
    assert app.get_config([FLAG]) == {FLAG: "1"}
    assert reads(bare_fake) == ([("GET", SERVICE_PATH)], [])


FAILED = ("Revision 'raxx-api-00002-x1z' is not ready and cannot serve traffic. The user-provided container "
          "failed to start and listen on port 8080.")


def test_a_revision_that_failed_leaves_the_change_out_and_the_rerun_says_why(bare_fake, open_app):
    app = open_app(bare_fake)
    bare_fake.fail_next_revision = FAILED
    with pytest.raises(ProviderError):
        app.set_config({FLAG: "1"})
    service = bare_fake.service()
    assert service["reconciling"] is False and service["terminalCondition"]["state"] == "CONDITION_FAILED"
    assert service["terminalCondition"]["message"] == FAILED
    assert service["latestReadyRevision"].endswith(FIRST) and not service["latestCreatedRevision"].endswith(FIRST)
    assert bare_fake.revision(service["latestCreatedRevision"].rsplit("/", 1)[-1])["state"] == "failed"
    reads(bare_fake)

    assert app.get_config([FLAG]) == {FLAG: None}         # the template says 1; the revision that serves does not
    assert reads(bare_fake) == ([("GET", SERVICE_PATH), ("GET", f"{SERVICE_PATH}/revisions/{FIRST}")], [])

    bare_fake.fail_next_revision = FAILED                 # the cause is still there: the rerun says so, in one line
    with pytest.raises(ProviderError) as exc:
        app.set_config({FLAG: "1"})
    assert str(exc.value) == f"Cloud Run: setting {FLAG} on {SERVICE} failed: {FAILED}"

    app.set_config({FLAG: "1"})                            # fixed: the rerun converges
    assert app.get_config([FLAG]) == {FLAG: "1"} and bare_fake.latest_env()[FLAG] == "1"


def test_a_rollout_that_serves_no_traffic_is_reported(bare_fake, open_app):
    pinned = {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": FIRST, "percent": 100}
    bare_fake.service()["traffic"] = [pinned]
    bare_fake.service()["trafficStatuses"] = [pinned]
    app = open_app(bare_fake)
    with pytest.raises(ProviderError) as exc:
        app.set_config({FLAG: "1"})
    assert re.fullmatch(
        rf"Cloud Run: setting {FLAG} on {SERVICE}: revision {SERVICE}-00002-[0-9a-f]{{3}} is ready but {FIRST} still "
        rf"take traffic \(pinned in the service's traffic\), so the change does not serve; run `gcloud run services "
        rf"update-traffic {SERVICE} --to-latest --region={REGION}` and rerun", str(exc.value)), str(exc.value)
    reads(bare_fake)
    assert app.get_config([FLAG, "LOG_LEVEL"]) == {FLAG: None, "LOG_LEVEL": "info"}
    assert reads(bare_fake) == ([("GET", SERVICE_PATH), ("GET", f"{SERVICE_PATH}/revisions/{FIRST}")], [])


def test_split_traffic_counts_a_value_only_where_every_revision_agrees(bare_fake, open_app):
    app = open_app(bare_fake)
    app.set_config({FLAG: "1"})
    newest = bare_fake.revisions[-1]["name"]
    bare_fake.service()["trafficStatuses"] = [
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "revision": newest, "percent": 90},
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": FIRST, "percent": 10},
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "raxx-api-00000-old", "percent": 0}]
    reads(bare_fake)
    assert app.get_config([FLAG, "LOG_LEVEL"]) == {FLAG: None, "LOG_LEVEL": "info"}
    assert reads(bare_fake) == ([("GET", SERVICE_PATH), ("GET", f"{SERVICE_PATH}/revisions/{FIRST}"),
                                 ("GET", f"{SERVICE_PATH}/revisions/{newest}")], [])


def test_a_failed_revision_is_surfaced(bare_fake, open_app):
    bare_fake.fail_next_revision = ("Revision 'raxx-api-00002-x1z' is not ready and cannot serve traffic. "
                                    "The user-provided container failed to start and listen on port 8080.")
    with pytest.raises(ProviderError) as exc:
        open_app(bare_fake).set_config({FLAG: "1"})
    assert str(exc.value) == (f"Cloud Run: setting {FLAG} on {SERVICE} failed: Revision 'raxx-api-00002-x1z' is not "
                              "ready and cannot serve traffic. The user-provided container failed to start and "
                              "listen on port 8080.")


def test_a_revision_that_cannot_read_the_secret_is_surfaced(bare_fake, open_app):
    app_env(bare_fake).append({"name": "OTHER", "valueSource": {"secretKeyRef": {"secret": "gone", "version": "latest"}}})
    with pytest.raises(ProviderError, match=f"Secret projects/{PROJECT_NUMBER}/secrets/gone/versions/latest was not found"):
        open_app(bare_fake).restart()


def test_a_concurrent_deploy_is_reread_not_overwritten(bare_fake, open_app):
    bare_fake.run.fail("PATCH", SERVICE_PATH, status=409, times=1,
                       body={"error": {"code": 409, "status": "ABORTED", "message": "etag mismatch"}})
    open_app(bare_fake).set_config({FLAG: "1"})
    assert len(bare_fake.run.calls("PATCH", SERVICE_PATH)) == 2
    assert len(bare_fake.run.calls("GET", SERVICE_PATH)) == 2   # the first read, then a fresh one after the 409
    assert bare_fake.latest_env()[FLAG] == "1"


def test_an_operation_that_never_finishes_times_out(bare_fake, open_app, sleeps):
    bare_fake.op_polls = 10 ** 6
    app = open_app(bare_fake, operation_timeout="10m", poll_interval="5m")
    with pytest.raises(ProviderError, match="still reconciling after .*gcloud run services describe raxx-api"):
        app.restart()
    assert sleeps == [300.0, 300.0]   # the timeout's worth of polls, however little time really passed


@pytest.mark.parametrize("fault", [
    {"kind": "status", "status": 429, "headers": {"Retry-After": "1"}},
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 503},
    {"kind": "slow"},
    {"kind": "reset"},
], ids=["429", "500", "503", "timeout", "reset"])
def test_transient_faults_are_retried(bare_fake, open_app, fault):
    bare_fake.secretmanager.fail("POST", f"{SECRET_PATH}:addVersion", **fault)
    bare_fake.run.fail("PATCH", SERVICE_PATH, **fault)
    bare_fake.run.fail("GET", OPS, **fault)
    open_app(bare_fake).set_config({URL_VAR: URL, FLAG: "1"})
    assert bare_fake.latest_env()[URL_VAR] == URL
    # a timed-out or reset write may have landed; the one that counts is the last
    assert len(bare_fake.secretmanager.calls("POST", f"{SECRET_PATH}:addVersion")) == 2
    assert len(bare_fake.run.calls("PATCH", SERVICE_PATH)) == 2


def test_a_secret_for_any_other_key_is_refused(bare_fake, open_app):
    with pytest.raises(ConfigError, match="only RAPTOR_DATABASE_URL is stored in Secret Manager"):
        open_app(bare_fake).set_config({"API_KEY": Secret("abc-123456")})
    assert bare_fake.run.requests == [] and bare_fake.secretmanager.requests == []


def test_a_wrong_container_is_refused_before_anything_is_written(bare_fake, open_app):
    with pytest.raises(ConfigError, match="no container 'web'.*it has: otel, app"):
        open_app(bare_fake, container="web").set_config({URL_VAR: URL})
    assert bare_fake.secretmanager.requests == [] and bare_fake.run.calls("PATCH") == []


def test_a_named_container_gets_the_env(bare_fake, open_app):
    open_app(bare_fake, container="otel").set_config({FLAG: "1"})
    otel = next(c for c in bare_fake.service()["template"]["containers"] if c["name"] == "otel")
    assert otel["env"] == [{"name": FLAG, "value": "1"}]


def test_project_defaults_from_the_cloudsql_database():
    assert app_config().project == PROJECT
    with pytest.raises(ValueError, match="project"):
        CloudRunAppConfig.model_validate({"region": REGION, "service": SERVICE, "url_secret": SECRET},
                                         context={"env": "staging", "database": {"provider": "supabase"}})


def test_describe_says_where_config_lives(bare_fake, open_app):
    out = open_app(bare_fake).describe()
    assert out["cloudrun"] == SERVICE_PATH.removeprefix("/v2/")
    assert out["url"] == f"secret projects/{PROJECT}/secrets/{SECRET} (the version the service pins)"
    assert out["flag"] == f"env {FLAG}"
    assert bare_fake.run.requests == []


def test_the_app_connects_with_the_url_it_was_given(pg, fake, open_app, canary_password, caplog, capsys):
    caplog.set_level("DEBUG")
    role = pg.role("raptor_app")
    create_login(pg, role, canary_password)
    url = Secret(f"postgresql://{role}:{canary_password}@127.0.0.1:{pg.port}/{pg.dbname}?sslmode=disable")
    open_app(fake).set_config({URL_VAR: url, FLAG: "1"})
    with psycopg.connect(fake.latest_env()[URL_VAR]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    out = capsys.readouterr()
    assert canary_password not in caplog.text + out.out + out.err


# -- access for the runtime, replication, references, integrity, rotation ------------------------

ACCESSOR = "roles/secretmanager.secretAccessor"


def test_the_runtime_account_is_granted_access_on_the_secret(bare_fake, open_app):
    open_app(bare_fake).set_config({URL_VAR: URL})
    assert bare_fake.store.accessors(SECRET) == {ACCOUNT}
    # the revision could read it: it became ready with the URL
    assert bare_fake.latest_env()[URL_VAR] == URL
    bare_fake.secretmanager.clear()
    open_app(bare_fake).set_config({URL_VAR: URL})         # granted already: the policy is only read
    assert bare_fake.secretmanager.calls("POST", f"{SECRET_PATH}:setIamPolicy") == []


def test_an_existing_policy_is_kept_and_its_etag_sent(bare_fake, open_app):
    entry = bare_fake.store.put(SECRET)
    entry["policy"]["bindings"] = [{"role": "roles/secretmanager.viewer", "members": ["group:ops@example.com"]},
                                   {"role": ACCESSOR, "members": ["serviceAccount:ci@example.iam.gserviceaccount.com"]}]
    etag = entry["policy"]["etag"]
    open_app(bare_fake).set_config({URL_VAR: URL})
    (grant,) = bare_fake.secretmanager.calls("POST", f"{SECRET_PATH}:setIamPolicy")
    assert grant.body["policy"]["etag"] == etag
    assert grant.body["policy"]["bindings"] == [
        {"role": "roles/secretmanager.viewer", "members": ["group:ops@example.com"]},
        {"role": ACCESSOR, "members": ["serviceAccount:ci@example.iam.gserviceaccount.com", f"serviceAccount:{ACCOUNT}"]}]


def test_the_default_compute_account_is_the_runtime_when_none_is_named(bare_fake, open_app):
    del bare_fake.service()["template"]["serviceAccount"]
    open_app(bare_fake).set_config({URL_VAR: URL})
    assert bare_fake.store.accessors(SECRET) == {f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"}
    assert bare_fake.latest_env()[URL_VAR] == URL


def test_a_runtime_account_the_tool_may_not_grant_is_refused_with_the_command(bare_fake, open_app):
    from runbook.errors import Refused

    bare_fake.store.deny_set_iam = True
    with pytest.raises(Refused) as exc:
        open_app(bare_fake).set_config({URL_VAR: URL, FLAG: "1"})
    assert exc.value.exit_code == 2
    assert (f"run `gcloud secrets add-iam-policy-binding {SECRET} --project={PROJECT} "
            f"--member=serviceAccount:{ACCOUNT} --role={ACCESSOR}` and rerun") in exc.value.message
    assert bare_fake.secretmanager.calls("POST", f"{SECRET_PATH}:addVersion") == []   # no version written
    assert bare_fake.run.calls("PATCH") == []


def test_grant_access_false_leaves_the_policy_to_a_project_wide_grant(bare_fake, open_app):
    bare_fake.store.project_accessors.add(ACCOUNT)
    open_app(bare_fake, grant_access=False).set_config({URL_VAR: URL})
    assert not [r for r in bare_fake.secretmanager.requests if "IamPolicy" in r.path]
    assert bare_fake.latest_env()[URL_VAR] == URL


def test_without_access_the_rollout_says_why(bare_fake, open_app):
    with pytest.raises(ProviderError, match=f"Permission denied on secret: projects/{PROJECT_NUMBER}/secrets/{SECRET}"):
        open_app(bare_fake, grant_access=False).set_config({URL_VAR: URL})


def test_user_managed_replication_with_cmek(bare_fake, open_app):
    key = f"projects/{PROJECT}/locations/europe-west4/keyRings/ring/cryptoKeys/url"
    open_app(bare_fake, replication={"user_managed": ["europe-west1", {"location": "europe-west4", "kms_key": key}]}
             ).set_config({URL_VAR: URL})
    (create,) = bare_fake.secretmanager.calls("POST", SECRETS_PATH)
    assert create.body["replication"] == {"userManaged": {"replicas": [
        {"location": "europe-west1"}, {"location": "europe-west4", "customerManagedEncryption": {"kmsKeyName": key}}]}}


def test_automatic_replication_with_cmek(bare_fake, open_app):
    key = f"projects/{PROJECT}/locations/global/keyRings/ring/cryptoKeys/url"
    open_app(bare_fake, kms_key=key).set_config({URL_VAR: URL})
    (create,) = bare_fake.secretmanager.calls("POST", SECRETS_PATH)
    assert create.body["replication"] == {"automatic": {"customerManagedEncryption": {"kmsKeyName": key}}}


@pytest.mark.parametrize("block, needle", [
    ({"replication": {"user_managed": []}}, "at least 1"),
    ({"replication": {"user_managed": [{"location": "europe-west1",
                                        "kms_key": "projects/p/locations/us-east1/keyRings/r/cryptoKeys/k"}]}},
     "needs the key in the replica's own location"),
    ({"replication": {"user_managed": ["europe-west1"]}, "kms_key": "projects/p/locations/global/keyRings/r/cryptoKeys/k"},
     "give each replica its own kms_key"),
    ({"kms_key": "my-key"}, "is not a Cloud KMS key name"),
    ({"replication": "regional"}, "replication"),
])
def test_replication_mistakes_are_config_errors(block, needle):
    with pytest.raises(ValueError, match=needle):
        app_config(**block)


def test_an_existing_secret_with_other_replication_is_refused_when_replication_is_asked(bare_fake, open_app):
    from runbook.errors import Refused

    bare_fake.store.put(SECRET)   # automatic
    with pytest.raises(Refused, match="replication cannot change"):
        open_app(bare_fake, replication={"user_managed": ["europe-west1"]}).set_config({URL_VAR: URL})
    assert bare_fake.secretmanager.calls("POST", f"{SECRET_PATH}:addVersion") == []


def test_a_version_alias_stays_an_alias_and_moves_to_the_version_written(bare_fake, open_app):
    bare_fake.store.put(SECRET, "postgresql://old", aliases={"current": "1"}, accessors=(ACCOUNT,))
    app_env(bare_fake).append(url_ref("current"))
    app = open_app(bare_fake)
    assert app.get_config([URL_VAR]) == {URL_VAR: "postgresql://old"}     # read, not "not set"
    app.set_config({URL_VAR: URL})
    assert bare_fake.secrets[(PROJECT, SECRET)]["aliases"] == {"current": "2"}
    (patch,) = bare_fake.secretmanager.calls("PATCH", SECRET_PATH)
    assert patch.query == {"updateMask": "versionAliases"} and patch.body["versionAliases"] == {"current": "2"}
    assert [e for e in app_env(bare_fake) if e["name"] == URL_VAR] == [url_ref("current")]
    assert bare_fake.latest_env()[URL_VAR] == URL
    assert bare_fake.store.states(SECRET) == ["DISABLED", "ENABLED"]
    assert app.get_config([URL_VAR]) == {URL_VAR: URL}


def test_a_damaged_payload_is_caught_by_its_crc32c(bare_fake, open_app):
    bare_fake.store.put(SECRET, URL)
    app_env(bare_fake).append(url_ref("1"))
    bare_fake.store.corrupt_next_access = True
    with pytest.raises(ProviderError, match="arrived damaged \\(its CRC32C does not match dataCrc32c\\)"):
        open_app(bare_fake).get_config([URL_VAR])


def test_older_versions_are_disabled_only_once_the_new_revision_serves(bare_fake, open_app):
    app = open_app(bare_fake)
    for n in range(1, 5):
        app.set_config({URL_VAR: URL.replace("pw-1234567", f"pw-{n}234567")})
    assert bare_fake.store.states(SECRET) == ["DISABLED", "DISABLED", "DISABLED", "ENABLED"]
    bare_fake.store.secrets[(PROJECT, SECRET)]["versions"][0]["state"] = "ENABLED"   # re-enabled by hand
    # the next rotation's revision fails: nothing is disabled, the serving revision still reads version 4
    bare_fake.fail_next_revision = "Revision is not ready and cannot serve traffic."
    with pytest.raises(ProviderError):
        app.set_config({URL_VAR: URL})
    assert bare_fake.store.states(SECRET) == ["ENABLED", "DISABLED", "DISABLED", "ENABLED", "ENABLED"]
    assert app.get_config([URL_VAR]) == {URL_VAR: URL.replace("pw-1234567", "pw-4234567")}
    # the rerun serves version 5; every older enabled one (over several pages of versions.list) goes
    app.set_config({URL_VAR: URL})
    assert bare_fake.store.states(SECRET) == ["DISABLED"] * 4 + ["ENABLED"]
    assert len({r.query.get("pageToken") for r in bare_fake.secretmanager.calls("GET", f"{SECRET_PATH}/versions")}) > 1


def test_disabling_can_be_turned_off(bare_fake, open_app):
    app = open_app(bare_fake, disable_old_versions=False)
    app.set_config({URL_VAR: URL})
    app.set_config({URL_VAR: URL.replace("pw-1234567", "pw-7654321")})
    assert bare_fake.store.states(SECRET) == ["ENABLED", "ENABLED"]


# -- the Cloud SQL socket ----------------------------------------------------------------------

CONNECTION = f"{PROJECT}:{REGION}:raxx-pg"
SOCKET_URL = f"postgresql://raptor_app:pw-1234567@:5432/raptor?sslmode=disable&host=/cloudsql/{CONNECTION}"


def mount_cloudsql(fake, *, path: str | None = "/cloudsql", instance: str = CONNECTION) -> None:
    template = fake.service()["template"]
    template["volumes"] = [{"name": "cloudsql", "cloudSqlInstance": {"instances": [instance]}}]
    app = next(c for c in template["containers"] if c["name"] == "app")
    app["volumeMounts"] = [{"name": "cloudsql", **({"mountPath": path} if path is not None else {})}]


@pytest.mark.parametrize("path", ["/cloudsql", None], ids=["at-cloudsql", "empty-path"])
def test_a_socket_url_needs_the_cloud_sql_volume_mounted(bare_fake, open_app, path):
    mount_cloudsql(bare_fake, path=path)
    app = open_app(bare_fake)
    app.set_config({URL_VAR: Secret(SOCKET_URL)})
    assert app.get_config([URL_VAR]) == {URL_VAR: SOCKET_URL}


@pytest.mark.parametrize("mount", [
    None, {"path": "/sockets"}, {"instance": f"{PROJECT}:{REGION}:another-pg"}], ids=["none", "elsewhere", "other-instance"])
def test_a_socket_url_without_the_mount_is_refused_before_any_write(bare_fake, open_app, mount):
    if mount is not None:
        mount_cloudsql(bare_fake, **mount)
    with pytest.raises(ConfigError) as exc:
        open_app(bare_fake).set_config({URL_VAR: Secret(SOCKET_URL), FLAG: "1"})
    assert exc.value.message == (
        f"Cloud Run service {SERVICE} does not mount Cloud SQL instance {CONNECTION} at /cloudsql in its container, "
        f"so the app cannot reach the socket its URL names; add it with `gcloud run services update {SERVICE} "
        f"--region={REGION} --add-cloudsql-instances={CONNECTION}` and rerun")
    assert bare_fake.secretmanager.requests == [] and bare_fake.run.calls("PATCH") == []


def test_a_serving_revision_without_the_mount_does_not_count(bare_fake, open_app):
    mount_cloudsql(bare_fake)
    app = open_app(bare_fake)
    app.set_config({URL_VAR: Secret(SOCKET_URL)})
    assert app.url_problem(SOCKET_URL) is None
    template = bare_fake.service()["template"]
    template.pop("volumes")            # a deploy by someone else dropped the Cloud SQL connection
    assert app.get_config([URL_VAR]) == {URL_VAR: SOCKET_URL}   # still there (retire can remove it)
    assert "does not mount Cloud SQL instance" in app.url_problem(SOCKET_URL)
    assert app.url_problem(URL) is None                         # an address needs no mount


def test_rollout_states_reach_the_progress_sink(bare_fake, tmp_path, sleeps):
    import dataclasses

    from providers.cloudrun import CloudRunApp
    from tests.providers.cloudsql.conftest import context
    from tests.providers.conftest import quick_budget

    events = []
    ctx = dataclasses.replace(context(bare_fake, tmp_path), progress=events.append)
    app = CloudRunApp(app_config(), ctx, sleep=sleeps, budget=quick_budget())
    try:
        app.set_config({FLAG: "1"})
    finally:
        app.close()
    what = f"cloud run: setting {FLAG} on {SERVICE}"
    assert [(e.what, e.state, e.done) for e in events] == [(what, "rolling out", False), (what, "reconciling", False),
                                                           (what, "done", True)]
