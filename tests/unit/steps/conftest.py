"""A world without a database: a project, fake adapters that answer from fixed facts, and an
admin connection that fails the test if a plan touches it. Steps are exercised pyinfra-style:
facts in (the `observe` result, built by hand), Changes out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from providers.base import Credential, DatabaseInfo, Digest
from runbook.context import Context, RunState, StepContext
from runbook.project import Project
from runbook.secret import Secret
from tests.projects import load, spec_dict, write_project

ROLE = "raptor_app"
OWNER = "app_owner"
URL_VAR = "RAPTOR_APP_DATABASE_URL"
FLAG = "FLAG_RAPTOR_APP_ROLE_SEPARATION"


# members a step looks up with getattr(…, default) (the contract engineer moves them onto the Protocols)
OPTIONAL = frozenset({"adjust_existing_role", "url_is_pooled", "url_problem", "stored_config", "close"})


def _refuse(what: str, name: str) -> Any:
    if name.startswith("__") or name in OPTIONAL:
        raise AttributeError(name)
    raise AssertionError(f"plan() used the {what} ({name})")


class NoDatabase:
    """Stands in for the admin connection: `plan` must never use it."""

    closed = False

    def __getattr__(self, name: str) -> Any:
        return _refuse("admin connection", name)


@dataclass
class FakeDb:
    info: DatabaseInfo
    key: str = "local"
    held: Credential | None = None          # API credentials: what the platform holds
    calls: list[str] = field(default_factory=list)
    adjusts_existing_roles: bool = False
    routes_logins: bool = False

    def describe(self) -> DatabaseInfo:
        return self.info

    def credential_for(self, user: str, password: Secret | None) -> Credential:
        return Credential(name=user, user=user, host="db.internal", port=5432, database="raptor", password=password)

    def credential(self, name: str) -> Credential | None:
        self.calls.append(f"credential {name}")
        return self.held

    def __getattr__(self, name: str) -> Any:
        return _refuse("database provider", name)


@dataclass
class FakeApp:
    config: dict[str, str | Digest | None] = field(default_factory=dict)
    key: str = "dotenv"
    config_change_restarts: bool = False
    can_restart: bool = True
    url_is_pooled: bool = False

    def get_config(self, keys: list[str]) -> dict[str, str | Digest | None]:
        return {k: self.config.get(k) for k in keys}

    # the app side's intents (providers.base.AppPlatform), read from the same fixed facts
    def received_url(self) -> str | Digest | None:
        return self.config.get(URL_VAR)

    def received_flag(self) -> str | Digest | None:
        return self.config.get(FLAG)

    def stored_url(self) -> str | Digest | None:
        return self.config.get(URL_VAR)

    def url_problem(self, url: str) -> str | None:
        return None

    def __getattr__(self, name: str) -> Any:
        return _refuse("app platform", name)


@dataclass
class FakeStore:
    soaks: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def events(self, env: str, limit: int = 200) -> list[dict[str, Any]]:
        return list(self.history)

    def turn_events(self, env: str, role: str | None, logins: tuple[str, ...],
                    converted: str | None = None) -> list[dict[str, Any]]:
        return list(self.history)      # the whole history replays to the same turn as its deciding events

    def open_soak(self, env: str) -> dict[str, Any] | None:
        return next((s for s in reversed(self.soaks) if s["status"] == "running"), None)

    def latest_soak(self, env: str) -> dict[str, Any] | None:
        return self.soaks[-1] if self.soaks else None


@dataclass
class World:
    project: Project
    session: Context
    db: FakeDb
    app: FakeApp

    def ctx(self, *, plan_only: bool = False, state: RunState | None = None) -> StepContext:
        return StepContext(self.session, state or RunState(), plan_only)


def make_world(tmp_path: Path, *, info: DatabaseInfo | None = None, config: Mapping[str, Any] | None = None,
               store: FakeStore | None = None, **spec: Any) -> World:
    data = spec_dict(ROLE, owner=OWNER, **spec)
    project = load(write_project(tmp_path, data))
    db = FakeDb(info or DatabaseInfo(engine="postgres", version="18"))
    app = FakeApp(dict(config or {}))
    session = Context(project=project, env=project.env("staging"), command="provision", environ={})
    session._db, session._app, session._info, session._owner = db, app, db.info, OWNER   # type: ignore[assignment]
    session._admin = NoDatabase()
    session.store = store
    return World(project, session, db, app)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)
