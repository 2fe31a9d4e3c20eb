"""Statement strategy: name the drifted objects when that writes fewer ACLs than ON ALL … IN SCHEMA."""

from psycopg import sql

from runbook import grants
from runbook.catalog import Relation, SchemaFacts, Snapshot
from runbook.project import RoleSpec

SPEC = RoleSpec(name="raptor_app", owner="app_owner",
                schemas={"public": {"tables": ["SELECT", "INSERT"], "sequences": ["USAGE"]}},
                deny=["alembic_version"])
DEFAULTS = {"r": frozenset({"SELECT", "INSERT"}), "S": frozenset({"USAGE"})}
OK_T, OK_S = frozenset({"SELECT", "INSERT"}), frozenset({"USAGE"})


def rel(name, held, direct=None, kind="r"):
    held = frozenset(held)
    return Relation("public", name, kind, "app_owner", held, held if direct is None else frozenset(direct))


def snap(relations, *, exists=True):
    facts = SchemaFacts("public", True, "app_owner", True, False, DEFAULTS)
    return Snapshot("raptor_app", exists, "app_owner", {"public": facts}, sorted(relations, key=lambda r: r.name), [])


def schema(n, broken=(), over=(), seq_broken=()):
    rels = [rel("alembic_version", ())]
    for i in range(n):
        t = f"t{i:04d}"
        held = {"SELECT"} if t in broken else ({"SELECT", "INSERT", "TRUNCATE"} if t in over else OK_T)
        rels.append(rel(t, held))
        rels.append(rel(f"{t}_id_seq", () if f"{t}_id_seq" in seq_broken else OK_S, kind="S"))
    return snap(rels)


def text(changes):
    return [c.statement.as_string(None) for c in changes if isinstance(c.statement, sql.Composable)]


def test_a_small_drift_is_granted_by_name_and_the_deny_list_is_left_alone():
    changes = grants.plan(SPEC, schema(100, broken={"t0003", "t0042"}, seq_broken={"t0007_id_seq"}))
    assert text(changes) == [
        'GRANT INSERT, SELECT ON TABLE "public"."t0003", "public"."t0042" TO "raptor_app"',
        'GRANT USAGE ON SEQUENCE "public"."t0007_id_seq" TO "raptor_app"',
    ]
    # the plan says which strategy it chose and why
    assert changes[0].summary == ("grant INSERT, SELECT on 2 tables in public by name "
                                  "(2 of 100 tables need it: cheaper than ON ALL TABLES)")
    assert changes[0].count == 2


def test_a_drift_over_most_of_the_schema_is_one_on_all_statement_then_the_deny_revoke():
    broken = {f"t{i:04d}" for i in range(60)}
    statements = text(grants.plan(SPEC, schema(100, broken=broken)))
    assert statements == ['GRANT INSERT, SELECT ON ALL TABLES IN SCHEMA "public" TO "raptor_app"',
                          'REVOKE ALL ON TABLE "public"."alembic_version" FROM "raptor_app"']


def test_the_break_even_is_half_the_objects():
    assert grants._strategy(49, 100) == "named"
    assert grants._strategy(50, 100) == "all"
    assert grants._strategy(1, 1) == "all"
    assert grants._strategy(0, 100) == "all"


def test_a_new_role_gets_on_all():
    rels = [rel(f"t{i}", ()) for i in range(10)]
    statements = text(grants.plan(SPEC, snap(rels, exists=False)))
    assert 'GRANT INSERT, SELECT ON ALL TABLES IN SCHEMA "public" TO "raptor_app"' in statements
    assert not any(" ON TABLE " in s and s.startswith("GRANT") for s in statements)


def test_surplus_is_revoked_by_name_grouped_by_what_is_beyond_the_spec():
    rels = [rel(f"t{i:04d}", OK_T) for i in range(50)]
    rels[3] = rel("t0003", OK_T | {"TRUNCATE"})
    rels[9] = rel("t0009", OK_T | {"TRUNCATE"})
    rels[20] = rel("t0020", OK_T | {"TRIGGER", "TRUNCATE"})
    assert text(grants.plan(SPEC, snap(rels))) == [
        'REVOKE TRIGGER, TRUNCATE ON TABLE "public"."t0020" FROM "raptor_app"',
        'REVOKE TRUNCATE ON TABLE "public"."t0003", "public"."t0009" FROM "raptor_app"',
    ]


def test_named_statements_are_chunked():
    n = 2 * grants.CHUNK + 500
    broken = {f"t{i:04d}" for i in range(0, n, 2)}          # 1,250 of 2,500 would be half: take fewer
    broken = set(sorted(broken)[: grants.CHUNK + 10])
    changes = [c for c in grants.plan(SPEC, schema(n, broken=broken)) if "TABLE" in c.statement.as_string(None)]
    assert [c.count for c in changes] == [grants.CHUNK, 10]
    named = [s.split(" ON TABLE ")[1].split(" TO ")[0] for s in text(changes)]
    assert sum(part.count('"public".') for part in named) == len(broken)
    assert changes[0].summary.startswith(f"grant INSERT, SELECT on {grants.CHUNK} of {grants.CHUNK + 10} tables")
