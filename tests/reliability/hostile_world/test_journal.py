"""Items 5 and 8 of issue 12: the journal must be the tool's own (owned by the session user, no
grants, no triggers, rules, policies or defaults it did not make), refused before anything is
written to it otherwise; and every row is keyed by app, so a shared store never mixes projects."""

from __future__ import annotations

import pytest
from psycopg import sql

from runbook import commands, journal as state
from runbook.errors import GateClosed, Refused
from tests.projects import spec_dict, write_project
from tests.reliability.hostile_world.conftest import world

SHORT = {"duration": "3s", "checkpoints": ["1s", "2s", "3s"], "valid_for": "1h", "checks": ["diagnose", "drift"]}


def _journal_ddl(schema: str = "runbook") -> list[str]:
    return [sql.SQL(d).format(schema=sql.Identifier(schema)).as_string(None) for d in state._PG_DDL]


def _owner_precreates_journal(env, digest: str | None = None) -> None:
    """The owner, which owns the database, makes the journal first: the tool's own DDL, plus a
    trigger that runs as whoever inserts, and (with a digest) a forged passed soak."""
    pg = env.pg
    pg.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(pg.dbname), sql.Identifier(env.owner)))
    env.as_owner("CREATE TABLE public.trap (who text)")
    env.as_owner("GRANT INSERT ON public.trap TO PUBLIC")
    for ddl in _journal_ddl():
        env.as_owner(ddl)
    grab = sql.SQL("ALTER ROLE {} CREATEROLE").format(sql.Identifier(env.owner)).as_string(None).replace("'", "''")
    env.as_owner(f"""CREATE FUNCTION runbook.grab() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO public.trap VALUES (current_user);
              BEGIN EXECUTE '{grab}'; EXCEPTION WHEN OTHERS THEN NULL; END; RETURN NEW; END $$""")
    env.as_owner("CREATE TRIGGER grab BEFORE INSERT ON runbook.runs FOR EACH ROW EXECUTE FUNCTION runbook.grab()")
    env.as_owner("GRANT USAGE ON SCHEMA runbook TO PUBLIC")
    env.as_owner("GRANT ALL ON ALL TABLES IN SCHEMA runbook TO PUBLIC")
    if digest:
        env.as_owner(f"INSERT INTO runbook.soaks (env, digest, started_at, ended_at, status, app) "
                     f"VALUES ('staging', '{digest}', extract(epoch from now()) - 3600, "
                     f"extract(epoch from now()) - 60, 'passed', 'raptor')")


def _journal_rows(env) -> int:
    return env.pg.execute("SELECT (SELECT count(*) FROM runbook.runs) + (SELECT count(*) FROM runbook.events)")[0][0]


def test_a_journal_the_owner_made_is_refused_before_any_write(env):
    _owner_precreates_journal(env)
    before = world(env.pg)
    with pytest.raises(Refused) as err:
        commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert "\n" not in err.value.message and f"is owned by {env.owner}" in err.value.message
    assert err.value.exit_code == 2
    trap = env.pg.execute("SELECT count(*) FROM public.trap")[0][0]
    createrole = env.pg.execute("SELECT rolcreaterole FROM pg_roles WHERE rolname = %s", (env.owner,))[0][0]
    assert (trap, createrole, _journal_rows(env)) == (0, False, 0)
    assert world(env.pg) == before


def test_a_forged_passed_soak_does_not_open_promotion(env):
    """The owner's journal holds a 'passed' staging soak of the right digest: promote is refused
    (exit 2) on the journal itself, before the gate could read the row, and prod is untouched."""
    data = spec_dict(env.role, owner=env.owner, extra_envs={
        "prod": {"provider": "local", "database": {"dsn_env": "RB_TEST_ADMIN_DSN"},
                 "app": {"dotenv": ".runbook/prod.env"}, "promote_from": "staging"}})
    write_project(env.dir, data)
    _owner_precreates_journal(env, digest=env.project().role.digest())
    before = world(env.pg)
    with pytest.raises(Refused) as err:
        commands.promote(env.project(), "prod", sign_off="Mallory", yes=True, environ=env.environ)
    assert f"is owned by {env.owner}" in err.value.message
    assert world(env.pg) == before
    assert not env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (env.role,))
    assert not (env.dir / ".runbook" / "prod.env").exists()


