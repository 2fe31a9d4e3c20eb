"""CI and cron templates (`runbook init --ci github|gitlab`): plan on pull requests that touch the
project file or migrations (the plan as job summary and PR comment), nightly drift per
environment with a read-only DSN, an hourly soak that is safe to re-run, and promote as a manual
job that needs a named sign-off and a protected environment.

Every value from outside (a matrix entry, a secret, a dispatch input) reaches the shell through
an environment variable, never pasted into the script, so an input such as a sign-off name cannot
inject commands. Each environment's DSN goes into the variable its `database.dsn_env` names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runbook.errors import ConfigError

KINDS = ("github", "gitlab")
SHARDS = 4              # machines a fleet template spreads the environments over (--shard I/N)
FLEET_PARALLEL = 10     # environments each of them runs at once

# soak and promote exit codes a job should not fail on: 3 = a checkpoint is not due yet
_SOAK_SCRIPT = """\
export "$DSN_VAR=$DSN"
set +e
runbook soak --env "$RUNBOOK_ENV" --output markdown > soak.md
code=$?
set -e
cat soak.md
# 3: the soak is still running and nothing was due: not a failure of the job
if [ "$code" -eq 3 ]; then exit 0; fi
exit "$code\""""


def _envs(project_file: Path) -> list[dict[str, str]]:
    """(env, the DSN variable its project block names, the CI secret names) per environment."""
    from runbook.completion import _document

    doc = _document(project_file)
    envs = doc.get("environments") if isinstance(doc.get("environments"), dict) else None
    if not envs:
        envs = {"staging": {"database": {"dsn_env": "STAGING_ADMIN_DSN"}}, "prod": {"database": {"dsn_env": "PROD_ADMIN_DSN"}}}
    out = []
    for name, block in envs.items():
        database = (block or {}).get("database") if isinstance(block, dict) else None
        var = database.get("dsn_env") if isinstance(database, dict) else None
        key = re.sub(r"[^A-Z0-9]+", "_", str(name).upper()).strip("_")
        out.append({"env": str(name), "dsn_var": str(var or f"{key}_ADMIN_DSN"),
                    "readonly": f"RUNBOOK_{key}_READONLY_DSN", "admin": f"RUNBOOK_{key}_ADMIN_DSN",
                    "promote": bool(isinstance(block, dict) and block.get("promote_from"))})
    return out


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def _github_matrix(envs: list[dict[str, str]], secret: str) -> str:
    rows = [f"- {{env: {e['env']}, dsn_var: {e['dsn_var']}, secret: {e[secret]}}}" for e in envs]
    return "\n".join(rows)


