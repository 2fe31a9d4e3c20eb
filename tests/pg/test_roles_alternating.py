"""Three roles, the app role rotating `alternating` (issue 18 item 5 on PostgreSQL 18 and 15):
`rotate --role APP` moves only the app to its idle login; the read-only and migrator roles keep
their passwords, URLs and sessions, and every role is verified from its own URL afterwards."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from runbook import commands
from tests.pg.test_roles_three import URLS, Three
from tests.projects import dotenv


@pytest.fixture(params=["superuser", "createrole"])
def three_alt(request, pg, tmp_path) -> Three:
    made = Three(pg, tmp_path, request.param)
    made.data["roles"][made.app]["rotation"] = "alternating"
    made.write()

    def drop() -> None:
        # logins first (their memberships were granted by the test's admin), then the migrator
        for name in (f"{made.app}_a", f"{made.app}_b", made.mig):
            pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    request.addfinalizer(drop)
    return made


def _user(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        return str(conn.execute("SELECT current_user").fetchone()[0])


def test_rotate_one_alternating_role_leaves_the_others_alone(three_alt):
    t = three_alt
    assert t.provision().status == "ok"
    before = dotenv(t.dir)
    assert _user(before[URLS["app"]]) == f"{t.app}_a"
    assert _user(before[URLS["ro"]]) == t.ro and _user(before[URLS["mig"]]) == t.mig
    held = t.login("ro")                       # a read-only session that must survive the app's rotation
    try:
        result = commands.rotate(t.project(), "staging", yes=True, environ=t.environ, role=t.app)
        assert result.status == "ok", result.messages
        assert {s.role for s in result.steps} == {t.app}
        after = dotenv(t.dir)
        assert _user(after[URLS["app"]]) == f"{t.app}_b"
        assert after[URLS["ro"]] == before[URLS["ro"]] and after[URLS["mig"]] == before[URLS["mig"]]
        held.execute("SELECT 1")
        # the old app login no longer logs in; the group holds the grants, so b reaches the tables
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(before[URLS["app"]]).close()
        with psycopg.connect(after[URLS["app"]], autocommit=True) as conn:
            conn.execute("INSERT INTO orders (total) VALUES (7)")
    finally:
        held.close()
    # every role, drift-free and verified from its own side
    assert commands.drift(t.project(), "staging", environ=t.environ).status == "ok"
    diag = commands.diagnose(t.project(), "staging", environ=t.environ)
    assert all(c.status == "pass" for c in diag.checks), [(c.name, c.status, c.detail) for c in diag.checks]
