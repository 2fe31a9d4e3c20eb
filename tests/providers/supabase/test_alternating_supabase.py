"""Alternating rotation on Supabase through the Supavisor-like front door: the logins' pooler
users are `{login}.{ref}`, the app's URL lives in write-only Edge Function secrets (the journal's
url result names the login it wrote), and the Edge Function connects as the current login."""

from __future__ import annotations

import pytest
import yaml

from runbook import commands, project as projects
from runbook.errors import CheckFailed
from tests.pg.test_alternating import _logins_dropped_first  # noqa: F401
from tests.providers.conftest import ran_ok
from tests.providers.supabase.conftest import FLAG, URL_VAR
from tests.providers.supabase.fake_supabase import REF
from tests.providers.supabase.test_engine_e2e import allow_the_role, world, write_project  # noqa: F401


def can_login(pg, name: str) -> bool:
    rows = pg.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (name,))
    return bool(rows and rows[0][0])


def test_provision_and_rotate_twice_through_supavisor(world, fake, supavisor, tmp_path, pg, admin):
    role = pg.role("raptor_app")
    a, b = f"{role}_a", f"{role}_b"
    project = write_project(tmp_path, pg, admin, role, port=supavisor.port)
    data = yaml.safe_load(project.path.read_text())
    data["role"]["rotation"] = "alternating"
    project.path.write_text(yaml.safe_dump(data, sort_keys=False))
    project = projects.load(project.path)
    # RLS: the first provision stops at verify until the role has a policy (as for a single role)
    with pytest.raises(CheckFailed):
        commands.provision(project, "staging", yes=True, environ=world)
    allow_the_role(pg, admin, role)               # the policy is the group's; both logins inherit it

    first = ran_ok(commands.provision, project, world)
    assert fake.invoke_function(URL_VAR, FLAG) == a
    assert f"{a}.{REF}" in supavisor.logins
    verify = next(s for s in first.steps if s.step == "verify")
    assert verify.verdict.status == "pass" and a in verify.verdict.detail
    # the secret is write-only: a second provision must not take it for broken and rotate it
    assert commands.provision(project, "staging", yes=True, environ=world).status == "unchanged"

    ran_ok(commands.rotate, project, world)
    assert fake.invoke_function(URL_VAR, FLAG) == b and not can_login(pg, a)
    ran_ok(commands.rotate, project, world)
    assert fake.invoke_function(URL_VAR, FLAG) == a and not can_login(pg, b)
    diag = commands.diagnose(project, "staging", environ=world)
    role_check = next(c for c in diag.checks if c.name == "role")
    assert role_check.status == "pass" and f"{a}'s" in role_check.detail and f"says {a} is current" in role_check.detail

    ran_ok(commands.retire, project, world)
    assert not can_login(pg, a) and not pg.execute("SELECT 1 FROM pg_roles WHERE rolname IN (%s, %s, %s)", (role, a, b))
