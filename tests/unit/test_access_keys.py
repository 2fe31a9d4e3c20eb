"""`creators:` and `deny_presets:` on the role spec: their shape, what they deny and cover, and that
an old file's soak digest does not move (pinned values computed with the code before the keys)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runbook import grants
from runbook.catalog import CreatorFacts, Relation, SchemaFacts, Snapshot
from runbook.project import DENY_PRESETS, RoleSpec

FULL = {"r": frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}), "S": frozenset({"USAGE", "SELECT"})}


def test_old_files_keep_their_digests():
    # digests of these specs before creators/deny_presets existed (commit 943f6ae)
    assert RoleSpec(name="raptor_app", owner="app_owner",
                    deny=["alembic_version", "schema_migrations"]).digest() == "5833d0fd678d3392"
    assert RoleSpec(name="raptor_app").digest() == "bb6535939f3122db"
    assert RoleSpec(name="raptor_app", creators=[], deny_presets=["migrations"]).digest() == "bb6535939f3122db"


def test_writing_a_new_key_away_from_its_default_changes_the_digest():
    base = RoleSpec(name="raptor_app").digest()
    assert RoleSpec(name="raptor_app", creators=["migrator"]).digest() != base
    assert RoleSpec(name="raptor_app", deny_presets=[]).digest() != base


def test_denied_is_deny_plus_the_presets_and_typeorm_only_by_name():
    spec = RoleSpec(name="raptor_app", deny=["billing.invoices"])
    assert spec.denied[0] == "billing.invoices"
    assert set(spec.denied[1:]) == set(DENY_PRESETS["migrations"])
    assert "SequelizeMeta" in spec.denied and "migrations" not in spec.denied
    assert RoleSpec(name="raptor_app", deny=["migrations"]).denied[0] == "migrations"
    assert RoleSpec(name="raptor_app", deny=[], deny_presets=[]).denied == ()
    with pytest.raises(ValidationError):
        RoleSpec(name="raptor_app", deny_presets=["flyway"])


def test_creators_shape():
    spec = RoleSpec(name="raptor_app", owner="app_owner", creators=["migrator", "app_owner"])
    assert spec.creators_for("app_owner") == ("app_owner", "migrator")
    assert RoleSpec(name="raptor_app").creators_for("postgres") == ("postgres",)
    for bad in (["raptor_app"], ["Migrator"], ["migrator", "migrator"]):
        with pytest.raises(ValidationError):
            RoleSpec(name="raptor_app", creators=bad)


def _snap(spec: RoleSpec, by_creator, creators=None, global_defaults=None, relations=()) -> Snapshot:
    facts = SchemaFacts("public", True, "app_owner", True, False, by_creator.get("app_owner", {}), by_creator)
    return Snapshot(spec.name, True, "app_owner", {"public": facts}, list(relations), [],
                    creators=creators or {c: CreatorFacts(c, True) for c in spec.creators_for("app_owner")},
                    global_defaults=global_defaults or {})


def test_a_creator_without_default_privileges_is_drift_and_planned():
    spec = RoleSpec(name="raptor_app", owner="app_owner", creators=["migrator"])
    snap = _snap(spec, {"app_owner": FULL, "migrator": {}})
    found = [f for f in grants.findings(spec, snap) if f.kind == "default-missing"]
    assert [f.objects for f in found] == [("migrator",), ("migrator",)]
    assert "created by migrator" in found[0].detail
    statements = [c.statement.as_string(None) for c in grants.plan(spec, snap)]
    assert statements == [
        'ALTER DEFAULT PRIVILEGES FOR ROLE "migrator" IN SCHEMA "public" GRANT DELETE, INSERT, SELECT, UPDATE ON TABLES TO "raptor_app"',
        'ALTER DEFAULT PRIVILEGES FOR ROLE "migrator" IN SCHEMA "public" GRANT SELECT, USAGE ON SEQUENCES TO "raptor_app"']
    assert grants.plan(spec, _snap(spec, {"app_owner": FULL, "migrator": FULL})) == []


def test_a_creator_the_admin_cannot_act_for_is_left_out_of_the_plan_and_named():
    spec = RoleSpec(name="raptor_app", owner="app_owner", creators=["migrator"])
    creators = {"app_owner": CreatorFacts("app_owner", True), "migrator": CreatorFacts("migrator", True, can_alter=False)}
    snap = _snap(spec, {"app_owner": FULL}, creators)
    assert grants.plan(spec, snap) == []
    (refused,) = grants.refused_creators(spec, snap, "admin")
    assert "GRANT migrator TO admin" in refused.detail


def test_default_privileges_without_in_schema_are_revoked_and_per_schema_ones_relied_on():
    spec = RoleSpec(name="raptor_app", owner="app_owner")
    snap = _snap(spec, {"app_owner": {}}, global_defaults={"app_owner": {"r": frozenset({"SELECT", "TRUNCATE"})}})
    statements = [c.statement.as_string(None) for c in grants.plan(spec, snap)]
    assert 'ALTER DEFAULT PRIVILEGES FOR ROLE "app_owner" REVOKE SELECT, TRUNCATE ON TABLES FROM "raptor_app"' in statements
    assert any("IN SCHEMA \"public\" GRANT DELETE, INSERT, SELECT, UPDATE ON TABLES" in s for s in statements)
    assert any("in every schema (no IN SCHEMA)" in f.detail for f in grants.findings(spec, snap))


def test_plan_lists_the_preset_tables_found():
    spec = RoleSpec(name="raptor_app", deny=["alembic_version"])
    rels = [Relation("public", n, "r", "app_owner", frozenset(), frozenset())
            for n in ("SequelizeMeta", "alembic_version", "migrations", "orders")]
    assert grants.presets_found(spec, _snap(spec, {"app_owner": FULL}, relations=rels)) == ["public.SequelizeMeta"]
