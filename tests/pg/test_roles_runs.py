"""The bookkeeping of a run over several roles (issue 18), on real PostgreSQL: each `runs` row
and each locally journalled rollback record says which roles it covered, a rollback marker is
the rolled-back role's alone, and a person confirms the whole run once."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from runbook import commands
from runbook.context import RunState, StepContext, role_store
from runbook.errors import GateClosed
from runbook.run import Invocation, Run
from runbook.steps.flag import rolled_back_since
from tests.pg.conftest import prod_database
from tests.pg.test_roles_soak_promote import SHORT, pass_running_soaks
from tests.pg.test_roles_three import FLAG, Three
from tests.projects import dotenv

RO_FLAG = "FLAG_RAPTOR_READONLY_ROLE"


@pytest.fixture
def three(request, pg, tmp_path) -> Three:
    made = Three(pg, tmp_path, "superuser")
    request.addfinalizer(lambda: pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(made.mig))))
    return made


def _runs(three, **kw):
    return commands.history(three.project(), "staging", environ=three.environ, **kw).data["runs"]


def test_runs_rows_name_the_roles_they_covered(three):
    assert three.provision().status == "ok"
    assert three.provision(role=three.ro).status == "unchanged"
    only_ro, everyone = _runs(three)[:2]
    assert everyone["roles"] == [three.app, three.ro, three.mig]
    assert only_ro["roles"] == [three.ro]
    project = three.project()
    # one role: that role's own digest (comparable with its soaks); several: the name → digest map's
    assert only_ro["digest"] == project.roles[three.ro].digest()
    assert everyone["digest"].startswith("roles:")
    assert everyone["detail"]["digests"] == {name: m.digest() for name, m in project.roles.items()}
    assert only_ro["detail"]["digests"] == {three.ro: project.roles[three.ro].digest()}

    # history / status --role: the runs that touched the role
    assert [r["id"] for r in _runs(three, role=three.app)] == [everyone["id"]]
    assert [r["id"] for r in _runs(three, role=three.ro)] == [only_ro["id"], everyone["id"]]
    three.provision(role=three.mig)
    rows = {r["role_name"]: r for r in commands.status(three.project(), environ=three.environ).data["environments"]}
    mig_run, = _runs(three, role=three.mig)[:1]
    assert mig_run["roles"] == [three.mig]
    assert rows[three.app]["last_run"].startswith("provision ok")


def test_a_journal_from_before_runs_roles_is_migrated_and_its_runs_count_for_every_role(three):
    assert three.provision().status == "ok"
    three.pg.execute("ALTER TABLE runbook.runs DROP COLUMN roles")
    three.pg.execute("INSERT INTO runbook.runs (env, command, status, started_at, digest, detail, app) "
                     "VALUES ('staging', 'provision', 'ok', 1, 'old', '{}', 'raptor')")
    # a reader that may not migrate reads it as it is
    old = _runs(three)
    assert all("roles" not in r for r in old)
    assert three.provision(role=three.ro).status == "unchanged"      # a writing open adds the column back
    newest, *older = _runs(three)
    assert newest["roles"] == [three.ro]
    assert older and all("roles" not in r for r in older)
    # an old run covered the project's roles of its time: it is in every role's history
    assert {r["id"] for r in _runs(three, role=three.app)} == {r["id"] for r in older}
    assert {r["id"] for r in _runs(three, role=three.ro)} == {newest["id"], *(r["id"] for r in older)}


def test_a_role_project_reads_its_runs_back_unchanged(pg, tmp_path):
    from tests.pg.conftest import make_env

    env = make_env(pg, tmp_path)
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    run, = commands.history(env.project(), "staging", environ=env.environ).data["runs"]
    assert set(run) == {"id", "env", "command", "status", "actor", "host", "pid", "started_at", "finished_at",
                        "digest", "detail"}
    assert run["digest"] == env.project().roles[env.role].digest()
    assert run["detail"] == {"result": "ok"}
    with psycopg.connect(pg.admin_dsn) as conn:
        assert conn.execute("SELECT roles FROM runbook.runs").fetchall() == [(None,)]


@pytest.fixture
def two_flags(three):
    three.data["roles"][three.ro]["flag"] = {"name": RO_FLAG}
    three.write()
    return three


def test_a_rollback_journalled_locally_names_its_roles(two_flags):
    t = two_flags
    assert t.provision().status == "ok"
    # the store is down for the rollback: its records stay in the local journal, each with its role
    down = "postgresql://nobody@127.0.0.1:1/none"
    res = commands.rollback(t.project(), "staging", yes=True, environ=t.environ, state=down, role=t.ro)
    assert res.data["journal"].startswith("local:")
    records = [json.loads(line) for line in (t.dir / ".runbook" / "journal.jsonl").read_text().splitlines()]
    assert records and {r.get("role") for r in records} == {t.ro}
    assert any(r["step"] == "rollback" and r["kind"] == "marker" for r in records)
    assert commands.history(t.project(), "staging", environ=t.environ, role=t.app).data.get("local") is None
    assert len(commands.history(t.project(), "staging", environ=t.environ, role=t.ro).data["local"]) == len(records)
    # the next run that reaches the store imports them under the role
    t.provision(role=t.app)
    with psycopg.connect(t.pg.admin_dsn) as conn:
        roles = {r[0] for r in conn.execute(
            "SELECT role FROM runbook.events WHERE summary LIKE 'imported from local journal%'").fetchall()}
    assert roles == {t.ro}


def _marker_for(t, name: str) -> dict | None:
    """What the flag step of `name` would find of rollback markers since the epoch."""
    with Run(t.project(), "staging", "provision", Invocation(environ=t.environ)) as run:
        run.ctx.store = run.open_store()
        try:
            for managed in run.for_each_role(name):
                return rolled_back_since(StepContext(run.ctx, RunState(), True), 0.0)
        finally:
            run.ctx.store.close()
    return None


@pytest.fixture
def staged(two_flags, prod_cluster, pg):
    t = two_flags
    t.data["soak"] = SHORT
    with prod_database(prod_cluster, t.base, "CREATE TABLE orders (id serial PRIMARY KEY)") as dbname:
        t.data["environments"]["prod"] = {
            "provider": "local", "database": {"embedded": str(prod_cluster.data_dir), "database": dbname},
            "app": {"dotenv": ".runbook/prod.env"}, "promote_from": "staging"}
        t.write()
        yield t
    with psycopg.connect(prod_cluster.admin_conninfo(), autocommit=True) as conn:
        for role in (t.mig, t.ro):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _soak_states(t) -> dict[str, str]:
    project = t.project()
    with Run(project, "staging", "history", Invocation(environ=t.environ)) as run:
        store = run.open_store()
        try:
            return {name: role_store(store, project, m).latest_soak("staging")["status"]
                    for name, m in project.roles.items()}
        finally:
            store.close()


def _promote(t):
    return commands.promote(t.project(), "prod", yes=True, environ=t.environ, sign_off="Ada")


def test_rollback_of_one_role_voids_its_soak_alone_and_rollback_of_all_voids_each(staged):
    t = staged
    assert t.provision().status == "ok"
    pass_running_soaks(t)
    assert _soak_states(t) == {t.app: "passed", t.ro: "passed", t.mig: "passed"}

    res = commands.rollback(t.project(), "staging", yes=True, environ=t.environ, role=t.ro)
    assert res.status == "ok"
    values = dotenv(t.dir)
    assert values[RO_FLAG] == "0" and values[FLAG] == "1"
    assert _soak_states(t) == {t.app: "passed", t.ro: "rolled-back", t.mig: "passed"}
    # the marker is readonly's: a provision of the app that started earlier still turns its flag on
    assert _marker_for(t, t.app) is None
    assert _marker_for(t, t.ro) is not None

    # promotion: readonly's soak is gone and prod never took its spec; the others' passed soaks stand
    with pytest.raises(GateClosed) as closed:
        _promote(t)
    assert t.ro in closed.value.message and t.app not in closed.value.message and t.mig not in closed.value.message
    assert t.provision(role=t.ro).status == "ok"
    pass_running_soaks(t, t.ro)
    assert _promote(t).status == "ok"

    # rollback of every role: each flagged role's soak is voided (the flagless migrator's stands)
    res = commands.rollback(t.project(), "staging", yes=True, environ=t.environ)
    assert res.status == "ok"
    values = dotenv(t.dir)
    assert values[RO_FLAG] == "0" and values[FLAG] == "0"
    assert _soak_states(t) == {t.app: "rolled-back", t.ro: "rolled-back", t.mig: "passed"}
    assert _marker_for(t, t.app) is not None and _marker_for(t, t.ro) is not None
    # every spec is the one prod last took: nothing to prove again, so promotion goes ahead (and
    # finds prod as it left it)
    res = _promote(t)
    assert res.status == "unchanged"
    assert any("unchanged since prod last took them" in m for m in res.messages), res.messages


class Counter:
    """A person at the terminal: counts the questions and answers `answer`."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[tuple[str, list]] = []

    def __call__(self, what: str, preview: list) -> bool:
        self.calls.append((what, list(preview)))
        return self.answer


