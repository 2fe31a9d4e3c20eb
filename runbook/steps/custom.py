"""Steps a project adds in its own playbooks: raw SQL, a shell command, an HTTP check.

These run what the operator wrote in their own playbook file; they are the operator's code,
as a migration is, so the SQL is passed through as written (never built from input).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from runbook import shell
from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.durations import parse_timeout
from runbook.engine import Check, Step, Verdict
from runbook.errors import ConfigError, RunbookError
from runbook.secret import redact


@dataclass(frozen=True)
class SqlDone:
    done: bool                        # `unless` returned a true first column


class SqlStep(Step[SqlDone]):
    """`- sql: {run: "…", unless: "SELECT …"}` — runs when `unless` returns no row / false."""

    kind = "sql"

    @property
    def name(self) -> str:
        return str(self.params.get("name") or "sql")

    def observe(self, ctx: StepContext) -> SqlDone:
        unless = self.params.get("unless")
        if not unless:
            return SqlDone(False)
        row = ctx.admin().execute(sql.SQL(unless)).fetchone()
        return SqlDone(bool(row and row[0]))

    def plan(self, ctx: StepContext, observed: SqlDone) -> list[Change]:
        if "run" not in self.params:
            raise ConfigError("sql step needs `run:`")
        if observed.done:
            return []
        return [Change(self.params.get("summary") or f"run SQL: {str(self.params['run'])[:60]}",
                       sql.SQL(self.params["run"]), reversible=False)]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        conn = ctx.admin()
        statement = changes[0].statement
        if statement is not None:
            with conn.transaction():
                conn.execute(statement)


class CommandStep(Check):
    """`- command: {run: "…", timeout: 60}` — a shell command; exit 0 or the run fails."""

    kind = "command"

    @property
    def name(self) -> str:
        return str(self.params.get("name") or "command")

    def _checked(self, ctx: StepContext) -> tuple[float, list[str]]:
        """The step's timeout and pass_env, refused as a project's would be (runbook/shell.py)."""
        try:
            timeout = parse_timeout(self.params.get("timeout", 300)).total_seconds()
            names = shell.pass_env_names(self.params.get("pass_env"))
        except ValueError as exc:
            raise ConfigError(f"command step {self.name}: {exc}") from None
        spec = ctx.env.spec
        secret = shell.secret_env_names([spec.database, spec.app], [spec.state])
        for name in names:
            if name in secret:
                raise ConfigError(f"command step {self.name}: pass_env {name} is where the tool reads a secret from; "
                                  "a command never gets it")
        return timeout, names

    def plan(self, ctx: StepContext, observed: None) -> list[Change]:
        if "run" not in self.params:
            raise ConfigError("command step needs `run:`")
        self._checked(ctx)
        return [Change(f"run `{self.params['run']}`", reversible=False)]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        cmd = str(self.params["run"]).replace("{env}", ctx.env.name)
        timeout, names = self._checked(ctx)
        try:
            res = shell.run(cmd, timeout=timeout, cwd=str(ctx.project.base_dir), env=shell.child_env(ctx.environ, names))
        except shell.CommandTimeout as exc:
            raise RunbookError(f"command `{cmd}` {exc}; it was stopped") from None
        if res.returncode != 0:
            raise RunbookError(f"command `{cmd}` exited {res.returncode}: {redact(res.tail())[:200]}")


class HttpCheckStep(Check):
    """`- http_check: {url: …, status: 200}` — verify only."""

    kind = "http_check"
    mutates = False

    @property
    def name(self) -> str:
        return str(self.params.get("name") or "http_check")

    def verify(self, ctx: StepContext) -> Verdict:
        from runbook.checks import http_status

        url = self.params.get("url")
        if not url:
            raise ConfigError("http_check step needs `url:`")
        return http_status(str(url), int(self.params.get("status", 200)), float(self.params.get("timeout", 10)))
