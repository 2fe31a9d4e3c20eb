"""Which login of an alternating role is current, however busy the journal has been since it
last rotated (issue 18): the store's dedicated query, on the in-database journal, a central
PostgreSQL store and SQLite, plus the local journal; a window of the latest events would lose it."""

from __future__ import annotations

import types

import psycopg
import pytest
from psycopg import sql

from runbook import alternating as alt, commands
from runbook.journal import PostgresStore, SqliteStore
from runbook.local_journal import LocalJournal
from tests.pg.test_roles_three import URLS, Three
from tests.projects import dotenv

BUSY = 2500          # more than the 2000 events the window used to read


def _spec(name: str):
    return types.SimpleNamespace(name=name, logins=(f"{name}_a", f"{name}_b"))


def _fill(store, role: str | None) -> None:
    """A rotation of `app` to app_b long ago, another role's later rotation, then a busy journal."""
    kw = {} if role is None else {"role": role}
    store.event(1, "staging", "url", "result", "url written", {"url_digest": "d1", "url_login": "app_a"}, **kw)
    store.event(1, "staging", "drain", "result", "current", {"current_login": "app_a"}, **kw)
    store.event(2, "staging", "rotate_password", "result", "rotating", {"rotating_to": "app_b", "from": "app_a"}, **kw)
    store.event(2, "staging", "url", "result", "url written", {"url_digest": "d2", "url_login": "app_b"}, **kw)
    store.event(2, "staging", "drain", "result", "current", {"current_login": "app_b", "retired_login": "app_a"},
                **kw)
    if role is not None:
        # another role of the project rotates later: not app's state
        store.event(3, "staging", "rotate_password", "result", "rotating", {"rotating_to": "other_b"}, role="other")
        store.event(3, "staging", "url", "result", "url written", {"url_digest": "d3", "url_login": "other_b"},
                    role="other")
    # a login name whose `_` is a LIKE wildcard must not match: appXb is no login of app
    store.event(4, "staging", "drain", "result", "current", {"current_login": "appXa"}, **kw)
    store.event_many([(5, "staging", "soak", "result", f"checkpoint {i}: pass", {"checks": [{"name": "drift"}]})
                      for i in range(BUSY)])


@pytest.fixture(params=["in-database", "central", "sqlite"])
def store(request, pg, tmp_path):
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "journal.db", app="raptor")
    else:
        made = PostgresStore(pg.admin_dsn, location=request.param, app="raptor",
                             claim_legacy=request.param == "in-database")
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize("role", [None, "app"])
def test_the_current_login_is_found_behind_a_busy_journal(store, role):
    _fill(store, role)
    assert len(store.events("staging", limit=2000)) == 2000        # the old window saw soak results only
    assert alt.journal_turn(store.events("staging", limit=2000), _spec("app")) == alt.Turn()
    turn = alt.journal_turn(store.turn_events("staging", role, ("app_a", "app_b")), _spec("app"))
    assert turn == alt.Turn(current="app_b", pending=None, written="app_b")
    if role is not None:
        other = alt.journal_turn(store.turn_events("staging", "other", ("other_a", "other_b")), _spec("other"))
        assert other == alt.Turn(current=None, pending="other_b", written="other_b")
    # a half-way rotation, after all of that
    store.event(6, "staging", "rotate_password", "result", "rotating", {"rotating_to": "app_a"},
                **({} if role is None else {"role": role}))
    turn = alt.journal_turn(store.turn_events("staging", role, ("app_a", "app_b")), _spec("app"))
    assert turn == alt.Turn(current="app_b", pending="app_a", written="app_b")


def test_a_reader_of_an_old_sqlite_file_finds_the_turn_too(tmp_path):
    made = SqliteStore(tmp_path / "journal.db", app="raptor")
    _fill(made, None)
    made.close()
    reader = SqliteStore(tmp_path / "journal.db", app="raptor", create=False)
    try:
        turn = alt.journal_turn(reader.turn_events("staging", None, ("app_a", "app_b")), _spec("app"))
        assert turn == alt.Turn(current="app_b", pending=None, written="app_b")
    finally:
        reader.close()


@pytest.fixture
def three_alt(request, pg, tmp_path) -> Three:
    made = Three(pg, tmp_path, "superuser")
    made.data["roles"][made.app]["rotation"] = "alternating"
    made.write()

    def drop() -> None:
        for name in (f"{made.app}_a", f"{made.app}_b", made.mig):
            pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    request.addfinalizer(drop)
    return made


def _user(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        return str(conn.execute("SELECT current_user").fetchone()[0])


def _app_row(t) -> dict:
    rows = commands.status(t.project(), environ=t.environ).data["environments"]
    return next(r for r in rows if r.get("role_name") == t.app)


def test_a_role_rotated_long_ago_keeps_its_current_login(three_alt):
    t = three_alt
    assert t.provision().status == "ok"
    assert commands.rotate(t.project(), "staging", yes=True, environ=t.environ, role=t.app).status == "ok"
    b = f"{t.app}_b"
    assert _user(dotenv(t.dir)[URLS["app"]]) == b
    # the other roles' busy journal since: soak checkpoints and drift runs, all after the rotation
    t.pg.execute(sql.SQL(
        "INSERT INTO runbook.events (run_id, env, at, step, kind, summary, data, app, role) "
        "SELECT NULL, 'staging', extract(epoch FROM now()), 'soak', 'result', 'checkpoint: pass', "
        "'{{\"checks\": []}}', 'raptor', {} FROM generate_series(1, %s)").format(sql.Literal(t.ro)), (BUSY,))
    assert _app_row(t)["role"] == f"present (current login {b})"
    diag = commands.diagnose(t.project(), "staging", environ=t.environ, role=t.app)
    assert all(c.status == "pass" for c in diag.checks), [(c.name, c.status, c.detail) for c in diag.checks]

    # the next rotation goes to the idle login and finishes
    assert commands.rotate(t.project(), "staging", yes=True, environ=t.environ, role=t.app).status == "ok"
    a = f"{t.app}_a"
    assert _user(dotenv(t.dir)[URLS["app"]]) == a
    assert _app_row(t)["role"] == f"present (current login {a})"

    # a record only in the local journal counts too (a half-way rotation's target, here)
    LocalJournal(t.dir / ".runbook" / "journal.jsonl").append(
        {"env": "staging", "step": "rotate_password", "kind": "result", "summary": "rotating",
         "data": {"rotating_to": b}, "role": t.app})
    assert _app_row(t)["role"] == f"present (current login {a}; rotation to {b} half-way)"
