"""The `runbook` console script (runbook.cli:entry): main()'s exit code and output, then out
without the interpreter's teardown, unless another thread is still running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _entry(tmp_path: Path, argv: list[str], before: str = "") -> subprocess.CompletedProcess[str]:
    script = f"import sys\n{before}\nsys.argv = ['runbook', *{argv!r}]\nfrom runbook.cli import entry\nentry()\n"
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})


def test_the_exit_code_and_every_line_get_out(tmp_path):
    ok = _entry(tmp_path, ["--version"])
    assert ok.returncode == 0 and ok.stdout.strip()
    # no project here: a configuration error, one line, its own exit code
    bad = _entry(tmp_path, ["drift", "--env", "x"])
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) <= 2, bad.stderr


def test_exit_handlers_run(tmp_path):
    mark = tmp_path / "flushed"
    res = _entry(tmp_path, ["--version"], before=f"import atexit\natexit.register(lambda: open({str(mark)!r}, 'w').close())")
    assert res.returncode == 0 and mark.exists()


def test_a_thread_still_running_gets_the_normal_exit(tmp_path):
    mark = tmp_path / "finished"
    before = ("import threading, time\n"
              f"threading.Thread(target=lambda: (time.sleep(0.3), open({str(mark)!r}, 'w').close())).start()")
    res = _entry(tmp_path, ["--version"], before=before)
    assert res.returncode == 0 and mark.exists()
