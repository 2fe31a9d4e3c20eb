"""How many sessions a run opens: one admin session for the lock, the steps and a journal kept in
the environment's own database (same DSN), and one login as the app role that both the URL check
and verify use. Counted at psycopg.connect, by user, in-process."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from runbook import commands
from runbook.locks import lock_key


def _count(monkeypatch) -> list[dict]:
    opened: list[dict] = []
    real = psycopg.connect

    def connect(conninfo: str = "", **kw):
        params = {**conninfo_to_dict(conninfo), **kw}
        opened.append({"user": params.get("user"), "application_name": params.get("application_name")})
        return real(conninfo, **kw)

    monkeypatch.setattr(psycopg, "connect", connect)
    return opened


def test_a_noop_provision_opens_one_admin_session_and_logs_in_once(env, monkeypatch):
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    opened = _count(monkeypatch)
    again = commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert again.status == "unchanged"
    role = env.project().role.name
    as_app = [o for o in opened if o["user"] == role]
    admin = [o for o in opened if o["user"] != role]
    assert len(admin) == 1, opened          # lock + steps + journal: one session
    assert len(as_app) == 1, opened         # the URL check's login, reused by verify
    assert admin[0]["application_name"].startswith("runbook:") and "provision" in admin[0]["application_name"]


def test_the_lock_is_on_the_admin_session_and_gone_with_the_run(env, monkeypatch):
    seen: list[tuple[int, bool]] = []
    real = commands._playbook

    def playbook(run, name, journal, result, role=None):
        # mid-run: the session that holds the environment's lock is the one the steps use
        conn = run.admin()
        key = lock_key(run.project.spec.app, run.env)
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        held = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
            "AND classid = %s::oid AND objid = %s::oid AND granted)",
            (str(unsigned >> 32), str(unsigned & 0xFFFFFFFF))).fetchone()[0]
        seen.append((conn.info.backend_pid, held))
        return real(run, name, journal, result, role)

    monkeypatch.setattr(commands, "_playbook", playbook)
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    assert seen and seen[0][1] is True
    with psycopg.connect(env.admin_dsn, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
                            (seen[0][0],)).fetchone()[0]
    assert left == 0


def test_a_reopened_admin_session_takes_the_lock_again(env, monkeypatch):
    seen: list[bool] = []
    real = commands._playbook

    def playbook(run, name, journal, result, role=None):
        run.admin().close()                  # the session (and the lock on it) is gone
        conn = run.admin()                   # reopened: the lock is taken again before anything else
        key = lock_key(run.project.spec.app, run.env)
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        seen.append(conn.execute(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
            "AND classid = %s::oid AND objid = %s::oid AND granted)",
            (str(unsigned >> 32), str(unsigned & 0xFFFFFFFF))).fetchone()[0])
        return real(run, name, journal, result, role)

    monkeypatch.setattr(commands, "_playbook", playbook)
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    assert seen == [True]


def _reads(monkeypatch) -> dict[str, int]:
    """How many relation snapshots and role-facts reads a run makes, counted at the functions the
    steps call (runbook.catalog.snapshot, runbook.roles.facts)."""
    from runbook import catalog, roles

    counts = {"snapshot": 0, "facts": 0}
    for module, name in ((catalog, "snapshot"), (roles, "facts")):
        real = getattr(module, name)

        def counted(*a, _real=real, _name=name, **kw):
            counts[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(module, name, counted)
    return counts


def test_an_unchanged_step_is_judged_on_what_it_observed(env, monkeypatch):
    # nothing applied between observe and verify: the role and grants steps read once each
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    counts = _reads(monkeypatch)
    again = commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert again.status == "unchanged"
    assert {s.step: s.status for s in again.steps}["grants"] == "unchanged"
    # grants: its observe as the admin; verify: once as the app role (what the app can reach)
    assert counts["snapshot"] == 2, counts
    # role: its observe (reused by its verify); grants: its managed-role check
    assert counts["facts"] == 2, counts


def test_a_step_that_applied_reads_again_to_verify(env, monkeypatch):
    assert commands.provision(env.project(), "staging", yes=True, environ=env.environ).status == "ok"
    with psycopg.connect(env.admin_dsn, autocommit=True) as conn:
        conn.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{env.project().role.name}"')
    counts = _reads(monkeypatch)
    again = commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert {s.step: s.status for s in again.steps}["grants"] == "applied"
    assert again.status == "ok"
    assert counts["snapshot"] == 3, counts     # grants observe, grants verify after the grants, the app role's
