"""Live progress of long waits, captured the way an operator sees it: from a pseudo-terminal (a
rich display redrawn in place, with countdowns) and from a pipe (one plain line per state change,
no spinner, nothing on stdout but the JSON)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from providers.base import Progress
from runbook import context, run
from tests.e2e.test_shell import ROOT, _environ, in_pty
from tests.pg.conftest import make_env
from tests.projects import load, spec_dict, write_project

COUNTDOWN = re.compile(r"\d+:\d\d left")
REDRAW = ("\x1b[2K", "\x1b[1A", "\r")        # erase line, cursor up, carriage return: a display redrawn in place
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def text_of(screen: str) -> str:
    """What the terminal shows, without its control sequences."""
    return _ANSI.sub("", screen)

# An ECS deployment as the ecs provider reports it (state, running/desired tasks, time left of
# the tool's wait), then a Cloud Run rollout, fed to the display the CLI installs.
_WAITS = """
import sys
from providers.base import Progress
from runbook import render
display = render.progress_display(as_json="--json" in sys.argv)
display("prod", Progress("ecs deployment", "IN_PROGRESS 0/2 tasks running", remaining=300))
display("prod", Progress("ecs deployment", "IN_PROGRESS 0/2 tasks running", remaining=295))   # no change
display("prod", Progress("ecs deployment", "IN_PROGRESS 1/2 tasks running", remaining=240))
display("prod-gcp", Progress("cloud run rollout", "revision web-00042 not ready", remaining=3600))
display("prod", Progress("ecs deployment", "COMPLETED 2/2 tasks running", done=True))
display("prod-gcp", Progress("cloud run rollout", "revision web-00042 serving 100%", done=True))
display.close()
"""


def _waits(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WAITS, *args], cwd=tmp_path, env=_environ(), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def _pty_waits(tmp_path: Path) -> str:
    script = tmp_path / "waits.py"
    script.write_text(_WAITS)
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=_environ(), stdin=follower,
                            stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_waits_on_a_terminal_are_a_live_display_with_countdowns(tmp_path):
    raw = _pty_waits(tmp_path)
    assert any(code in raw for code in REDRAW), "drawn once, not redrawn in place"
    screen = text_of(raw)
    assert "IN_PROGRESS 1/2 tasks running" in screen and "revision web-00042 not ready" in screen
    assert COUNTDOWN.search(screen), screen
    assert "✓ prod · ecs deployment: COMPLETED 2/2 tasks running" in screen
    assert "✓ prod-gcp · cloud run rollout: revision web-00042 serving 100%" in screen


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_waits_in_a_pipe_are_one_plain_line_per_state_change(tmp_path, flag):
    res = _waits(tmp_path, *flag)
    assert res.returncode == 0 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "prod: ecs deployment: IN_PROGRESS 0/2 tasks running (5:00 left)",
        "prod: ecs deployment: IN_PROGRESS 1/2 tasks running (4:00 left)",
        "prod-gcp: cloud run rollout: revision web-00042 not ready (1:00:00 left)",
        "prod: ecs deployment: COMPLETED 2/2 tasks running (done)",
        "prod-gcp: cloud run rollout: revision web-00042 serving 100% (done)",
    ]
    assert "\x1b" not in res.stderr and "\r" not in res.stderr


def test_a_provider_s_progress_reaches_the_sink_named_by_environment(tmp_path):
    # the wiring: Context.open_context() hands providers a sink that names the environment
    write_project(tmp_path, spec_dict("raptor_app", dsn_env="RB_PROGRESS_UNSET"))
    ctx = run.context(load(tmp_path / "runbook.yaml"), "staging", "provision", run.Invocation(environ={}))
    seen: list[tuple[str, Progress]] = []
    event = Progress("heroku credential", "provisioning", remaining=60.0)
    context.PROGRESS_SINK = lambda env, e: seen.append((env, e))
    try:
        ctx.open_context().progress(event)
    finally:
        context.PROGRESS_SINK = None
    assert seen == [("staging", event)]
    ctx.open_context().progress(event)          # no display installed: nothing happens, nothing raises
    assert len(seen) == 1


# --- soak --wait -------------------------------------------------------------------------------

def _soak_env(pg, tmp_path: Path):
    e = make_env(pg, tmp_path, admin="createrole", soak={"duration": "12s", "checkpoints": ["6s", "12s"],
                                                         
                                                         "checks": ["diagnose"]})
    res = subprocess.run([sys.executable, "-m", "runbook.cli", "provision", "--env", "staging", "--yes"], cwd=e.dir,
                         env=_environ(**e.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    return e


@pytest.mark.pg
def test_soak_wait_on_a_terminal_counts_down_to_the_checkpoint_and_the_end(pg, tmp_path):
    e = _soak_env(pg, tmp_path)
    code, screen = in_pty(e.dir, "soak", "--env", "staging", "--wait", **e.environ)
    screen = text_of(screen)
    assert code == 0, screen
    assert "waiting for checkpoint 6s" in screen or "waiting for checkpoint 12s" in screen
    assert COUNTDOWN.search(screen) and re.search(r"soak ends in \d+:\d\d", screen), screen
    assert "✓ staging · soak: passed" in screen
    assert "soak of staging: passed" in screen                # the checklist afterwards


@pytest.mark.pg
def test_soak_wait_with_json_prints_plain_lines_and_only_json_on_stdout(pg, tmp_path):
    e = _soak_env(pg, tmp_path)
    res = subprocess.run([sys.executable, "-m", "runbook.cli", "soak", "--env", "staging", "--wait", "-o", "json"],
                         cwd=e.dir, env=_environ(**e.environ), capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["data"]["soak"]["state"] == "passed"
    lines = res.stderr.splitlines()
    waiting = [line for line in lines if "waiting for checkpoint" in line]
    assert waiting and all(re.fullmatch(r"staging: soak: waiting for checkpoint \d+s "
                                        r"\(\d+:\d\d left, soak ends in \d+:\d\d\)", line) for line in waiting), lines
    assert len(waiting) == len(set(waiting))                  # one line per state change, never a repeat
    assert lines[-1] == "staging: soak: passed (done)"
    assert "\x1b" not in res.stderr and "\r" not in res.stderr


# --- fleets ------------------------------------------------------------------------------------

def _fleet_project(tmp_path: Path) -> Path:
    data = spec_dict("raptor_app", dsn_env="RB_PROGRESS_UNSET")
    for name in ("a", "b", "c"):
        data["environments"][f"staging-{name}"] = {"provider": "local", "database": {"dsn_env": "RB_PROGRESS_UNSET"},
                                                  "app": {"dotenv": f".runbook/{name}.env"}}
    # one environment whose rollback fails: its dotenv path is a directory
    data["environments"]["staging-d"] = {"provider": "local", "database": {"dsn_env": "RB_PROGRESS_UNSET"},
                                        "app": {"dotenv": ".runbook/broken"}}
    write_project(tmp_path, data)
    (tmp_path / ".runbook" / "broken").mkdir(parents=True)
    return tmp_path


def test_a_fleet_on_a_terminal_shows_done_total_and_failures(tmp_path):
    project = _fleet_project(tmp_path)
    code, screen = in_pty(project, "rollback", "--env", "staging-*", "--yes")
    screen = text_of(screen)
    assert code != 0, screen
    assert re.search(r"✓ rollback on 4 environment\(s\): 4/4 done, 1 failed so far", screen), screen
    assert "(1 failed so far)" in screen


def test_a_fleet_with_json_prints_one_line_per_environment_on_stderr(tmp_path):
    project = _fleet_project(tmp_path)
    res = subprocess.run([sys.executable, "-m", "runbook.cli", "rollback", "--env", "staging-*", "--yes", "-o", "json"],
                         cwd=project, env=_environ(), capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert json.loads(res.stdout)["summary"]["environments"] == 4
    lines = res.stderr.splitlines()
    assert len(lines) == 4 and all(line.startswith("rollback on 4 environment(s): ") for line in lines), lines
    assert lines[-1].endswith("(done)") and "4/4 done, 1 failed so far" in lines[-1]
    assert "\x1b" not in res.stderr
