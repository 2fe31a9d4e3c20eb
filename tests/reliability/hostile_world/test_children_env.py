"""Configured commands (the dotenv restart, soak `command:` checks, `command` playbook steps)
run with a minimal, explicit environment: never the admin DSN, a platform token or a cloud key
from the tool's own. What the project passes on purpose arrives; a variable the tool reads a
secret from cannot be passed, by name (exit 2 with file:line) or by value (refused at run)."""

from __future__ import annotations

import pytest
import yaml

from runbook import commands
from runbook.cli import main
from runbook.errors import ConfigError, RunbookError
from runbook.shell import BASE_ENV
from tests.conftest import CANARY
from tests.projects import spec_dict, write_project

SOAK = {"duration": "3s", "checkpoints": ["1s", "3s"], "valid_for": "1h"}


def dumped(path) -> dict[str, str]:
    """An `env -0` dump, exactly."""
    out = {}
    for item in path.read_bytes().split(b"\0"):
        if item:
            name, _, value = item.decode().partition("=")
            out[name] = value
    return out


def hostile_environ(env, tmp_path) -> dict[str, str]:
    return {**env.environ, "HOME": str(tmp_path), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
            "PGPASSWORD": CANARY, "AWS_SECRET_ACCESS_KEY": CANARY, "HEROKU_API_KEY": CANARY,
            "DATABASE_URL": env.admin_dsn, "SSH_AUTH_SOCK": "/run/agent.sock", "UNLISTED": "not-for-children"}


def write(env, data) -> None:
    write_project(env.dir, data)


def test_restart_soak_check_and_command_step_get_only_the_minimal_environment(su_env, tmp_path, monkeypatch):
    # the tool's own process environment holds the admin DSN as well (what the CLI really has)
    monkeypatch.setenv("RB_TEST_ADMIN_DSN", su_env.admin_dsn)
    monkeypatch.setenv("PGPASSWORD", CANARY)
    environ = hostile_environ(su_env, tmp_path)
    data = spec_dict(su_env.role, owner=su_env.owner, restart="env -0 > restart.env",
                     soak={**SOAK, "checks": [{"command": {"run": "env -0 > check.env"}}]})
    data["environments"]["staging"]["app"]["pass_env"] = ["SSH_AUTH_SOCK"]
    data["playbooks"] = {"dump": "dump.yaml"}
    (su_env.dir / "dump.yaml").write_text(yaml.safe_dump(
        {"name": "dump", "steps": [{"command": {"run": "env -0 > step.env", "pass_env": ["TZ", "SSH_AUTH_SOCK"]}}]}))
    write(su_env, data)
    project = su_env.project()
    commands.provision(project, "staging", yes=True, environ=environ)
    su_env.pg.execute("UPDATE runbook.soaks SET started_at = started_at - 1.5 WHERE status = 'running'")
    commands.soak(project, "staging", environ=environ)
    commands.provision(project, "staging", yes=True, environ=environ, playbook="dump")
    allowed = set(BASE_ENV)
    seen = {}
    for name in ("restart.env", "check.env", "step.env"):
        child = dumped(su_env.dir / name)
        seen[name] = child
        extra = {k for k in child if k not in allowed and not k.startswith("LC_")} - {"SSH_AUTH_SOCK", "PWD", "SHLVL", "_", "OLDPWD"}
        assert not extra, f"{name} got {extra}"
        text = (su_env.dir / name).read_text()
        for secret in (CANARY, su_env.admin_dsn, "RB_TEST_ADMIN_DSN", "not-for-children"):
            assert secret not in text, f"{secret!r} reached {name}"
        assert child["PATH"] == environ["PATH"] and child["HOME"] == str(tmp_path) and child["LC_ALL"] == "C.UTF-8"
    assert seen["restart.env"]["SSH_AUTH_SOCK"] == "/run/agent.sock"      # passed on purpose
    assert "SSH_AUTH_SOCK" not in seen["check.env"]                       # not passed to the check
    assert seen["step.env"]["SSH_AUTH_SOCK"] == "/run/agent.sock" and seen["step.env"]["TZ"] == "UTC"


@pytest.mark.parametrize("where", ["app", "check"])
@pytest.mark.parametrize("name", ["RB_TEST_ADMIN_DSN", "PGPASSWORD", "STORE_URL"])
def test_passing_a_secret_variable_by_name_is_exit_2_with_file_and_line(su_env, capsys, where, name):
    data = spec_dict(su_env.role, owner=su_env.owner, restart="true",
                     soak={**SOAK, "checks": [{"command": {"run": "true", **({"pass_env": ["TZ", name]} if where == "check" else {})}}]})
    data["environments"]["staging"]["state"] = "env:STORE_URL"
    if where == "app":
        data["environments"]["staging"]["app"]["pass_env"] = ["TZ", name]
    write(su_env, data)
    with pytest.raises(SystemExit) as info:
        main(["-f", str(su_env.path), "validate"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    line = next(i for i, text in enumerate(su_env.path.read_text().splitlines(), 1) if text.strip() == f"- {name}")
    assert err.startswith(f"error: {su_env.path}:{line}:") and name in err, err


def test_a_command_step_passing_the_dsn_variable_is_refused_before_it_runs(su_env):
    data = spec_dict(su_env.role, owner=su_env.owner)
    data["playbooks"] = {"dump": "dump.yaml"}
    (su_env.dir / "dump.yaml").write_text(yaml.safe_dump(
        {"name": "dump", "steps": [{"command": {"run": "env -0 > step.env", "pass_env": ["RB_TEST_ADMIN_DSN"]}}]}))
    write(su_env, data)
    with pytest.raises(ConfigError, match="RB_TEST_ADMIN_DSN"):
        commands.plan(su_env.project(), "staging", environ=su_env.environ, playbook="dump")
    with pytest.raises(RunbookError) as caught:
        commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ, playbook="dump")
    assert caught.value.exit_code == 2
    assert not (su_env.dir / "step.env").exists()


def test_the_admin_dsn_under_another_name_is_refused_by_its_value(su_env, tmp_path):
    """pass_env: [APP_DB] where APP_DB happens to hold the admin DSN: the name is innocent, the
    value is not; the restart does not run and the rest of the run says why."""
    data = spec_dict(su_env.role, owner=su_env.owner, restart="env -0 > restart.env")
    data["environments"]["staging"]["app"]["pass_env"] = ["APP_DB"]
    write(su_env, data)
    environ = {**su_env.environ, "APP_DB": su_env.admin_dsn + " password=" + CANARY}
    with pytest.raises(RunbookError) as caught:
        commands.provision(su_env.project(), "staging", yes=True, environ=environ)
    assert caught.value.exit_code == 2 and "pass_env APP_DB" in caught.value.message
    assert CANARY not in caught.value.message
    assert not (su_env.dir / "restart.env").exists()
