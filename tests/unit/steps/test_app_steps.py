"""url, unset_url, flag, restart: what the app's config holds (and the journal) in, Changes out."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.base import Credential, DatabaseInfo, Digest
from runbook.app_url import UrlState
from runbook.changes import CredentialChange, SoakChange
from runbook.context import RunState
from runbook.errors import ConfigError
from runbook.secret import Secret
from runbook.steps.flag import FlagObserved, SetFlag
from runbook.steps.restart import Restart, RestartNeed
from runbook.steps.url import ConfiguredUrl, UnsetUrl, UrlObserved, WriteUrl
from tests.unit.steps.conftest import FLAG, ROLE, URL_VAR, World, make_world

WORKS = UrlState("postgresql://raptor_app:pw@db.internal:5432/raptor", True)
BROKEN = UrlState("postgresql://raptor_app:old@db.internal:5432/raptor", False, f"{URL_VAR} does not log in: denied")
NEW = Credential(ROLE, ROLE, "db.internal", 5432, "raptor", Secret("fresh-password"))


def test_a_url_that_logs_in_is_left_alone(world: World):
    assert WriteUrl().plan(world.ctx(), UrlObserved(WORKS, fresh=False, credential=None)) == []


def test_a_new_password_is_written_with_the_credential_the_change_carries(world: World):
    changes = WriteUrl().plan(world.ctx(), UrlObserved(WORKS, fresh=True, credential=NEW))
    assert len(changes) == 1 and isinstance(changes[0], CredentialChange)
    assert changes[0].credential == NEW
    assert changes[0].summary == f"set {URL_VAR} = {NEW.masked_url()} (new credential)"
    assert "fresh-password" not in changes[0].summary
    assert changes[0].data == {"url_digest": Digest.of(NEW.url()).sha256}


def test_a_broken_url_says_why_it_is_rewritten(world: World):
    changes = WriteUrl().plan(world.ctx(), UrlObserved(BROKEN, fresh=True, credential=NEW))
    assert changes[0].summary.endswith("(" + BROKEN.reason + ")")


def test_a_preview_shows_the_write_masked(world: World):
    changes = WriteUrl().plan(world.ctx(plan_only=True), UrlObserved(BROKEN, fresh=False, credential=None))
    assert [c.summary for c in changes] == [f"set {URL_VAR} = postgres://{ROLE}:****@… ({BROKEN.reason})"]


def test_an_api_credential_is_attached_in_a_preview(tmp_path: Path):
    world = make_world(tmp_path, info=DatabaseInfo(engine="postgres", credentials="api"))
    changes = WriteUrl().plan(world.ctx(plan_only=True), UrlObserved(BROKEN, fresh=False, credential=None))
    assert changes[0].summary.startswith(f"attach credential {ROLE} to the app as {URL_VAR}")


def test_nothing_to_write_is_bad_configuration(world: World):
    with pytest.raises(ConfigError, match="the role step must run before url"):
        WriteUrl().plan(world.ctx(), UrlObserved(BROKEN, fresh=False, credential=None,
                                                 missing="no new password; the role step must run before url"))


def test_unset_url_removes_what_is_there(world: World):
    assert UnsetUrl().plan(world.ctx(), ConfiguredUrl(None)) == []
    [change] = UnsetUrl().plan(world.ctx(), ConfiguredUrl("postgresql://raptor_app:pw@db/raptor"))
    assert change.summary == f"remove {URL_VAR} (postgresql://raptor_app:****@db/raptor) from the app's config"
    assert not change.reversible
    [digest] = UnsetUrl().plan(world.ctx(), ConfiguredUrl(Digest("ab" * 32)))
    assert "sha256:abababababab…" in digest.summary


def test_flag_on_sets_the_on_value_and_starts_the_soak_as_a_change_that_owes_no_restart(world: World):
    changes = SetFlag({"value": "on"}).plan(world.ctx(), FlagObserved("0", soak_start="flag on"))
    assert [c.summary for c in changes] == [f"set {FLAG}='1' (was '0')", "start the soak clock (flag on)"]
    assert changes[0].touches_app and isinstance(changes[1], SoakChange) and not changes[1].touches_app


def test_flag_already_on_plans_nothing(world: World):
    assert SetFlag({"value": True}).plan(world.ctx(), FlagObserved("1")) == []        # YAML 1.1 `on`
    assert SetFlag({"value": "on"}).plan(world.ctx(), FlagObserved(Digest.of("1"))) == []


def test_flag_off_ends_a_soak_the_journal_holds(world: World):
    changes = SetFlag({"value": "off"}).plan(world.ctx(), FlagObserved("1", soak_open=True))
    assert [c.summary.split(":")[0] for c in changes] == [f"set {FLAG}='0' (was '1')", "end the soak"]
    assert isinstance(changes[1], SoakChange) and not changes[1].start


def test_flag_value_must_be_on_or_off(world: World):
    with pytest.raises(ConfigError, match="on or off"):
        SetFlag({"value": "maybe"}).plan(world.ctx(), FlagObserved(None))


def test_restart_follows_a_change_of_this_run(world: World):
    assert [c.summary for c in Restart().plan(world.ctx(), RestartNeed(now=True))] == ["restart the app (dotenv)"]
    assert Restart().plan(world.ctx(), RestartNeed()) == []


def test_restart_pays_what_an_earlier_run_owes(world: World):
    [change] = Restart().plan(world.ctx(), RestartNeed(owed={"run_id": 7, "step": "url"}))
    assert change.summary == "restart the app (dotenv): run #7 changed its config (url) and did not restart it"


def test_no_restart_where_the_platform_restarts_or_none_is_configured(world: World):
    world.app.config_change_restarts = True
    assert Restart().plan(world.ctx(), RestartNeed(now=True)) == []
    assert "restarts the app itself" in world.session.take_notes()[0]
    assert Restart({"always": True}).plan(world.ctx(), RestartNeed(now=True)) != []
    world.app.config_change_restarts, world.app.can_restart = False, False
    assert Restart().plan(world.ctx(), RestartNeed(now=True)) == []
    assert "no restart command configured" in world.session.take_notes()[0]


def test_restart_observes_what_the_engine_recorded(world: World):
    assert Restart().observe(world.ctx(state=RunState(app_changed=True))) == RestartNeed(now=True)
    assert Restart().observe(world.ctx(plan_only=True)) == RestartNeed()     # a preview without a journal
