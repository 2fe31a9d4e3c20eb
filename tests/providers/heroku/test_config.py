"""The Heroku blocks of runbook.yaml, the token, and the base URLs (no PostgreSQL needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from providers.base import OpenContext
from providers.heroku import HerokuApi, HerokuAppConfig, HerokuDatabaseConfig, heroku_token, plan_refusal
from runbook.errors import ConfigError, Refused
from runbook.project import loads

PROJECT = """\
version: 1
app: raxx
role: {name: raxx_app}
flag: {name: RAPTOR_APP_ROLE_ENABLED}
config: {url_var: RAPTOR_APP_DATABASE_URL}
environments:
  staging:
    provider: heroku
    database: {addon: DATABASE%s}
    app: {name: raxx-api-staging}
"""


def test_project_file_defaults_the_database_app_to_the_app_block():
    env = loads(PROJECT % "").env("staging")
    assert isinstance(env.database, HerokuDatabaseConfig)
    assert isinstance(env.app, HerokuAppConfig)
    assert env.database.app == "raxx-api-staging"
    assert env.database.addon == "DATABASE"
    assert env.database.sslmode == "require"
    # the app side knows which add-on to attach credentials of
    assert (env.app._addon, env.app._addon_app) == ("DATABASE", "raxx-api-staging")


def test_an_explicit_database_app_wins():
    env = loads(PROJECT % ", app: raxx-db").env("staging")
    assert env.database.app == "raxx-db"
    assert env.app._addon_app == "raxx-db"


def test_unknown_key_in_the_database_block_names_the_line_and_a_suggestion():
    with pytest.raises(ConfigError) as err:
        loads(PROJECT % ", adon: X")
    assert "runbook.yaml:9" in err.value.message
    assert "did you mean 'addon'" in err.value.message


def test_the_json_schema_does_not_require_the_database_app():
    schema = HerokuDatabaseConfig.model_json_schema()
    assert "app" not in schema.get("required", [])
    assert schema["properties"]["addon"]["default"] == "DATABASE"


def test_the_database_block_needs_an_app_from_somewhere():
    with pytest.raises(ValidationError, match="app is required"):
        HerokuDatabaseConfig.model_validate({"addon": "DATABASE"}, context={"app": {}})


@pytest.mark.parametrize("block", [{"sslmode": "sometimes"}, {"addon": "DATABASE URL"}, {"app": "Raxx_API"}])
def test_bad_values_are_refused(block):
    with pytest.raises(ValidationError):
        HerokuDatabaseConfig.model_validate({"addon": "DATABASE", **block}, context={"app": {"name": "raxx"}})


def test_the_app_side_without_a_heroku_database_attaches_nothing():
    cfg = HerokuAppConfig.model_validate({"name": "raxx-api"}, context={"database": {"provider": "rds"}})
    assert cfg._addon is None


def test_token_from_heroku_api_key_first(tmp_path):
    (tmp_path / ".netrc").write_text("machine api.heroku.com\n  login me@example.com\n  password from-netrc\n")
    assert heroku_token({"HEROKU_API_KEY": " from-env \n", "HOME": str(tmp_path)}).reveal() == "from-env"


def test_token_from_home_netrc(tmp_path):
    (tmp_path / ".netrc").write_text(
        "machine git.heroku.com\n  login me@example.com\n  password other\n"
        "machine api.heroku.com\n  login me@example.com\n  password from-netrc\n")
    assert heroku_token({"HOME": str(tmp_path)}).reveal() == "from-netrc"


def test_token_from_the_netrc_variable(tmp_path):
    path = tmp_path / "elsewhere"
    path.write_text("machine api.heroku.com login me@example.com password from-NETRC\n")
    assert heroku_token({"NETRC": str(path), "HOME": str(tmp_path / "nothing")}).reveal() == "from-NETRC"


def test_no_token_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        heroku_token({"HOME": str(tmp_path)})
    assert "HEROKU_API_KEY" in err.value.message and "heroku login" in err.value.message


def test_a_broken_netrc_is_reported_without_its_contents(tmp_path):
    (tmp_path / ".netrc").write_text("machine api.heroku.com\n  login me\n  tok3n-SECRET-value password\n")
    with pytest.raises(ConfigError) as err:
        heroku_token({"HOME": str(tmp_path)})
    assert err.value.message.startswith(f"{tmp_path / '.netrc'}:")
    assert "SECRET" not in err.value.message


def _ctx(tmp_path, **environ) -> OpenContext:
    return OpenContext(env_name="staging", app_name="raxx", base_dir=tmp_path,
                       environ={"HEROKU_API_KEY": "t0ken-abcdef", **environ})


def test_plain_http_is_only_for_loopback(tmp_path):
    with pytest.raises(ConfigError, match="plain http is allowed only on loopback"):
        HerokuApi(_ctx(tmp_path, HEROKU_API_URL="http://api.heroku.example.com"))
    api = HerokuApi(_ctx(tmp_path, HEROKU_API_URL="http://127.0.0.1:9/", HEROKU_DATA_API_URL="https://data.example.com"))
    try:
        assert (api.platform_url, api.data_url) == ("http://127.0.0.1:9", "https://data.example.com")
    finally:
        api.close()


def test_default_base_urls(tmp_path):
    api = HerokuApi(_ctx(tmp_path))
    try:
        assert (api.platform_url, api.data_url) == ("https://api.heroku.com", "https://api.data.heroku.com")
    finally:
        api.close()


@pytest.mark.parametrize("tier", ["essential-0", "essential-2", "mini", "basic", "dev", "hobby-dev", "hobby-basic"])
def test_essential_and_legacy_plans_are_refused_with_the_upgrade_command(tier):
    refusal = plan_refusal(f"heroku-postgresql:{tier}", "DATABASE", "raxx-api-staging")
    assert isinstance(refusal, Refused)
    assert refusal.message.endswith(
        "heroku addons:upgrade DATABASE heroku-postgresql:standard-0 -a raxx-api-staging")


@pytest.mark.parametrize("tier", ["advanced", "advanced-private", "advanced-shield", "performance-beta"])
def test_advanced_plans_are_refused_with_their_own_commands(tier):
    refusal = plan_refusal(f"heroku-postgresql:{tier}", "DATABASE", "raxx-api-staging")
    assert isinstance(refusal, Refused)
    assert "Advanced-tier" in refusal.message
    assert "heroku data:pg:credentials:create DATABASE --name <role> -a raxx-api-staging" in refusal.message


@pytest.mark.parametrize("tier", ["standard-0", "standard-2", "premium-4", "private-0", "shield-7"])
def test_standard_and_above_are_supported(tier):
    assert plan_refusal(f"heroku-postgresql:{tier}", "DATABASE", "raxx-api-staging") is None


def test_another_service_is_a_config_error():
    refusal = plan_refusal("heroku-redis:premium-0", "REDIS", "raxx-api-staging")
    assert type(refusal) is ConfigError
    assert "not Heroku Postgres" in refusal.message
