"""Shell commands the operator configured (restart commands, command steps, soak checks).

Each runs in its own process group, so a timeout ends the whole command — `sh -c "a; b"` and
whatever it started — not just the shell, which would leave its children running after we said
the command was stopped.

Each also gets a minimal, explicit environment, never the tool's own: the tool runs with the
admin DSN, platform tokens and cloud keys in its environment, and a restart script or a soak
check (or anything it runs) has no business with them. What a command needs beyond the basics
the project names in `pass_env`, and a variable the tool reads a secret from is refused there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from runbook.errors import ConfigError

# What any POSIX command may expect to find; none of it carries a credential.
BASE_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM", "SHELL")
_BASE_PREFIXES = ("LC_",)
# Variables the tool (or an SDK it drives) reads a credential from, whatever the project says.
# The project's own ones (`dsn_env`, `*_password_env`, `state: env:VAR`) are added by
# `secret_env_names`.
SECRET_ENV = frozenset({
    "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "HEROKU_API_KEY",
    "SUPABASE_ACCESS_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN",
})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def pass_env_names(value: object) -> list[str]:
    """Validate a `pass_env` list's names (the project refuses secret ones with their line, see
    `secret_env_names`; `child_env` refuses them again at run time)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("pass_env is a list of environment variable names, such as [SSH_AUTH_SOCK]")
    for name in value:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"pass_env entry {name!r} is not an environment variable name")
    return list(value)


def secret_env_names(blocks: Iterable[Mapping[str, object]], state: Iterable[str | None] = ()) -> set[str]:
    """The variables a project tells the tool to read secrets from: every `*_env` key of its
    database and app blocks (dsn_env, admin_password_env, password_env, …) and `state: env:VAR`."""
    names = set(SECRET_ENV)
    for block in blocks:
        for key, value in block.items():
            if isinstance(key, str) and key.endswith("_env") and isinstance(value, str):
                names.add(value)
    for url in state:
        if isinstance(url, str) and url.startswith("env:"):
            names.add(url[4:])
    return names


def child_env(environ: Mapping[str, str], pass_env: Iterable[str] = ()) -> dict[str, str]:
    """The environment a configured command gets: the basics, plus what the project passes.

    A passed variable whose value holds a secret the tool knows (the admin DSN under another
    name, a URL with a password) is refused, not passed: the check is on the value, so no
    renaming gets a credential through."""
    from runbook.secret import redact

    env = {k: v for k, v in environ.items() if k in BASE_ENV or k.startswith(_BASE_PREFIXES)}
    env.setdefault("PATH", os.defpath)
    for name in pass_env:
        if name in SECRET_ENV:
            raise ConfigError(f"pass_env {name}: it holds a credential the tool uses; a command never gets it")
        value = environ.get(name)
        if value is None:
            continue
        if redact(value) != value:
            raise ConfigError(f"pass_env {name}: its value holds a password or a secret the tool uses; "
                              "a command never gets it")
        env[name] = value
    return env


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


def run(cmd: str, *, timeout: float, cwd: str, env: Mapping[str, str] | None = None) -> Finished:
    """Run `cmd` with sh, no stdin, output captured; the process group is killed on timeout.

    `env` is the whole environment of the command (see `child_env`); without one it gets the
    basics of this process's environment and nothing else."""
    env = dict(env) if env is not None else child_env(os.environ)
    proc = subprocess.Popen(cmd, shell=True, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True, env=env)
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
