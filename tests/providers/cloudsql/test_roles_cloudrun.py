"""Several roles on Cloud SQL + Cloud Run (issue 18 item 5) against the discovery-document-
validated fakes: each role's URL in its own Secret Manager secret (`app.url_secrets`), each an env
var of the serving revision pinned to the version written, each role verified with exactly what
the serving revision's env hands the app. An alternating rotate of the app role adds a version to
its secret only."""

from __future__ import annotations

import psycopg
import pytest

from runbook import commands, project as projects
from runbook.errors import ConfigError
from tests.pg.test_alternating import _logins_dropped_first  # noqa: F401  (an autouse fixture)
from tests.providers.cloudsql.conftest import PASSWORD_ENV
from tests.providers.cloudsql.fake_google import INSTANCE, PROJECT, REGION, SERVICE
from tests.providers.cloudsql.test_engine_e2e import world  # noqa: F401  (a fixture)
from tests.providers.conftest import as_login
from tests.providers.three_roles import (
    APP_URL, CI_URL, RO_URL, check_app, check_catalog_only, check_readonly, diagnosed_clean_roles, roles_block,
    write_roles_project,
)

FLAG = "RAPTOR_NEW_ROLE"
SECRETS = {APP_URL: "raptor-app-url", RO_URL: "raptor-readonly-url", CI_URL: "raptor-ci-url"}


def _project(tmp_path, pg, admin, *, rotation: bool = False, secrets: dict | None = None):
    as_login(pg.tcp_dsn(admin.name, admin.password), "CREATE TABLE IF NOT EXISTS alembic_version (version_num text)")
    app, ro, ci = pg.role("raptor_app"), pg.role("raptor_ro"), pg.role("raptor_ci")
    roles = roles_block(app, ro, flag=FLAG, ci=ci)
    if rotation:
        roles[app]["rotation"] = "alternating"
    path = write_roles_project(tmp_path, roles, {
        "provider": "cloudsql",
        "database": {"project": PROJECT, "instance": INSTANCE, "admin_user": admin.name,
                     "admin_password_env": PASSWORD_ENV, "database": pg.dbname, "sslmode": "disable",
                     "connect": {"host": "127.0.0.1", "port": pg.port}, "poll_interval": "10ms",
                     "app_host": "127.0.0.1", "app_port": pg.port, "app_sslmode": "prefer"},
        "app": {"region": REGION, "service": SERVICE, "url_secrets": secrets or SECRETS, "poll_interval": "10ms"},
    }, settings={"drain_timeout": "30s"} if rotation else None)
    return path, (app, ro, ci)


def _env_entries(fake) -> dict:
    container = next(c for c in fake.service()["template"]["containers"] if c["name"] == "app")
    return {e["name"]: e for e in container["env"]}


def operator_deploy(fake, edit) -> None:
    """Someone else's deploy through the Cloud Run Admin API (gcloud's PATCH), followed to its end."""
    import httpx

    name = f"projects/{PROJECT}/locations/{REGION}/services/{SERVICE}"
    with httpx.Client(base_url=fake.run.url, headers={"Authorization": f"Bearer {fake.token}"}) as http:
        service = http.get(f"/v2/{name}").raise_for_status().json()
        template = service["template"]
        template.pop("revision", None)
        edit(template)
        op = http.patch(f"/v2/{name}", params={"updateMask": "template"},
                        json={"template": template, "etag": service["etag"]}).raise_for_status().json()
        for _ in range(50):
            if op.get("done"):
                break
            op = http.get(f"/v2/{op['name']}").raise_for_status().json()
        assert op.get("done") and not op.get("error"), op


