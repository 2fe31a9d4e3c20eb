"""The project file (runbook.yaml) as pydantic models.

Every error names file:line and, for an unknown key, the nearest known one. Provider-specific
blocks (`database:`, `app:`) are validated by the model their provider registers, so this module
knows the shape of the runbook, not of any platform.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

import providers
from runbook.durations import format_duration, parse_duration, parse_timeout
from runbook.errors import ConfigError
from runbook.shell import pass_env_names, secret_env_names
from runbook.yamlfile import Located, load_file, load_text

DEFAULT_FILE = "runbook.yaml"

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"}),
]
# A timeout: positive and at most 24d (PostgreSQL and poll(2) take milliseconds as a C int; 0 is "for ever")
Timeout = Annotated[
    timedelta,
    BeforeValidator(parse_timeout),
    PlainSerializer(format_duration, return_type=str),
    Field(json_schema_extra={"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"}),
]
# Variables a configured command gets beyond the minimal environment (runbook/shell.py)
PassEnv = Annotated[list[str], BeforeValidator(pass_env_names)]
# PostgreSQL's MAX_BACKENDS: no server can have more connections than this
MAX_CONNECTIONS = 262143

# Role and schema names: plain lower-case SQL identifiers. Quoted, mixed-case or exotic names
# are refused on purpose: they are where copy-pasted runbooks go wrong.
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_SCHEMA_IDENT = re.compile(r"^[a-z_][a-z0-9_$]*$")
_RESERVED_ROLES = {
    "postgres", "public", "none", "current_user", "session_user", "current_role", "user",
    "admin", "rdsadmin", "rds_superuser", "rds_password", "rds_iam", "rds_replication",
    "cloudsqlsuperuser", "cloudsqladmin", "supabase_admin", "authenticator", "anon",
    "authenticated", "service_role", "all",
}
_RESERVED_PREFIXES = ("pg_", "rds_", "cloudsql", "supabase_", "heroku")
# Cloud SQL's database user for a service account (IAM database authentication): the account's
# email without .gserviceaccount.com. Not a plain identifier, so only `auth: iam` on Cloud SQL
# takes it; psycopg.sql quotes it wherever it goes.
IAM_SERVICE_ACCOUNT_USER = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]\.iam$")

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")
FUNCTION_PRIVILEGES = ("EXECUTE",)

# `deny_presets: [migrations]`: the bookkeeping tables of common migration tools. TypeORM's
# plain `migrations` is left out on purpose (apps use that name for their own data): name it in
# `deny:`. "SequelizeMeta" is a quoted mixed-case name; it is only ever matched against
# pg_class.relname and rendered with sql.Identifier.
DENY_PRESETS: dict[str, tuple[str, ...]] = {
    "migrations": (
        "alembic_version", "schema_migrations", "ar_internal_metadata", "flyway_schema_history",
        "databasechangelog", "databasechangeloglock", "knex_migrations", "knex_migrations_lock",
        "_prisma_migrations", "django_migrations", "goose_db_version", "atlas_schema_revisions",
        "__diesel_schema_migrations", "SequelizeMeta", "gorp_migrations",
    ),
}


def check_identifier(value: str, what: str, *, pattern: re.Pattern[str] = _IDENT) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty name")
    if len(value.encode("utf-8")) > 63:
        raise ValueError(f"{what} {value!r} is longer than PostgreSQL's 63-byte limit")
    if not pattern.match(value):
        raise ValueError(
            f"{what} {value!r} is not a plain identifier (lower-case letters, digits and _; "
            "no quotes, spaces or punctuation)"
        )
    return value


def check_role_name(value: str, what: str = "role name") -> str:
    check_identifier(value, what)
    if value in _RESERVED_ROLES or value.startswith(_RESERVED_PREFIXES):
        raise ValueError(f"{what} {value!r} is reserved by PostgreSQL or a managed platform")
    return value


def check_url_var(value: str) -> str:
    """A config variable the role's URL is written to (`config.url_var`, a `roles:` entry's)."""
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        raise ValueError(f"url_var {value!r} must be an UPPER_SNAKE_CASE variable name")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _privileges(allowed: tuple[str, ...], what: str):
    def check(value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{what} privileges are a list such as {list(allowed[:2])}")
        out: list[str] = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"{what} privilege {item!r} is not a name")
            name = item.strip().upper()
            if name == "ALL":
                out.extend(p for p in allowed if p not in out)
                continue
            if name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                more = f"; did you mean {hint[0]}?" if hint else ""
                raise ValueError(f"{item!r} is not a {what} privilege (one of {', '.join(allowed)}){more}")
            if name not in out:
                out.append(name)
        return out

    return check


TablePrivs = Annotated[list[str], BeforeValidator(_privileges(TABLE_PRIVILEGES, "table"))]
SequencePrivs = Annotated[list[str], BeforeValidator(_privileges(SEQUENCE_PRIVILEGES, "sequence"))]
FunctionPrivs = Annotated[list[str], BeforeValidator(_privileges(FUNCTION_PRIVILEGES, "function"))]


class SchemaGrants(Strict):
    """What the role may do on everything (present and future) in one schema."""

    tables: TablePrivs = Field(default_factory=list, description="Privileges on every table and view, now and future",
                               examples=[["SELECT", "INSERT", "UPDATE", "DELETE"], ["SELECT"]])
    sequences: SequencePrivs = Field(default_factory=list, description="Privileges on every sequence (serial and "
                                     "identity columns need USAGE)", examples=[["USAGE", "SELECT"]])
    functions: FunctionPrivs = Field(default_factory=list, description="Privileges on every function and procedure",
                                     examples=[["EXECUTE"]])


class RoleSpec(Strict):
    name: str = Field(description="The application's login role", examples=["raptor_app"])
    owner: str | None = Field(
        default=None,
        description="Creator of future objects (default privileges are set FOR ROLE owner); "
        "default: the admin connection's user",
        examples=["app_owner"],
    )
    schemas: dict[str, SchemaGrants] = Field(
        default_factory=lambda: {"public": SchemaGrants(
            tables=["SELECT", "INSERT", "UPDATE", "DELETE"], sequences=["USAGE", "SELECT"])},
        description="Schema name → what the role may do on everything in it",
        examples=[{"public": {"tables": ["SELECT", "INSERT", "UPDATE", "DELETE"], "sequences": ["USAGE", "SELECT"]}}],
    )
    deny: list[str] = Field(
        default_factory=lambda: ["alembic_version", "schema_migrations"],
        description="Tables the role must never reach (migration bookkeeping); `table` or `schema.table`",
        examples=[["alembic_version", "schema_migrations", "billing.invoices"]],
    )
    connection_limit: int | None = Field(default=None, ge=-1, le=MAX_CONNECTIONS, description="CONNECTION LIMIT; default none",
                                         examples=[20])
    adopt: bool = Field(
        default=False,
        description="Take over a role of this name that exists but pg-runbook did not create (its password and "
        "privileges are reset to the spec); never the owner, the admin, a superuser or a role with members",
    )
    rls: Literal["enforce", "bypass"] = Field(
        default="enforce",
        description="row-level security: `enforce` (default; verify fails on an RLS table without a policy for "
        "the role) or `bypass` (the role gets BYPASSRLS, where the admin may grant it)")
    creators: list[str] = Field(
        default_factory=list,
        description="Roles that create tables (the owner, a migration login, …): default privileges are set FOR "
        "ROLE each of them in each covered schema; the owner is always one; default: the owner alone",
        examples=[["app_owner", "migrator"]])
    deny_presets: list[Literal["migrations"]] = Field(
        default_factory=lambda: ["migrations"],
        description="Named deny lists added to `deny:`; `migrations` (default) covers the bookkeeping tables of "
        "alembic, Rails, Flyway, Liquibase, knex, Prisma, Django, goose, Atlas, Diesel, Sequelize and gorp "
        "(TypeORM's `migrations` only when `deny:` names it); `[]` turns them off",
        examples=[["migrations"], []])
    rotation: Literal["single", "alternating"] = Field(
        default="single",
        description="`single` (default): rotate gives the one login a new password; `alternating`: a NOLOGIN group "
        "role `name` holds every grant, logins `name_a` and `name_b` take turns, and the old one is invalidated "
        "only after the app moved to the new one and its sessions drained")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if isinstance(v, str) and IAM_SERVICE_ACCOUNT_USER.match(v):
            if len(v.encode()) > 63:
                raise ValueError(f"role name {v!r} is longer than PostgreSQL's 63-byte limit")
            return v
        return check_role_name(v)

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str | None) -> str | None:
        if v is None:
            return v
        # the owner may well be `postgres` or a platform's admin; only the shape is checked
        return check_identifier(v, "owner")

    @field_validator("schemas")
    @classmethod
    def _schemas(cls, v: dict[str, SchemaGrants]) -> dict[str, SchemaGrants]:
        if not v:
            raise ValueError("at least one schema is needed")
        for name in v:
            check_identifier(name, "schema name", pattern=_SCHEMA_IDENT)
            if name.startswith("pg_") or name in ("information_schema", "runbook"):
                raise ValueError(f"schema {name!r} is a system or pg-runbook schema")
        return v

    @field_validator("creators")
    @classmethod
    def _creators(cls, v: list[str]) -> list[str]:
        for name in v:
            check_identifier(name, "creator")   # like the owner: only the shape; `postgres` may create tables
        if len(set(v)) != len(v):
            raise ValueError("creators lists a role twice")
        return v

    @field_validator("deny_presets")
    @classmethod
    def _presets(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("deny")
    @classmethod
    def _deny(cls, v: list[str]) -> list[str]:
        for item in v:
            parts = item.split(".") if isinstance(item, str) else [item]
            if len(parts) > 2:
                raise ValueError(f"deny entry {item!r} must be `table` or `schema.table`")
            for part in parts:
                check_identifier(part, "deny entry", pattern=_SCHEMA_IDENT)
        return v

    @model_validator(mode="after")
    def _not_owner(self) -> "RoleSpec":
        if self.owner is not None and self.owner == self.name:
            raise ValueError(f"role.name {self.name!r} is the owner; the app needs a role of its own")
        if self.name in self.creators:
            raise ValueError(f"role.creators names the role itself ({self.name!r}); it must not create tables")
        if self.rotation == "alternating" and len(self.name.encode()) + 2 > 63:
            raise ValueError(f"role.name {self.name!r} with rotation: alternating needs logins {self.name}_a and "
                             f"{self.name}_b, longer than PostgreSQL's 63-byte limit; shorten the name")
        return self

    @property
    def pair(self) -> tuple[str, str]:
        """The two logins of `rotation: alternating` (named so whatever the role rotates now)."""
        return (f"{self.name}_a", f"{self.name}_b")

    @property
    def logins(self) -> tuple[str, ...]:
        """The login roles the app takes turns on (`rotation: alternating`); for `single`, the role itself."""
        if self.rotation == "alternating":
            return self.pair
        return (self.name,)

    @property
    def denied(self) -> tuple[str, ...]:
        """`deny:` plus every preset's names, each once, in that order."""
        names = dict.fromkeys(self.deny)
        for preset in self.deny_presets:
            names.update(dict.fromkeys(DENY_PRESETS[preset]))
        return tuple(names)

    def creators_for(self, owner: str) -> tuple[str, ...]:
        """Every role whose future tables the role must reach: the owner first, then `creators:`."""
        return tuple(dict.fromkeys((owner, *self.creators)))

    def digest(self) -> str:
        """A stable digest of the role section: a soak is valid only for the spec it soaked.
        `adopt` says how the role came under management, not what it may do: left out."""
        # a key added later enters the digest only when a file sets it: an old file keeps its soak
        # `rotation` says how the password changes hands, not what the role may do: never in it
        leave_out = {"adopt", "rotation"} | ({"rls"} if self.rls == "enforce" else set()) \
            | ({"creators"} if not self.creators else set()) \
            | ({"deny_presets"} if self.deny_presets == ["migrations"] else set())
        body = json.dumps(self.model_dump(mode="json", exclude=leave_out), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]


