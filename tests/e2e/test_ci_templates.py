"""`runbook init --ci github|gitlab`: the workflows parse, say what the runbook says they do,
name only commands and options that exist (every `runbook …` line they contain runs with
--help), and their read-only drift job, run as the CI runner would run its script, works with a
role that can read only the catalog and writes nothing."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from tests.e2e.test_cli import run_cli
from tests.e2e.test_readonly import READER_PW, _journal_rows
from tests.pg.conftest import make_env
from tests.projects import spec_dict, write_project

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHELL_OPS = {">", ">>", "|", "||", "&&", ";", "2>&1"}


def _templates(tmp_path: Path, kind: str, data: dict | None = None) -> dict[str, dict]:
    write_project(tmp_path, data or spec_dict("raptor_app", extra_envs={
        "prod": {"provider": "local", "database": {"dsn_env": "PROD_DSN"}, "app": {"dotenv": ".runbook/prod.env"},
                 "promote_from": "staging"}}))
    res = run_cli(["init", "--ci", kind], tmp_path, {})
    assert res.returncode == 0, res.stderr
    assert run_cli(["init", "--ci", kind], tmp_path, {}).returncode == 2          # exists: refused
    files = [tmp_path / ".gitlab-ci.runbook.yml"] if kind == "gitlab" else sorted((tmp_path / ".github/workflows").glob("*.yml"))
    return {f.name: yaml.safe_load(f.read_text()) for f in files}


def _scripts(kind: str, docs: dict[str, dict]) -> list[str]:
    out = []
    for doc in docs.values():
        jobs = doc["jobs"].values() if kind == "github" else [v for k, v in doc.items() if isinstance(v, dict)]
        for job in jobs:
            if kind == "github":
                out.extend(step["run"] for step in job.get("steps", []) if "run" in step)
            else:
                out.extend(line for key in ("before_script", "script") for line in job.get(key, []))
    return out


def _runbook_lines(scripts: list[str]) -> list[list[str]]:
    """Each `runbook …` invocation, as argv, cut at the first shell operator."""
    found = []
    for script in scripts:
        for line in script.splitlines():
            if line.strip().startswith("#"):
                continue
            for match in re.finditer(r"(?:^|(?<=\s))runbook\s", line):
                words = shlex.split(line[match.start():], comments=True)
                argv = []
                for word in words:
                    if word in SHELL_OPS or word.startswith(">"):
                        break
                    argv.append(word)
                found.append(argv)
    return found


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_every_runbook_line_names_commands_and_options_that_exist(tmp_path, kind):
    docs = _templates(tmp_path, kind)
    lines = _runbook_lines(_scripts(kind, docs))
    assert {argv[1] for argv in lines} == {"plan", "drift", "soak", "promote"}, lines
    for argv in lines:
        res = run_cli([*argv[1:], "--help"], tmp_path, {})
        assert res.returncode == 0, (argv, res.stderr)
        assert "Usage: runbook" in res.stdout
    # the check can fail: an option that does not exist is refused
    assert run_cli(["drift", "--env", "x", "--no-such-option", "--help"], tmp_path, {}).returncode == 2


def test_github_workflows_do_what_the_runbook_says(tmp_path):
    docs = _templates(tmp_path, "github")
    on = {name: doc.get("on", doc.get(True)) for name, doc in docs.items()}      # YAML 1.1 reads `on` as true
    plan = on["runbook-plan.yml"]["pull_request"]["paths"]
    assert "runbook.yaml" in plan and "migrations/**" in plan
    assert any("--output markdown" in s and "GITHUB_STEP_SUMMARY" in s for s in _scripts("github", {"p": docs["runbook-plan.yml"]}))
    assert any("gh pr comment" in s for s in _scripts("github", {"p": docs["runbook-plan.yml"]}))
    assert on["runbook-drift.yml"]["schedule"][0]["cron"].split()[2:] == ["*", "*", "*"]          # nightly
    assert on["runbook-soak.yml"]["schedule"][0]["cron"].split()[1:] == ["*", "*", "*", "*"]      # hourly
    matrix = docs["runbook-drift.yml"]["jobs"]["drift"]["strategy"]["matrix"]["include"]
    assert {m["env"] for m in matrix} == {"staging", "prod"}
    assert all(m["secret"].endswith("_READONLY_DSN") for m in matrix)
    promote = docs["runbook-promote.yml"]
    inputs = on["runbook-promote.yml"]["workflow_dispatch"]["inputs"]
    assert inputs["sign_off"]["required"] is True and inputs["env"]["options"] == ["prod"]
    assert promote["jobs"]["promote"]["environment"] == "production"
    # outside values reach the shell only through the environment, never pasted into a script
    for script in _scripts("github", docs):
        assert "${{" not in script, script


def test_gitlab_jobs_do_what_the_runbook_says(tmp_path):
    doc = _templates(tmp_path, "gitlab")[".gitlab-ci.runbook.yml"]
    assert doc["runbook-plan"]["rules"][0]["if"] == '$CI_PIPELINE_SOURCE == "merge_request_event"'
    assert "migrations/**/*" in doc["runbook-plan"]["rules"][0]["changes"]
    assert 'RUNBOOK_JOB == "drift"' in doc["runbook-drift"]["rules"][0]["if"]
    assert 'RUNBOOK_JOB == "soak"' in doc["runbook-soak"]["rules"][0]["if"]
    assert doc["runbook-promote"]["rules"][0]["when"] == "manual"
    assert doc["runbook-promote"]["environment"]["name"] == "production"
    assert "SIGN_OFF" in doc["runbook-promote"]["variables"]


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = {"PATH": f"{BIN}{os.pathsep}/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "CI": "true"}
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env={**path, **env}, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.pg
def test_the_drift_jobs_run_with_a_catalog_only_role_and_write_nothing(pg, tmp_path):
    e = make_env(pg, tmp_path, admin="createrole")
    assert run_cli(["provision", "--env", "staging", "--yes"], e.dir, e.environ).returncode == 0
    reader = e.pg.role("ci_reader")
    e.pg.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(reader), sql.Literal(READER_PW)))
    e.pg.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(reader)))
    dsn = e.pg.tcp_dsn(reader, READER_PW)
    github = _templates(e.dir, "github", yaml.safe_load(e.path.read_text()))
    gitlab = _templates(e.dir, "gitlab", yaml.safe_load(e.path.read_text()))
    [gh_script] = _scripts("github", {"d": github["runbook-drift.yml"]})[-1:]
    job = gitlab[".gitlab-ci.runbook.yml"]
    gl_script = "\n".join([*job[".runbook"]["before_script"][1:], *job["runbook-drift"]["script"]])
    [row] = [m for m in github["runbook-drift.yml"]["jobs"]["drift"]["strategy"]["matrix"]["include"] if m["env"] == "staging"]
    assert row["dsn_var"] == "RB_TEST_ADMIN_DSN"           # the variable the project file names
    summary = tmp_path / "summary.md"
    gh_env = {"RUNBOOK_FILE": "runbook.yaml", "RUNBOOK_ENV": "staging", "DSN_VAR": row["dsn_var"], "DSN": dsn,
              "GITHUB_STEP_SUMMARY": str(summary)}
    gl_env = {"RUNBOOK_FILE": "runbook.yaml", "RUNBOOK_ENV": "staging", "DSN_VAR": row["dsn_var"],
              "DSN_SECRET": "RUNBOOK_STAGING_READONLY_DSN", "RUNBOOK_STAGING_READONLY_DSN": dsn}
    before = _journal_rows(e)
    res = _bash(gh_script, e.dir, gh_env)
    assert res.returncode == 0, res.stderr
    assert summary.read_text().startswith("### runbook drift: staging — ok (exit 0)")
    res = _bash(gl_script, e.dir, gl_env)
    assert res.returncode == 0 and "### runbook drift: staging — ok" in res.stdout, res.stderr
    # drift fails the job
    with e.pg.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(e.owner)))
        conn.execute("CREATE TABLE invoices (id int)")
        conn.execute(sql.SQL("REVOKE ALL ON invoices FROM {}").format(sql.Identifier(e.role)))
    assert _bash(gh_script, e.dir, gh_env).returncode == 4
    assert "invoices" in summary.read_text()
    assert _bash(gl_script, e.dir, gl_env).returncode == 4
    assert _journal_rows(e) == before


def test_readme_s_kubernetes_cronjob_parses_and_runs_an_existing_command(tmp_path):
    text = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kind: CronJob" in b]
    job = yaml.safe_load(block)
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    [container] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    lines = _runbook_lines(container["args"])
    assert [argv[:1] + [a for a in argv if a == "soak"] for argv in lines] == [["runbook", "soak"]]
    for argv in lines:
        args = argv[1:]
        args[args.index("-f") + 1] = str(tmp_path / "runbook.yaml")
        res = run_cli([*args, "--help"], tmp_path, {})
        assert res.returncode == 0, (argv, res.stderr)
