"""The `runbook` command: parse → call runbook.commands → render. Thin on purpose.

Imports are lazy: `runbook --help` loads typer and nothing of psycopg, pydantic or any provider.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="runbook",
    help="The restricted application-role runbook for managed PostgreSQL, as code.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Output(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"      # plan, drift, diagnose, soak: for PR comments and job summaries


class _Opts:
    file: Path = Path("runbook.yaml")
    state: Optional[str] = None
    output: Output = Output.text
    debug: bool = False
    quiet: bool = False
    shard: Optional[str] = None
    role: Optional[str] = None


OPTS = _Opts()


def _complete_envs(ctx: typer.Context, incomplete: str) -> list[str]:
    """Environment names from the project file, for shell completion. Reads the YAML and nothing
    else (no validation, no provider), so a tab press stays instant; a comma list completes its
    last part."""
    from runbook.completion import environment_names

    head, _, part = incomplete.rpartition(",")
    prefix = head + "," if head else ""
    return [prefix + n for n in environment_names(_file_for_completion(ctx)) if n.startswith(part)]


def _file_for_completion(ctx: typer.Context) -> Path:
    while ctx is not None:              # `-f` after the verb wins over `-f` before it
        if ctx.params.get("file"):
            return Path(ctx.params["file"])
        ctx = ctx.parent
    return Path(os.environ.get("RUNBOOK_FILE") or "runbook.yaml")


EnvOpt = Annotated[list[str], typer.Option(
    "--env", "-e", metavar="<str>", autocompletion=_complete_envs,
    help="environment name from runbook.yaml; for a fleet repeat it, comma-separate or glob ('staging-*')")]
OneEnvOpt = Annotated[str, typer.Option("--env", "-e", autocompletion=_complete_envs,
                                        help="environment name from runbook.yaml")]
ParallelOpt = Annotated[int, typer.Option("--parallel", min=1, max=32, help="fleets: environments run at once")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", envvar="RUNBOOK_YES",
                                      help="do not ask; required without a terminal (also RUNBOOK_YES=1)")]
OutOpt = Annotated[Optional[Output], typer.Option("--output", "-o", help="text (stderr), json or markdown (stdout)")]
StateOpt = Annotated[Optional[str], typer.Option("--state", help="state store: sqlite:///path, postgresql://…, env:VAR")]
RoleOpt = Annotated[Optional[str], typer.Option("--role", help="one role of the project's roles: (default: every role)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress or report on stderr; errors, the exit "
                                                              "code and --output json still come")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks of internal errors")]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", metavar="I/N", envvar="RUNBOOK_SHARD",
    help="fleets: run only shard I of N of the environments matched (stable by name; a CI matrix runs 1/N…N/N)")]


def _version(value: bool) -> None:
    if value:
        from runbook import __version__

        sys.stdout.write(f"runbook {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _global(
    file: Annotated[Path, typer.Option("--file", "-f", help="project file", envvar="RUNBOOK_FILE")] = Path("runbook.yaml"),
    state: StateOpt = None,
    output: OutOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    shard: ShardOpt = None,
    role: RoleOpt = None,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                          help="print the version and exit")] = False,
) -> None:
    # every invocation starts from the defaults: main() may run several times in one process
    OPTS.file, OPTS.state, OPTS.debug = file, state, debug
    OPTS.shard = shard
    OPTS.role = role
    OPTS.output = output if output is not None else Output.text
    if OPTS.quiet and not quiet:     # an earlier in-process invocation's --quiet
        from runbook import render

        OPTS.quiet = render.QUIET = False
    _set_quiet(quiet)


def _set_quiet(quiet: bool) -> None:
    if quiet:
        from runbook import render

        OPTS.quiet = render.QUIET = True


# The global options, accepted after the verb too (`runbook plan --env staging -f x.yaml`): each
# command gets the ones it does not declare itself, applied over what came before the verb.
_AFTER_VERB = {
    "file": (Annotated[Optional[Path], typer.Option("--file", "-f", help="project file (as before the verb)")], None),
    "state": (StateOpt, None),
    "output": (OutOpt, None),
    "quiet": (QuietOpt, False),
    "debug": (DebugOpt, False),
    "shard": (ShardOpt, None),          # only on the verbs that run fleets (they take --parallel)
    "role": (RoleOpt, None),            # only on the verbs about roles (they take --env, and status)
}


_ROLE_VERBS = {"plan", "provision", "diagnose", "drift", "rollback", "retire", "rotate", "soak", "promote", "status",
               "history"}


def _with_global_options(fn):
    own = inspect.signature(fn, eval_str=True)
    added = [name for name in _AFTER_VERB if name not in own.parameters
             and (name != "shard" or "parallel" in own.parameters)
             and (name != "role" or fn.__name__ in _ROLE_VERBS)]

    @functools.wraps(fn)
    def command(**kw):
        given = {name: kw.pop(name) for name in added}
        if given.get("file") is not None:
            OPTS.file = given["file"]
        if given.get("state") is not None:
            OPTS.state = given["state"]
        if given.get("output") is not None:
            OPTS.output = given["output"]
        if given.get("debug"):
            OPTS.debug = True
        if given.get("shard") is not None:
            OPTS.shard = given["shard"]
        if given.get("role") is not None:
            OPTS.role = given["role"]
        _set_quiet(bool(given.get("quiet")) or bool(kw.get("quiet")))
        return fn(**kw)

    params = list(own.parameters.values()) + [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=_AFTER_VERB[name][0],
                          default=_AFTER_VERB[name][1]) for name in added]
    command.__signature__ = own.replace(parameters=params)
    command.__annotations__ = {**{p.name: p.annotation for p in params}, "return": own.return_annotation}
    return command


def _command(fn):
    return app.command()(_with_global_options(fn))


def _load():
    from runbook import project

    loaded = project.load(OPTS.file)
    from runbook import render

    render.ROLE_HEADINGS = loaded.several       # steps and checks under a heading of their role
    return loaded


def _json(output: Optional[Output]) -> bool:
    """Machine output on stdout (json, or markdown): nothing else may go there."""
    return (output or OPTS.output) in (Output.json, Output.markdown)


def _markdown(output: Optional[Output]) -> bool:
    return (output or OPTS.output) == Output.markdown


_DISPLAY = None


def _display(output: Optional[Output]):
    """The live progress display for this run (installed as the sink of providers' long waits)."""
    global _DISPLAY
    if _DISPLAY is None:
        from runbook import context, render

        _DISPLAY = render.progress_display(as_json=_json(output))
        context.PROGRESS_SINK = _DISPLAY
    return _DISPLAY


def _confirm(is_json: bool):
    """A confirmation callback when a person is there to answer; None otherwise (then --yes is required)."""
    if not sys.stdin.isatty() or os.environ.get("CI"):
        return None

    def ask(what: str, preview) -> bool:
        from runbook import render

        if not is_json:
            for report in preview:
                render.step_line(report)
        return typer.confirm(f"Apply {what}?", default=False, err=True)

    return ask


def _finish(res, output: Optional[Output], *, streamed: bool = False, show_sql: bool = False) -> int:
    from runbook import render

    if _markdown(output):
        render.emit_markdown([res])
    elif _json(output):
        render.emit_json(res.to_json())
    else:
        render.result(res, streamed=streamed, show_sql=show_sql)
    return res.exit_code


def _streamer(output: Optional[Output]):
    if _json(output):
        return None
    from runbook import render

    return render.step_line


def _fleet(verb: str, env: list[str], parallel: int, output: Optional[Output], *, mutating: bool,
           yes: bool, show_sql: bool, **kw) -> Optional[int]:
    """Several environments (a list, a comma or a glob): runbook.fleet runs them and prints the
    summary; None for one plain name, which takes the single-environment path unchanged."""
    from runbook import fleet

    if not fleet.is_fleet(env) and OPTS.shard is None:
        return None
    from runbook import render

    project = _load()
    envs = fleet.shard(fleet.select(project, env), OPTS.shard)
    is_json = _json(output)
    if mutating and not yes:
        from runbook.errors import ConfigError

        if _confirm(is_json) is None:
            raise ConfigError(f"{verb} changes things; pass --yes (no terminal to confirm on)")
        # one question for the fleet; `runbook plan --env …` shows each environment's changes first
        if not typer.confirm(f"{verb} {len(envs)} environment(s): {', '.join(envs)}?", default=False, err=True):
            render.console().print("cancelled; nothing was changed")
            return 0
    if mutating:
        kw.update(yes=True, confirm=None)
    display = _display(output)
    from providers.base import Progress

    failed = 0
    what = f"{verb} on {len(envs)} environment(s)"

    def on_done(outcome, count: int, total: int) -> None:
        nonlocal failed
        failed += outcome.exit_code not in (0, 3)
        state = f"{count}/{total} done, {failed} failed so far"
        if is_json:                 # stdout is the JSON's alone; one plain line per environment on stderr
            display(None, Progress(what, f"{state}; {outcome.env}: {outcome.status}", done=count == total))
            return
        fleet.progress(outcome, count, total, failed=failed)
        if display.live:
            display(None, Progress(what, state, done=count == total))

    if display.live:
        display(None, Progress(what, f"0/{len(envs)} done"))
    res = fleet.run(project, verb, envs, parallel=parallel, on_done=on_done, **kw)
    display.close()
    if _markdown(output):
        render.emit_markdown([o.result for o in res.outcomes if o.result is not None])
        for o in res.outcomes:
            if o.result is None:
                sys.stdout.write(f"### runbook {verb}: {o.env} — {o.status} (exit {o.exit_code})\n\n> {o.message}\n")
    elif is_json:
        render.emit_json(res.to_json())
    else:
        fleet.render_text(res, debug=OPTS.debug, show_sql=show_sql)
    return res.exit_code


def _verb(verb: str, env: list[str], output: Optional[Output], *, parallel: int = 1, mutating: bool = False,
          yes: bool = False, streamed: bool = False, show_sql: bool = False, **kw) -> int:
    """Every per-environment verb: a fleet through runbook.fleet, one name through
    `commands.<verb>` (asking first when a person is there and --yes was not given)."""
    if OPTS.role is not None:
        kw["role"] = OPTS.role
    code = _fleet(verb, env, parallel, output, mutating=mutating, yes=yes, show_sql=show_sql, **kw)
    if code is not None:
        return code
    from runbook import commands

    is_json = _json(output)
    _display(output)
    if mutating:
        kw.update(yes=yes, confirm=None if yes else _confirm(is_json))
    if streamed:
        kw["on_step"] = _streamer(output)
    res = commands.VERBS[verb](_load(), env[0], **kw)
    return _finish(res, output, streamed=streamed and not is_json, show_sql=show_sql)


@_command
def plan(env: EnvOpt, output: OutOpt = None,
         playbook: Annotated[str, typer.Option(help="playbook to plan")] = "provision",
         sql: Annotated[bool, typer.Option("--sql", help="also print the SQL (secrets masked)")] = False,
         parallel: ParallelOpt = 1) -> int:
    """What provision would change. Changes nothing."""
    return _verb("plan", env, output, parallel=parallel, show_sql=sql, playbook=playbook)


@_command
def provision(env: EnvOpt, yes: YesOpt = False, output: OutOpt = None, state: StateOpt = None,
              parallel: ParallelOpt = 1) -> int:
    """Tier check → role → grants → URL → flag on (soak starts) → restart → verify."""
    return _verb("provision", env, output, parallel=parallel, mutating=True, yes=yes, streamed=True,
                 state=state or OPTS.state)


@_command
def diagnose(env: EnvOpt, output: OutOpt = None, state: StateOpt = None, parallel: ParallelOpt = 1) -> int:
    """The four checks, in order, with the fix for each failure. Exit 4 if any fails."""
    return _verb("diagnose", env, output, parallel=parallel, state=state or OPTS.state)


@_command
def drift(env: EnvOpt, fix: Annotated[bool, typer.Option("--fix", help="converge what drifted")] = False,
          yes: YesOpt = False, output: OutOpt = None, state: StateOpt = None, parallel: ParallelOpt = 1) -> int:
    """Objects the role should reach but cannot, and denied ones it can. Exit 4 on drift."""
    return _verb("drift", env, output, parallel=parallel, mutating=fix, yes=yes, fix=fix, state=state or OPTS.state)


@_command
def rollback(env: EnvOpt, yes: YesOpt = False, output: OutOpt = None, state: StateOpt = None,
             parallel: ParallelOpt = 1) -> int:
    """Emergency: flag off (+ restart). Role and grants stay. Needs no lock and no database."""
    return _verb("rollback", env, output, parallel=parallel, mutating=True, yes=yes, state=state or OPTS.state)


@_command
def retire(env: EnvOpt, yes: YesOpt = False, output: OutOpt = None, state: StateOpt = None,
           parallel: ParallelOpt = 1) -> int:
    """Remove the URL, end sessions, reassign what the role owns, drop it."""
    return _verb("retire", env, output, parallel=parallel, mutating=True, yes=yes, streamed=True,
                 state=state or OPTS.state)


@_command
def rotate(env: EnvOpt, yes: YesOpt = False, output: OutOpt = None, state: StateOpt = None,
           parallel: ParallelOpt = 1,
           drain_timeout: Annotated[Optional[str], typer.Option(
               "--drain-timeout", help="rotation: alternating: how long to wait for the app's sessions on the old "
               "login to end (default settings.drain_timeout, 5m)")] = None) -> int:
    """A new password (or platform rotation), written where the app reads it, then a restart."""
    extra = {}
    if drain_timeout is not None:
        from runbook.durations import parse_duration
        from runbook.errors import ConfigError

        try:
            extra["drain_timeout"] = parse_duration(drain_timeout)
        except ValueError as exc:
            raise ConfigError(f"--drain-timeout: {exc}") from None
    return _verb("rotate", env, output, parallel=parallel, mutating=True, yes=yes, streamed=True,
                 state=state or OPTS.state, **extra)


@_command
def soak(env: EnvOpt, output: OutOpt = None, state: StateOpt = None,
         wait: Annotated[bool, typer.Option("--wait", help="stay until every selected role's soak passes or one fails")] = False,
         parallel: ParallelOpt = 1) -> int:
    """Evaluate the checkpoints that are due (safe from cron). Exit 0 passed, 3 pending, 4 failed."""
    import time

    from runbook import commands, fleet

    if wait and fleet.is_fleet(env):
        from runbook.errors import ConfigError

        raise ConfigError("soak --wait takes one environment; for a fleet, run `runbook soak` from cron")
    code = _fleet("soak", env, parallel, output, mutating=False, yes=True, show_sql=False, state=state or OPTS.state,
                  role=OPTS.role)
    if code is not None:
        return code
    project = _load()
    display = _display(output)
    from providers.base import Progress
    from runbook.durations import parse_duration

    several = project.several
    shown_done: set[str] = set()

    def what(name: str) -> str:
        return f"soak {name}" if several else "soak"

    def done(name: str, view: dict) -> None:
        if name not in shown_done:
            shown_done.add(name)
            display(env[0], Progress(what(name), view.get("state", "?"), done=True))

    waited = False
    while True:
        res = commands.soak(project, env[0], state=state or OPTS.state, role=OPTS.role)
        # every selected role's soak (a `role:` project: its one); the run waits for all of them
        views = res.data.get("roles") or {project.role.name: res.data.get("soak", {})}
        pending = {name: [p for p in view.get("checkpoints", []) if p["status"] == "pending"]
                   for name, view in views.items()}
        waiting = {name: view for name, view in views.items()
                   if view.get("state") == "running" and view.get("started_at") and pending[name]
                   and view.get("digest_matches", True)}
        # nothing to wait for: not pending (passed, or one failed), or a role whose soak cannot
        # get anywhere by waiting (none started, a changed spec)
        stuck = [name for name, view in views.items() if name not in waiting and view.get("state") != "passed"]
        if not wait or res.exit_code != 3 or not waiting or stuck:
            if waited:
                for name, view in views.items():
                    done(name, view)
            return _finish(res, output)
        now = time.time()
        soonest = None
        for name, view in views.items():
            if name not in waiting:
                done(name, view)          # passed while the others wait
                continue
            started = view["started_at"]
            due = started + parse_duration(pending[name][0]["checkpoint"]).total_seconds()
            end = started + project.spec.soak.duration.total_seconds()
            # the countdown: to the role's next checkpoint, and to the end of its soak
            display(env[0], Progress(what(name), f"waiting for checkpoint {pending[name][0]['checkpoint']}",
                                     remaining=max(0.0, due - now), fields={"soak_ends_in": max(0.0, end - now)}))
            soonest = due if soonest is None else min(soonest, due)
        waited = True
        time.sleep(max(0.5, min((soonest or now) - now + 0.2, 300)))


@_command
def promote(env: EnvOpt, sign_off: Annotated[Optional[str], typer.Option("--sign-off", help="who approved")] = None,
            force: Annotated[bool, typer.Option("--force", help="override a closed gate (needs --reason)")] = False,
            reason: Annotated[Optional[str], typer.Option("--reason")] = None,
            yes: YesOpt = False, output: OutOpt = None, state: StateOpt = None, parallel: ParallelOpt = 1) -> int:
    """Provision prod only after a passed staging soak of the same role spec, with a sign-off."""
    return _verb("promote", env, output, parallel=parallel, mutating=True, yes=yes, streamed=True,
                 state=state or OPTS.state, sign_off=sign_off, force=force, reason=reason)


@_command
def status(output: OutOpt = None, state: StateOpt = None) -> int:
    """Every environment: role present, flag value, soak state, last run."""
    from runbook import commands

    return _finish(commands.status(_load(), state=state or OPTS.state, role=OPTS.role), output)


@_command
def history(env: Annotated[Optional[str], typer.Option("--env", "-e")] = None, output: OutOpt = None,
            state: StateOpt = None, limit: int = 50) -> int:
    """The audit journal: runs, events, approvals."""
    from runbook import commands

    return _finish(commands.history(_load(), env, state=state or OPTS.state, limit=limit, role=OPTS.role), output)


@_command
def validate(output: OutOpt = None) -> int:
    """Check the project file; exit 2 naming file:line on the first problem."""
    project = _load()
    from runbook import render

    summary = {"file": str(project.path), "role": project.role.name, "digest": project.role.digest(),
               "roles": {name: r.digest() for name, r in project.roles.items()},
               "environments": {n: {"database": e.database.provider, "app": e.app.platform} for n, e in project.environments.items()}}
    if _json(output):
        render.emit_json({"valid": True, **summary})
    else:
        envs = ", ".join(f"{n} ({d['database']}/{d['app']})" for n, d in summary["environments"].items())
        roles = ", ".join(f"{name} (spec {digest})" for name, digest in summary["roles"].items())
        render.console().print(f"{project.path}: valid; role{'s' if project.several else ''} {roles}; environments: {envs}")
    return 0


class SchemaKind(str, Enum):
    project = "project"
    output = "output"


@_command
def schema(what: Annotated[SchemaKind, typer.Argument(help="project: runbook.yaml (for editors); output: what "
                                                           "--output json prints (versioned)")] = SchemaKind.project) -> int:
    """Print a JSON Schema: of runbook.yaml (default, for editors), or of --output json."""
    import json

    if what == SchemaKind.output:
        from runbook.output_schema import schema as output_schema

        sys.stdout.write(json.dumps(output_schema(), indent=2) + "\n")
        return 0
    from runbook import project

    sys.stdout.write(json.dumps(project.json_schema(), indent=2) + "\n")
    return 0


class CiKind(str, Enum):
    github = "github"
    gitlab = "gitlab"


@_command
def init(force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
         quickstart: Annotated[bool, typer.Option("--quickstart", help="seconds-long soak, for trying it out")] = False,
         ci: Annotated[Optional[CiKind], typer.Option("--ci", help="write CI workflows (plan, drift, soak, promote) "
                                                                   "for the project file instead")] = None) -> int:
    """Write a commented starter runbook.yaml and its editor schema (or, with --ci, CI workflows)."""
    from runbook.starter import write_starter

    if ci is not None:
        from runbook import ci as templates
        from runbook import render

        paths = templates.write(ci.value, OPTS.file, force=force)
        if _json(None):
            render.emit_json({"written": [str(p) for p in paths]})
        else:
            render.console().print("wrote " + ", ".join(str(p) for p in paths) + "; add the secrets they name")
        return 0
    from runbook.starter import schema_path

    path = write_starter(OPTS.file, force=force, quickstart=quickstart)
    from runbook import render

    if _json(None):
        render.emit_json({"file": str(path), "schema": str(schema_path(path))})
    else:
        render.console().print(f"wrote {path} and its editor schema {schema_path(path)}; "
                               "next: runbook validate, then runbook plan --env staging")
    return 0


@_command
def demo(directory: Annotated[Optional[Path], typer.Option("--dir", help="where to put the demo project")] = None,
         output: OutOpt = None) -> int:
    """The whole lifecycle on an embedded PostgreSQL: provision → diagnose → soak → rollback."""
    from runbook.demo import run_demo

    return run_demo(directory, as_json=_json(output))


@_command
def embedded(action: Annotated[str, typer.Argument(help="status | start | stop")], env: OneEnvOpt) -> int:
    """Manage the embedded PostgreSQL of a `local` environment without a DSN."""
    from runbook import render
    from runbook.commands import embedded_cluster

    out = render.console()
    cluster = embedded_cluster(_load(), env)
    if action == "start":
        cluster.start()
        out.print(f"running: {cluster.data_dir} on 127.0.0.1:{cluster.port}")
    elif action == "stop":
        cluster.stop()
        out.print(f"stopped: {cluster.data_dir}")
    elif action == "status":
        state = "running" if cluster.initialised() and cluster.running() else ("stopped" if cluster.initialised() else "not created")
        out.print(f"{state}: {cluster.data_dir}" + (f" on 127.0.0.1:{cluster.port}" if state == "running" else ""))
        return 0 if state == "running" else 3
    else:
        from runbook.errors import ConfigError

        raise ConfigError(f"unknown action {action!r}: status, start or stop")
    return 0


def _verb_in(args: list[str]) -> str | None:
    """The verb `args` run: the first word that is neither a global option nor its value."""
    from typing import get_args

    takes_value = set()
    for param in inspect.signature(_global, eval_str=True).parameters.values():
        kind, info = get_args(param.annotation)[:2]
        if kind is not bool:       # typer keeps the first declaration apart from the others
            first = info.default if isinstance(info.default, str) and info.default.startswith("-") else None
            takes_value.update({f"--{param.name.replace('_', '-')}", *info.param_decls, *([first] if first else [])})
    words = iter(args)
    for word in words:
        if word == "--":
            return next(words, None)
        if not word.startswith("-"):
            return word
        if word in takes_value:
            next(words, None)
    return None


def _click_command(args: list[str]):
    """The click group for `args`, with only the verb they run in it: typer resolves every
    command's signature and builds every option of each (≈40 ms) when the whole group is built.
    The whole group for anything else: --help, an unknown verb, shell completion."""
    verb = _verb_in(args)
    registered = app.registered_commands
    chosen = [c for c in registered if (c.name or c.callback.__name__.replace("_", "-")) == verb]
    if len(chosen) != 1 or any(k.endswith("_COMPLETE") for k in os.environ):
        return typer.main.get_command(app)
    app.registered_commands = chosen
    try:
        return typer.main.get_command(app)
    finally:
        app.registered_commands = registered


def main(argv: list[str] | None = None) -> None:
    try:  # typer ≥ 0.20 carries its own click
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover - older typer on plain click
        from click import exceptions as click_exc

    from runbook.errors import RunbookError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    code = 0
    try:
        from runbook.secret import install_log_hygiene

        install_log_hygiene()
        command = _click_command(args)
        rv = command.main(args=args, prog_name="runbook", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        sys.stderr.write("aborted\n")
        code = 1
    except click_exc.ClickException as exc:
        exc.show()
        code = 2 if isinstance(exc, click_exc.UsageError) else (exc.exit_code or 1)
    except RunbookError as exc:
        from runbook.render import clean
        from runbook.secret import redact

        line = clean(redact(exc.message.splitlines()[0] if exc.message else type(exc).__name__))
        sys.stderr.write(f"error: {line}\n")
        if exc.hint:
            sys.stderr.write(f"fix: {redact(exc.hint)}\n")
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except Exception as exc:  # a bug: one line unless --debug
        from runbook.secret import redact

        if debug:
            import traceback

            sys.stderr.write(redact(traceback.format_exc()))
        sys.stderr.write(f"internal error: {type(exc).__name__}: {redact(str(exc)).splitlines()[0] if str(exc) else ''}"
                         " (run with --debug for the traceback)\n")
        code = 1
    if _DISPLAY is not None:
        _DISPLAY.close()
    sys.stdout.flush()
    sys.exit(code)


def entry() -> None:
    """The `runbook` command: main(), then out without tearing the interpreter down. Freeing every
    module and object one by one cost 60-120 ms at exit, a sixth of a no-op provision on 1,000
    tables (benchmarks/README.md); the exit handlers (logging's flush, temporary files) still run. Only when no other thread is alive: otherwise
    the normal exit, which waits for them."""
    import threading

    code = 0
    try:
        main()
    except SystemExit as exc:
        if threading.active_count() > 1:
            raise
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            sys.stderr.write(f"{exc.code}\n")
            code = 1
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):       # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