class ConfigSpec(Strict):
    url_var: str = Field(default="APP_DATABASE_URL", description="The app's config variable for the role's URL",
                         examples=["RAPTOR_APP_DATABASE_URL"])

    @field_validator("url_var")
    @classmethod
    def _var(cls, v: str) -> str:
        return check_url_var(v)


class FlagSpec(Strict):
    name: str = Field(description="The app's config variable that switches it to the role's URL",
                      examples=["FLAG_RAPTOR_APP_ROLE_SEPARATION"])
    on_value: str = Field(default="1", description="The flag's value when the app uses the role", examples=["1", "true"])
    off_value: str = Field(default="0", description="The flag's value when it uses its previous URL (rollback)",
                           examples=["0", "false"])

    @field_validator("name")
    @classmethod
    def _var(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"flag name {v!r} must be a variable name")
        return v

    @field_validator("on_value", "off_value", mode="before")
    @classmethod
    def _str(cls, v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, str) and re.search(r"[\x00-\x1f\x7f-\x9f]", v):
            # a newline in a config value can add a variable of its own (the URL) to a dotenv
            raise ValueError("flag values cannot hold control characters (a newline, a tab, an escape)")
        return v

    @model_validator(mode="after")
    def _differ(self) -> "FlagSpec":
        if self.on_value == self.off_value:
            raise ValueError("on_value and off_value must differ")
        return self


