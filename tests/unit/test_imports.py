"""Start-up stays lean: `runbook --help` and a rollback on the dotenv platform import no provider
API library (boto3, Google's libraries, httpx) and no provider they do not use, and merely
importing a provider module never pulls in its SDK (it is imported inside the code that calls it).

Each case runs in a fresh interpreter and reads sys.modules at exit. Wall time is measured by
benchmarks/latency.py, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.projects import OTHER_PLATFORM_ENVS, dotenv, spec_dict

ROOT = Path(__file__).resolve().parents[2]
SDKS = ("boto3", "botocore", "s3transfer", "google", "httpx")
UNUSED_BY_DOTENV = ("providers.rds", "providers.ecs", "providers.heroku", "providers.cloudsql",
                    "providers.cloudrun", "providers.gcp", "providers.gcp_auth", "providers.aws", "providers.supabase",
                    "providers.http")

# Run the CLI in-process so sys.modules can be read after it exits.
_WRAPPER = """
import json, sys
from runbook import cli
try:
    cli.main(sys.argv[2:])
    code = 0
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def _run(tmp_path: Path, cwd: Path, *args: str) -> tuple[int, set[str], str]:
    report = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RB_")}
    env.update({"NO_COLOR": "1", "CI": "true", "PYTHONPATH": str(ROOT)})
    res = subprocess.run([sys.executable, "-c", _WRAPPER, str(report), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert report.exists(), res.stderr
    data = json.loads(report.read_text())
    return data["code"], set(data["modules"]), res.stdout + res.stderr


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def _project(directory: Path, extra_envs: dict | None = None) -> Path:
    # the database DSN variable is unset on purpose: rollback must not need the database
    data = spec_dict("raptor_app", dsn_env="RB_IMPORTS_UNSET_DSN", extra_envs=extra_envs)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "runbook.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


def test_help_imports_no_provider_at_all(tmp_path):
    code, modules, output = _run(tmp_path, tmp_path, "--help")
    assert code == 0 and "rollback" in output
    assert _loaded(modules, SDKS) == []
    assert _loaded(modules, ("providers",)) == []


def test_rollback_on_dotenv_imports_only_what_it_uses(tmp_path):
    project = _project(tmp_path / "app")
    code, modules, output = _run(tmp_path, project, "rollback", "--env", "staging", "--yes")
    assert code == 0, output
    assert dotenv(project)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"      # it really rolled back
    assert _loaded(modules, SDKS) == []
    assert _loaded(modules, UNUSED_BY_DOTENV) == []
    assert "providers.dotenv" in modules


def test_rollback_in_a_project_spanning_platforms_imports_no_sdk(tmp_path):
    # validating the whole file loads the other environments' config models, never their clients
    project = _project(tmp_path / "app", OTHER_PLATFORM_ENVS)
    code, modules, output = _run(tmp_path, project, "rollback", "--env", "staging", "--yes")
    assert code == 0, output
    assert dotenv(project)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
    assert "providers.rds" in modules and "providers.cloudsql" in modules     # the file was validated
    assert _loaded(modules, ("boto3", "botocore", "s3transfer", "google")) == []


def _sdks_after_import(module: str, sdks: tuple[str, ...]) -> list[str]:
    probe = (f"import json, sys, {module}; "
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(sdks)!r})))")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("module, sdks", [
    ("providers.rds", ("boto3", "botocore")),
    ("providers.ecs", ("boto3", "botocore")),
    ("providers.cloudsql", ("google", "boto3", "botocore")),
    ("providers.cloudrun", ("google", "boto3", "botocore")),
    ("providers.gcp_auth", ("google",)),
    ("providers.gcp", ("google", "boto3", "botocore")),
    ("providers.aws", ("boto3", "botocore")),
    ("providers.heroku", ("boto3", "botocore", "google")),
    ("providers.supabase", ("boto3", "botocore", "google")),
])
def test_importing_a_provider_does_not_import_its_sdk(module, sdks):
    assert _sdks_after_import(module, sdks) == []


def test_the_probe_sees_an_sdk_that_is_imported():
    # so the test above cannot pass vacuously
    assert "boto3" in _sdks_after_import("boto3", ("boto3", "botocore"))


# -- the rule between the two packages, read from the source (imports inside functions too) ------

import ast  # noqa: E402

# what a provider may use of the engine's package: its errors, the Secret type, durations, the
# child-process runner; nothing that knows about runs, steps or the project file
# runbook.dblog is a leaf like these (the standard library only): PostgreSQL's log formats, which
# each provider's log reader parses and the engine's `errors` check counts
PROVIDERS_MAY_IMPORT = {"runbook.errors", "runbook.secret", "runbook.durations", "runbook.shell", "runbook.dblog"}
# what the engine may use of providers/: the registry (providers/__init__.py) and the contract
RUNBOOK_MAY_IMPORT = {"providers", "providers.base"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in `path`; `from a import b` counts as a.b when a.b is a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                out.append((node.lineno, sub if is_module else node.module))
    return out


def _violations(package: str, other: str, allowed: set[str]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            if (module == other or module.startswith(other + ".")) and module not in allowed:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


def test_providers_import_only_the_engines_leaf_modules():
    assert _violations("providers", "runbook", PROVIDERS_MAY_IMPORT) == []


def test_the_engine_imports_only_the_registry_and_the_contract_of_providers():
    assert _violations("runbook", "providers", RUNBOOK_MAY_IMPORT) == []


def test_the_import_rule_sees_a_violation(tmp_path):
    # so the two tests above cannot pass vacuously: both forms, at module level and inside a function
    source = tmp_path / "probe.py"
    source.write_text("import runbook.engine\n\ndef f():\n    from providers.embedded import Cluster\n"
                      "    from runbook import shell, context\n")
    got = {m for _, m in _imports(source)}
    assert {"runbook.engine", "providers.embedded", "runbook.shell", "runbook.context"} <= got


def test_only_the_verb_run_is_built():
    # typer resolves every command's signature and builds all their options with the whole group
    from runbook import cli

    everything = cli._click_command(["--help"])
    assert len(everything.commands) > 10
    assert set(cli._click_command(["-q", "--output", "json", "provision", "--env", "x"]).commands) == {"provision"}
    assert set(cli._click_command(["-f", "plan", "drift"]).commands) == {"drift"}       # an option's value is no verb
    assert set(cli._click_command(["nosuch"]).commands) == set(everything.commands)    # click names the unknown verb
    assert len(cli.app.registered_commands) == len(everything.commands)                # the app itself is untouched


def test_a_run_without_a_sqlite_journal_does_not_load_sqlite3():
    # what every writing and reading run imports; sqlite3 is loaded only to open a SQLite journal
    probe = ("import json, sys, runbook.journal, runbook.readonly, runbook.soak, runbook.run, runbook.commands; "
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlite3', '_sqlite3'))))")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []


def test_a_read_only_sqlite_journal_is_still_recognised(tmp_path):
    # readonly.cannot_write no longer imports sqlite3 itself: once a SQLite journal is open, it sees its errors
    import sqlite3

    from runbook.readonly import cannot_write

    path = tmp_path / "state.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x int)").connection.commit()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("INSERT INTO t VALUES (1)")
    except sqlite3.OperationalError as exc:
        assert cannot_write(exc)
    else:
        raise AssertionError("a read-only SQLite connection accepted a write")
    assert not cannot_write(sqlite3.OperationalError("database is locked"))
