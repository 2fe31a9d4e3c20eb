"""The referee of the Google fakes: the discovery documents say no, the fake answers 400 and the
test that sent it would fail at teardown (each case here empties `violations` once it has looked)."""

from __future__ import annotations

import httpx
import pytest

from tests.providers.cloudsql.discovery import api, output_only
from tests.providers.cloudsql.fake_google import INSTANCE, PROJECT, REGION, SERVICE, TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVICE_PATH = f"/v2/projects/{PROJECT}/locations/{REGION}/services/{SERVICE}"


def send(server, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, server.url + path, headers=AUTH, timeout=5, **kw)


@pytest.mark.parametrize("method, path, kw, needle", [
    ("GET", f"/v1/projects/{PROJECT}/instances/{INSTANCE}/nothing", {}, "no method GET"),
    ("GET", f"/v1/projects/{PROJECT}/instances/{INSTANCE}", {"params": {"view": "FULL"}},
     "undocumented query parameter 'view'"),
    ("DELETE", f"/v1/projects/{PROJECT}/instances/{INSTANCE}/users", {"json": {"name": "x"}}, "takes no request body"),
    ("GET", f"/v1/projects/{PROJECT}/instances/{INSTANCE}", {"params": {"prettyPrint": "yes"}}, "expected true/false"),
], ids=["unknown-path", "unknown-param", "body-where-none", "param-type"])
def test_sqladmin_requests_the_document_rules_out(bare_fake, method, path, kw, needle):
    response = send(bare_fake.sqladmin, method, path, **kw)
    assert response.status_code == 400 and response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert any(needle in v for v in bare_fake.violations), bare_fake.violations
    bare_fake.violations.clear()


@pytest.mark.parametrize("body, needle", [
    ({"template": {"containers": [{"image": "x"}]}, "uid": "abc"}, "GoogleCloudRunV2Service.uid: output only"),
    ({"template": {"containers": [{"image": "x"}]}, "reconciling": False}, "reconciling: output only"),
    ({"template": {"containers": [{"image": 5}]}}, "image: expected a string"),
    ({"template": {"containers": [{"image": "x", "env": {"A": "1"}}]}}, "env: expected an array"),
    ({"template": {"containers": [{"image": "x"}], "colour": "blue"}}, "colour: no such field"),
    ({"template": {"containers": [{"image": "x"}], "maxInstanceRequestConcurrency": "80"}}, "expected an integer"),
], ids=["output-only", "output-only-bool", "type", "array", "unknown-field", "int32"])
def test_run_patch_bodies_the_document_rules_out(bare_fake, body, needle):
    response = send(bare_fake.run, "PATCH", SERVICE_PATH, params={"updateMask": "template"}, json=body)
    assert response.status_code == 400
    assert any(needle in v for v in bare_fake.violations), bare_fake.violations
    assert bare_fake.run_ops == {}   # refused: nothing rolled
    bare_fake.violations.clear()


def test_secret_manager_types_nested_fields(bare_fake):
    response = send(bare_fake.secretmanager, "POST", f"/v1/projects/{PROJECT}/secrets",
                    params={"secretId": "s"}, json={"replication": {"automatic": {}}, "createTime": "2024-01-01T00:00:00Z",
                                                    "labels": {"a": 1}})
    assert response.status_code == 400
    assert sorted(bare_fake.violations) == [
        "request: secretmanager.projects.secrets.create: Secret.createTime: output only, must not be sent",
        "request: secretmanager.projects.secrets.create: Secret.labels['a']: expected a string (text), got 1"]
    bare_fake.violations.clear()


def test_the_fakes_answers_are_refereed_too(bare_fake):
    bare_fake.instances[(PROJECT, INSTANCE)]["settings"]["tier"] = 7              # the fake drifting from the schema
    bare_fake.instances[(PROJECT, INSTANCE)]["state"] = "HAPPY"
    send(bare_fake.sqladmin, "GET", f"/v1/projects/{PROJECT}/instances/{INSTANCE}")
    assert sorted(bare_fake.violations) == [
        "the fake's answer: DatabaseInstance.settings.tier: expected a string (text), got 7",
        "the fake's answer: DatabaseInstance.state: 'HAPPY' is not one of ['SQL_INSTANCE_STATE_UNSPECIFIED', "
        "'RUNNABLE', 'SUSPENDED', 'PENDING_DELETE', 'PENDING_CREATE', 'MAINTENANCE', 'FAILED', 'ONLINE_MAINTENANCE', "
        "'REPAIRING']"]
    bare_fake.violations.clear()


def test_output_only_is_read_from_the_document():
    run = api("run.v2").schemas["GoogleCloudRunV2Service"]["properties"]
    assert output_only(run["uid"]) and output_only(run["terminalCondition"])
    assert not output_only(run["etag"]) and not output_only(run["template"]) and not output_only(run["client"])
    secret = api("secretmanager.v1").schemas["Secret"]["properties"]
    assert output_only(secret["createTime"]) and output_only(secret["name"]) and not output_only(secret["replication"])
    ip = api("sqladmin.v1").schemas["IpConfiguration"]["properties"]
    assert "TRUSTED_CLIENT_CERTIFICATE_REQUIRED` and `require_ssl=true" in ip["sslMode"]["description"]
