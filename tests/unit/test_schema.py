"""The editor schema (`runbook schema`, written by `runbook init`) against what the tool accepts:
every example project in README, the starter (both forms) and the demo project validate against
it with an independent validator (jsonschema), and load with the tool itself; every key has a
description, every key that holds a value has examples."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from runbook import project, starter
from runbook.demo import _project_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = project.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _readme_projects() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    blocks = [(f"README.md:{text[:m.start()].count(chr(10)) + 2}", m.group(1))
              for m in re.finditer(r"```yaml\n(.*?)```", text, re.S)]
    return [(where, body) for where, body in blocks if re.search(r"^environments:", body, re.M)]


EXAMPLES = [("starter", starter.render_starter()), ("starter --quickstart", starter.render_starter(quickstart=True)),
            ("demo", _project_text()), *_readme_projects()]


def test_readme_has_example_projects():
    assert len(_readme_projects()) >= 1


@pytest.mark.parametrize("name, text", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_projects_validate_against_the_schema_and_load(validator, name, text):
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(yaml.safe_load(text))]
    assert errors == []
    project.loads(text)          # and the tool itself accepts it


@pytest.mark.parametrize("checks", [["diagnose", "drift"], ["connections"], [{"connections": None}],
                                    [{"connections": {"application_name": "web", "min_sessions": 2}}],
                                    [{"command": "./smoke.sh"}], [{"command": {"run": "./smoke.sh", "timeout": "1m"}}],
                                    [{"http": {"url": "https://example.com/health"}}], [{"kind": "drift"}]])
def test_every_way_of_writing_a_check_is_in_the_schema(validator, checks):
    data = yaml.safe_load(starter.render_starter())
    data["soak"]["checks"] = checks
    assert list(validator.iter_errors(data)) == []
    project.loads(yaml.safe_dump(data))


@pytest.mark.parametrize("mutate", [
    lambda d: d["soak"].update(checks=["diagnos"]),
    lambda d: d["soak"].update(checks=[{"command": "a", "http": {"url": "x"}}]),
    lambda d: d["role"].update(nmae="x"),
    lambda d: d["environments"]["staging"].update(provider="rdss"),
    lambda d: d["soak"].update(duration="3 days"),
])
def test_the_schema_refuses_what_the_tool_refuses(validator, mutate):
    # so the validations above cannot pass by accepting anything
    data = yaml.safe_load(starter.render_starter())
    mutate(data)
    assert list(validator.iter_errors(data)) != []
    with pytest.raises(Exception):
        project.loads(yaml.safe_dump(data))


def _keys(schema: dict) -> list[tuple[str, dict]]:
    nodes = [("(top)", schema), *schema["$defs"].items()]
    return [(f"{model}.{key}", prop) for model, node in nodes for key, prop in (node.get("properties") or {}).items()]


def _holds_a_value(prop: dict) -> bool:
    """A scalar or a list, as opposed to a block whose own keys carry the examples."""
    if "$ref" in prop or prop.get("type") == "object":
        return False
    alternatives = prop.get("anyOf") or []
    return not any("$ref" in a for a in alternatives)


def test_every_key_has_a_description_and_every_value_examples():
    keys = _keys(project.json_schema())
    assert len(keys) > 120
    assert [k for k, prop in keys if not prop.get("description")] == []
    assert [k for k, prop in keys if _holds_a_value(prop) and not prop.get("examples")] == []


def test_provider_blocks_are_in_the_schema():
    env = project.json_schema()["$defs"]["EnvironmentSpec"]["properties"]
    assert {r["$ref"].rsplit("/", 1)[1] for r in env["database"]["anyOf"]} >= {
        "LocalDatabaseConfig", "HerokuDatabaseConfig", "RdsDatabaseConfig", "CloudSqlDatabaseConfig", "SupabaseDatabaseConfig"}
    assert {r["$ref"].rsplit("/", 1)[1] for r in env["app"]["anyOf"]} >= {
        "DotenvAppConfig", "HerokuAppConfig", "EcsAppConfig", "CloudRunAppConfig", "SupabaseAppConfig"}


def test_init_writes_the_schema_line_and_the_schema_beside_the_file(tmp_path):
    res = subprocess.run([sys.executable, "-m", "runbook.cli", "init", "-f", "svc.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "svc.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=svc.schema.json"
    written = json.loads((tmp_path / "svc.schema.json").read_text())
    assert written == json.loads(json.dumps(project.json_schema()))
    assert list(jsonschema.Draft202012Validator(written).iter_errors(yaml.safe_load(text))) == []
