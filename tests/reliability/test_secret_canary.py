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


def test_children_get_no_secret_and_a_password_printed_alone_is_masked(pg, tmp_path, canary_password, monkeypatch,
                                                                        caplog):
    """The restart command and the soak checks dump their whole environment: neither the admin
    DSN, nor its password, nor the app's appears there. Checks that print only a password (the
    app's, read back from its config; the admin's, from wherever) leave it in no output, JSON,
    checkpoint or event: the redactor knows a DSN's password alone, not just the whole DSN."""
    import psycopg
    from psycopg import sql

    from tests.pg.conftest import make_env
    from tests.projects import spec_dict, write_project

    caplog.set_level(logging.DEBUG)
    env = make_env(pg, tmp_path, admin="createrole")
    admin = psycopg.conninfo.conninfo_to_dict(env.admin_dsn)["user"]
    admin_password = canary_password + "-admin"
    with pg.connect() as conn:      # the test's own statement stays out of the server log (log_statement = all)
        conn.execute("SET log_statement = 'none'")
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(admin), sql.Literal(admin_password)))
    dsn = pg.tcp_dsn(admin, admin_password)
    environ = {"RB_TEST_ADMIN_DSN": dsn, "PGPASSWORD": admin_password, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for name, value in environ.items():     # what the CLI's own process would hold
        if name != "PATH":
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(roles, "generate_password", lambda length=40: Secret(canary_password))
    (env.dir / "admin-password.txt").write_text(admin_password + "\n")
    app_password_alone = r"sed -n 's|^RAPTOR_APP_DATABASE_URL=.*://[^:]*:\([^@]*\)@.*|\1|p' .runbook/staging.env"
    write_project(env.dir, spec_dict(env.role, owner=env.owner, restart="env -0 > restart.env", soak={
        "duration": "3s", "checkpoints": ["1s", "3s"], "valid_for": "1h",
        "checks": [{"command": {"run": f"env -0 > check.env; {app_password_alone}"}},
                   {"command": {"run": "cat admin-password.txt"}}]}))
    project = env.project()
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        res = commands.provision(project, "staging", yes=True, environ=environ, on_step=render.step_line)
        render.emit_json(res.to_json())
        pg.execute("UPDATE runbook.soaks SET started_at = started_at - 1.5 WHERE status = 'running'")
        soaked = commands.soak(project, "staging", environ=environ)
        for res in (soaked, commands.history(project, "staging", environ=environ)):
            render.result(res)
            render.emit_json(res.to_json())
    # the checks ran and printed the passwords alone; what the tool kept of it is masked
    checks = soaked.to_json()["data"]["soak"]["checkpoints"][0]["checks"]
    assert [c["status"] for c in checks] == ["pass", "pass"], checks
    assert all(c["detail"] == "exit 0: ****" for c in checks), checks
    journal = pg.execute(
        "SELECT coalesce(string_agg(t::text, ' '), '') FROM (SELECT details AS t FROM runbook.checkpoints "
        "UNION ALL SELECT concat_ws(' ', step, kind, summary, data) FROM runbook.events "
        "UNION ALL SELECT concat_ws(' ', command, status, detail) FROM runbook.runs) t")[0][0]
    assert "****" in journal
    dumps = {name: (env.dir / name).read_bytes().decode() for name in ("restart.env", "check.env")}
    places = {"stdout/json": out.getvalue(), "stderr": err.getvalue(), "logs": caplog.text, "journal": journal, **dumps}
    for where, text in places.items():
        for secret in (canary_password, admin_password, dsn):
            assert secret not in text, f"a secret ({secret[:12]}…) leaked into {where}"
    for name, text in dumps.items():
        assert "RB_TEST_ADMIN_DSN" not in text and "PGPASSWORD" not in text, name
