"""`runbook init`: a commented starter project file."""

from __future__ import annotations

from pathlib import Path

from runbook.errors import ConfigError

SCHEMA_LINE = "# yaml-language-server: $schema={schema}\n"

STARTER = """\
# pg-runbook project file. Reference: README.md ("Configuration reference").
# The line above points editors (yaml-language-server: VS Code, Neovim, JetBrains) at the JSON
# Schema beside this file; after an upgrade refresh it with `runbook schema > {schema}`.
version: 1
app: {app}                      # used in application_name and the journal

role:
  name: {app}_app               # the application's login role (plain lower-case identifier)
  # owner: app_owner            # creator of future tables (default: the admin connection's user);
  #                             # default privileges are set FOR ROLE owner so new tables need no grant
  schemas:
    public:
      tables: [SELECT, INSERT, UPDATE, DELETE]
      sequences: [USAGE, SELECT]
      # functions: [EXECUTE]
  deny: [alembic_version, schema_migrations]   # migration bookkeeping stays with the owner

config:
  url_var: {APP}_APP_DATABASE_URL               # where the app reads the role's URL

flag:
  name: FLAG_{APP}_APP_ROLE_SEPARATION          # the app switches URLs on this flag
  on_value: "1"
  off_value: "0"

soak:
  duration: {duration}
  checkpoints: {checkpoints}
  valid_for: 14d                # a passed soak allows promotion for this long
  auto_rollback: false
  checks: [diagnose, drift]     # also: {{connections: {{application_name: {app}}}}}, {{command: ./smoke.sh}}, {{http: {{url: …}}}}

environments:
  staging:
    provider: local             # local | heroku | rds | cloudsql | supabase
    # database: {{dsn_env: STAGING_ADMIN_DSN}}    # omitted: an embedded PostgreSQL under .runbook/pg
    app: {{dotenv: .runbook/staging.env}}          # restart: "systemctl restart myapp" (optional)
  prod:
    provider: local
    database: {{embedded: .runbook/pg-prod}}
    app: {{dotenv: .runbook/prod.env}}
    promote_from: staging       # `runbook promote --env prod` needs a passed staging soak
"""


def schema_path(path: Path) -> Path:
    """The editor schema beside a project file: runbook.yaml → runbook.schema.json."""
    return path.with_name(path.stem + ".schema.json")


def render_starter(app: str = "raptor", *, quickstart: bool = False, schema: str = "runbook.schema.json") -> str:
    duration, checkpoints = ("20s", "[10s, 20s]") if quickstart else ("72h", "[24h, 48h, 72h]")
    return SCHEMA_LINE.format(schema=schema) + STARTER.format(
        app=app, APP=app.upper(), duration=duration, checkpoints=checkpoints, schema=schema)


def write_starter(path: Path, *, force: bool = False, quickstart: bool = False, app: str | None = None) -> Path:
    """The starter project file, and the JSON Schema its first line names (written beside it)."""
    import json

    from runbook.project import json_schema

    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    name = app or "raptor"
    schema = schema_path(path)
    schema.write_text(json.dumps(json_schema(), indent=2) + "\n")
    path.write_text(render_starter(name, quickstart=quickstart, schema=schema.name))
    return path