def _whoami(url: str) -> str:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def test_three_roles_each_from_its_own_secret_as_the_serving_revision_hands_them(world, fake, tmp_path, pg, admin):  # noqa: F811
    path, (app, ro, ci) = _project(tmp_path, pg, admin)
    res = commands.provision(projects.load(path), "staging", yes=True, environ=world)
    assert res.status == "ok", res.messages
    env = fake.latest_env()                          # the serving revision's resolved env
    assert env[FLAG] == "1"
    entries = _env_entries(fake)
    for var, role in ((APP_URL, app), (RO_URL, ro), (CI_URL, ci)):
        assert fake.secret_value(SECRETS[var]) == env[var]
        assert entries[var] == {"name": var, "valueSource": {"secretKeyRef": {"secret": SECRETS[var], "version": "1"}}}
        assert _whoami(env[var]) == role
    check_app(env[APP_URL], app)
    check_readonly(env[RO_URL], ro)
    check_catalog_only(env[CI_URL], ci)
    diagnosed_clean_roles(commands.diagnose(projects.load(path), "staging", environ=world),
                          {app: True, ro: False, ci: False})

    # a rerun reads each role's URL from the serving revision and changes nothing
    revisions = len(fake.revisions)
    again = commands.provision(projects.load(path), "staging", yes=True, environ=world)
    assert again.status == "unchanged", again.messages
    assert len(fake.revisions) == revisions and all(fake.store.states(s) == ["ENABLED"] for s in SECRETS.values())

    # the readonly env var pointed at the app's secret (the app would log in as the app role):
    # that role's verify sees it, and its rerun mounts its own secret again
    def repoint(template):
        container = next(c for c in template["containers"] if c["name"] == "app")
        for entry in container["env"]:
            if entry["name"] == RO_URL:
                entry["valueSource"]["secretKeyRef"]["secret"] = SECRETS[APP_URL]

    operator_deploy(fake, repoint)
    assert _whoami(fake.latest_env()[RO_URL]) == app
    fixed = commands.provision(projects.load(path), "staging", yes=True, environ=world, role=ro)
    assert fixed.status == "ok", fixed.messages
    env = fake.latest_env()
    assert _whoami(env[RO_URL]) == ro and _whoami(env[APP_URL]) == app
    check_readonly(env[RO_URL], ro)


def test_an_alternating_rotate_of_the_app_role_leaves_the_other_secrets_alone(world, fake, tmp_path, pg, admin):  # noqa: F811
    path, (app, ro, ci) = _project(tmp_path, pg, admin, rotation=True)
    assert commands.provision(projects.load(path), "staging", yes=True, environ=world).status == "ok"
    first = fake.latest_env()
    assert _whoami(first[APP_URL]) == f"{app}_a"
    others = {var: (fake.store.states(SECRETS[var]), fake.secret_value(SECRETS[var])) for var in (RO_URL, CI_URL)}

    res = commands.rotate(projects.load(path), "staging", yes=True, environ=world, role=app)
    assert res.status == "ok", res.messages
    env = fake.latest_env()
    assert _whoami(env[APP_URL]) == f"{app}_b"
    check_app(env[APP_URL], f"{app}_b")
    assert fake.store.states(SECRETS[APP_URL]) == ["DISABLED", "ENABLED"]
    assert {var: (fake.store.states(SECRETS[var]), fake.secret_value(SECRETS[var])) for var in (RO_URL, CI_URL)} == others
    assert env[RO_URL] == first[RO_URL] and env[CI_URL] == first[CI_URL]
    check_readonly(env[RO_URL], ro)
    check_catalog_only(env[CI_URL], ci)


def test_a_role_missing_from_url_secrets_is_refused_before_any_change(world, fake, tmp_path, pg, admin):  # noqa: F811
    path, names = _project(tmp_path, pg, admin, secrets={APP_URL: SECRETS[APP_URL], RO_URL: SECRETS[RO_URL]})
    with pytest.raises(ConfigError) as err:
        commands.provision(projects.load(path), "staging", yes=True, environ=world)
    assert f"app.url_secrets has no entry for {CI_URL}" in err.value.message and "\n" not in err.value.message
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (list(names),)) == [(0,)]
    assert fake.secretmanager.requests == [] and fake.run.calls("PATCH") == []


@pytest.mark.parametrize(("app", "why"), [
    ({"url_secret": "a", "url_secrets": {APP_URL: "b"}}, "not both"),
    ({}, "url_secret is required (or url_secrets"),
    ({"url_secrets": {APP_URL: "same", RO_URL: "same"}}, "same is named for several variables"),
    ({"url_secrets": {APP_URL: "no/slash"}}, "url_secrets.RAPTOR_APP_DATABASE_URL 'no/slash' is not a Secret Manager"),
])
def test_url_secrets_is_checked_when_the_file_loads(tmp_path, app, why):
    path = write_roles_project(tmp_path, roles_block("raptor_app", "raptor_ro", flag=FLAG), {
        "provider": "cloudsql", "database": {"project": PROJECT, "instance": INSTANCE, "admin_password_env": PASSWORD_ENV},
        "app": {"platform": "cloudrun", "region": REGION, "service": SERVICE, **app}})
    with pytest.raises(ConfigError) as err:
        projects.load(path)
    assert why in err.value.message
