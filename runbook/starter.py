"""`runbook init`: a commented starter project file."""

from __future__ import annotations

from pathlib import Path

from runbook.errors import ConfigError

STARTER = """\
# pg-runbook project file. Reference: README.md ("Configuration reference");
# JSON Schema for your editor: `runbook schema > runbook.schema.json`.
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


def render_starter(app: str = "raptor", *, quickstart: bool = False) -> str:
    duration, checkpoints = ("20s", "[10s, 20s]") if quickstart else ("72h", "[24h, 48h, 72h]")
    return STARTER.format(app=app, APP=app.upper(), duration=duration, checkpoints=checkpoints)


def write_starter(path: Path, *, force: bool = False, quickstart: bool = False, app: str | None = None) -> Path:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    name = app or "raptor"
    path.write_text(render_starter(name, quickstart=quickstart))
    return path
