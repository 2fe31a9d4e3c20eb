"""`runbook … --role` the way an operator runs it (a subprocess), on a three-role project: one
line for an unknown role, human output grouped under each role, JSON that names the role on
every step and check and follows the output schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.e2e.test_cli import run_cli
from tests.pg.test_roles_three import URLS, Three
from tests.projects import dotenv


@pytest.fixture
def three(pg, tmp_path, request) -> Three:
    from psycopg import sql

    made = Three(pg, tmp_path, "createrole")
    request.addfinalizer(lambda: pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(made.mig))))
    return made


def test_role_on_the_command_line(three, tmp_path):
    bad = run_cli(["plan", "--env", "staging", "--role", three.ro + "z"], three.dir, three.environ)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "did you mean" in bad.stderr

    one = run_cli(["provision", "--env", "staging", "--yes", "--role", three.ro, "-o", "json"], three.dir,
                  three.environ)
    assert one.returncode == 0, one.stderr
    doc = json.loads(one.stdout)
    assert {s["role"] for s in doc["steps"]} == {three.ro}
    assert set(dotenv(three.dir)) == {URLS["ro"]}

    every = run_cli(["provision", "--env", "staging", "--yes"], three.dir, three.environ)
    assert every.returncode == 0, every.stderr
    headings = [line.strip() for line in every.stderr.splitlines() if line.strip().startswith("role ")]
    assert headings == [f"role {three.app}", f"role {three.ro}", f"role {three.mig}"]

    schema = json.loads(run_cli(["schema", "output"], tmp_path, {}).stdout)
    validator = jsonschema.Draft202012Validator(schema)
    for args in (["drift", "--env", "staging"], ["diagnose", "--env", "staging"], ["soak", "--env", "staging"],
                 ["status"], ["history", "--env", "staging", "--role", three.app]):
        res = run_cli([*args, "-o", "json"], three.dir, three.environ)
        assert res.returncode in (0, 3), (args, res.stderr)
        doc = json.loads(res.stdout)
        assert list(validator.iter_errors(doc)) == [], args
        for item in doc.get("steps", []) + doc.get("checks", []):
            assert item["role"] in (three.app, three.ro, three.mig), args
    diag = json.loads(run_cli(["diagnose", "--env", "staging", "-o", "json"], three.dir, three.environ).stdout)
    assert {c["role"] for c in diag["checks"]} == {three.app, three.ro, three.mig}
    assert [c["check"] for c in diag["checks"] if c["role"] == three.ro] == ["role", "grants", "url"]   # no flag
