"""`runbook demo`: the whole lifecycle on the embedded default, with nothing set up beforehand.

It writes a project into a folder (./runbook-demo by default), starts the embedded PostgreSQL,
creates an owner role and a few tables the way an app's migrations would, then runs exactly
what an operator would: provision → diagnose → soak (20 s, checkpoints at 10 s and 20 s) →
rollback, printing each. Everything it does can be repeated by hand from that folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from runbook import commands, render
from runbook.durations import parse_duration
from runbook.starter import render_starter

DEMO_SCHEMA = [
    "DO $$ BEGIN CREATE ROLE app_owner NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    "GRANT CREATE, USAGE ON SCHEMA public TO app_owner",
    "SET ROLE app_owner",
    "CREATE TABLE IF NOT EXISTS customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers, total_cents int)",
    "CREATE TABLE IF NOT EXISTS alembic_version (version_num varchar(32) PRIMARY KEY)",
    "RESET ROLE",
]


def _project_text() -> str:
    text = render_starter("raptor", quickstart=True)
    text = text.replace("  # owner: app_owner ", "  owner: app_owner   ")
    # the demo needs only staging; prod shows how promotion is declared
    return text


def run_demo(directory: Path | None, *, as_json: bool = False) -> int:
    import psycopg

    from runbook import project as projects

    folder = (directory or Path("runbook-demo")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "runbook.yaml"
    path.write_text(_project_text())
    from runbook.starter import schema_path

    schema_path(path).write_text(json.dumps(projects.json_schema(), indent=2) + "\n")   # what its first line names
    out = render.console()
    out.print(f"[bold]demo project:[/] {path}")
    project = projects.load(path)
    ctx_db = project.env("staging").database
    from runbook.context import Context

    ctx = Context(project=project, env=project.env("staging"), command="demo")
    out.print("[bold]starting the embedded PostgreSQL and creating the app's tables as app_owner…[/]")
    dsn = ctx.db.admin_dsn()
    with psycopg.connect(dsn.reveal(), autocommit=True) as conn:
        for statement in DEMO_SCHEMA:
            conn.execute(statement)
    del ctx_db
    results = []

    def show(title: str, res) -> None:
        results.append(res.to_json())
        if not as_json:
            out.rule(f"[bold]{title}[/]")
            render.result(res)

    code = 0
    show("runbook provision --env staging --yes", commands.provision(project, "staging", yes=True))
    diag = commands.diagnose(project, "staging")
    show("runbook diagnose --env staging", diag)
    code |= diag.exit_code
    if not as_json:
        out.rule("[bold]runbook soak --env staging --wait[/]  (a 20 s soak; production uses 72 h)")
    from providers.base import Progress

    display = render.progress_display(as_json=as_json)
    while True:
        res = commands.soak(project, "staging")
        if res.exit_code != 3:
            display("staging", Progress("soak", res.data.get("soak", {}).get("state", res.status), done=True))
            break
        view = res.data["soak"]
        pending = [p for p in view["checkpoints"] if p["status"] == "pending"]
        if pending and view.get("started_at"):
            # the same countdown as `runbook soak --wait`: one line per checkpoint without a terminal
            now = time.time()
            due = view["started_at"] + parse_duration(pending[0]["checkpoint"]).total_seconds() - now
            end = view["started_at"] + project.spec.soak.duration.total_seconds() - now
            display("staging", Progress("soak", f"waiting for checkpoint {pending[0]['checkpoint']}",
                                        remaining=max(0.0, due), fields={"soak_ends_in": max(0.0, end)}))
        time.sleep(2)
    display.close()
    show("soak result", res)
    code |= res.exit_code
    show("runbook rollback --env staging --yes", commands.rollback(project, "staging", yes=True))
    after = commands.diagnose(project, "staging")
    show("runbook diagnose --env staging  (after rollback: the flag check fails, by design)", after)
    if as_json:
        render.emit_json(results)
    else:
        out.rule()
        out.print(f"done. The project is in {folder}; run the same commands there by hand "
                  "(cd into it first). `runbook history --env staging` shows the journal.")
        out.print("The embedded PostgreSQL keeps running for your app; stop it with: "
                  f"runbook -f {path} embedded stop --env staging")
    return code
