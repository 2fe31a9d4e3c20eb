"""The grant diff is pure: a Snapshot in, Changes and Findings out; no database needed."""

from psycopg import sql

from runbook import grants
from runbook.catalog import Relation, Routine, SchemaFacts, Snapshot
from runbook.project import RoleSpec

SPEC = RoleSpec(name="raptor_app", owner="app_owner",
                schemas={"public": {"tables": ["SELECT", "INSERT"], "sequences": ["USAGE"], "functions": ["EXECUTE"]}},
                deny=["alembic_version"])
FULL_DEFAULTS = {"r": frozenset({"SELECT", "INSERT"}), "S": frozenset({"USAGE"}), "f": frozenset({"EXECUTE"})}


def rel(name, held=(), direct=None, kind="r"):
    return Relation("public", name, kind, "app_owner", frozenset(held), frozenset(held if direct is None else direct))


def snap(relations, *, usage=True, create=False, defaults=None, routines=(), exists=True):
    facts = SchemaFacts("public", True, "app_owner", usage, create, FULL_DEFAULTS if defaults is None else defaults)
    return Snapshot("raptor_app", exists, "app_owner", {"public": facts}, list(relations), list(routines))


def text(changes):
    return [c.statement.as_string(None) for c in changes if isinstance(c.statement, sql.Composable)]


def test_converged_snapshot_plans_nothing_and_finds_nothing():
    s = snap([rel("orders", {"SELECT", "INSERT"}), rel("orders_id_seq", {"USAGE"}, kind="S"), rel("alembic_version")],
             routines=[Routine("public", "f()", "app_owner", True)])
    assert grants.plan(SPEC, s) == []
    assert grants.findings(SPEC, s) == []


def test_missing_grants_are_schema_wide_and_followed_by_deny_revokes():
    s = snap([rel("orders", {"SELECT"}), rel("alembic_version")])
    statements = text(grants.plan(SPEC, s))
    assert statements[0] == 'GRANT INSERT, SELECT ON ALL TABLES IN SCHEMA "public" TO "raptor_app"'
    assert statements[-1] == 'REVOKE ALL ON TABLE "public"."alembic_version" FROM "raptor_app"'


def test_denied_table_reachable_is_found_and_revoked():
    s = snap([rel("orders", {"SELECT", "INSERT"}), rel("alembic_version", {"SELECT"})])
    kinds = [f.kind for f in grants.findings(SPEC, s)]
    assert kinds == ["denied-reachable"]
    assert text(grants.plan(SPEC, s)) == ['REVOKE ALL ON TABLE "public"."alembic_version" FROM "raptor_app"']


def test_reachable_only_through_public_cannot_be_fixed_by_revoking_from_the_role():
    s = snap([rel("alembic_version", {"SELECT"}, direct=())])
    assert grants.plan(SPEC, s) == []
    assert "PUBLIC" in grants.unfixable(SPEC, s)[0].detail


def test_extra_privileges_and_create_are_revoked():
    s = snap([rel("orders", {"SELECT", "INSERT", "TRUNCATE"})], create=True)
    statements = text(grants.plan(SPEC, s))
    assert 'REVOKE CREATE ON SCHEMA "public" FROM "raptor_app"' in statements
    assert 'REVOKE TRUNCATE ON ALL TABLES IN SCHEMA "public" FROM "raptor_app"' in statements
    assert {f.kind for f in grants.findings(SPEC, s)} == {"schema-create", "extra-privilege"}


def test_missing_default_privileges_are_planned_for_the_owner():
    s = snap([], defaults={})
    statements = text(grants.plan(SPEC, s))
    assert ('ALTER DEFAULT PRIVILEGES FOR ROLE "app_owner" IN SCHEMA "public" GRANT INSERT, SELECT ON TABLES TO "raptor_app"'
            in statements)
    assert any("ON FUNCTIONS" in t for t in statements)


def test_role_missing_plans_everything():
    s = snap([rel("orders")], usage=False, defaults={}, exists=False)
    statements = text(grants.plan(SPEC, s))
    assert statements[0] == 'GRANT USAGE ON SCHEMA "public" TO "raptor_app"'
    assert len(statements) >= 4
