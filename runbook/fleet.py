"""Fleets: one verb over several environments (`--env 'staging-*' --parallel 8`).

Each environment gets its own `runbook.commands` call, so its own Context, run, lock and journal,
exactly as if it had been run alone; a worker thread runs it. Whatever one environment raises
(a RunbookError or a bug) becomes that environment's row in the summary and never reaches the
others. Provider clients of one account already share a rate budget (providers.http.shared_budget,
keyed by a hash of the token), so parallel environments pace themselves together.

The fleet's exit code is the most severe of its environments' codes, in this order:

    1 failed  >  4 check failed  >  6 not recorded  >  2 bad input  >  5 locked  >  7 not yet live  >  3 waiting  >  0 done

1 first: something broke, perhaps half-way, and needs a person now. 4 next: a live environment is
not as it should be. 6: a due soak checkpoint was evaluated but the journal refused to keep it
(a read-only DSN); the soak has not advanced. 7: every change is made and stored, the platform
is still rolling it out (an ECS deployment). 2: nothing was changed, but the input must be fixed by hand. 5 and 3 are
"try again later" (5: another run is on it; 3: a gate or checkpoint is not due), and 5 ranks
above 3 because this run did nothing there at all. An interrupted fleet exits 130.
"""

from __future__ import annotations

import fnmatch
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runbook.errors import ConfigError, RunbookError
from runbook.secret import redact

if TYPE_CHECKING:       # every verb imports this module to ask is_fleet(); only a fleet needs threads
    from concurrent.futures import Future

MAX_PARALLEL = 32
GLOB_CHARS = "*?["
SEVERITY = (1, 4, 6, 2, 5, 7, 3, 0)       # most severe first; see the module docstring
INTERRUPTED = 130
MUTATING = frozenset({"provision", "rotate", "retire", "rollback", "promote"})
VERBS = ("plan", "provision", "diagnose", "drift", "rollback", "rotate", "retire", "soak", "promote")

_ERROR_STATUS = {1: "failed", 2: "bad-input", 3: "waiting", 4: "check-failed", 5: "locked", 6: "not-recorded", 7: "not-yet-live"}
_MESSAGE_WIDTH = 160


# --- choosing environments --------------------------------------------------------------------

def split(values: Sequence[str]) -> list[str]:
    """`--env a,b --env 'c-*'` → ["a", "b", "c-*"]."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _is_glob(part: str) -> bool:
    return any(ch in part for ch in GLOB_CHARS)


def is_fleet(values: Sequence[str]) -> bool:
    """A fleet run unless `--env` was given once, as one plain name. The syntax decides, not how many
    environments match, so a script's JSON shape never depends on what the project file holds."""
    return len(values) != 1 or "," in values[0] or _is_glob(values[0])


def select(project: Any, values: Sequence[str]) -> list[str]:
    """The environments named or matched, in order of first mention (a glob's matches in project
    file order), each once. A glob matching nothing, or an unknown name, is bad input (exit 2)."""
    names = list(project.environments)
    chosen: list[str] = []
    parts = split(values)
    if not parts:
        raise ConfigError("--env names no environment", hint=f"have: {', '.join(names)}")
    for part in parts:
        if _is_glob(part):
            hits = [n for n in names if fnmatch.fnmatchcase(n, part)]
            if not hits:
                raise ConfigError(f"--env {part!r} matches no environment (have: {', '.join(names)})")
        else:
            project.env(part)          # raises ConfigError naming the file, with a suggestion
            hits = [part]
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def parse_shard(value: str) -> tuple[int, int]:
    """`--shard I/N` → (I, N), 1 ≤ I ≤ N (GitLab's CI_NODE_INDEX/CI_NODE_TOTAL are already this)."""
    index, sep, total = value.strip().partition("/")
    try:
        i, n = int(index), int(total)
    except ValueError:
        i = n = 0
    if not sep or not 1 <= i <= n:
        raise ConfigError(f"--shard {value!r}: I/N with 1 ≤ I ≤ N, e.g. --shard 2/4")
    return i, n


def shard_of(name: str, total: int) -> int:
    """The shard (1…total) an environment belongs to: rendezvous hashing of its name, so it depends
    on the name and the shard count alone. Adding or removing an environment moves no other one,
    and going from N to N+1 shards moves only the ~1/(N+1) that the new shard wins."""
    import hashlib

    return max(range(1, total + 1),
               key=lambda s: hashlib.blake2b(f"{s}\0{name}".encode(), digest_size=8).digest())


def shard(envs: Sequence[str], value: str | None) -> list[str]:
    """The share of `envs` that `--shard I/N` selects, in the same order (all of them without it)."""
    if value is None:
        return list(envs)
    i, n = parse_shard(value)
    return [e for e in envs if shard_of(e, n) == i]


def worst(codes: Sequence[int]) -> int:
    """The most severe exit code; a code outside the table (130, a bug's) outranks all of it."""
    if not codes:
        return 0
    odd = [c for c in codes if c not in SEVERITY]
    if odd:
        return max(odd)
    return min(codes, key=SEVERITY.index)


