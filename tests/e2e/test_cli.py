"""The `runbook` command as a subprocess, the way an operator (or cron, or CI) runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg.conftest import make_env
from tests.projects import dotenv

pytestmark = pytest.mark.pg


def run_cli(args: list[str], cwd: Path, environ: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **environ, "NO_COLOR": "1", "CI": "true"}
    return subprocess.run([sys.executable, "-m", "runbook.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli_env(pg, tmp_path):
    return make_env(pg, tmp_path, admin="createrole")


def test_full_lifecycle_through_the_cli(cli_env):
    e = cli_env
    outputs: list[str] = []

    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        res = run_cli(list(args), e.dir, e.environ)
        outputs.extend([res.stdout, res.stderr])
        assert res.returncode == code, (args, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr
        return res

    cli("validate")
    plan = json.loads(cli("plan", "--env", "staging", "--output", "json").stdout)
    assert plan["status"] == "planned"
    cli("provision", "--env", "staging", code=2)                       # no terminal, no --yes
    first = json.loads(cli("provision", "--env", "staging", "--yes", "--output", "json").stdout)
    assert first["status"] == "ok"
    second = json.loads(cli("provision", "--env", "staging", "--yes", "--output", "json").stdout)
    assert second["status"] == "unchanged"
    diag = json.loads(cli("diagnose", "--env", "staging", "-o", "json").stdout)
    assert [c["status"] for c in diag["checks"]] == ["pass"] * 4
    assert "****" in diag["checks"][2]["detail"]
    cli("drift", "--env", "staging")
    password = dotenv(e.dir)["RAPTOR_APP_DATABASE_URL"].split(":")[2].split("@")[0]
    cli("rollback", "--env", "staging", "--yes")
    assert dotenv(e.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
    cli("diagnose", "--env", "staging", code=4)                         # the flag check fails after rollback
    hist = json.loads(cli("history", "--env", "staging", "-o", "json").stdout)
    assert {r["command"] for r in hist["data"]["runs"]} >= {"provision", "rollback"}
    cli("status")
    cli("retire", "--env", "staging", "--yes")
    cli("diagnose", "--env", "staging", code=4)
    # the password never left the dotenv file
    journal = e.pg.execute("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM runbook.events) t")[0][0]
    runs = e.pg.execute("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM runbook.runs) t")[0][0]
    server_log = e.pg.rc.cluster.log_file.read_text(errors="replace")
    for where, text in [("cli output", "\n".join(outputs)), ("journal", journal), ("runs", runs), ("server log", server_log)]:
        assert password not in text, f"password leaked into {where}"


def test_help_and_unknown_command(tmp_path):
    res = run_cli(["--help"], tmp_path, {})
    assert res.returncode == 0 and "provision" in res.stdout
    res = run_cli(["provison"], tmp_path, {})
    assert res.returncode == 2


def test_init_validate_schema(tmp_path):
    assert run_cli(["init"], tmp_path, {}).returncode == 0
    assert run_cli(["init"], tmp_path, {}).returncode == 2                # exists
    assert run_cli(["validate"], tmp_path, {}).returncode == 0
    schema = json.loads(run_cli(["schema"], tmp_path, {}).stdout)
    assert "role" in schema["properties"]


def test_missing_dsn_env_is_exit_2(cli_env):
    res = run_cli(["provision", "--env", "staging", "--yes"], cli_env.dir, {"RB_TEST_ADMIN_DSN": ""})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: environment variable RB_TEST_ADMIN_DSN")
