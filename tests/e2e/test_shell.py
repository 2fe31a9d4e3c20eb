"""Shell conventions, the way a shell or CI runs `runbook`: --version, the global options after the
verb of every command, completion from the project file (without importing any provider),
NO_COLOR / FORCE_COLOR, --quiet, and --yes from RUNBOOK_YES."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import typer

from runbook import __version__, cli
from tests.projects import OTHER_PLATFORM_ENVS, dotenv, spec_dict, write_project

ROOT = Path(__file__).resolve().parents[2]
GLOBAL = ("--file", "--state", "--output", "--quiet", "--debug")
COMMANDS = sorted(typer.main.get_command(cli.app).commands)
SGR = "\x1b["                           # any terminal styling
COLOUR = "\x1b[3"                       # an SGR foreground colour (31 red, 32 green, …)


def _environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RB_", "RUNBOOK_", "_RUNBOOK", "NO_COLOR", "FORCE_COLOR", "CI"))}
    env.update({"PYTHONPATH": str(ROOT), "COLUMNS": "160"}, **extra)
    return env


def runbook(cwd: Path, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runbook.cli", *args], cwd=cwd, env=_environ(**environ),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def in_pty(cwd: Path, *args: str, **environ: str) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on a pseudo-terminal, as from an interactive shell."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "runbook.cli", *args], cwd=cwd, env=_environ(**environ),
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:                  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def project(tmp_path) -> Path:
    # a dotenv app and an unset DSN: rollback needs neither the database nor a terminal
    write_project(tmp_path / "app", spec_dict("raptor_app", dsn_env="RB_SHELL_UNSET_DSN"))
    return tmp_path / "app"


def test_version(tmp_path):
    res = runbook(tmp_path, "--version")
    assert (res.returncode, res.stdout) == (0, f"runbook {__version__}\n")
    assert metadata.version("pg-runbook") == __version__            # the package and the code agree


@pytest.mark.parametrize("verb", COMMANDS)
def test_every_command_takes_the_global_options_after_the_verb(verb):
    command = typer.main.get_command(cli.app).commands[verb]
    names = {opt for p in command.params for opt in getattr(p, "opts", [])}
    assert set(GLOBAL) <= names, sorted(set(GLOBAL) - names)
    assert {"-f", "-o"} <= names


# each verb as a script would call it, reading the project file given only after the verb
_READS_FILE = {
    "plan": ["--env", "staging"], "provision": ["--env", "staging", "--yes"], "diagnose": ["--env", "staging"],
    "drift": ["--env", "staging"], "rollback": ["--env", "staging", "--yes"], "retire": ["--env", "staging", "--yes"],
    "rotate": ["--env", "staging", "--yes"], "soak": ["--env", "staging"],
    "promote": ["--env", "prod", "--sign-off", "x", "--yes"], "status": [], "history": [], "validate": [],
    "embedded": ["status", "--env", "staging"],
}


@pytest.mark.parametrize("verb", sorted(_READS_FILE))
def test_file_after_the_verb_is_the_one_read(tmp_path, verb):
    res = runbook(tmp_path, verb, *_READS_FILE[verb], "-f", "elsewhere.yaml", "--state", "sqlite:///s.db",
                  "-o", "json", "-q", "--debug")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "No such option" not in res.stderr and "elsewhere.yaml" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_every_command_that_reads_the_project_file_is_exercised():
    assert set(COMMANDS) - set(_READS_FILE) == {"demo", "init", "schema"}


def test_init_and_validate_with_file_after_the_verb_over_one_before(tmp_path):
    assert runbook(tmp_path, "init", "-f", "other.yaml", "-q").returncode == 0
    assert (tmp_path / "other.yaml").exists() and not (tmp_path / "runbook.yaml").exists()
    res = runbook(tmp_path, "-f", "missing.yaml", "validate", "-f", "other.yaml", "-o", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["file"].endswith("other.yaml")
    res = runbook(tmp_path, "schema", "-o", "json", "-f", "other.yaml")
    assert res.returncode == 0 and json.loads(res.stdout)["type"] == "object"


def _complete(cwd: Path, shell: str, words: str, **environ: str) -> subprocess.CompletedProcess[str]:
    if shell == "bash":
        parts = words.split(" ")
        env = {"_RUNBOOK_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)}
    else:
        env = {"_RUNBOOK_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": words}
    return runbook(cwd, **env, **environ)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_offers_the_project_s_environments(project, shell):
    write_project(project, spec_dict("raptor_app", extra_envs={"staging-eu": OTHER_PLATFORM_ENVS["prod-aws"],
                                                               "prod-heroku": OTHER_PLATFORM_ENVS["prod-heroku"]}))
    res = _complete(project, shell, "runbook provision --env ")
    assert res.returncode == 0, res.stderr
    for name in ("staging", "staging-eu", "prod-heroku"):
        assert name in res.stdout
    narrowed = _complete(project, shell, "runbook soak -e staging")
    assert "staging-eu" in narrowed.stdout and "prod-heroku" not in narrowed.stdout
    # a comma list completes its last part
    assert "staging,prod-heroku" in _complete(project, shell, "runbook drift --env staging,pro").stdout


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_reads_the_file_named_by_f_before_or_after_the_verb(tmp_path, shell):
    write_project(tmp_path / "a", spec_dict("raptor_app", env="only-in-a"))
    (tmp_path / "a" / "runbook.yaml").rename(tmp_path / "a.yaml")
    assert "only-in-a" in _complete(tmp_path, shell, "runbook -f a.yaml plan --env ").stdout
    assert "only-in-a" in _complete(tmp_path, shell, "runbook plan -f a.yaml --env ").stdout
    assert "only-in-a" in _complete(tmp_path, shell, "runbook plan --env ", RUNBOOK_FILE="a.yaml").stdout
    # no project file: nothing offered, nothing printed to the prompt
    res = _complete(tmp_path, shell, "runbook plan --env ")
    assert res.returncode == 0 and "only-in-a" not in res.stdout and res.stderr == ""


_MODULES = """
import json, os, sys
from runbook import cli
try:
    cli.main([])