class RoleEntry(RoleSpec):
    """One role of `roles:`: every field of `role:` (its key is its name), plus where the app
    reads its URL, its own flag (optional) and the memberships the spec grants it."""

    url_var: str = Field(description="The config variable the role's URL is written to (distinct across roles)",
                         examples=["RAPTOR_READONLY_DATABASE_URL"])
    flag: FlagSpec | None = Field(default=None, description="The feature flag that switches the app to this role; "
                                  "none: the soak starts when provision first makes the URL live")
    member_of: list[str] = Field(
        default_factory=list,
        description="Roles this one is granted (GRANT owner TO migrator): what it creates then belongs to the owner; "
        "drift checks them, --fix revokes a membership the spec no longer names",
        examples=[["app_owner"]])

    @field_validator("url_var")
    @classmethod
    def _url_var(cls, v: str) -> str:
        return check_url_var(v)

    @field_validator("member_of")
    @classmethod
    def _member_of(cls, v: list[str]) -> list[str]:
        for name in v:
            check_identifier(name, "member_of")
            if name in _RESERVED_ROLES or name.startswith(_RESERVED_PREFIXES):
                raise ValueError(f"member_of names {name!r}, a superuser or platform admin role")
        if len(set(v)) != len(v):
            raise ValueError("member_of lists a role twice")
        return v

    def digest(self) -> str:
        """The role's spec digest: the RoleSpec fields digest exactly as `role:` does (a role moved
        from the shorthand into the map keeps its soak), plus member_of when it grants anything.
        Where the URL and the flag live is not what the role may do: left out, as for `role:`."""
        base = RoleSpec.model_validate(self.model_dump(exclude={"url_var", "flag", "member_of"})).digest()
        if not self.member_of:
            return base
        body = json.dumps({"role": base, "member_of": sorted(self.member_of)}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]


