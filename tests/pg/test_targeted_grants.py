"""drift --fix on a small share of the objects writes exactly those objects' ACLs.

`GRANT … ON ALL … IN SCHEMA` rewrites the pg_class row of every object in the schema; naming the
drifted ones rewrites only theirs. A rewritten row gets a new xmin, so comparing every table's
xmin before and after the fix shows which ACLs the fix wrote.
"""

from __future__ import annotations

from psycopg import sql

from runbook import commands

_XMIN = "SELECT c.relname, c.xmin::text FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'S')"


def _tables(env, n: int) -> None:
    with env.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(env.owner)))
        for i in range(n):
            conn.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY)").format(sql.Identifier(f"w{i:02d}")))


def test_a_small_drift_is_fixed_by_name_and_touches_nothing_else(env):
    _tables(env, 30)
    res = commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert res.exit_code == 0, res.messages
    role = sql.Identifier(env.role)
    env.pg.execute(sql.SQL("REVOKE ALL ON TABLE w03, w17 FROM {}").format(role))
    env.pg.execute(sql.SQL("REVOKE ALL ON SEQUENCE w05_id_seq FROM {}").format(role))
    env.pg.execute(sql.SQL("GRANT TRUNCATE ON TABLE w09 TO {}").format(role))

    plan = commands.drift(env.project(), "staging", environ=env.environ)
    assert plan.exit_code == 4
    before = dict(env.pg.execute(_XMIN))
    fixed = commands.drift(env.project(), "staging", fix=True, yes=True, environ=env.environ)
    assert fixed.exit_code == 0, fixed.messages
    summaries = [c.summary for s in fixed.steps for c in s.changes]
    assert any("on 2 tables in public by name" in s for s in summaries), summaries
    assert any("on 1 sequences in public by name" in s for s in summaries), summaries
    assert any(s.startswith("revoke TRUNCATE (beyond the spec) on 1 tables") for s in summaries), summaries
    assert not any("ON ALL" in (c.sql_text() or "") for s in fixed.steps for c in s.changes)

    after = dict(env.pg.execute(_XMIN))
    rewritten = {name for name, xmin in after.items() if before.get(name) != xmin}
    assert rewritten == {"w03", "w17", "w05_id_seq", "w09"}

    # converged, as the app sees it, and the deny list untouched
    again = commands.drift(env.project(), "staging", environ=env.environ)
    assert again.exit_code == 0, again.data.get("findings")
    with env.app_conn() as app:
        app.execute("INSERT INTO w03 DEFAULT VALUES")
        assert app.execute("SELECT count(*) FROM w17").fetchone()[0] == 0
        assert not app.execute("SELECT has_table_privilege('alembic_version', 'SELECT')").fetchone()[0]
        assert not app.execute("SELECT has_table_privilege('w09', 'TRUNCATE')").fetchone()[0]
