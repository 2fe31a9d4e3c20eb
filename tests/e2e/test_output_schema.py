"""`runbook schema output` against real runs: the JSON every command prints (one environment, a
fleet, validate, init) validates against the versioned schema, and `--output markdown` renders
plan, drift, diagnose and soak for a pull-request comment."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest
import yaml

from runbook.output_schema import OUTPUT_VERSION
from tests.e2e.test_cli import run_cli
from tests.pg.conftest import make_env, prod_database
from tests.projects import write_project

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def validator(tmp_path_factory) -> jsonschema.Draft202012Validator:
    res = run_cli(["schema", "output"], tmp_path_factory.mktemp("schema"), {})
    assert res.returncode == 0, res.stderr
    schema = json.loads(res.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_command_s_json_follows_the_output_schema(pg, tmp_path, validator, prod_cluster):
    e = make_env(pg, tmp_path, admin="createrole", soak={"duration": "2s", "checkpoints": ["2s"], "checks": ["diagnose"]})
    data = yaml.safe_load(e.path.read_text())
    # prod on a cluster of its own, as real environments are (roles are cluster-wide: the same
    # role in staging's database would be refused as another environment's)
    with prod_database(prod_cluster, e, "CREATE TABLE orders (id serial PRIMARY KEY)") as prod_db:
        data["environments"]["prod"] = {"provider": "local", "app": {"dotenv": ".runbook/prod.env"},
                                        "database": {"embedded": str(prod_cluster.data_dir), "database": prod_db},
                                        "promote_from": "staging"}
        write_project(e.dir, data)
        seen: dict[str, dict] = {}

        def cli(*args: str, codes=(0,)) -> dict:
            res = run_cli([*args, "-o", "json"], e.dir, e.environ)
            assert res.returncode in codes, (args, res.stdout, res.stderr)
            doc = json.loads(res.stdout)
            errors = [f"{list(err.path)}: {err.message}" for err in validator.iter_errors(doc)]
            assert errors == [], (args, errors)
            assert doc["output_version"] == OUTPUT_VERSION
            seen[" ".join(args[:1])] = doc
            return doc

        cli("validate")
        cli("plan", "--env", "staging", "--sql")
        cli("provision", "--env", "staging", "--yes")
        cli("diagnose", "--env", "staging")
        cli("drift", "--env", "staging")
        cli("soak", "--env", "staging", codes=(0, 3))
        cli("soak", "--env", "staging", "--wait")
        cli("promote", "--env", "prod", "--sign-off", "Ada Lovelace", "--yes")
        cli("status")
        cli("history", "--env", "staging")
        cli("rotate", "--env", "staging", "--yes")
        cli("rollback", "--env", "staging,prod", "--yes")                # a fleet
        cli("retire", "--env", "staging", "--yes")
        cli("init", "-f", "other.yaml")
        cli("init", "--ci", "github")
        assert set(seen) == {"validate", "plan", "provision", "diagnose", "drift", "soak", "promote", "status", "history",
                             "rotate", "rollback", "retire", "init"}
        assert seen["rollback"]["fleet"] is True


def test_the_schema_notices_a_changed_field(validator):
    doc = {"output_version": OUTPUT_VERSION, "command": "drift", "env": "staging", "status": "ok", "exit_code": 0,
           "steps": [], "checks": [], "messages": [], "data": {}}
    assert list(validator.iter_errors(doc)) == []
    renamed = {**{k: v for k, v in doc.items() if k != "exit_code"}, "exitcode": 0}
    assert list(validator.iter_errors(renamed)) != []
    assert list(validator.iter_errors({**doc, "output_version": OUTPUT_VERSION + 1})) != []
    assert list(validator.iter_errors({k: v for k, v in doc.items() if k != "output_version"})) != []


def test_markdown_for_plan_drift_diagnose_and_soak(pg, tmp_path):
    e = make_env(pg, tmp_path, admin="createrole", soak={"duration": "1h", "checkpoints": ["30m", "1h"]})

    def md(*args: str, code: int = 0) -> str:
        res = run_cli([*args, "--output", "markdown"], e.dir, e.environ)
        assert res.returncode == code, (args, res.stdout, res.stderr)
        assert not res.stdout.lstrip().startswith("{")
        return res.stdout

    plan = md("plan", "--env", "staging", "--sql")
    assert plan.startswith("### runbook plan: staging — planned (exit 0)")
    assert "- **role**" in plan and "```sql" in plan and "CREATE ROLE" in plan
    assert run_cli(["provision", "--env", "staging", "--yes"], e.dir, e.environ).returncode == 0
    diag = md("diagnose", "--env", "staging")
    assert "| ✅ |" in diag and diag.count("| ✅ |") == 4
    assert "0 finding(s)" in md("drift", "--env", "staging")
    soak = md("soak", "--env", "staging", code=3)
    assert "Soak **running**" in soak and "| 30m | ⏳ pending |" in soak
    fleet = md("plan", "--env", "staging,staging")
    assert fleet.count("### runbook plan: staging") == 1
    assert ":****@" in plan                                        # the URL it would write, masked
