"""Shell commands the operator configured (restart commands, command steps, soak checks).

Each runs in its own process group, so a timeout ends the whole command — `sh -c "a; b"` and
whatever it started — not just the shell, which would leave its children running after we said
the command was stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass


class CommandTimeout(Exception):
    def __init__(self, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:g}s")
        self.timeout = timeout


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 1) -> str:
        """The last lines of its output (stderr first): what an error line quotes."""
        text = (self.stderr or self.stdout).strip() or self.stdout.strip()
        return "\n".join(text.splitlines()[-lines:])


def run(cmd: str, *, timeout: float, cwd: str) -> Finished:
    """Run `cmd` with sh, no stdin, output captured; the process group is killed on timeout."""
    proc = subprocess.Popen(cmd, shell=True, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise CommandTimeout(timeout) from None
    except BaseException:
        # interrupted (Ctrl-C): do not leave the command running behind us
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    return Finished(proc.returncode, out, err)