def github(project_file: Path) -> dict[str, str]:
    envs = _envs(project_file)
    name = project_file.name
    setup = """\
- uses: actions/checkout@v4
- uses: actions/setup-python@v5
  with:
    python-version: "3.12"
- run: pipx install pg-runbook   # add [aws] or [gcp] for rds/ecs or cloudsql/cloudrun"""
    common_env = f"""\
RUNBOOK_FILE: {name}
RUNBOOK_ENV: ${{{{ matrix.env }}}}
DSN_VAR: ${{{{ matrix.dsn_var }}}}
DSN: ${{{{ secrets[matrix.secret] }}}}"""
    plan = f"""\
# runbook plan on every pull request that touches the project file or migrations: the plan
# (read-only DSN; nothing changes) as the job summary and a comment on the pull request.
name: runbook plan
on:
  pull_request:
    paths: ["{name}", "migrations/**"]
permissions:
  contents: read
  pull-requests: write
jobs:
  plan:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        include:
{_indent(_github_matrix(envs, "readonly"), 10)}
    env:
{_indent(common_env, 6)}
      GH_TOKEN: ${{{{ github.token }}}}
      PR: ${{{{ github.event.pull_request.number }}}}
    steps:
{_indent(setup, 6)}
      - name: runbook plan
        run: |
          export "$DSN_VAR=$DSN"
          runbook plan --env "$RUNBOOK_ENV" --sql --output markdown > plan.md
          cat plan.md >> "$GITHUB_STEP_SUMMARY"
      - name: comment on the pull request
        run: gh pr comment "$PR" --body-file plan.md
"""
    drift = f"""\
# Nightly drift per environment with a read-only DSN (a role that can read the catalog; no
# write privilege at all): the job fails (exit 4) when something drifted.
name: runbook drift
on:
  schedule:
    - cron: "23 3 * * *"
  workflow_dispatch: {{}}
permissions:
  contents: read
jobs:
  drift:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        include:
{_indent(_github_matrix(envs, "readonly"), 10)}
    env:
{_indent(common_env, 6)}
    steps:
{_indent(setup, 6)}
      - name: runbook drift
        run: |
          export "$DSN_VAR=$DSN"
          runbook drift --env "$RUNBOOK_ENV" --output markdown > drift.md && code=0 || code=$?
          cat drift.md >> "$GITHUB_STEP_SUMMARY"
          exit "$code"
"""
    soak = f"""\
# The soak, hourly: safe to re-run (each checkpoint is evaluated once, when due). A DSN that can
# write the journal records the checkpoints; exit 3 (nothing due yet) does not fail the job.
name: runbook soak
on:
  schedule:
    - cron: "17 * * * *"
  workflow_dispatch: {{}}
permissions:
  contents: read
concurrency:
  group: runbook-soak
  cancel-in-progress: false
jobs:
  soak:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        include:
{_indent(_github_matrix(envs, "admin"), 10)}
    env:
{_indent(common_env, 6)}
    steps:
{_indent(setup, 6)}
      - name: runbook soak
        run: |
{_indent(_SOAK_SCRIPT, 10)}
"""
    targets = [e["env"] for e in envs if e["promote"]] or [envs[-1]["env"]]
    promote = f"""\
# Promotion, by hand only: needs the name of who signed off, and runs in the protected GitHub
# environment "production" (set required reviewers on it). Refused (exit 3) until the source
# environment's soak of the same role spec has passed.
name: runbook promote
on:
  workflow_dispatch:
    inputs:
      env:
        description: environment to promote
        required: true
        type: choice
        options: [{", ".join(targets)}]
      sign_off:
        description: who approved this promotion (full name)
        required: true
        type: string
env:
  # environment → the variable its database.dsn_env names, and the secret holding that DSN
  RUNBOOK_DSNS: '{_json_map(envs)}'
permissions:
  contents: read
jobs:
  promote:
    runs-on: ubuntu-latest
    environment: production
    env:
      RUNBOOK_FILE: {name}
      RUNBOOK_ENV: ${{{{ inputs.env }}}}
      SIGN_OFF: ${{{{ inputs.sign_off }}}}
      RUNBOOK_YES: "1"
    steps:
{_indent(setup, 6)}
      - name: runbook promote
        env:
          DSN_VAR: ${{{{ fromJSON(env.RUNBOOK_DSNS)[inputs.env].dsn_var }}}}
          DSN: ${{{{ secrets[fromJSON(env.RUNBOOK_DSNS)[inputs.env].secret] }}}}
        run: |
          test -n "$SIGN_OFF" || {{ echo "a sign-off name is required" >&2; exit 2; }}
          export "$DSN_VAR=$DSN"
          runbook promote --env "$RUNBOOK_ENV" --sign-off "$SIGN_OFF" --output markdown > promote.md && code=0 || code=$?
          cat promote.md >> "$GITHUB_STEP_SUMMARY"
          exit "$code"
"""
    every_dsn = "\n".join(f"{e['dsn_var']}: ${{{{ secrets.{e['readonly']} }}}}" for e in envs)
    fleet = f"""\
# The same nightly drift for a fleet too large for one job per environment: the environments are
# split over {SHARDS} machines by `--shard I/N` (a stable hash of each name: adding an environment
# moves no other one), and each machine runs its share {FLEET_PARALLEL} at a time. With one central
# `--state postgresql://…` store (writable by these jobs), the machines share each platform
# account's rate budget through it; otherwise each paces itself alone.
name: runbook fleet drift
on:
  schedule:
    - cron: "41 3 * * *"
  workflow_dispatch: {{}}
permissions:
  contents: read
jobs:
  drift:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        shard: [{", ".join(str(i) for i in range(1, SHARDS + 1))}]
    env:
      RUNBOOK_FILE: {name}
      SHARD: ${{{{ matrix.shard }}}}
{_indent(every_dsn, 6)}
    steps:
{_indent(setup, 6)}
      - name: runbook drift (one shard of the fleet)
        run: |
          runbook drift --env '*' --shard "$SHARD/{SHARDS}" --parallel {FLEET_PARALLEL} --output markdown > drift.md && code=0 || code=$?
          cat drift.md >> "$GITHUB_STEP_SUMMARY"
          exit "$code"
"""
    return {".github/workflows/runbook-plan.yml": plan, ".github/workflows/runbook-drift.yml": drift,
            ".github/workflows/runbook-soak.yml": soak, ".github/workflows/runbook-promote.yml": promote,
            ".github/workflows/runbook-fleet-drift.yml": fleet}


def _json_map(envs: list[dict[str, Any]]) -> str:
    import json

    return json.dumps({e["env"]: {"dsn_var": e["dsn_var"], "secret": e["admin"]} for e in envs}, separators=(",", ":"))


