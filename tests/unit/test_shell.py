"""Configured shell commands: a timeout stops the whole command (the shell and what it started),
and every caller ends a failure as one line."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from providers.base import OpenContext
from providers.dotenv import DotenvAppConfig
from runbook import shell
from runbook.errors import ProviderError


def _alive(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


def _gone(marker: str) -> bool:
    # killpg is immediate, but the kernel reaps asynchronously; allow it a moment
    for _ in range(50):
        if not _alive(marker):
            return True
        time.sleep(0.02)
    return False


def test_output_and_exit_code(tmp_path):
    done = shell.run("echo out; echo err >&2; exit 3", timeout=10, cwd=str(tmp_path))
    assert (done.returncode, done.stdout, done.stderr, done.tail()) == (3, "out\n", "err\n", "err")
    assert shell.run("pwd", timeout=10, cwd=str(tmp_path)).stdout.strip() == str(tmp_path)


def test_timeout_kills_the_shell_and_its_children(tmp_path):
    seconds = f"301.{uuid.uuid4().int % 10**6}"     # a unique command line to look for
    # not a lone command (sh would exec it): the sleep is the shell's child, the case that leaks
    with pytest.raises(shell.CommandTimeout, match="timed out after 0.3s"):
        shell.run(f"echo started; sleep {seconds}; echo never", timeout=0.3, cwd=str(tmp_path))
    assert _gone(f"sleep {seconds}")


def test_background_grandchildren_are_stopped_too(tmp_path):
    seconds = f"302.{uuid.uuid4().int % 10**6}"
    with pytest.raises(shell.CommandTimeout):
        shell.run(f"(sleep {seconds} &) ; sleep {seconds}", timeout=0.3, cwd=str(tmp_path))
    assert _gone(f"sleep {seconds}")


def test_restart_command_timeout_is_one_line_and_leaves_nothing_running(tmp_path):
    seconds = f"303.{uuid.uuid4().int % 10**6}"
    config = DotenvAppConfig(dotenv="app.env", restart=f"echo restarting; sleep {seconds}", restart_timeout="1s")
    app = config.open(OpenContext(env_name="staging", app_name="raptor", base_dir=tmp_path, environ=dict(os.environ)))
    with pytest.raises(ProviderError) as caught:
        app.restart()
    assert str(caught.value.message) == "restart command timed out after 0:00:01; it was stopped"
    assert _gone(f"sleep {seconds}")
