"""Converting a `single` Heroku credential to `rotation: alternating` (README "Rotation"): the
existing credential NAME stays the app's until NAME_a and NAME_b exist, hold every grant and
NAME_a proved them by logging in as itself; then the app's attachment moves to NAME_a, NAME's
sessions drain and NAME is destroyed. Measured from the app's side: a client that reads the config
var Heroku gives the app and logs in with it every 50 ms never fails across the conversion."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
import yaml

from runbook import commands
from runbook import project as projects
from runbook.errors import Refused
from tests.logins import login_fails
from tests.providers.heroku.conftest import ADDON, APP, URL_VAR
from tests.providers.heroku.test_engine_e2e import project  # noqa: F401


class ConfigVarClient:
    """An app that reads its URL from the Heroku config var (what a dyno receives at boot) and
    opens a new connection with it every 50 ms."""

    def __init__(self, fake) -> None:
        self.fake = fake
        self.attempts: list[tuple[str | None, str | None]] = []     # (user, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            url = self.fake.config_vars(APP).get(URL_VAR)
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    user = conn.execute("SELECT current_user").fetchone()[0]
                    conn.execute("SELECT count(*) FROM orders")
                self.attempts.append((user, None))
            except Exception as exc:        # counted, never raised: the test reads them
                self.attempts.append((None, f"{type(exc).__name__}: {exc}"))
            self._stop.wait(0.05)

    def __enter__(self) -> "ConfigVarClient":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.attempts and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)                      # a few attempts after the run ended too
        self._stop.set()
        self._thread.join(10)

    @property
    def failures(self) -> list[str]:
        return [err for _, err in self.attempts if err is not None]

    @property
    def users(self) -> list[str]:
        """Each user once, in the order the client first saw it."""
        return list(dict.fromkeys(u for u, _ in self.attempts if u is not None))


def _ok(result) -> None:
    assert result.status == "ok", (result.status, [(s.step, s.status, s.verdict) for s in result.steps], result.messages)


def _alternating(path) -> None:
    data = yaml.safe_load(path.read_text())
    data["role"]["rotation"] = "alternating"
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def single(fake, pg, tmp_path, project):
    role, path = project
    environ = {**fake.environ(), "HOME": str(tmp_path)}
    _ok(commands.provision(projects.load(path), "staging", yes=True, environ=environ))
    return role, path, environ


def test_conversion_keeps_the_app_connected_and_a_rerun_is_a_no_op(fake, pg, single):
    role, path, environ = single
    a, b = f"{role}_a", f"{role}_b"
    addon_id = fake.addon(ADDON)["id"]
    credentials = f"/postgres/v0/databases/{addon_id}/credentials"
    before = fake.config_vars(APP)[URL_VAR]
    _alternating(path)
    fake.clear()
    with ConfigVarClient(fake) as client:
        _ok(commands.provision(projects.load(path), "staging", yes=True, environ=environ))
    assert client.failures == [], client.failures[:3]
    assert client.users == [role, a]                # on the single credential, then on the pair's current login
    assert len(client.attempts) > 5

    calls = [(r.method, r.path) for r in fake.mutating()]
    made = [i for i, c in enumerate(calls) if c == ("POST", credentials)]
    attach = calls.index(("POST", "/addon-attachments"))
    destroy = calls.index(("DELETE", f"{credentials}/{role}"))
    assert len(made) == 2 and max(made) < attach < destroy        # both made, then the switch, then the old one goes
    assert [r.body for r in fake.mutating() if r.path == credentials] == [{"name": a}, {"name": b}]
    assert not any(p.endswith("/credentials_rotation") for _, p in calls)
    # the grants landed before the attachment moved: the journal's order of results
    steps = [row[0] for row in pg.execute(
        "SELECT step FROM runbook.events WHERE kind = 'result' AND step IN ('grants', 'url', 'drain') ORDER BY id")]
    assert steps[-3:] == ["grants", "url", "drain"]
    # the old credential is gone, its URL with it; both logins of the pair hold the grants
    assert login_fails(before)
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(0,)]
    with psycopg.connect(fake.config_vars(APP)[URL_VAR], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == a
        conn.execute("INSERT INTO orders (total) VALUES (1)")
    with psycopg.connect(pg.tcp_dsn(b, fake.credential_password(ADDON, b)), autocommit=True) as idle:
        assert idle.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            idle.execute("SELECT * FROM alembic_version")
    # the journal says which login is current
    status = commands.status(projects.load(path), environ=environ)
    assert f"current login {a}" in str(status.data), status.data

    fake.clear()
    again = commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    assert again.status == "unchanged", (again.status, [(s.step, s.status, s.verdict) for s in again.steps])
    assert fake.mutating() == []
    assert all(s.status == "unchanged" for s in again.steps), [(s.step, s.status) for s in again.steps]
    _ok(commands.drift(projects.load(path), "staging", environ=environ))

    # and it rotates like any alternating role: the attachment to b, then a's password turned over
    url_a = fake.config_vars(APP)[URL_VAR]
    _ok(commands.rotate(projects.load(path), "staging", yes=True, environ=environ))
    with psycopg.connect(fake.config_vars(APP)[URL_VAR], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == b
    assert login_fails(url_a)


def test_plan_of_a_conversion_says_what_happens_and_changes_nothing(fake, pg, single):
    role, path, environ = single
    _alternating(path)
    fake.clear()
    shown = commands.plan(projects.load(path), "staging", environ=environ)
    said = " ".join(c.summary for s in shown.steps for c in s.changes)
    assert f"create credential {role}_a" in said and f"create credential {role}_b" in said
    assert f"convert {role} to alternating" in said
    assert f"destroy credential {role} " in said
    assert fake.mutating() == []


def test_going_back_to_single_is_refused_in_one_line_changing_nothing(fake, pg, single):
    role, path, environ = single
    _alternating(path)
    _ok(commands.provision(projects.load(path), "staging", yes=True, environ=environ))
    data = yaml.safe_load(path.read_text())
    data["role"]["rotation"] = "single"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    fake.clear()
    for verb in (commands.provision, commands.rotate):
        with pytest.raises(Refused) as err:
            verb(projects.load(path), "staging", yes=True, environ=environ)
        assert "going back to rotation: single is not supported" in err.value.message
        assert "\n" not in err.value.message and err.value.exit_code == 2
    assert fake.mutating() == []
    with psycopg.connect(fake.config_vars(APP)[URL_VAR], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == f"{role}_a"


def test_rotate_during_a_half_way_conversion_is_refused(fake, pg, single):
    role, path, environ = single
    _alternating(path)
    fake.clear()
    with pytest.raises(Exception) as err:
        commands.rotate(projects.load(path), "staging", yes=True, environ=environ)
    assert "provision" in err.value.message and "\n" not in err.value.message and err.value.exit_code == 2
    assert fake.mutating() == []


def test_a_credential_named_like_the_role_that_pg_runbook_did_not_convert_is_left_alone(fake, pg, tmp_path, project):
    role, path = project
    environ = {**fake.environ(), "HOME": str(tmp_path)}
    _alternating(path)
    _ok(commands.provision(projects.load(path), "staging", yes=True, environ=environ))
    fake.create_credential(ADDON, role)          # made by someone else, beside the pair
    fake.clear()
    with pytest.raises(Refused) as err:
        commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    assert "does not say it converted it" in err.value.message and "\n" not in err.value.message
    with pytest.raises(Exception) as err:
        commands.rotate(projects.load(path), "staging", yes=True, environ=environ)
    assert f"credential {role} exists beside the pair" in err.value.message
    assert fake.mutating() == []
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)]
    with psycopg.connect(fake.config_vars(APP)[URL_VAR], autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == f"{role}_a"