def gitlab(project_file: Path) -> dict[str, str]:
    envs = _envs(project_file)
    name = project_file.name

    def matrix(secret: str) -> str:
        rows = [f"- {{RUNBOOK_ENV: {e['env']}, DSN_VAR: {e['dsn_var']}, DSN_SECRET: {e[secret]}}}" for e in envs]
        return _indent("\n".join(rows), 6)

    targets = [e for e in envs if e["promote"]] or [envs[-1]]
    # each environment's DSN variable from its read-only CI/CD variable, by name (never a value)
    every_export = _indent("\n".join(f'- export "{e["dsn_var"]}=${e["readonly"]}"' for e in envs), 4)
    text = f"""\
# pg-runbook jobs; include from .gitlab-ci.yml:   include: [{{local: .gitlab-ci.runbook.yml}}]
# CI/CD variables: one per environment and purpose, named in each job's matrix (DSN_SECRET);
# the *_READONLY_DSN ones belong to a role that can read the catalog and nothing else.
# Pipeline schedules: one with RUNBOOK_JOB=drift (nightly), one with RUNBOOK_JOB=soak (hourly).
stages: [runbook]

.runbook:
  stage: runbook
  image: python:3.12-slim
  variables:
    RUNBOOK_FILE: {name}
  before_script:
    - pip install --quiet pg-runbook   # add [aws] or [gcp] for rds/ecs or cloudsql/cloudrun
    - export "$DSN_VAR=$(printenv "$DSN_SECRET")"

runbook-plan:
  extends: .runbook
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
      changes: ["{name}", "migrations/**/*"]
  parallel:
    matrix:
{matrix("readonly")}
  script:
    - runbook plan --env "$RUNBOOK_ENV" --sql --output markdown > plan.md && code=0 || code=$?
    - cat plan.md; exit "$code"
  artifacts:
    paths: [plan.md]
    expose_as: runbook plan

runbook-drift:
  extends: .runbook
  rules:
    - if: $CI_PIPELINE_SOURCE == "schedule" && $RUNBOOK_JOB == "drift"
  parallel:
    matrix:
{matrix("readonly")}
  script:
    - runbook drift --env "$RUNBOOK_ENV" --output markdown > drift.md && code=0 || code=$?
    - cat drift.md; exit "$code"

# A fleet too large for one job per environment: {SHARDS} jobs, each running its share of every
# environment (`--shard` with GitLab's 1-based CI_NODE_INDEX of CI_NODE_TOTAL). With one central
# `--state postgresql://…` store (writable by these jobs), the jobs share each platform account's
# rate budget through it; otherwise each paces itself alone.
runbook-fleet-drift:
  extends: .runbook
  rules:
    - if: $CI_PIPELINE_SOURCE == "schedule" && $RUNBOOK_JOB == "fleet-drift"
  parallel: {SHARDS}
  before_script:
    - pip install --quiet pg-runbook   # add [aws] or [gcp] for rds/ecs or cloudsql/cloudrun
{every_export}
  script:
    - runbook drift --env '*' --shard "$CI_NODE_INDEX/$CI_NODE_TOTAL" --parallel {FLEET_PARALLEL} --output markdown > drift.md && code=0 || code=$?
    - cat drift.md; exit "$code"

runbook-soak:
  extends: .runbook
  rules:
    - if: $CI_PIPELINE_SOURCE == "schedule" && $RUNBOOK_JOB == "soak"
  resource_group: runbook-soak-$RUNBOOK_ENV
  parallel:
    matrix:
{matrix("admin")}
  script:
    - |
{_indent(_SOAK_SCRIPT.replace('export "$DSN_VAR=$DSN"' + chr(10), ''), 6)}

runbook-promote:
  extends: .runbook
  rules:
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
      when: manual
  environment:
    name: production          # protect it (Settings → CI/CD → Protected environments) with approvers
  variables:
    RUNBOOK_ENV: {targets[0]['env']}
    DSN_VAR: {targets[0]['dsn_var']}
    DSN_SECRET: {targets[0]['admin']}
    RUNBOOK_YES: "1"
    SIGN_OFF:
      description: who approved this promotion (full name); required
      value: ""
  script:
    - 'test -n "$SIGN_OFF" || {{ echo "set SIGN_OFF to the name of who approved" >&2; exit 2; }}'
    - runbook promote --env "$RUNBOOK_ENV" --sign-off "$SIGN_OFF"
"""
    return {".gitlab-ci.runbook.yml": text}


def write(kind: str, project_file: Path, *, force: bool = False) -> list[Path]:
    """Write the templates of `kind` under the project file's folder; refuse to overwrite."""
    if kind not in KINDS:
        raise ConfigError(f"--ci {kind!r}: github or gitlab")
    files = (github if kind == "github" else gitlab)(project_file)
    root = project_file.resolve().parent
    paths = [root / rel for rel in files]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} exists; pass --force to overwrite it")
    for path, text in zip(paths, files.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return paths
