"""runbook.run: a run asks the provider for its admin DSN once (a provider may read it from a
secret manager or a platform API each time), whatever the lock, the journal and the steps need."""

from __future__ import annotations

from providers.local import LocalDatabase
from runbook import commands


def _counting(monkeypatch) -> list[str]:
    asked: list[str] = []
    real = LocalDatabase.admin_dsn

    def admin_dsn(self):
        asked.append("admin_dsn")
        return real(self)

    monkeypatch.setattr(LocalDatabase, "admin_dsn", admin_dsn)
    return asked


def test_provision_fetches_the_admin_dsn_once(env, monkeypatch):
    asked = _counting(monkeypatch)
    res = commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert res.status == "ok" and len(asked) == 1
    asked.clear()
    again = commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert again.status == "unchanged" and len(asked) == 1


def test_diagnose_and_drift_fix_fetch_it_once(su_env, monkeypatch):
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    asked = _counting(monkeypatch)
    assert commands.diagnose(su_env.project(), "staging", environ=su_env.environ).status == "ok"
    assert len(asked) == 1
    asked.clear()
    su_env.as_owner("CREATE TABLE late_table (id int)")
    fixed = commands.drift(su_env.project(), "staging", fix=True, yes=True, environ=su_env.environ)
    assert fixed.status == "ok" and len(asked) == 1
