"""Three roles in one project on real PostgreSQL (18 and 15): an app role with a flag, a
read-only role with its own URL and no flag, and a migrator that is a member of the owner.
Each is verified from its own side, logged in with exactly the URL the app config holds."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from runbook import commands, project as projects
from runbook.errors import CheckFailed, ConfigError, Refused
from tests.pg.conftest import make_env
from tests.projects import dotenv

URLS = {"app": "RAPTOR_APP_DATABASE_URL", "ro": "RAPTOR_READONLY_DATABASE_URL", "mig": "RAPTOR_MIGRATOR_DATABASE_URL"}
FLAG = "FLAG_RAPTOR_APP_ROLE_SEPARATION"


class Three:
    """The environment of tests/pg/conftest.py, with the project file rewritten as `roles:`."""

    def __init__(self, pg, tmp_path: Path, admin: str) -> None:
        self.base = make_env(pg, tmp_path, admin=admin)
        if admin != "superuser":
            # PostgreSQL 16+: granting a role needs ADMIN OPTION on it (a platform's admin has it on
            # the roles it created); 15 lets CREATEROLE grant any role but a superuser
            admin_user = psycopg.conninfo.conninfo_to_dict(self.base.admin_dsn)["user"]
            pg.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(self.base.owner), sql.Identifier(admin_user)))
        self.pg = pg
        self.dir = tmp_path
        self.owner = self.base.owner
        self.environ = self.base.environ
        self.app = self.base.role
        self.ro = pg.role("raptor_readonly")
        self.mig = pg.role("raptor_migrator")
        self.data = {
            "version": 1, "app": "raptor",
            "roles": {
                self.app: {"owner": self.owner, "url_var": URLS["app"], "flag": {"name": FLAG}},
                self.ro: {"owner": self.owner, "url_var": URLS["ro"],
                          "schemas": {"public": {"tables": ["SELECT"], "sequences": ["SELECT"]}}},
                self.mig: {"owner": self.owner, "url_var": URLS["mig"], "member_of": [self.owner],
                           "schemas": {"public": {}}},
            },
            "environments": {"staging": {"provider": "local", "database": {"dsn_env": "RB_TEST_ADMIN_DSN"},
                                         "app": {"dotenv": ".runbook/staging.env"}}},
        }
        self.write()

    def write(self) -> None:
        (self.dir / "runbook.yaml").write_text(yaml.safe_dump(self.data, sort_keys=False))

    def project(self) -> projects.Project:
        return projects.load(self.dir / "runbook.yaml")

    def login(self, which: str) -> psycopg.Connection:
        return psycopg.connect(dotenv(self.dir)[URLS[which]], autocommit=True)

    def as_admin(self, statement) -> None:
        """As the admin the tool connects as (PostgreSQL 16+ memberships are per grantor)."""
        with psycopg.connect(self.base.admin_dsn, autocommit=True) as conn:
            conn.execute(statement)

    def provision(self, **kw):
        return commands.provision(self.project(), "staging", yes=True, environ=self.environ, **kw)


@pytest.fixture(params=["superuser", "createrole"])
def three(request, pg, tmp_path) -> Three:
    made = Three(pg, tmp_path, request.param)
    # PostgreSQL 16+ keeps who granted a membership: the migrator goes before the admin that granted it
    request.addfinalizer(lambda: pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(made.mig))))
    return made


def _denied(conn: psycopg.Connection, statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_three_roles_provisioned_and_verified_from_each_side(three):
    res = three.provision()
    assert res.status == "ok"
    assert {s.role for s in res.steps} == {three.app, three.ro, three.mig}
    assert all(s.verdict is None or s.verdict.status == "pass" for s in res.steps), \
        [(s.role, s.step, s.verdict) for s in res.steps]
    values = dotenv(three.dir)
    assert values[FLAG] == "1"
    assert set(URLS.values()) <= set(values)

    with three.login("app") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == three.app
        conn.execute("INSERT INTO orders (total) VALUES (42)")
        conn.execute("UPDATE orders SET total = 43")
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
        _denied(conn, "SELECT * FROM alembic_version")
        _denied(conn, "TRUNCATE orders")
        _denied(conn, "CREATE TABLE sneaky (x int)")
        _denied(conn, sql.SQL("SET ROLE {}").format(sql.Identifier(three.owner)).as_string(conn))

    with three.login("ro") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == three.ro
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
        assert conn.execute("SELECT last_value FROM orders_id_seq").fetchone()[0] >= 1   # SELECT on sequences
        _denied(conn, "INSERT INTO orders (total) VALUES (1)")
        _denied(conn, "UPDATE orders SET total = 1")
        _denied(conn, "DELETE FROM orders")
        _denied(conn, "SELECT nextval('orders_id_seq')")                                 # no USAGE/UPDATE
        _denied(conn, "SELECT * FROM alembic_version")
        _denied(conn, "CREATE TABLE sneaky (x int)")
        _denied(conn, sql.SQL("SET ROLE {}").format(sql.Identifier(three.owner)).as_string(conn))

    with three.login("mig") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == three.mig
        # its one path to DDL: the membership in the owner, so what it creates belongs to the owner
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(three.owner)))
        conn.execute("CREATE TABLE invoices (id bigserial PRIMARY KEY, amount int)")
        conn.execute("RESET ROLE")
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'invoices'").fetchone()[0]
        assert owner == three.owner

    # the migrator's table reaches app and readonly through default privileges FOR ROLE the owner
    with three.login("app") as conn:
        conn.execute("INSERT INTO invoices (amount) VALUES (7)")
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 1
    with three.login("ro") as conn:
        assert conn.execute("SELECT amount FROM invoices").fetchone()[0] == 7
        _denied(conn, "INSERT INTO invoices (amount) VALUES (8)")

    drift = commands.drift(three.project(), "staging", environ=three.environ)
    assert drift.status == "ok", drift.data["findings"]
    again = three.provision()
    assert again.status == "unchanged"


def test_each_role_soaks_on_its_own_and_the_flagless_one_from_its_first_provision(three):
    res = three.provision()
    assert res.data.get("soak_started") is True
    from runbook.context import role_store
    from runbook.journal import open_store

    project = three.project()
    store = open_store(None, admin_dsn=projects_secret(three.base.admin_dsn), base_dir=three.dir, env="staging",
                       app="raptor")
    try:
        soaks = {name: role_store(store, project, managed).open_soak("staging")
                 for name, managed in project.roles.items()}
        assert all(s is not None for s in soaks.values()), soaks
        assert {s["digest"] for s in soaks.values()} == {m.digest() for m in project.roles.values()}
        assert len({s["id"] for s in soaks.values()}) == 3
        events = store.events("staging", limit=500)
        assert {e.get("role") for e in events if e["step"] == "role"} == {three.app, three.ro, three.mig}
    finally:
        store.close()
    # changing one role's spec starts a new soak for it alone
    three.data["roles"][three.ro]["schemas"]["public"]["tables"] = ["SELECT", "REFERENCES"]
    three.write()
    again = three.provision()
    started = [n for s in again.steps for n in s.notes if "soak clock started" in n]
    assert len(started) == 1
    assert {s.role for s in again.steps if s.step == "flag on" and s.changes} == {three.ro}


def projects_secret(dsn: str):
    from runbook.secret import Secret

    return Secret(dsn)


def test_drift_names_the_broken_role_only_and_fix_repairs_only_it(three):
    three.provision()
    three.pg.execute(sql.SQL("REVOKE SELECT ON orders FROM {}").format(sql.Identifier(three.ro)))
    three.as_admin(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(three.owner), sql.Identifier(three.mig)))
    found = commands.drift(three.project(), "staging", environ=three.environ)
    assert found.exit_code == CheckFailed.exit_code
    assert {f["role"] for f in found.data["findings"]} == {three.ro, three.mig}
    assert found.data["roles"] == {three.app: "ok", three.ro: "drift", three.mig: "drift"}
    assert any("is not a member of" in f["detail"] for f in found.data["findings"] if f["role"] == three.mig)
    # --role looks at one role
    app_only = commands.drift(three.project(), "staging", environ=three.environ, role=three.app)
    assert app_only.status == "ok" and {c.role for c in app_only.checks} <= {three.app}

    fixed = commands.drift(three.project(), "staging", fix=True, yes=True, environ=three.environ, role=three.ro)
    assert fixed.status == "ok"
    assert {s.role for s in fixed.steps} == {three.ro}
    still = commands.drift(three.project(), "staging", environ=three.environ)
    assert {f["role"] for f in still.data["findings"]} == {three.mig}
    commands.drift(three.project(), "staging", fix=True, yes=True, environ=three.environ)
    with three.login("mig") as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(three.owner)))
    assert commands.drift(three.project(), "staging", environ=three.environ).status == "ok"


def test_a_membership_removed_from_the_spec_is_drift_and_fix_revokes_it(three):
    three.provision()
    three.data["roles"][three.mig]["member_of"] = []
    three.write()
    found = commands.drift(three.project(), "staging", environ=three.environ, role=three.mig)
    assert found.exit_code == CheckFailed.exit_code
    assert any(f["kind"] == "membership" for f in found.data["findings"])
    commands.drift(three.project(), "staging", fix=True, yes=True, environ=three.environ, role=three.mig)
    with three.login("mig") as conn:
        _denied(conn, sql.SQL("SET ROLE {}").format(sql.Identifier(three.owner)).as_string(conn))


def test_role_selects_one_role_for_plan_provision_and_retire(three):
    plan = commands.plan(three.project(), "staging", environ=three.environ, role=three.ro)
    assert {s.role for s in plan.steps} == {three.ro}
    res = three.provision(role=three.ro)
    assert {s.role for s in res.steps} == {three.ro}
    present = {r[0] for r in three.pg.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                               ([three.app, three.ro, three.mig],))}
    assert present == {three.ro}
    assert set(dotenv(three.dir)) == {URLS["ro"]}           # no flag: nothing else was written
    with pytest.raises(ConfigError, match="did you mean"):
        commands.plan(three.project(), "staging", environ=three.environ, role=three.ro + "x")
    three.provision()
    commands.retire(three.project(), "staging", yes=True, environ=three.environ, role=three.ro)
    present = {r[0] for r in three.pg.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                               ([three.app, three.ro, three.mig],))}
    assert present == {three.app, three.mig}
    assert URLS["ro"] not in dotenv(three.dir)


def test_rollback_flips_only_the_roles_with_a_flag(three):
    three.provision()
    res = commands.rollback(three.project(), "staging", yes=True, environ=three.environ)
    assert {s.role for s in res.steps} == {three.app}
    assert dotenv(three.dir)[FLAG] == "0"
    assert URLS["ro"] in dotenv(three.dir)
    with pytest.raises(ConfigError, match="no flag"):
        commands.rollback(three.project(), "staging", yes=True, environ=three.environ, role=three.ro)


def _roles_now(pg, names):
    return pg.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1", (list(names),))


@pytest.mark.parametrize("hostile", ["member_of_superuser", "member_of_createrole", "key_is_admin"])
def test_hostile_member_of_and_keys_are_refused_changing_nothing(three, hostile):
    pg = three.pg
    if hostile == "member_of_superuser":
        boss = pg.role("boss")
        pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN SUPERUSER").format(sql.Identifier(boss)))
        three.data["roles"][three.mig]["member_of"] = [boss]
    elif hostile == "member_of_createrole":
        maker = pg.role("maker")
        pg.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(sql.Identifier(maker)))
        three.data["roles"][three.mig]["member_of"] = [maker]
    else:
        admin_user = psycopg.conninfo.conninfo_to_dict(three.base.admin_dsn)["user"]
        three.data["roles"][admin_user] = three.data["roles"].pop(three.ro)
    three.write()
    names = [three.app, three.ro, three.mig]
    before = _roles_now(pg, names)
    with pytest.raises((Refused, ConfigError)) as exc:
        three.provision()
    assert "\n" not in exc.value.message
    assert _roles_now(pg, names) == before == []
    assert dotenv(three.dir) == {}


