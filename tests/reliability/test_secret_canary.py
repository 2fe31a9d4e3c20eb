"""A recognisable password travels the whole lifecycle; it must appear nowhere but the app's
config: not in output (text or JSON), log records, the journal, error messages or the server
log (log_statement = all in the test clusters)."""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stderr, redirect_stdout

import pytest

from runbook import commands, render, roles
from runbook.errors import RunbookError
from runbook.secret import Secret


def test_canary_password_never_leaks(su_env, canary_password, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(roles, "generate_password", lambda length=40: Secret(canary_password))
    # a restart command that prints the app's config, then fails: its output lands in an error message
    su_env.rewrite(restart="cat .runbook/staging.env; exit 3")
    project = su_env.project()
    out, err = io.StringIO(), io.StringIO()
    errors: list[str] = []
    with redirect_stdout(out), redirect_stderr(err):
        try:
            commands.provision(project, "staging", yes=True, environ=su_env.environ, on_step=render.step_line)
        except RunbookError as exc:
            errors.append(exc.message)
        su_env.rewrite(restart="true")
        project = su_env.project()
        for fn in (commands.provision, commands.rotate):
            res = fn(project, "staging", yes=True, environ=su_env.environ)
            render.result(res)
            render.emit_json(res.to_json())
        for res in (commands.diagnose(project, "staging", environ=su_env.environ),
                    commands.plan(project, "staging", environ=su_env.environ),
                    commands.history(project, "staging", environ=su_env.environ),
                    commands.status(project, environ=su_env.environ),
                    commands.rollback(project, "staging", yes=True, environ=su_env.environ)):
            render.result(res, show_sql=True)
            render.emit_json(res.to_json())
    assert errors and "exited 3" in errors[0]
    journal = su_env.pg.execute(
        "SELECT coalesce(string_agg(t::text, ' '), '') FROM (SELECT id, run_id, env, at, step, kind, summary, data FROM runbook.events UNION ALL "
        "SELECT id, NULL, env, started_at, command, status, detail, actor FROM runbook.runs) t")[0][0]
    local = (su_env.dir / ".runbook" / "journal.jsonl")
    server_log = su_env.pg.rc.cluster.log_file.read_text(errors="replace")
    places = {
        "stdout/json": out.getvalue(), "stderr": err.getvalue(), "logs": caplog.text, "errors": "\n".join(errors),
        "journal": journal, "local journal": local.read_text() if local.exists() else "", "server log": server_log,
    }
    assert "****" in out.getvalue()
    for where, text in places.items():
        assert canary_password not in text, f"canary password leaked into {where}"
        assert f"raptor_app_{su_env.pg.suffix}:{canary_password}" not in text
    # the app's config is the one place it lives (the first provision wrote it; rotate replaced it)
    assert (su_env.dir / ".runbook" / "staging.env").read_text().count(canary_password) == 1
