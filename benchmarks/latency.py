"""Start-up latency: wall time of `runbook --help` and `runbook rollback --env X --yes`, and what
they spend importing.

    python benchmarks/latency.py --runs 30

Each command runs as a fresh process, the way an operator (or a pager at 3 a.m.) runs it, through
the installed console script beside this interpreter (`python -m runbook.cli` if there is none).
Rollback runs against a throwaway project whose environment is `provider: local` with
`database: {dsn_env: <unset variable>}` and a dotenv app, so it needs no database: it turns the
flag off in the dotenv file and journals locally. A second rollback row uses a project that also
declares rds/ecs, heroku and cloudsql/cloudrun environments (validating the whole file loads
their config models, never their API clients). `python -c pass` is the interpreter's own floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.projects import OTHER_PLATFORM_ENVS, spec_dict  # noqa: E402  (the repo root, as benchmarks/fleet.py)

UNSET = "RUNBOOK_LATENCY_UNSET_DSN"
TARGET_HELP = 0.3


def _runbook() -> list[str]:
    script = Path(sys.executable).parent / "runbook"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runbook.cli"]


def _env() -> dict[str, str]:
    # from compiled bytecode, as an installed tool runs (as benchmarks/peers.py does): with this
    # machine's PYTHONDONTWRITEBYTECODE=1 an editable checkout would compile every module each run
    env = {k: v for k, v in os.environ.items() if k not in (UNSET, "PYTHONDONTWRITEBYTECODE")}
    env.update({"NO_COLOR": "1", "CI": "true"})
    return env


def _time(argv: list[str], cwd: Path, runs: int) -> list[float]:
    times = []
    for i in range(runs + 1):                    # the first run warms the page cache and .pyc files
        started = time.perf_counter()
        res = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
        if i:
            times.append(elapsed)
    return times


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def importtime(args: list[str], cwd: Path, top: int) -> list[tuple[str, float, float]]:
    """(module, self ms, cumulative ms) of the imports the command triggers at top level
    (imports nested inside them are counted in their cumulative time), slowest first."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "runbook.cli", *args], cwd=cwd, env=_env(),
                         capture_output=True, text=True, stdin=subprocess.DEVNULL)
    rows = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        if name.startswith(" " * 3):             # nested: already inside a top-level entry
            continue
        rows.append((name.strip(), int(own) / 1000, int(cumulative) / 1000))
    rows.sort(key=lambda r: -r[2])
    return rows[:top]


def _table(head: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs of each command (after one warm-up)")
    ap.add_argument("--top", type=int, default=8, help="modules shown per command in the import table")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rb-latency-") as tmp:
        single, mixed = Path(tmp) / "single", Path(tmp) / "mixed"
        for folder, spec in ((single, spec_dict("raptor_app", dsn_env=UNSET)),
                             (mixed, spec_dict("raptor_app", dsn_env=UNSET, extra_envs=OTHER_PLATFORM_ENVS))):
            folder.mkdir()
            (folder / "runbook.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        runbook = _runbook()
        cases = [
            ("python -c pass (interpreter floor)", [sys.executable, "-c", "pass"], single, None),
            ("runbook --help", [*runbook, "--help"], single, ["--help"]),
            ("runbook rollback --env staging --yes (dotenv)", [*runbook, "rollback", "--env", "staging", "--yes"],
             single, ["rollback", "--env", "staging", "--yes"]),
            ("  same, project also declaring rds/heroku/cloudsql envs",
             [*runbook, "rollback", "--env", "staging", "--yes"], mixed, ["rollback", "--env", "staging", "--yes"]),
        ]
        rows, imports = [], []
        for label, cmd, cwd, cli_args in cases:
            times = _time(cmd, cwd, args.runs)
            rows.append((label, f"{statistics.median(times) * 1000:.0f}", f"{_p90(times) * 1000:.0f}",
                         f"{min(times) * 1000:.0f}"))
            if cli_args is not None:
                imports.append((label, importtime(cli_args, cwd, args.top)))
                if label == "runbook --help":
                    help_median = statistics.median(times)

    print(f"{' '.join(runbook)} — {args.runs} runs each after one warm-up\n")
    print(_table(("command", "median ms", "p90 ms", "min ms"), rows))
    for label, top in imports:
        print(f"\npython -X importtime, {label.strip()}: top-level imports by cumulative time")
        print(_table(("module", "self ms", "cumulative ms"), [(m, f"{s:.1f}", f"{c:.1f}") for m, s, c in top]))
    verdict = "met" if help_median < TARGET_HELP else "MISSED"
    print(f"\ntarget: runbook --help under {TARGET_HELP} s: median {help_median:.3f} s ({verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
