"""provision → diagnose → rotate → rollback → retire through runbook.commands, against the fake
Heroku APIs backed by real PostgreSQL."""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
import pytest

from runbook import commands
from runbook import project as projects
from runbook.errors import Refused
from tests.providers.conftest import as_login, assert_not_shown, diagnosed_clean, write_project
from tests.providers.heroku.conftest import ADDON, APP, FLAG, URL_VAR


def _write_project(directory: Path, role: str, addon: str = "DATABASE") -> Path:
    return write_project(directory, role, {"provider": "heroku", "database": {"addon": addon, "sslmode": "disable"},
                                           "app": {"name": APP}},
                         url_var=URL_VAR, flag=FLAG, app="raxx",
                         settings={"http_attempts": 4, "http_timeout": "2s", "retry_budget": "20s"})


def _login(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


@pytest.fixture
def project(fake, pg, tmp_path):
    # the app's schema, created by the owner (Heroku's default credential), as migrations would
    as_login(fake.owner_url(ADDON), "CREATE TABLE orders (id bigserial PRIMARY KEY, total int)",
             "CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
    role = pg.role("raxx_app")
    return role, _write_project(tmp_path, role)


def _mutations(fake):
    return [(r.method, r.path) for r in fake.mutating()]


def test_full_lifecycle(fake, pg, tmp_path, project, canary_password, caplog):
    caplog.set_level(logging.DEBUG)
    role, path = project
    environ = {**fake.environ(), "HOME": str(tmp_path)}
    addon_id = fake.addon(ADDON)["id"]
    credentials = f"/postgres/v0/databases/{addon_id}/credentials"
    fake.passwords.append(canary_password)
    results = []

    # provision: the credential through the Data API, grants over the owner's URL, then attach + flag
    res = commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    results.append(res)
    assert res.status == "ok", [(s.name, s.status, s.detail) for s in res.steps]
    posts = [(r.method, r.path, r.body) for r in fake.mutating()]
    assert posts[0] == ("POST", credentials, {"name": role})
    assert ("POST", "/addon-attachments", {"addon": addon_id, "app": APP, "name": "RAPTOR_APP_DATABASE",
                                           "namespace": f"credential:{role}"}) in posts
    assert ("PATCH", f"/apps/{APP}/config-vars", {FLAG: "1"}) in posts
    # the config-var PATCH restarted the dynos: no second restart, and the URL was never PATCHed
    assert not any(m == "DELETE" and p.endswith("/dynos") for m, p, _ in posts)
    assert not any(m == "PATCH" and URL_VAR in (b or {}) for m, p, b in posts)
    config = fake.config_vars(APP)
    assert config[FLAG] == "1" and canary_password in config[URL_VAR]
    with _login(config[URL_VAR]) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role
        conn.execute("INSERT INTO orders (total) VALUES (42)")     # USAGE on public was granted by the tool
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM alembic_version")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE sneaky (x int)")

    # diagnose: the four checks pass
    results.append(diagnosed_clean(projects.load(path), environ))

    # rotate: Heroku rotates and keeps the attached URL current
    old_url = config[URL_VAR]
    rot = commands.rotate(projects.load(path), "staging", yes=True, environ=environ)
    results.append(rot)
    assert rot.status == "ok", [(s.name, s.status, s.detail) for s in rot.steps]
    new_url = fake.config_vars(APP)[URL_VAR]
    assert new_url != old_url
    with _login(new_url) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
    with pytest.raises(psycopg.OperationalError):
        _login(old_url).close()

    # rollback: flag off through one config-var PATCH, nothing else changes
    fake.clear()
    rb = commands.rollback(projects.load(path), "staging", yes=True, environ=environ)
    results.append(rb)
    assert rb.status == "ok"
    assert [(r.method, r.path, r.body) for r in fake.mutating()] == [("PATCH", f"/apps/{APP}/config-vars", {FLAG: "0"})]
    assert not any(r.api == "data" for r in fake.requests)
    assert fake.config_vars(APP)[FLAG] == "0"

    # retire: detach, then destroy (the Data API refuses the other order)
    fake.clear()
    ret = commands.retire(projects.load(path), "staging", yes=True, environ=environ)
    results.append(ret)
    assert ret.status == "ok", [(s.name, s.status, s.detail) for s in ret.steps]
    attachment_deletes = [p for m, p in _mutations(fake) if p.startswith("/addon-attachments/")]
    assert _mutations(fake) == [("DELETE", attachment_deletes[0]), ("DELETE", f"{credentials}/{role}")]
    assert URL_VAR not in fake.config_vars(APP)
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(0,)]

    assert_not_shown(caplog, results, canary_password, fake.owner_url(ADDON).split(":")[2].split("@")[0], fake.token)


def test_essential_tier_refusal_changes_nothing(fake, pg, tmp_path):
    fake.add_addon(APP, owner=pg.role("tiny_owner"), plan="heroku-postgresql:essential-0", name="postgresql-tiny-2",
                   attachment="TINY_DATABASE")
    role = pg.role("raxx_app")
    path = _write_project(tmp_path, role, addon="TINY_DATABASE")
    fake.clear()
    with pytest.raises(Refused) as err:
        commands.provision(projects.load(path), "staging", yes=True, environ={**fake.environ(), "HOME": str(tmp_path)})
    assert err.value.exit_code == 2
    assert err.value.message.endswith(f"heroku addons:upgrade TINY_DATABASE heroku-postgresql:standard-0 -a {APP}")
    assert fake.mutating() == []
    assert not any(r.api == "data" for r in fake.requests)
    assert pg.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'runbook'") == [(0,)]
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(0,)]