# --- results ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    env: str
    status: str
    exit_code: int
    seconds: float
    message: str
    result: Any = None                  # commands.Result when the verb returned
    error: str | None = None            # the exception type when it raised
    hint: str | None = None
    traceback: str | None = None        # bugs only (shown with --debug)

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "status": self.status, "exit_code": self.exit_code, "seconds": round(self.seconds, 3),
                "message": self.message, "error": self.error, "hint": self.hint,
                "result": self.result.to_json() if self.result is not None else None}


@dataclass
class FleetResult:
    command: str
    envs: list[str]
    parallel: int
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return INTERRUPTED
        return worst([o.exit_code for o in self.outcomes])

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        code = self.exit_code
        return {
            "command": self.command, "fleet": True,
            "results": [o.to_json() for o in self.outcomes],
            "summary": {"environments": len(self.outcomes), "parallel": self.parallel, "exit_code": code,
                        "seconds": round(self.seconds, 3), "statuses": counts, "interrupted": self.interrupted,
                        "worst": [o.env for o in self.outcomes if o.exit_code == code and code != 0]},
        }


def _first_line(text: str) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    line = redact(line)
    return line if len(line) <= _MESSAGE_WIDTH else line[:_MESSAGE_WIDTH - 1] + "…"


def summarise(res: Any) -> str:
    """One line for the summary table: the first failed check, else what was applied or planned,
    else the last thing the verb said, else its status."""
    bad = [c for c in res.checks if c.status != "pass"]
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        return _first_line(f"{bad[0].name}: {bad[0].detail}") + more
    applied = [s.step for s in res.steps if s.status == "applied"]
    if applied:
        return _first_line("applied: " + ", ".join(applied))
    planned = [s.step for s in res.steps if s.status == "planned"]
    if planned:
        return _first_line("would change: " + ", ".join(planned))
    if res.messages:
        return _first_line(res.messages[-1])
    return res.status


# --- running ----------------------------------------------------------------------------------

def verb(name: str) -> Callable[..., Any]:
    from runbook import commands

    if name not in VERBS:
        raise ConfigError(f"{name} does not run over a fleet (these do: {', '.join(VERBS)})")
    return commands.VERBS[name]


def run_one(fn: Callable[..., Any], project: Any, env: str, kwargs: dict[str, Any]) -> Outcome:
    """One environment, whatever happens in it: never raises an Exception."""
    started = time.perf_counter()
    try:
        res = fn(project, env, **kwargs)
    except RunbookError as exc:
        code = exc.exit_code
        return Outcome(env, _ERROR_STATUS.get(code, "failed"), code, time.perf_counter() - started,
                       _first_line(exc.message) or type(exc).__name__, error=type(exc).__name__,
                       hint=redact(exc.hint) if exc.hint else None)
    except Exception as exc:   # a bug: this environment's row says so; the others carry on
        return Outcome(env, "error", 1, time.perf_counter() - started,
                       _first_line(f"internal error: {type(exc).__name__}: {exc}"), error=type(exc).__name__,
                       traceback=redact(traceback.format_exc()))
    return Outcome(env, res.status, res.exit_code, time.perf_counter() - started, summarise(res), result=res)


def run(project: Any, command: str, envs: Sequence[str], *, parallel: int = 1,
        on_done: Callable[[Outcome, int, int], None] | None = None, runtime: Any = None, **kwargs: Any) -> FleetResult:
    """Run `commands.<command>(project, env, **kwargs)` for each env, `parallel` at a time.

    Outcomes come back in `envs` order. On Ctrl-C, environments not yet started are skipped
    (status not-run) and the running ones are left to finish, so each releases its lock and closes
    its run in the journal; the fleet then exits 130. The environments share one runtime
    (runbook.run.Runtime: the connections to a central store, the local journal's drains); without
    one passed in, the fleet makes its own and closes it at the end."""
    from contextlib import nullcontext

    from runbook.run import Runtime

    fn = verb(command)
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ConfigError(f"--parallel {parallel}: between 1 and {MAX_PARALLEL}")
    envs = list(envs)
    fleet = FleetResult(command, envs, parallel)
    # environments journalling to one central store share its connections (the runtime's pool), and
    # the environments of one platform account share its HTTP clients (providers.clients)
    from providers import shared_clients

    with (nullcontext(runtime) if runtime is not None else Runtime.shared()) as shared, \
            shared_clients(shared.providers):
        kwargs = {**kwargs, "runtime": shared}
        # shards in other processes journalling to the same central store share its rate budgets
        shared.share_rate_budgets(kwargs.get("state") or _one_state(project, envs))
        warming = None
        if command in MUTATING and shared.pool is not None:   # each environment journals: connect while the first wave starts
            warming = shared.pool.prewarm(_store_users(project, envs, kwargs.get("state"), parallel))
        try:
            _run_all(fleet, fn, project, on_done, kwargs)
        finally:
            if warming is not None:
                shared.pool.stop_warming()
                warming.join()
    return fleet


