"""Numbers in the project file are bounded: a huge duration, a connection limit past what any
server allows, a timeout of 0 (PostgreSQL's "wait for ever") end as exit 2 with file:line,
never an OverflowError, and nothing is changed."""

from __future__ import annotations

import pytest
import yaml

from runbook import commands
from runbook.cli import main
from runbook.errors import ConfigError
from tests.projects import spec_dict, write_project

HUGE = "99999999999999999999d"


def with_setting(data, path, value):
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


CASES = [
    (("soak", "duration"), HUGE, "longer than"),
    (("soak", "valid_for"), "1e400s", "not a duration"),
    (("soak", "valid_for"), float("inf"), "longer than"),
    (("soak", "duration"), 10**400, "longer than"),
    (("settings", "retry_budget"), HUGE, "longer than"),
    (("settings", "lock_timeout"), "0s", "wait for ever"),
    (("settings", "lock_timeout"), "0.4ms", "wait for ever"),
    (("settings", "lock_timeout"), "30d", "longest timeout"),
    (("settings", "statement_timeout"), "0s", "wait for ever"),
    (("settings", "connect_timeout"), 0, "wait for ever"),
    (("settings", "http_timeout"), HUGE, "longer than"),
    (("role", "connection_limit"), 10**12, "less than or equal to 262143"),
    (("role", "connection_limit"), 2**31, "less than or equal to 262143"),
    (("environments", "staging", "app", "restart_timeout"), "0s", "wait for ever"),
    (("environments", "staging", "app", "restart_timeout"), HUGE, "longer than"),
]


@pytest.mark.parametrize("path,value,expect", CASES, ids=[f"{'.'.join(p)}={v!r}"[:60] for p, v, _ in CASES])
def test_out_of_bounds_is_exit_2_with_file_and_line(tmp_path, capsys, path, value, expect):
    data = with_setting(spec_dict("raptor_app", restart="true"), path, value)
    project = write_project(tmp_path, data)
    with pytest.raises(SystemExit) as info:
        main(["-f", str(project), "validate"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    key = path[-1]
    line = next(i for i, text in enumerate(project.read_text().splitlines(), 1) if text.strip().startswith(f"{key}:"))
    assert err.startswith(f"error: {project}:{line}:"), err
    assert expect in err, err


def test_a_command_check_timeout_is_bounded(tmp_path, capsys):
    data = spec_dict("raptor_app", soak={"checks": [{"command": {"run": "true", "timeout": HUGE}}]})
    project = write_project(tmp_path, data)
    with pytest.raises(SystemExit) as info:
        main(["-f", str(project), "validate"])
    assert info.value.code == 2 and "longer than" in capsys.readouterr().err


def test_the_largest_values_still_accepted_are_usable(tmp_path):
    data = spec_dict("raptor_app")
    data["role"]["connection_limit"] = 262143
    data["settings"] = {"lock_timeout": "24d", "statement_timeout": "1ms"}
    data["soak"] = {"duration": "3650d", "checkpoints": ["1d", "3650d"], "valid_for": "3650d"}
    write_project(tmp_path, data)
    from runbook import project as projects

    spec = projects.load(tmp_path / "runbook.yaml").spec
    assert spec.settings.lock_timeout.total_seconds() * 1000 < 2**31


def test_provision_with_lock_timeout_0_changes_nothing(su_env):
    data = spec_dict(su_env.role, owner=su_env.owner)
    data["settings"] = {"lock_timeout": "0s"}
    write_project(su_env.dir, data)
    with pytest.raises(ConfigError, match="lock_timeout"):
        commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert not su_env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (su_env.role,))
    assert not (su_env.dir / ".runbook" / "staging.env").exists()


def test_a_command_step_timeout_is_bounded(su_env):
    data = spec_dict(su_env.role, owner=su_env.owner)
    data["playbooks"] = {"slow": "slow.yaml"}
    (su_env.dir / "slow.yaml").write_text(yaml.safe_dump({"name": "slow", "steps": [
        {"command": {"run": "touch ran", "timeout": 1e300}}]}))
    write_project(su_env.dir, data)
    with pytest.raises(ConfigError, match="longer than"):
        commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ, playbook="slow")
    assert not (su_env.dir / "ran").exists()