except SystemExit:
    pass
with open(os.environ["RB_MODULES_OUT"], "w") as out:
    json.dump(sorted(sys.modules), out)
"""


_COMPLETION_MODULES = {"runbook.cli", "runbook.completion", "runbook.secret", "runbook.errors"}


def test_completion_imports_no_provider_and_no_validation(project, tmp_path):
    write_project(project, spec_dict("raptor_app", extra_envs=OTHER_PLATFORM_ENVS))
    out = tmp_path / "modules.json"
    res = subprocess.run([sys.executable, "-c", _MODULES], cwd=project, capture_output=True, text=True, timeout=60,
                         env=_environ(RB_MODULES_OUT=str(out), _RUNBOOK_COMPLETE="complete_bash",
                                      COMP_WORDS="runbook plan --env ", COMP_CWORD="3"))
    assert "prod-gcp" in res.stdout, res.stderr
    modules = json.loads(out.read_text())
    assert [m for m in modules if m.split(".")[0] in ("providers", "psycopg", "httpx", "boto3", "google")] == []
    # no validation of the file (typer itself imports pydantic for its parameter types)
    assert [m for m in modules if m.startswith("runbook.") and m not in _COMPLETION_MODULES] == []


def test_show_completion_prints_a_script_for_each_shell(tmp_path):
    for shell, marker in (("bash", "complete_bash"), ("zsh", "complete_zsh"), ("fish", "complete_fish")):
        # the documented switch that makes typer take the shell as a value instead of detecting it
        res = runbook(tmp_path, "--show-completion", shell, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
        assert res.returncode == 0 and marker in res.stdout and "_RUNBOOK_COMPLETE" in res.stdout


def test_install_completion_writes_the_bash_script_under_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    res = runbook(tmp_path, "--install-completion", "bash", HOME=str(home),
                  _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert res.returncode == 0, res.stderr
    script = home / ".bash_completions" / "runbook.sh"
    assert "_RUNBOOK_COMPLETE" in script.read_text() and "runbook.sh" in (home / ".bashrc").read_text()


def test_force_color_colours_a_pipe_and_no_color_keeps_a_terminal_plain(project):
    # the first rollback applies (a green "applied"); the later ones are unchanged (dim)
    code, terminal = in_pty(project, "rollback", "--env", "staging", "--yes", NO_COLOR="1")
    assert code == 0 and "applied" in terminal and COLOUR not in terminal
    code, terminal = in_pty(project, "rollback", "--env", "staging", "--yes")
    assert code == 0 and "unchanged" in terminal and SGR in terminal
    plain = runbook(project, "rollback", "--env", "staging", "--yes")
    assert plain.returncode == 0 and "unchanged" in plain.stderr and SGR not in plain.stderr
    forced = runbook(project, "rollback", "--env", "staging", "--yes", FORCE_COLOR="1")
    assert forced.returncode == 0 and SGR in forced.stderr


def test_quiet_leaves_only_errors(project):
    res = runbook(project, "rollback", "--env", "staging", "--yes", "--quiet")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert dotenv(project)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
    res = runbook(project, "-q", "rollback", "--env", "staging", "--yes", "-o", "json")
    assert res.returncode == 0 and res.stderr == "" and json.loads(res.stdout)["command"] == "rollback"
    res = runbook(project, "rollback", "--env", "nowhere", "--yes", "-q")
    assert res.returncode == 2 and res.stderr.startswith("error: ")


def test_yes_from_runbook_yes(project):
    res = runbook(project, "rollback", "--env", "staging")
    assert res.returncode == 2 and "--yes" in res.stderr          # no terminal, no --yes
    assert "FLAG_RAPTOR_APP_ROLE_SEPARATION" not in dotenv(project)
    res = runbook(project, "rollback", "--env", "staging", RUNBOOK_YES="1")
    assert res.returncode == 0, res.stderr
    assert dotenv(project)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
    res = runbook(project, "rollback", "--env", "staging", RUNBOOK_YES="0")
    assert res.returncode == 2
