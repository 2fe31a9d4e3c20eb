"""A provider whose optional library is not installed (boto3 for rds/ecs, google-auth for
cloudsql/cloudrun) ends the run in one line naming the extra, exit 2, with nothing changed.

The libraries are installed in the test environment, so each run hides them the way a fresh
`pip install pg-runbook` lacks them: a sitecustomize on PYTHONPATH puts a finder first on
sys.meta_path that knows no such module (tests/e2e/test_wheel_install.py does it for real, in a
clean venv)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pg.conftest import make_env
from tests.projects import OTHER_PLATFORM_ENVS, dotenv, spec_dict, write_project

ROOT = Path(__file__).resolve().parents[2]

_HIDE = """
import sys
HIDDEN = {hidden!r}

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN or name in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def run_without(tmp_path: Path, hidden: tuple[str, ...], cwd: Path, environ: dict[str, str], *args: str):
    site = tmp_path / "hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_HIDE.format(hidden=hidden))
    env = {**os.environ, **environ, "NO_COLOR": "1", "CI": "true", "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-m", "runbook.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_the_hiding_works(tmp_path):
    # so the tests below cannot pass with the library quietly present
    res = run_without(tmp_path, ("boto3", "botocore"), tmp_path, {}, "--version")
    assert res.returncode == 0
    probe = subprocess.run([sys.executable, "-c", "import boto3"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "hide")})
    assert "No module named 'boto3'" in probe.stderr


def _one_error_line(res, extra: str, package: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert f"pip install 'pg-runbook[{extra}]'" in lines[0] and package in lines[0]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    return lines[0]


@pytest.mark.parametrize("verb", [["plan"], ["provision", "--yes"], ["diagnose"], ["drift"], ["rollback", "--yes"],
                                  ["soak"], ["rotate", "--yes"], ["retire", "--yes"]])
def test_rds_and_ecs_without_boto3(tmp_path, verb):
    write_project(tmp_path, spec_dict("raptor_app", extra_envs={"prod": OTHER_PLATFORM_ENVS["prod-aws"]}))
    res = run_without(tmp_path, ("boto3", "botocore"), tmp_path, {}, verb[0], "--env", "prod", *verb[1:])
    line = _one_error_line(res, "aws", "boto3")
    assert line.startswith("error: prod: ")


@pytest.mark.parametrize("env", ["prod-gcp"])
def test_cloudsql_and_cloudrun_without_google_auth(tmp_path, env):
    write_project(tmp_path, spec_dict("raptor_app", extra_envs={env: OTHER_PLATFORM_ENVS[env]}))
    res = run_without(tmp_path, ("google",), tmp_path, {"PGPW": "x"}, "plan", "--env", env)
    _one_error_line(res, "gcp", "google-auth")
    res = run_without(tmp_path, ("google",), tmp_path, {"PGPW": "x"}, "rollback", "--env", env, "--yes")
    _one_error_line(res, "gcp", "google-auth")


def test_a_fleet_names_the_extra_per_environment(tmp_path):
    write_project(tmp_path, spec_dict("raptor_app", dsn_env="RB_EXTRAS_UNSET",
                                      extra_envs={"prod-aws": OTHER_PLATFORM_ENVS["prod-aws"]}))
    res = run_without(tmp_path, ("boto3", "botocore"), tmp_path, {}, "rollback", "--env", "staging,prod-aws", "--yes")
    assert res.returncode == 2, res.stderr            # worst of: staging 0, prod-aws 2
    assert "pg-runbook[aws]" in res.stderr and "internal error" not in res.stderr
    assert dotenv(tmp_path)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"     # the dotenv one still rolled back


def test_other_environments_of_the_file_work_without_the_library(tmp_path):
    # validating the whole file loads rds's config model, which needs no boto3
    write_project(tmp_path, spec_dict("raptor_app", dsn_env="RB_EXTRAS_UNSET", extra_envs=OTHER_PLATFORM_ENVS))
    res = run_without(tmp_path, ("boto3", "botocore", "google"), tmp_path, {}, "rollback", "--env", "staging", "--yes")
    assert res.returncode == 0, res.stderr
    assert run_without(tmp_path, ("boto3", "botocore", "google"), tmp_path, {}, "validate").returncode == 0


@pytest.mark.pg
def test_nothing_changed_on_the_database_side_when_the_app_side_lacks_its_library(pg, tmp_path):
    # a local database with its app on ECS: without the check up front, provision would create
    # the role and grants and only then find it cannot reach the app's config
    e = make_env(pg, tmp_path, admin="createrole")
    data = yaml.safe_load(e.path.read_text())
    data["environments"]["staging"]["app"] = {"platform": "ecs", "cluster": "raptor", "service": "web",
                                              "region": "eu-west-1", "url_name": "raptor/db-url",
                                              "flag_parameter": "/raptor/flag"}
    write_project(e.dir, data)
    res = run_without(tmp_path, ("boto3", "botocore"), e.dir, e.environ, "provision", "--env", "staging", "--yes")
    line = _one_error_line(res, "aws", "boto3")
    assert "app 'ecs'" in line
    assert e.pg.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (e.role,))[0][0] == 0
    assert e.pg.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'runbook'")[0][0] == 0
