"""The install paths a user takes: the built wheel into a clean venv (then `runbook demo`), and
`pipx install` / `uv tool install` of the same wheel. Dependencies come from the package index,
as they would for the user; nothing of the test environment is visible to the installed tool.

In each clean install boto3 and google-auth are absent (no extra asked for), so these runs also
show the missing-library line for real rather than with a hidden module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook import __version__
from tests.projects import OTHER_PLATFORM_ENVS, spec_dict, write_project

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _clean_environ(tmp: Path, **extra: str) -> dict[str, str]:
    # no PYTHONPATH, no virtualenv of the test run, a HOME of its own
    keep = ("PATH", "LANG", "LC_ALL", "SSL_CERT_FILE", "PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
            "PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_DEFAULT_TIMEOUT", "UV_INDEX_URL", "UV_DEFAULT_INDEX")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({"HOME": str(tmp / "home"), "CI": "true", "NO_COLOR": "1"}, **extra)
    (tmp / "home").mkdir(exist_ok=True)
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT], out,
               {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    [built] = out.glob("pg_runbook-*.whl")
    return built


def _works(runbook: Path, tmp: Path, env: dict[str, str]) -> None:
    """What every install must do: the version, a starter that validates, playbooks shipped
    (plan reads them), and the missing-extra line for an rds environment."""
    assert runbook.exists(), f"no {runbook}"
    res = _run([runbook, "--version"], tmp, env)
    assert (res.returncode, res.stdout.strip()) == (0, f"runbook {__version__}"), res.stderr
    project = tmp / "project"
    project.mkdir()
    assert _run([runbook, "init"], project, env).returncode == 0
    res = _run([runbook, "validate"], project, env)
    assert res.returncode == 0, res.stderr
    write_project(project, spec_dict("raptor_app", extra_envs={"prod": OTHER_PLATFORM_ENVS["prod-aws"]}))
    res = _run([runbook, "plan", "--env", "prod"], project, env)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("error: prod: database 'rds' needs boto3, which is not installed: "
                                  "pip install 'pg-runbook[aws]'; nothing was changed")


@pytest.fixture
def outside_basetemp() -> Iterator[Path]:
    """A folder outside pytest's basetemp: any pytest session on the machine makes
    /tmp/pytest-of-<user> 0700 again, and the embedded server's own OS user (when we are root)
    must reach the PostgreSQL binaries inside the venv (as tests/conftest.py's clusters do)."""
    base = Path(tempfile.mkdtemp(prefix="rb-wheel-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_wheel_in_a_clean_venv_runs_the_demo(wheel, outside_basetemp):
    tmp_path = outside_basetemp
    env = _clean_environ(tmp_path)
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv], tmp_path, env).returncode == 0
    res = _run([venv / "bin" / "pip", "install", "-q", wheel], tmp_path, env)
    assert res.returncode == 0, res.stderr[-2000:]
    where = _run([venv / "bin" / "python", "-c", "import runbook, providers; print(runbook.__file__)"], tmp_path, env)
    assert where.stdout.startswith(str(venv)), where         # the wheel's copy, not the work tree
    _works(venv / "bin" / "runbook", tmp_path, env)
    demo = tmp_path / "demo"
    res = _run([venv / "bin" / "runbook", "demo", "--dir", demo], tmp_path, env)
    try:
        assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
        assert "done." in res.stderr and "Traceback" not in res.stderr
    finally:
        _run([venv / "bin" / "runbook", "-f", demo / "runbook.yaml", "embedded", "stop", "--env", "staging"],
             tmp_path, env)


def test_pipx_install_of_the_wheel(wheel, tmp_path):
    pipx = BIN / "pipx"
    assert pipx.exists(), "pipx is in the test extra"
    env = _clean_environ(tmp_path, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
                         PIPX_MAN_DIR=str(tmp_path / "man"), PIPX_DEFAULT_PYTHON=shutil.which("python3") or sys.executable)
    res = _run([pipx, "install", wheel], tmp_path, env)
    assert res.returncode == 0, res.stdout + res.stderr
    _works(tmp_path / "bin" / "runbook", tmp_path, env)


def test_uv_tool_install_of_the_wheel(wheel, tmp_path):
    uv = BIN / "uv"
    assert uv.exists(), "uv is in the test extra"
    env = _clean_environ(tmp_path, UV_TOOL_DIR=str(tmp_path / "tools"), UV_TOOL_BIN_DIR=str(tmp_path / "bin"),
                         UV_CACHE_DIR=str(tmp_path / "cache"), UV_PYTHON_DOWNLOADS="never")
    res = _run([uv, "tool", "install", "--python", shutil.which("python3") or sys.executable, wheel], tmp_path, env)
    assert res.returncode == 0, res.stdout + res.stderr
    _works(tmp_path / "bin" / "runbook", tmp_path, env)