def test_a_person_confirms_a_run_over_several_roles_once(two_flags):
    t = two_flags
    no = Counter(False)
    res = commands.provision(t.project(), "staging", confirm=no, environ=t.environ)
    assert len(no.calls) == 1
    what, preview = no.calls[0]
    assert t.app in what and t.ro in what and t.mig in what
    # every role's plan, grouped by role in file order
    order = [r.role for r in preview]
    assert order == sorted(order, key=[t.app, t.ro, t.mig].index) and set(order) == {t.app, t.ro, t.mig}
    assert res.status == "cancelled" and "cancelled; nothing was changed" in res.messages
    assert not (t.dir / ".runbook" / "staging.env").exists() or FLAG not in dotenv(t.dir)
    with psycopg.connect(t.pg.admin_dsn) as conn:
        made = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", ([t.app, t.ro, t.mig],)).fetchone()
    assert made == (0,)

    yes = Counter(True)
    res = commands.provision(t.project(), "staging", confirm=yes, environ=t.environ)
    assert len(yes.calls) == 1 and res.status == "ok"
    assert {s.role for s in res.steps} == {t.app, t.ro, t.mig}
    assert dotenv(t.dir)[FLAG] == "1" and dotenv(t.dir)[RO_FLAG] == "1"

    rb = Counter(True)
    res = commands.rollback(t.project(), "staging", confirm=rb, environ=t.environ)
    assert len(rb.calls) == 1 and res.status == "ok"
    assert {r.role for r in rb.calls[0][1]} == {t.app, t.ro}
    assert dotenv(t.dir)[FLAG] == "0" and dotenv(t.dir)[RO_FLAG] == "0"

    # --yes asks nobody; and nothing to change is said, not asked
    quiet = Counter(True)
    res = commands.provision(t.project(), "staging", confirm=quiet, yes=True, environ=t.environ)
    assert quiet.calls == [] and res.status == "ok"
    again = Counter(True)
    res = commands.provision(t.project(), "staging", confirm=again, environ=t.environ)
    assert again.calls == [] and "nothing to change" in res.messages