def _one_state(project: Any, envs: Sequence[str]) -> str | None:
    """The state store every environment names, if they all name the same one."""
    urls = {project.env(env).spec.state for env in envs}
    return str(urls.pop()) if len(urls) == 1 and None not in urls else None


def _store_users(project: Any, envs: Sequence[str], state: str | None, parallel: int) -> dict[str, int]:
    """Each state store URL the environments name, with how many of them may use it at once."""
    users: dict[str, int] = {}
    for env in envs:
        url = state or project.env(env).spec.state
        if url:
            users[url] = users.get(url, 0) + 1
    return {url: min(count, parallel) for url, count in users.items()}


def _run_all(fleet: FleetResult, fn: Callable[..., Any], project: Any,
             on_done: Callable[[Outcome, int, int], None] | None, kwargs: dict[str, Any]) -> None:
    envs, parallel = fleet.envs, fleet.parallel
    started = time.perf_counter()
    done: dict[str, Outcome] = {}
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(envs))), thread_name_prefix="runbook-fleet")
    futures: dict[Future[Outcome], str] = {pool.submit(run_one, fn, project, env, kwargs): env for env in envs}
    pending = set(futures)
    try:
        while pending:
            try:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                fleet.interrupted = True
                for future in pending:
                    future.cancel()
                # the running ones finish (each ends its run and drops its lock); a second Ctrl-C is not caught
                finished, pending = wait(pending).done, set()
            for future in finished:
                env = futures[future]
                if future.cancelled():
                    done[env] = Outcome(env, "not-run", INTERRUPTED, 0.0, "interrupted before it started")
                    continue
                try:
                    done[env] = future.result()
                except BaseException as exc:   # SystemExit and the like, raised inside a verb
                    done[env] = Outcome(env, "error", 1, 0.0, error=type(exc).__name__,
                                        message=_first_line(f"internal error: {type(exc).__name__}: {exc}"))
                if on_done is not None:
                    on_done(done[env], len(done), len(envs))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    fleet.seconds = time.perf_counter() - started
    fleet.outcomes = [done[env] for env in envs]


# --- rendering --------------------------------------------------------------------------------

_STYLE = {0: "green", 3: "yellow", 5: "magenta", 2: "red", 4: "red", 1: "bold red", INTERRUPTED: "yellow"}


def progress(outcome: Outcome, count: int, total: int, *, failed: int | None = None) -> None:
    """One line on stderr as each environment finishes (text output only), with the failures so
    far when there are any."""
    from rich.markup import escape

    from runbook import render

    style = _STYLE.get(outcome.exit_code, "red")
    so_far = f" [red]({failed} failed so far)[/]" if failed else ""
    render.console().print(f"[dim]{count:>{len(str(total))}}/{total}[/] [{style}]{outcome.status:>12}[/] "
                           f"[bold]{escape(outcome.env)}[/] [dim]{outcome.seconds:.1f}s[/]{so_far}")


def render_text(fleet: FleetResult, *, debug: bool = False, show_sql: bool = False) -> None:
    """Details where they matter (every plan; any environment that did not exit 0), then the table."""
    from rich.markup import escape
    from rich.table import Table

    from runbook import render

    out = render.console()
    for o in fleet.outcomes:
        if o.exit_code == 0 and not (fleet.command == "plan" and o.result is not None):
            continue
        if o.status == "not-run":
            continue
        out.rule(f"{escape(o.env)}: {o.status}", align="left", style="dim")
        if o.result is not None:
            render.result(o.result, show_sql=show_sql)
        else:
            out.print(f"error: {escape(o.message)}")
            if o.hint:
                out.print(f"fix: {escape(o.hint)}")
            if o.traceback and debug:
                out.print(escape(o.traceback), markup=False)
    table = Table(title=f"{fleet.command} on {len(fleet.outcomes)} environment(s), parallel {fleet.parallel}, "
                        f"{fleet.seconds:.1f}s", title_justify="left", show_edge=False)
    for col, kw in (("env", {}), ("status", {}), ("exit", {"justify": "right"}), ("seconds", {"justify": "right"}),
                    ("message", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for o in fleet.outcomes:
        style = _STYLE.get(o.exit_code, "red")
        table.add_row(escape(o.env), f"[{style}]{o.status}[/]", str(o.exit_code), f"{o.seconds:.1f}", escape(o.message))
    out.print(table)
    code = fleet.exit_code
    if fleet.interrupted:
        out.print("[yellow]interrupted[/]: environments marked not-run were not started")
    elif code:
        worst_envs = [o.env for o in fleet.outcomes if o.exit_code == code]
        out.print(f"fleet exit {code} (from {escape(', '.join(worst_envs))})")
    if debug is False and any(o.traceback for o in fleet.outcomes):
        out.print("[dim]internal errors above: run with --debug for their tracebacks[/]")