class ManagedRole:
    """A role the project manages, whichever way the file wrote it: `role:` + `config:` +
    `flag:` (the one-role shorthand) or an entry of `roles:`."""

    def __init__(self, spec: RoleSpec, url_var: str, flag: FlagSpec | None, member_of: tuple[str, ...] = (),
                 *, shorthand: bool = False) -> None:
        self.spec = spec
        self.url_var = url_var
        self.flag = flag
        self.member_of = member_of
        self.shorthand = shorthand

    @property
    def name(self) -> str:
        return self.spec.name

    def digest(self) -> str:
        return self.spec.digest()

    def __repr__(self) -> str:
        return f"ManagedRole({self.name!r})"


class ConnectionsCheck(Strict):
    application_name: str | None = Field(default=None, description="Only sessions with this application_name count",
                                         examples=["raptor-web"])
    min_sessions: int = Field(default=1, ge=1, description="Sessions of the role (in pg_stat_activity) needed to pass",
                              examples=[1, 4])


class HttpCheck(Strict):
    url: str = Field(description="A health URL of the app, fetched with GET", examples=["https://staging.example.com/healthz"])
    status: int = Field(default=200, description="The HTTP status that passes", examples=[200, 204])
    timeout: Timeout = Field(default=timedelta(seconds=10), description="How long the request may take",
                              examples=["10s"])


class CommandCheck(Strict):
    run: str = Field(description="A smoke command run by the shell; exit 0 passes ({env} is the environment's name)",
                     examples=["./smoke.sh --env={env}"])
    timeout: Timeout = Field(default=timedelta(minutes=5), description="How long the command may run",
                              examples=["5m"])
    pass_env: PassEnv = Field(default_factory=list, description="variables passed to the command beyond the minimal set",
                              examples=[["KUBECONFIG", "AWS_PROFILE"]])


class ErrorsCheck(Strict):
    max: int = Field(default=0, ge=0, description="Permission-denied and authentication errors of the role in the "
                     "database log, since the flag went on, that still pass", examples=[0, 5])


# keys of shared provider models whose own description is still to come (their owner's field wins)
_FALLBACK_DESCRIPTIONS = {
    ("Connect", "host"): ("host (or Unix socket folder) the tool connects to instead of the platform's address",
                          ["127.0.0.1"]),
    ("Connect", "port"): ("port the tool connects to", [5432]),
}


def _examples_from_defaults(node: dict[str, Any]) -> None:
    """Each key without explicit examples shows its default, or the values it may take."""
    for prop in (node.get("properties") or {}).values():
        if "examples" in prop:
            continue
        if prop.get("default") not in (None, [], {}):
            prop["examples"] = [prop["default"]]
        elif "enum" in prop or "const" in prop:
            prop["examples"] = list(prop.get("enum") or [prop["const"]])
        elif prop.get("type") == "boolean":
            prop["examples"] = [True, False]


