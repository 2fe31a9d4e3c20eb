"""Row-level security for an alternating role on Heroku, where there is no group role NAME a
policy could name (README "Rotation"): the policy check and its fix name both credentials, the
idle one included, and both read exactly the rows their policy gives them before and after a
rotate. Against the fake Platform and Data APIs and the real PostgreSQL behind them."""

from __future__ import annotations

import psycopg
import pytest

from runbook import commands
from runbook import project as projects
from runbook.errors import CheckFailed
from tests.providers.conftest import as_login
from tests.providers.heroku.conftest import ADDON, APP, FLAG, URL_VAR
from tests.providers.heroku.test_alternating_heroku import alternating, project  # noqa: F401

NOTES = ["CREATE TABLE notes (id bigserial PRIMARY KEY, tenant text NOT NULL, body text)",
         "INSERT INTO notes (tenant, body) VALUES ('acme', 'one'), ('acme', 'two'), ('other', 'three')",
         "ALTER TABLE notes ENABLE ROW LEVEL SECURITY"]


def _rows(url: str) -> tuple[str, list[str]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        who = conn.execute("SELECT current_user").fetchone()[0]
        return who, [r[0] for r in conn.execute("SELECT body FROM notes ORDER BY id")]


def _both(fake, pg, role) -> dict[str, list[str]]:
    out = {}
    for name in (f"{role}_a", f"{role}_b"):
        who, rows = _rows(pg.tcp_dsn(name, fake.credential_password(ADDON, name)))
        out[who] = rows
    return out


def test_the_rls_check_and_its_fix_name_both_credentials(fake, pg, alternating):
    role, path, environ = alternating
    a, b = f"{role}_a", f"{role}_b"
    as_login(fake.owner_url(ADDON), *NOTES)
    planned = commands.plan(projects.load(path), "staging", environ=environ)
    said = " ".join(n for s in planned.steps for n in s.notes)
    assert f"public.notes has row-level security and no policy for {a}" in said
    assert f"public.notes has row-level security and no policy for {b}" in said
    with pytest.raises(CheckFailed) as err:
        commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    assert err.value.exit_code == 4 and "\n" not in err.value.message
    assert err.value.message.startswith(f"grants: public.notes has row-level security and no policy for {a} ")
    assert f'CREATE POLICY "{role}_select" ON "public"."notes" FOR SELECT TO "{a}", "{b}" USING (<rule>)' in err.value.hint
    assert "(and the same on" not in err.value.hint         # one table, though two logins miss it
    assert URL_VAR not in fake.config_vars(APP) and FLAG not in fake.config_vars(APP)   # nothing switched to empty tables

    # a policy for the current login alone is not enough: the idle one would see nothing after a rotate
    as_login(fake.owner_url(ADDON), f'CREATE POLICY acme_a ON notes TO "{a}" USING (tenant = \'acme\')')
    with pytest.raises(CheckFailed) as err:
        commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    assert f"no policy for {b}" in err.value.message and f"no policy for {a}" not in err.value.message
    assert f'TO "{a}", "{b}"' in err.value.hint
    found = commands.drift(projects.load(path), "staging", environ=environ)
    assert found.exit_code == 4
    assert [r["who"] for r in found.data["rls"]] == [b]


def test_both_credentials_read_their_rows_before_and_after_a_rotate(fake, pg, alternating):
    role, path, environ = alternating
    a, b = f"{role}_a", f"{role}_b"
    assert commands.provision(projects.load(path), "staging", yes=True, environ=environ).status == "ok"
    # the table comes later (a migration), with its policy for both credentials
    as_login(fake.owner_url(ADDON), *NOTES,
             f'CREATE POLICY acme ON notes TO "{a}", "{b}" USING (tenant = \'acme\') WITH CHECK (tenant = \'acme\')')
    res = commands.provision(projects.load(path), "staging", yes=True, environ=environ)
    assert res.status == "unchanged", (res.status, res.messages)   # default privileges covered the new table
    assert _rows(fake.config_vars(APP)[URL_VAR]) == (a, ["one", "two"])      # the app's URL, its rows
    assert _both(fake, pg, role) == {a: ["one", "two"], b: ["one", "two"]}
    assert commands.drift(projects.load(path), "staging", environ=environ).exit_code == 0
    diag = commands.diagnose(projects.load(path), "staging", environ=environ)
    assert [(c.name, c.status) for c in diag.checks if c.name == "grants"] == [("grants", "pass")]

    rot = commands.rotate(projects.load(path), "staging", yes=True, environ=environ)
    assert rot.status == "ok", rot.messages
    assert _rows(fake.config_vars(APP)[URL_VAR]) == (b, ["one", "two"])
    with psycopg.connect(fake.config_vars(APP)[URL_VAR], autocommit=True) as conn:
        conn.execute("INSERT INTO notes (tenant, body) VALUES ('acme', 'four')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO notes (tenant, body) VALUES ('other', 'five')")
    assert _both(fake, pg, role) == {a: ["one", "two", "four"], b: ["one", "two", "four"]}
    assert commands.drift(projects.load(path), "staging", environ=environ).exit_code == 0
