from datetime import timedelta

import pytest

from runbook import project
from runbook.durations import format_duration, parse_duration
from runbook.errors import ConfigError

BASE = """\
version: 1
app: raptor
role:
  name: raptor_app
  owner: app_owner
  schemas:
    public:
      tables: [SELECT, INSERT, UPDATE, DELETE]
      sequences: [USAGE, SELECT]
      functions: [EXECUTE]
  deny: [alembic_version, schema_migrations]
config:
  url_var: RAPTOR_APP_DATABASE_URL
flag:
  name: FLAG_RAPTOR_APP_ROLE_SEPARATION
  on_value: "1"
  off_value: "0"
environments:
  staging:
    provider: local
    database: {dsn_env: STAGING_ADMIN_DSN}
    app: {dotenv: .runbook/staging.env, restart: null}
"""


def test_issue_shape_is_accepted():
    p = project.loads(BASE)
    assert p.role.name == "raptor_app"
    assert p.env("staging").database.dsn_env == "STAGING_ADMIN_DSN"
    assert p.spec.soak.checkpoints == [timedelta(hours=24), timedelta(hours=48), timedelta(hours=72)]
    assert p.spec.soak.checks[0].kind == "diagnose"


@pytest.mark.parametrize("text, where, words", [
    (BASE.replace("  owner: app_owner", "  ownr: app_owner"), "runbook.yaml:5", "did you mean 'owner'"),
    (BASE.replace("url_var:", "url_vra:"), "runbook.yaml:13", "did you mean 'url_var'"),
    (BASE.replace("[SELECT, INSERT", "[SELECT, INSRT"), "runbook.yaml:8", "did you mean INSERT"),
    (BASE.replace("name: raptor_app", "name: 'x\"; DROP ROLE y; --'"), "runbook.yaml:4", "not a plain identifier"),
    (BASE.replace("name: raptor_app", "name: postgres"), "runbook.yaml:4", "reserved"),
    (BASE.replace("name: raptor_app", "name: pg_monitor_x"), "runbook.yaml:4", "reserved"),
    (BASE.replace("name: raptor_app", "name: " + "a" * 64), "runbook.yaml:4", "63-byte"),
    (BASE.replace("    public:\n", "    'pub;lic':\n"), "runbook.yaml:6", "schema name"),
    (BASE.replace("provider: local", "provider: herokku"), "runbook.yaml:20", "did you mean 'heroku'"),
    (BASE.replace("{dsn_env:", "{dns_env:"), "runbook.yaml:21", "did you mean 'dsn_env'"),
    (BASE + "version: 2\n", "runbook.yaml:23", "duplicate key"),
    ("", "runbook.yaml:1", "empty"),
    ("version: [1\n", "runbook.yaml:", "invalid YAML"),
    ("- a\n- b\n", "runbook.yaml:1", "must be a mapping"),
])
def test_errors_name_file_line_and_suggest(text, where, words):
    with pytest.raises(ConfigError) as info:
        project.loads(text)
    message = info.value.message
    assert message.startswith(where), message
    assert words in message, message
    assert "\n" not in message


def test_soak_checks_shorthand_and_durations():
    text = BASE + """\
soak:
  duration: 30s
  checkpoints: [10s, 20s]
  checks:
    - diagnose
    - drift
    - connections: {application_name: raptor}
    - command: ./smoke.sh --env={env}
    - http: {url: "http://127.0.0.1:1/health", status: 200}
"""
    p = project.loads(text)
    kinds = [c.kind for c in p.spec.soak.checks]
    assert kinds == ["diagnose", "drift", "connections", "command", "http"]
    assert p.spec.soak.checkpoints[-1] == timedelta(seconds=30)   # the end is always a checkpoint


def test_digest_changes_with_role_spec_only():
    a = project.loads(BASE)
    b = project.loads(BASE.replace("flag:\n  name: FLAG_RAPTOR_APP_ROLE_SEPARATION", "flag:\n  name: OTHER_FLAG"))
    c = project.loads(BASE.replace("[USAGE, SELECT]", "[USAGE]"))
    assert a.role.digest() == b.role.digest() != c.role.digest()


def test_unknown_environment_suggests():
    p = project.loads(BASE)
    with pytest.raises(ConfigError, match="did you mean 'staging'"):
        p.env("stagin")


@pytest.mark.parametrize("text, seconds", [("72h", 259200), ("30m", 1800), ("10s", 10), ("14d", 1209600), ("1h30m", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


def test_bad_duration():
    with pytest.raises(ValueError):
        parse_duration("soon")
    assert format_duration(5400) == "1h30m"


def test_json_schema_covers_providers():
    schema = project.json_schema()
    assert schema["title"].startswith("pg-runbook")
    assert "LocalDatabaseConfig" in schema["$defs"]
