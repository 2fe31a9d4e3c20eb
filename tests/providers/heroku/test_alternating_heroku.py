"""`rotation: alternating` on Heroku (README "Rotation"): two credentials NAME_a / NAME_b made
through the Data API, both holding the grants (there is no group role), the app's attachment
switched from one to the other on rotate, the old one's sessions drained (pg_stat_activity), and
only then the old credential rotated so its password stops working. Against the contract fake
and the real PostgreSQL behind it; every check logs in with the URL the app receives."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
import yaml

from runbook import commands
from runbook import project as projects
from runbook.errors import ConfigError, DrainTimeout
from tests.logins import login_fails
from tests.providers.heroku.conftest import ADDON, APP, URL_VAR
from tests.providers.heroku.test_engine_e2e import project  # noqa: F401


@pytest.fixture
def alternating(fake, pg, tmp_path, project):
    role, path = project
    data = yaml.safe_load(path.read_text())
    data["role"]["rotation"] = "alternating"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    pg.roles.extend([f"{role}_a", f"{role}_b"])        # the fake makes them as real roles: dropped after the test
    return role, path, {**fake.environ(), "HOME": str(tmp_path)}


def _login(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _app_user(fake) -> str:
    """Log in with exactly what the app receives and say who that is; a write proves the grants."""
    with _login(fake.config_vars(APP)[URL_VAR]) as conn:
        conn.execute("INSERT INTO orders (total) VALUES (1)")
        return conn.execute("SELECT current_user").fetchone()[0]


def _ok(result) -> None:
    assert result.status == "ok", [(s.name, s.status, s.detail) for s in result.steps]


def _credentials(fake, role) -> set[str]:
    addon_id = fake.addon(ADDON)["id"]
    prefix = f"/postgres/v0/databases/{addon_id}/credentials"
    return {(m, p[len(prefix):]) for m, p in ((r.method, r.path) for r in fake.mutating()) if p.startswith(prefix)}


def test_alternating_provision_rotate_twice_and_retire(fake, pg, alternating):
    role, path, environ = alternating
    a, b = f"{role}_a", f"{role}_b"
    _ok(commands.provision(projects.load(path), "staging", yes=True, environ=environ))
    # both credentials made through the Data API; the app is attached to the first
    assert {("POST", "")} == {(m, p) for m, p in _credentials(fake, role)}
    assert [r.body for r in fake.mutating() if r.path.endswith("/credentials")] == [{"name": a}, {"name": b}]
    assert _app_user(fake) == a
    # the idle credential holds the grants too: nothing depends on which one is current
    with _login(pg.tcp_dsn(b, fake.credential_password(ADDON, b))) as idle:
        assert idle.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            idle.execute("SELECT * FROM alembic_version")

    for old, new in ((a, b), (b, a)):
        before = fake.config_vars(APP)[URL_VAR]
        assert not login_fails(before)
        fake.clear()
        _ok(commands.rotate(projects.load(path), "staging", yes=True, environ=environ))
        assert _app_user(fake) == new           # the attachment moved: the app's config var logs in as the new one
        assert login_fails(before)              # the old credential was rotated: its password stops working
        paths = [(r.method, r.path) for r in fake.mutating()]
        attach = paths.index(("POST", "/addon-attachments"))
        rotation = next(i for i, (m, p) in enumerate(paths) if p.endswith(f"/credentials/{old}/credentials_rotation"))
        assert attach < rotation                # switched first, invalidated only after
        assert not any(p.endswith(f"/credentials/{new}/credentials_rotation") for _, p in paths)
        status = commands.status(projects.load(path), environ=environ)
        assert f"current login {new}" in str(status.data), status.data

    fake.clear()
    _ok(commands.retire(projects.load(path), "staging", yes=True, environ=environ))
    assert {p for m, p in _credentials(fake, role) if m == "DELETE"} == {f"/{a}", f"/{b}"}
    assert URL_VAR not in fake.config_vars(APP)
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname IN (%s, %s)", (a, b)) == [(0,)]


def test_drain_timeout_leaves_the_old_credential_working_and_a_rerun_converges(fake, pg, alternating):
    role, path, environ = alternating
    a, b = f"{role}_a", f"{role}_b"
    _ok(commands.provision(projects.load(path), "staging", yes=True, environ=environ))
    old_url = fake.config_vars(APP)[URL_VAR]
    held = _login(old_url)                      # an app process that has not let go of the old credential
    try:
        with pytest.raises(DrainTimeout) as stopped:
            commands.rotate(projects.load(path), "staging", yes=True, environ=environ,
                            drain_timeout=timedelta(seconds=1))
        assert "half-way" in stopped.value.message and a in stopped.value.message
        assert "\n" not in stopped.value.message and stopped.value.exit_code == 3
        assert _app_user(fake) == b             # the app is on the new credential
        held.execute("SELECT 1")                # the old session is untouched
        assert not login_fails(old_url)         # and the old credential still logs in
        assert not any(r.path.endswith("/credentials_rotation") for r in fake.mutating())
    finally:
        held.close()
    fake.clear()
    _ok(commands.rotate(projects.load(path), "staging", yes=True, environ=environ))
    assert _app_user(fake) == b                 # the rerun finished that rotation, it did not start another
    assert login_fails(old_url)
    rotations = [r.path for r in fake.mutating() if r.path.endswith("/credentials_rotation")]
    assert rotations == [f"/postgres/v0/databases/{fake.addon(ADDON)['id']}/credentials/{a}/credentials_rotation"]


def test_drift_sees_a_grant_missing_on_the_idle_credential(fake, pg, alternating):
    role, path, environ = alternating
    b = f"{role}_b"
    _ok(commands.provision(projects.load(path), "staging", yes=True, environ=environ))
    pg.execute(f'REVOKE SELECT ON orders FROM "{b}"')
    found = commands.drift(projects.load(path), "staging", environ=environ)
    assert found.status == "check-failed"
    assert any(b in f["detail"] and "orders" in str(f) for f in found.data["findings"]), found.data["findings"]
    _ok(commands.drift(projects.load(path), "staging", fix=True, yes=True, environ=environ))
    _ok(commands.drift(projects.load(path), "staging", environ=environ))
