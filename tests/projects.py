"""Writing test projects: a runbook.yaml pointing at a test database, and a dotenv app."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

from runbook import project as projects


def spec_dict(role: str, *, owner: str | None = None, env: str = "staging", dsn_env: str = "RB_TEST_ADMIN_DSN",
              schemas: dict[str, Any] | None = None, deny: list[str] | None = None, extra_envs: dict[str, Any] | None = None,
              soak: dict[str, Any] | None = None, restart: str | None = None, app: str = "raptor") -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1,
        "app": app,
        "role": {
            "name": role,
            "schemas": schemas or {"public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"],
                                              "sequences": ["USAGE", "SELECT"]}},
            "deny": ["alembic_version", "schema_migrations"] if deny is None else deny,
        },
        "config": {"url_var": "RAPTOR_APP_DATABASE_URL"},
        "flag": {"name": "FLAG_RAPTOR_APP_ROLE_SEPARATION", "on_value": "1", "off_value": "0"},
        "environments": {
            env: {"provider": "local", "database": {"dsn_env": dsn_env},
                  "app": {"dotenv": f".runbook/{env}.env", **({"restart": restart} if restart else {})}},
        },
    }
    if owner:
        data["role"]["owner"] = owner
    if soak:
        data["soak"] = soak
    if extra_envs:
        data["environments"].update(extra_envs)
    return data


# Environments on every other platform, declared beside a local one: what a rollback of the local
# environment must not import the libraries of (tests/unit/test_imports.py, benchmarks/latency.py).
OTHER_PLATFORM_ENVS: dict[str, Any] = {
    "prod-aws": {"provider": "rds", "database": {"instance": "raptor-prod", "region": "eu-west-1"},
                 "app": {"cluster": "raptor", "service": "web", "url_name": "raptor/db-url",
                         "flag_parameter": "/raptor/flag"}},
    "prod-heroku": {"provider": "heroku", "database": {"addon": "DATABASE"}, "app": {"name": "raptor-prod"}},
    "prod-gcp": {"provider": "cloudsql",
                 "database": {"project": "raptor-prod-123", "instance": "main", "admin_password_env": "PGPW"},
                 "app": {"project": "raptor-prod-123", "region": "europe-west1", "service": "web",
                         "url_secret": "raptor-url"}},
}


def write_project(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "runbook.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(path: Path) -> projects.Project:
    return projects.load(path)


def dotenv(directory: Path, env: str = "staging") -> dict[str, str]:
    from dotenv import dotenv_values

    path = directory / ".runbook" / f"{env}.env"
    return dict(dotenv_values(path)) if path.exists() else {}


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
