"""A `roles:` project for the providers' contract fakes: an app role (DML + flag), a read-only
role (SELECT on tables and sequences, no flag) and, where the platform can express it, a
migrator that is a member of the owner (SET ROLE only) or a catalog-only CI role."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.projects import write_project as write_yaml

APP_URL, RO_URL, MIG_URL, CI_URL = ("RAPTOR_APP_DATABASE_URL", "RAPTOR_READONLY_DATABASE_URL",
                                    "RAPTOR_MIGRATOR_DATABASE_URL", "RAPTOR_CI_DATABASE_URL")


def roles_block(app: str, ro: str, *, flag: str, owner: str | None = None, migrator: str | None = None,
                ci: str | None = None, member_of: str | None = None) -> dict[str, Any]:
    own = {"owner": owner} if owner else {}
    out: dict[str, Any] = {
        app: {**own, "url_var": APP_URL, "flag": {"name": flag, "on_value": "1", "off_value": "0"},
              "schemas": {"public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"], "sequences": ["USAGE", "SELECT"]}}},
        ro: {**own, "url_var": RO_URL, "schemas": {"public": {"tables": ["SELECT"], "sequences": ["SELECT"]}}},
    }
    if migrator:
        out[migrator] = {**own, "url_var": MIG_URL, "member_of": [member_of or owner], "schemas": {"public": {}},
                         "deny_presets": [], "deny": []}
    if ci:
        out[ci] = {**own, "url_var": CI_URL, "schemas": {"public": {}}, "deny_presets": [], "deny": []}
    return out


def write_roles_project(directory: Path, roles: dict[str, Any], environment: dict[str, Any], *,
                        app: str = "raptor", settings: dict[str, Any] | None = None) -> Path:
    data: dict[str, Any] = {"version": 1, "app": app, "roles": roles}
    if settings:
        data["settings"] = settings
    data["environments"] = {"staging": environment}
    return write_yaml(directory, data)


def login(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def denied(conn: psycopg.Connection, statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def check_app(url: str, role: str, table: str = "orders") -> None:
    with login(url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role
        conn.execute(f"INSERT INTO {table} (total) VALUES (42)")
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= 1
        denied(conn, "SELECT * FROM alembic_version")
        denied(conn, "CREATE TABLE sneaky (x int)")


def check_readonly(url: str, role: str, table: str = "orders") -> None:
    with login(url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= 1
        denied(conn, f"INSERT INTO {table} (total) VALUES (1)")
        denied(conn, f"DELETE FROM {table}")
        denied(conn, "SELECT * FROM alembic_version")
        denied(conn, "CREATE TABLE sneaky (x int)")


def check_catalog_only(url: str, role: str, table: str = "orders") -> None:
    with login(url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role
        assert conn.execute("SELECT count(*) FROM pg_catalog.pg_class WHERE relname = %s", (table,)).fetchone()[0] == 1
        denied(conn, f"SELECT * FROM public.{table}")
        denied(conn, "CREATE TABLE public.sneaky (x int)")


def diagnosed_clean_roles(diag, names: dict[str, bool]) -> None:
    """diagnose over several roles: each role's checks pass, the flag only for the roles with one."""
    for name, has_flag in names.items():
        mine = [(c.name, c.status) for c in diag.checks if c.role == name]
        want = [("role", "pass"), ("grants", "pass"), ("url", "pass")] + ([("flag", "pass")] if has_flag else [])
        assert mine == want, (name, [(c.name, c.status, c.detail) for c in diag.checks if c.role == name])