@pytest.mark.parametrize("tamper", [
    "GRANT INSERT ON runbook.soaks TO {owner}",
    "CREATE TRIGGER t BEFORE INSERT ON runbook.events FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
    "CREATE RULE r AS ON INSERT TO runbook.approvals DO ALSO NOTIFY x",
    "ALTER TABLE runbook.runs ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE runbook.events ALTER COLUMN summary SET DEFAULT pg_catalog.md5(pg_catalog.random()::text)",
])
def test_a_journal_changed_behind_the_tools_back_is_refused(env, tamper):
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    env.pg.execute(tamper.format(owner=sql.Identifier(env.owner).as_string(None)))
    rows, before = _journal_rows(env), world(env.pg)
    with pytest.raises(Refused) as err:
        commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert "pg-runbook did not make its journal that way" in err.value.message
    assert (_journal_rows(env), world(env.pg)) == (rows, before)


def _central(env) -> str:
    name = f"central_{env.pg.suffix}"
    env.pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    cluster = env.pg.rc.cluster
    return f"postgresql://postgres@/{name}?host={cluster.socket_dir}&port={cluster.port}"


def test_a_shared_store_never_lends_one_projects_soak_to_another(env, tmp_path):
    """Item 8: projects falcon and raptor share a central store, both with `staging` and the same
    role section. falcon's staging soak passes; raptor's promotion is still closed."""
    central = _central(env)
    try:
        falcon = tmp_path / "falcon"
        write_project(falcon, spec_dict(env.role, owner=env.owner, soak=SHORT, app="falcon"))
        raptor = tmp_path / "raptor"
        write_project(raptor, spec_dict(env.role, owner=env.owner, soak=SHORT, app="raptor", extra_envs={
            "prod": {"provider": "local", "database": {"dsn_env": "RB_TEST_ADMIN_DSN"},
                     "app": {"dotenv": ".runbook/prod.env"}, "promote_from": "staging"}}))
        from runbook.project import load

        commands.provision(load(falcon / "runbook.yaml"), "staging", yes=True, environ=env.environ, state=central)
        store = state.open_store(central, admin_dsn=None, base_dir=falcon, env="staging")
        try:
            store._exec(store._q("UPDATE {t} SET started_at = started_at - 10", t="soaks"))
        finally:
            store.close()
        passed = commands.soak(load(falcon / "runbook.yaml"), "staging", environ=env.environ, state=central)
        assert passed.data["soak"]["state"] == "passed", passed.data
        assert load(falcon / "runbook.yaml").role.digest() == load(raptor / "runbook.yaml").role.digest()
        with pytest.raises(GateClosed) as err:
            commands.promote(load(raptor / "runbook.yaml"), "prod", sign_off="Ada", yes=True, environ=env.environ,
                             state=central)
        assert "no soak on record" in err.value.message
        history = commands.history(load(raptor / "runbook.yaml"), "staging", environ=env.environ, state=central)
        assert history.data.get("runs", []) == []
    finally:
        env.pg.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(central.split("/")[3].split("?")[0])))


def test_a_journal_from_before_the_app_key_stays_readable(env):
    """Migrate, don't orphan: a journal whose tables lack the app column (written by an earlier
    pg-runbook) gets it on first open, and its rows go to the project of this database."""
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    for table in state.KEYED:
        env.pg.execute(sql.SQL("ALTER TABLE {} DROP COLUMN app").format(sql.Identifier("runbook", table)))
    old_runs = env.pg.execute("SELECT count(*) FROM runbook.runs")[0][0]
    history = commands.history(env.project(), "staging", environ=env.environ)
    assert len(history.data["runs"]) == old_runs and old_runs >= 1
    assert env.pg.execute("SELECT count(*) FROM runbook.runs WHERE app IS DISTINCT FROM 'raptor'")[0][0] == 0


def test_a_sqlite_journal_from_before_the_app_key_is_claimed_by_its_project(tmp_path):
    import sqlite3

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        for ddl in state._SQLITE_DDL:
            conn.execute(ddl.replace(", app TEXT)", ")").replace(",\n        app TEXT)", ")"))
        conn.execute("INSERT INTO runs (env, command, status, started_at) VALUES ('staging', 'provision', 'ok', 1)")
    assert "app" not in [c[1] for c in sqlite3.connect(path).execute("PRAGMA table_info(runs)")]
    store = state.SqliteStore(path, app="raptor")
    try:
        assert [r["command"] for r in store.runs("staging")] == ["provision"]
    finally:
        store.close()
    other = state.SqliteStore(path, app="falcon")
    try:
        assert other.runs("staging") == []
    finally:
        other.close()