def _check_shorthands(schema: dict[str, Any]) -> None:
    """A soak check's schema as it is written: `diagnose`, `drift`, `connections`, a one-key
    mapping (`{command: ./smoke.sh}`), or the long form with `kind`."""
    long_form = dict(schema)
    schema.clear()
    schema.update({
        "description": "A soak check: diagnose, drift, connections, errors, {connections: …}, {errors: …}, "
                       "{command: …}, {http: …}",
        "examples": ["diagnose", {"command": "./smoke.sh --env={env}"}],
        "anyOf": [
            {"enum": ["diagnose", "drift", "connections", "errors"]},
            {"type": "object", "additionalProperties": False, "required": ["errors"],
             "properties": {"errors": {"anyOf": [{"$ref": "#/$defs/ErrorsCheck"}, {"type": "null"}]}}},
            {"type": "object", "additionalProperties": False, "required": ["connections"],
             "properties": {"connections": {"anyOf": [{"$ref": "#/$defs/ConnectionsCheck"}, {"type": "null"}]}}},
            {"type": "object", "additionalProperties": False, "required": ["command"],
             "properties": {"command": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/CommandCheck"}]}}},
            {"type": "object", "additionalProperties": False, "required": ["http"],
             "properties": {"http": {"$ref": "#/$defs/HttpCheck"}}},
            long_form,
        ],
    })


class CheckSpec(Strict):
    """One soak check; written as `diagnose`, `drift`, or a one-key mapping."""

    kind: Literal["diagnose", "drift", "connections", "command", "http", "errors"] = Field(
        description="Which check (the long form; usually written as the shorthand)", examples=["diagnose"])
    connections: ConnectionsCheck | None = Field(default=None, description="The app's sessions as the role")
    command: CommandCheck | None = Field(default=None, description="A smoke command")
    http: HttpCheck | None = Field(default=None, description="An HTTP health URL")
    errors: ErrorsCheck | None = Field(default=None, description="The role's errors in the database's own log")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v in ("diagnose", "drift", "connections", "errors"):
                return {"kind": v, **({v: {}} if v in ("connections", "errors") else {})}
            raise ValueError(f"{v!r} is not a check (diagnose, drift, connections, errors, command, http)")
        if isinstance(v, dict) and "kind" not in v:
            if len(v) != 1:
                raise ValueError("a check is one of: diagnose, drift, errors, {connections: …}, {errors: …}, "
                                 "{command: …}, {http: …}")
            (key, body), = v.items()
            if key == "command" and isinstance(body, str):
                body = {"run": body}
            if key in ("connections", "errors") and body is None:
                body = {}
            if key not in ("connections", "command", "http", "errors"):
                hint = difflib.get_close_matches(str(key), ["connections", "command", "http", "errors"], n=1)
                raise ValueError(f"{key!r} is not a check" + (f"; did you mean {hint[0]}?" if hint else ""))
            return {"kind": key, key: body}
        return v

    def label(self) -> str:
        if self.kind == "command" and self.command:
            return f"command: {self.command.run}"
        if self.kind == "http" and self.http:
            return f"http: {self.http.url}"
        if self.kind == "connections" and self.connections and self.connections.application_name:
            return f"connections: {self.connections.application_name}"
        return self.kind


class SoakSpec(Strict):
    duration: Duration = Field(default=timedelta(hours=72), description="How long the soak runs from flag on",
                               examples=["72h", "20s"])
    checkpoints: list[Duration] = Field(
        default_factory=lambda: [timedelta(hours=24), timedelta(hours=48), timedelta(hours=72)],
        description="When the checks run, from flag on; increasing; the last is the end", examples=[["24h", "48h", "72h"]])
    valid_for: Duration = Field(default=timedelta(days=14), description="How long a passed soak allows promotion",
                                examples=["14d"])
    auto_rollback: bool = Field(default=False, description="Roll back by itself when a checkpoint fails")
    checks: list[CheckSpec] = Field(
        default_factory=lambda: [CheckSpec(kind="diagnose"), CheckSpec(kind="drift")],
        description="What each checkpoint checks",
        examples=[["diagnose", "drift", {"connections": {"application_name": "raptor-web"}},
                   {"command": "./smoke.sh"}, {"http": {"url": "https://staging.example.com/healthz"}}]])

    @model_validator(mode="after")
    def _order(self) -> "SoakSpec":
        if not self.checkpoints:
            raise ValueError("at least one checkpoint is needed")
        if sorted(self.checkpoints) != list(self.checkpoints) or len(set(self.checkpoints)) != len(self.checkpoints):
            raise ValueError("checkpoints must be distinct and in increasing order")
        if self.checkpoints[-1] > self.duration:
            raise ValueError("the last checkpoint falls after the soak's duration")
        if self.checkpoints[-1] != self.duration:
            # the soak passes at its last checkpoint; one at the end makes that explicit
            object.__setattr__(self, "checkpoints", [*self.checkpoints, self.duration])
        return self


class SettingsSpec(Strict):
    lock_timeout: Timeout = Field(default=timedelta(seconds=5), description="SET lock_timeout for grant transactions")
    lock_retries: int = Field(default=3, ge=0, le=20, description="retries of a grant transaction that met lock_timeout")
    statement_timeout: Timeout = Field(default=timedelta(minutes=5), description="statement_timeout of the tool's "
                                        "own sessions", examples=["5m"])
    connect_timeout: Timeout = Field(default=timedelta(seconds=10), description="How long a database connection "
                                      "attempt may take", examples=["10s"])
    http_attempts: int = Field(default=5, ge=1, le=20, description="Attempts of one platform API call", examples=[5])
    http_timeout: Timeout = Field(default=timedelta(seconds=30), description="Timeout of one platform API request",
                                   examples=["30s"])
    retry_budget: Duration = Field(default=timedelta(minutes=2), description="total time a provider call may retry")
    drain_timeout: Duration = Field(default=timedelta(minutes=5), description="How long an alternating rotation "
                                    "waits for the app's sessions on the old login to end (`rotate --drain-timeout`)",
                                    examples=["5m"])


class EnvironmentSpec(Strict):
    provider: str = Field(default="local", description="The database platform; it also picks the default app platform",
                          examples=["local", "rds"])
    database: dict[str, Any] = Field(default_factory=dict)
    app: dict[str, Any] = Field(default_factory=dict)
    promote_from: str | None = Field(default=None, description="The environment whose passed soak `promote` needs",
                                     examples=["staging"])
    state: str | None = Field(default=None, description="state store: default the env database; sqlite:///path; postgresql://…",
                              examples=["sqlite:///.runbook/state.db", "env:RUNBOOK_STATE_URL"])

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str) -> str:
        if v not in providers.DATABASES:
            hint = difflib.get_close_matches(v, list(providers.DATABASES), n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"unknown provider {v!r} (one of {', '.join(providers.DATABASES)}){more}")
        return v


class Environment:
    """An environment with its database and app blocks validated by their providers' models."""

    def __init__(self, name: str, spec: EnvironmentSpec, database: Any, app: Any) -> None:
        self.name = name
        self.spec = spec
        self.database = database
        self.app = app

    @property
    def promote_from(self) -> str | None:
        return self.spec.promote_from


class ProjectSpec(Strict):
    version: Literal[1] = Field(default=1, description="The project file's format version")
    app: str = Field(description="The application's name; used in application_name and journal entries",
                     examples=["raptor"])
    role: RoleSpec | None = Field(default=None, description="The application's role (the one-role shorthand): its name, "
                                  "owner, privileges per schema, deny list")
    roles: dict[str, RoleEntry] | None = Field(
        default=None, description="Several roles: PostgreSQL role name → its privileges (every `role:` key), url_var, "
        "optional flag and member_of; instead of role:/config:/flag:",
        examples=[{"raptor_app": {"url_var": "APP_DATABASE_URL", "flag": {"name": "FLAG_ROLE_SEPARATION"}},
                   "raptor_readonly": {"url_var": "READONLY_DATABASE_URL",
                                       "schemas": {"public": {"tables": ["SELECT"], "sequences": ["SELECT"]}}}}])
    config: ConfigSpec = Field(default_factory=ConfigSpec, description="Where the app reads the role's URL (with role:)")
    flag: FlagSpec | None = Field(default=None, description="The feature flag that switches the app to the role "
                                  "(with role:)")
    soak: SoakSpec = Field(default_factory=SoakSpec, description="The soak after flag on: duration, checkpoints, checks")
    settings: SettingsSpec = Field(default_factory=SettingsSpec, description="Timeouts and retries of the tool itself")
    playbooks: dict[str, str] = Field(default_factory=dict, description="name → path of a project playbook",
                                      examples=[{"provision": "playbooks/provision.yaml"}])
    environments: dict[str, EnvironmentSpec] = Field(description="Environment name → its database and app")

    @field_validator("roles", mode="before")
    @classmethod
    def _role_names(cls, v: Any) -> Any:
        """The key is the role's name: handed to each entry as `name`, never written inside it."""
        if not isinstance(v, dict):
            return v
        if not v:
            raise ValueError("roles: needs at least one role")
        out = {}
        for key, entry in v.items():
            if isinstance(entry, dict):
                if "name" in entry:
                    raise ValueError(f"roles.{key}: the key is the role's name; drop its `name:`")
                entry = {"name": key, **entry}
            out[key] = entry
        return out

    @field_validator("app")
    @classmethod
    def _app(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", v):
            raise ValueError(f"app {v!r} must be a short name (letters, digits, . _ -)")
        return v

    @field_validator("environments")
    @classmethod
    def _envs(cls, v: dict[str, EnvironmentSpec]) -> dict[str, EnvironmentSpec]:
        if not v:
            raise ValueError("at least one environment is needed")
        for name in v:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,47}", str(name)):
                raise ValueError(f"environment name {name!r} must be lower-case letters, digits, - and _")
        for name, env in v.items():
            if env.promote_from is not None:
                if env.promote_from not in v:
                    raise ValueError(f"{name}.promote_from names {env.promote_from!r}, which is not an environment")
                if env.promote_from == name:
                    raise ValueError(f"{name} cannot be promoted from itself")
        return v


def _managed_roles(spec: ProjectSpec) -> dict[str, ManagedRole]:
    """The shorthand (`role:` + `config:` + `flag:`) and `roles:` in one shape."""
    if spec.roles is None:
        assert spec.role is not None
        return {spec.role.name: ManagedRole(spec.role, spec.config.url_var, spec.flag, shorthand=True)}
    return {name: ManagedRole(entry, entry.url_var, entry.flag, tuple(entry.member_of))
            for name, entry in spec.roles.items()}


class Project:
    """A validated project file."""

    def __init__(self, spec: ProjectSpec, path: Path, environments: dict[str, Environment]) -> None:
        self.spec = spec
        self.path = path
        self.base_dir = path.parent
        self.environments = environments
        self.roles = _managed_roles(spec)     # every managed role by name, in file order

    @property
    def several(self) -> bool:
        """The file uses `roles:` (the journal then scopes soaks by role)."""
        return self.spec.roles is not None

    @property
    def role(self) -> RoleSpec:
        """The first role (the shorthand's only one); per-role code reads Context.role."""
        return next(iter(self.roles.values())).spec

    def select(self, name: str | None) -> list[ManagedRole]:
        """`--role NAME`: that role; None: every role, in file order."""
        every = self.roles
        if name is None:
            return list(every.values())
        if name not in every:
            hint = difflib.get_close_matches(name, list(every), n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{self.path}: no role {name!r} (have: {', '.join(every)}){more}")
        return [every[name]]

    def env(self, name: str) -> Environment:
        try:
            return self.environments[name]
        except KeyError:
            hint = difflib.get_close_matches(name, list(self.environments), n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{self.path}: no environment {name!r} (have: {', '.join(self.environments)}){more}"
            ) from None


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc` (for 'did you mean' suggestions)."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        model = _unwrap_model(ann)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap_model(ann: Any) -> Any:
    from typing import get_args, get_origin

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    origin = get_origin(ann)
    args = get_args(ann)
    if origin in (dict,) and len(args) == 2:
        return _DictOf(_unwrap_model(args[1]))
    for arg in args:
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


class _DictOf:
    """Marker for dict[str, Model] while walking locations."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_fields = _AnyKey(inner)


class _AnyKey(dict):
    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def get(self, key: Any, default: Any = None) -> Any:
        return _FakeField(self.inner)


class _FakeField:
    def __init__(self, inner: Any) -> None:
        self.annotation = inner


def _format_errors(exc: ValidationError, located: Located, prefix: tuple[Any, ...], root: type[BaseModel]) -> str:
    messages = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        full = prefix + loc
        where = located.where(full)
        dotted = ".".join(str(p) for p in full) or "(top level)"
        if err["type"] == "extra_forbidden":
            owner = _model_at(root, loc)
            names = _field_names(owner) if owner else []
            hint = difflib.get_close_matches(str(loc[-1]), names, n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else (f" (known: {', '.join(names)})" if names else "")
            messages.append(f"{where}: unknown key {dotted!r}{more}")
        elif err["type"] == "missing":
            messages.append(f"{where}: {dotted} is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            messages.append(f"{where}: {dotted}: {msg}")
    # one clear line: the first problem, with a count of the rest
    first = messages[0]
    if len(messages) > 1:
        first += f" (and {len(messages) - 1} more problem{'s' if len(messages) > 2 else ''})"
    return first


def _resolve_env(name: str, spec: EnvironmentSpec, located: Located) -> Environment:
    prefix = ("environments", name)
    db_raw = dict(spec.database)
    db_key = db_raw.get("provider", spec.provider)
    if db_key not in providers.DATABASES:
        where = located.where(prefix + ("database", "provider"))
        raise ConfigError(f"{where}: unknown database provider {db_key!r} (one of {', '.join(providers.DATABASES)})")
    db_raw["provider"] = db_key
    app_raw = dict(spec.app)
    app_key = app_raw.get("platform", providers.DEFAULT_PLATFORM.get(spec.provider, "dotenv"))
    if app_key not in providers.PLATFORMS:
        hint = difflib.get_close_matches(str(app_key), list(providers.PLATFORMS), n=1)
        where = located.where(prefix + ("app", "platform"))
        more = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{where}: unknown app platform {app_key!r} (one of {', '.join(providers.PLATFORMS)}){more}")
    app_raw["platform"] = app_key
    db_model = providers.database_config(db_key)
    app_model = providers.platform_config(app_key)
    try:
        database = db_model.model_validate(db_raw, context={"env": name, "app": app_raw})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, located, prefix + ("database",), db_model)) from None
    try:
        app = app_model.model_validate(app_raw, context={"env": name, "database": db_raw})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, located, prefix + ("app",), app_model)) from None
    return Environment(name, spec, database, app)


def parse(located: Located) -> Project:
    if not isinstance(located.data, dict):
        raise ConfigError(f"{located.where(())}: the project file must be a mapping (version:, app:, role:, …)")
    try:
        spec = ProjectSpec.model_validate(located.data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, located, (), ProjectSpec)) from None
    _check_roles(spec, located)
    envs = {name: _resolve_env(name, env, located) for name, env in spec.environments.items()}
    _refuse_secret_pass_env(spec, located)
    _iam_user_names_need_iam(spec, envs, located)
    return Project(spec, Path(located.path).resolve(), envs)


def _check_roles(spec: ProjectSpec, located: Located) -> None:
    """`role:` or `roles:`, never both; the map's roles apart from each other and from their owners."""
    if spec.role is not None and spec.roles is not None:
        raise ConfigError(f"{located.where(('roles',))}: role: and roles: together; use role: (with config: and flag:) "
                          "for one role or roles: for several")
    if spec.role is None and spec.roles is None:
        raise ConfigError(f"{located.where(())}: role is required (or roles: for several roles)")
    if spec.role is not None:
        if spec.flag is None:
            raise ConfigError(f"{located.where(())}: flag is required")
        return
    assert spec.roles is not None
    for key in ("config", "flag"):
        if key in spec.model_fields_set:
            raise ConfigError(f"{located.where((key,))}: {key}: is for the one-role role: shorthand; with roles: each "
                              f"role has its own {'url_var' if key == 'config' else 'flag'}")
    names = set(spec.roles)
    seen_var: dict[str, str] = {}
    seen_flag: dict[str, str] = {}
    for name, entry in spec.roles.items():
        where = located.where(("roles", name))
        owner = entry.owner
        if entry.url_var in seen_var:
            raise ConfigError(f"{located.where(('roles', name, 'url_var'))}: url_var {entry.url_var} is also "
                              f"{seen_var[entry.url_var]}'s; each role needs its own")
        seen_var[entry.url_var] = name
        if entry.flag is not None:
            if entry.flag.name in seen_flag:
                raise ConfigError(f"{located.where(('roles', name, 'flag', 'name'))}: flag {entry.flag.name} is also "
                                  f"{seen_flag[entry.flag.name]}'s; each role needs its own")
            seen_flag[entry.flag.name] = name
        if owner is not None and owner in names:
            raise ConfigError(f"{where}: owner {owner!r} is a managed role of this project; the owner never is")
    for name, entry in spec.roles.items():
        if entry.rotation == "alternating":
            taken = [login for login in entry.logins if login in names]
            if taken:
                # the alternating role's logins would be that other role: two specs for one PostgreSQL role
                raise ConfigError(f"{located.where(('roles', name, 'rotation'))}: {name} alternates between "
                                  f"{' and '.join(entry.logins)}, and {taken[0]} is another role of this project")
    for var, name in seen_var.items():
        if var in seen_flag:
            raise ConfigError(f"{located.where(('roles', name, 'url_var'))}: {var} is also {seen_flag[var]}'s flag")
    for name, entry in spec.roles.items():
        for target in entry.member_of:
            if target in names:
                # the other role's own drift check revokes members it does not know (they would get its
                # DML); memberships between managed roles would also tie their soaks together
                raise ConfigError(f"{located.where(('roles', name, 'member_of'))}: member_of names {target}, a managed "
                                  "role of this project; a role is a member of the owner (or another role outside "
                                  "the project), never of another managed role")


def _iam_user_names_need_iam(spec: ProjectSpec, envs: dict[str, Environment], located: Located) -> None:
    """A service account's Cloud SQL user name is a role name only where Cloud SQL logs it in with IAM."""
    role = spec.role if spec.role is not None else None
    if role is None or not IAM_SERVICE_ACCOUNT_USER.match(role.name):
        return
    for name, env in envs.items():
        if getattr(env.database, "provider", None) != "cloudsql" or getattr(env.database, "auth", None) != "iam":
            raise ConfigError(f"{located.where(('role', 'name'))}: {role.name!r} is a service account's Cloud SQL "
                              f"user (IAM database authentication); environment {name} needs database.provider: "
                              "cloudsql with auth: iam, or give role.name a plain identifier")


def _refuse_secret_pass_env(spec: ProjectSpec, located: Located) -> None:
    """No `pass_env` may name a variable the project has the tool read a secret from."""
    envs = spec.environments.values()
    secret = secret_env_names([*(e.database for e in envs), *(e.app for e in envs)], [e.state for e in envs])
    lists: list[tuple[tuple[Any, ...], Any]] = [
        (("environments", name, "app", "pass_env"), env.app.get("pass_env")) for name, env in spec.environments.items()]
    lists += [(("soak", "checks", i, "command", "pass_env"), check.command.pass_env)
              for i, check in enumerate(spec.soak.checks) if check.command]
    for loc, names in lists:
        for j, name in enumerate(names if isinstance(names, list) else []):
            if name in secret:
                raise ConfigError(f"{located.where(loc + (j,))}: pass_env {name} is where the tool reads a secret "
                                  "from; a command never gets it")


def load(path: str | Path | None = None) -> Project:
    return parse(load_file(Path(path or DEFAULT_FILE)))


def loads(text: str, path: str = DEFAULT_FILE) -> Project:
    return parse(load_text(text, path))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of runbook.yaml, with every provider's blocks, for editors."""
    schema = ProjectSpec.model_json_schema(mode="validation")
    defs = schema.setdefault("$defs", {})
    db_refs, app_refs = [], []
    for model in providers.all_database_configs():
        sub = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[model.__name__] = sub
        db_refs.append({"$ref": f"#/$defs/{model.__name__}"})
    for model in providers.all_platform_configs():
        sub = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[model.__name__] = sub
        app_refs.append({"$ref": f"#/$defs/{model.__name__}"})
    env = defs["EnvironmentSpec"]["properties"]
    env["database"] = {"anyOf": db_refs, "description": "the database side; keys depend on its provider"}
    env["app"] = {"anyOf": app_refs, "description": "the app side; keys depend on its platform"}
    env["provider"]["enum"] = list(providers.DATABASES)
    _check_shorthands(defs["CheckSpec"])
    for node in defs.values():          # the discriminating key of each provider's block
        for key in ("provider", "platform"):
            prop = (node.get("properties") or {}).get(key)
            if prop is not None and "const" in prop:
                prop.setdefault("description", f"this block's {key}: {prop['const']}")
    for (model, key), (text, examples) in _FALLBACK_DESCRIPTIONS.items():
        prop = defs.get(model, {}).get("properties", {}).get(key)
        if prop is not None:
            prop.setdefault("description", text)
            prop.setdefault("examples", examples)
    for node in [schema, *defs.values()]:
        _examples_from_defaults(node)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "pg-runbook project file (runbook.yaml)"
    return schema
