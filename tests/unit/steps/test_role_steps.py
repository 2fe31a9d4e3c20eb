"""role, rotate_password, role_drift: role facts in, Changes out."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.base import Credential, DatabaseInfo
from runbook import roles
from runbook.app_url import UrlState
from runbook.changes import PasswordChange
from runbook.errors import ConfigError, Refused
from runbook.steps.role import EnsureRole, RoleDrift, RoleObserved, RotateObserved, RotatePassword
from tests.unit.steps.conftest import OWNER, ROLE, World, make_world

IDENT = roles.Identity("raptor", "staging", "raptor")
SAFE = roles.RoleFacts(ROLE, True, can_login=True, comment=IDENT.marker())


def text(change) -> str:
    return change.sql_text()


def test_a_missing_role_is_created_with_a_password_the_change_carries(world: World):
    observed = RoleObserved(facts=roles.RoleFacts(ROLE, False), identity=IDENT)
    ctx = world.ctx()
    changes = EnsureRole().plan(ctx, observed)
    assert [c.summary.split(" ")[0] for c in changes] == ["create", "mark"]
    create = changes[0]
    assert isinstance(create, PasswordChange) and create.password is not None and len(create.password.reveal()) == 40
    assert text(create).startswith(f'CREATE ROLE "{ROLE}" WITH LOGIN NOSUPERUSER')
    assert text(create).endswith("PASSWORD '****'")
    assert ctx.state.new_password is None           # nothing parked: apply hands it on


def test_iam_roles_are_created_without_a_password(tmp_path: Path):
    world = make_world(tmp_path, info=DatabaseInfo(engine="postgres", password_auth=False, role_grants=("rds_iam",)))
    changes = EnsureRole().plan(world.ctx(), RoleObserved(facts=roles.RoleFacts(ROLE, False), identity=IDENT))
    assert not isinstance(changes[0], PasswordChange)
    assert "(no password)" in changes[0].summary
    assert any('GRANT "rds_iam" TO' in text(c) for c in changes[2:])


def test_a_managed_role_that_matches_plans_nothing(world: World):
    url = UrlState("postgresql://raptor_app:x@db.internal/raptor", True)
    assert EnsureRole().plan(world.ctx(), RoleObserved(facts=SAFE, identity=IDENT, url=url)) == []


def test_unsafe_attributes_are_taken_away_and_a_broken_url_gets_a_new_password(world: World):
    facts = roles.RoleFacts(ROLE, True, can_login=True, createdb=True, comment=IDENT.marker())
    url = UrlState("postgresql://raptor_app:old@db.internal/raptor", False, "password authentication failed")
    changes = EnsureRole().plan(world.ctx(), RoleObserved(facts=facts, identity=IDENT, url=url))
    assert text(changes[0]) == f'ALTER ROLE "{ROLE}" WITH NOCREATEDB'
    assert isinstance(changes[-1], PasswordChange)
    assert "password authentication failed" in changes[-1].summary
    assert text(changes[-1]) == f"ALTER ROLE \"{ROLE}\" WITH LOGIN PASSWORD '****'"


def test_an_adopted_role_is_marked(world: World):
    facts = roles.RoleFacts(ROLE, True, can_login=True)
    changes = EnsureRole().plan(world.ctx(), RoleObserved(facts=facts, identity=IDENT, adopting=True))
    assert [c.summary for c in changes] == [f"mark {ROLE} as managed by pg-runbook ({IDENT})"]


def test_bypass_the_admin_cannot_give_is_refused_before_any_change(world: World):
    observed = RoleObserved(facts=roles.RoleFacts(ROLE, False), identity=IDENT, bypass_refused="the admin lacks BYPASSRLS")
    with pytest.raises(Refused, match="rls: bypass: the admin lacks BYPASSRLS"):
        EnsureRole().plan(world.ctx(), observed)


def test_api_credentials_are_created_through_the_platform_or_left_alone(tmp_path: Path):
    world = make_world(tmp_path, info=DatabaseInfo(engine="postgres", credentials="api"))
    world.db.key = "heroku"
    assert [c.summary for c in EnsureRole().plan(world.ctx(), RoleObserved())] == \
        [f"create credential {ROLE} through the heroku API"]
    held = Credential(ROLE, ROLE, "h", 5432, "d")
    assert EnsureRole().plan(world.ctx(), RoleObserved(credential=held)) == []


def test_rotation_plans_one_password_change(world: World):
    changes = RotatePassword().plan(world.ctx(), RotateObserved(facts=SAFE))
    assert len(changes) == 1 and isinstance(changes[0], PasswordChange) and changes[0].password is not None
    assert changes[0].summary == f"set a new password for {ROLE} (rotation)"


def test_rotation_of_a_missing_role_is_bad_configuration(world: World):
    with pytest.raises(ConfigError, match="run `runbook provision --env staging` first"):
        RotatePassword().plan(world.ctx(), RotateObserved(facts=roles.RoleFacts(ROLE, False)))


def test_iam_roles_have_no_password_to_rotate(tmp_path: Path):
    world = make_world(tmp_path, info=DatabaseInfo(engine="postgres", password_auth=False))
    assert RotatePassword().plan(world.ctx(), RotateObserved(facts=SAFE)) == []
    assert any("IAM tokens" in n for n in world.session.take_notes())


def test_api_rotation_goes_through_the_platform(tmp_path: Path):
    world = make_world(tmp_path, info=DatabaseInfo(engine="postgres", credentials="api"))
    held = Credential(ROLE, ROLE, "h", 5432, "d")
    assert [c.summary for c in RotatePassword().plan(world.ctx(), RotateObserved(credential=held))] == \
        [f"rotate credential {ROLE} through the local API"]
    with pytest.raises(ConfigError):
        RotatePassword().plan(world.ctx(), RotateObserved())


def test_role_drift_revokes_memberships_the_spec_does_not_give(world: World):
    facts = roles.RoleFacts(ROLE, True, can_login=True, member_of=(OWNER,), comment=IDENT.marker())
    changes = RoleDrift().plan(world.ctx(), facts)
    assert [text(c) for c in changes] == [f'REVOKE "{OWNER}" FROM "{ROLE}"']
