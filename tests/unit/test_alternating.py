"""Alternating rotation, the pure parts: the project file's new keys, the digest they stay out of,
and how the journal and the app's URL say which login is current."""

from __future__ import annotations

from datetime import timedelta

import pytest

from providers.base import Digest
from runbook import alternating as alt
from runbook import project
from runbook.app_url import UrlState
from runbook.errors import ConfigError
from tests.unit.test_project_file import BASE

# the digest of BASE as the code before `rotation` existed computed it (commit df1db01)
OLD_DIGEST = "91271e27ebbb127e"


def alternating(text: str = BASE) -> project.Project:
    return project.loads(text.replace("  owner: app_owner\n", "  owner: app_owner\n  rotation: alternating\n"))


def test_an_old_file_keeps_its_digest_and_rotation_stays_out_of_it():
    old = project.loads(BASE)
    assert old.role.rotation == "single" and old.role.logins == ("raptor_app",)
    assert old.role.digest() == OLD_DIGEST
    new = alternating()
    assert new.role.logins == ("raptor_app_a", "raptor_app_b")
    assert new.role.digest() == OLD_DIGEST      # how the password changes hands is not what the role may do


def test_drain_timeout_defaults_to_five_minutes():
    assert project.loads(BASE).spec.settings.drain_timeout == timedelta(minutes=5)
    text = BASE + "settings:\n  drain_timeout: 90s\n"
    assert project.loads(text).spec.settings.drain_timeout == timedelta(seconds=90)


def test_the_login_suffix_must_fit_in_63_bytes():
    name = "r" * 62
    with pytest.raises(ConfigError, match="longer than PostgreSQL's 63-byte limit"):
        alternating(BASE.replace("name: raptor_app\n", f"name: {name}\n"))
    assert project.loads(BASE.replace("name: raptor_app\n", f"name: {name}\n")).role.name == name
    assert alternating(BASE.replace("name: raptor_app\n", f"name: {'r' * 61}\n")).role.logins[1] == "r" * 61 + "_b"


def test_unknown_rotation_is_refused():
    with pytest.raises(ConfigError):
        project.loads(BASE.replace("  owner: app_owner\n", "  owner: app_owner\n  rotation: sometimes\n"))


def result(step: str, **data) -> dict:
    return {"step": step, "kind": "result", "data": data}


def test_the_journal_says_current_and_half_way_from_results_only():
    spec = alternating().role
    a, b = spec.logins
    history = [result("drain", current_login=a), result("rotate_password", rotating_to=b, **{"from": a})]
    assert alt.journal_turn(history, spec) == alt.Turn(current=a, pending=b)
    history.append(result("drain", current_login=b, retired_login=a))
    assert alt.journal_turn(history, spec) == alt.Turn(current=b, pending=None)
    # an intent proves nothing; a name that is not one of the logins is ignored
    history += [{"step": "rotate_password", "kind": "intent", "data": {"rotating_to": a}},
                result("rotate_password", rotating_to="postgres")]
    assert alt.journal_turn(history, spec) == alt.Turn(current=b, pending=None)
    history.append(result("url", url_digest="d", url_login=a))
    assert alt.journal_turn(history, spec).written == a


def test_the_apps_url_names_a_login_directly_or_through_a_pooler_tenant():
    spec = alternating().role
    a, b = spec.logins
    assert alt.url_login(spec, f"postgresql://{b}:pw@h/db") == b
    assert alt.url_login(spec, f"postgresql://{a}.tenantref:pw@h/db") == a
    assert alt.url_login(spec, "postgresql://raptor_app:pw@h/db") == "raptor_app"      # a single role, converting
    assert alt.url_login(spec, "postgresql://raptor_app_c:pw@h/db") is None
    assert alt.expected_login(spec, "postgresql://someone:pw@h/db") == a
    # a write-only store whose digest is the tool's: the login the journal says it wrote
    turn = alt.Turn(current=a, written=b)
    assert alt.app_login(spec, UrlState(Digest.of("x"), None, "write-only"), turn) == b
    assert alt.app_login(spec, UrlState(Digest.of("x"), False, "digest differs"), turn) is None
