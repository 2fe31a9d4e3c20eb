"""Soaks of a few seconds on real PostgreSQL, and the promotion gate.

Most tests move the recorded soak start back in time (an UPDATE of the journal) instead of
sleeping; one waits for real checkpoints."""

from __future__ import annotations

import time

import psycopg
import pytest

from runbook import commands
from runbook.errors import ConfigError, GateClosed
from tests.pg.conftest import prod_database
from tests.projects import dotenv

SHORT = {"duration": "3s", "checkpoints": ["1s", "2s", "3s"], "valid_for": "1h", "checks": ["diagnose", "drift"]}


def shift_soak(env, seconds: float) -> None:
    env.pg.execute("UPDATE runbook.soaks SET started_at = started_at - %s WHERE status = 'running'", (seconds,))


def age_soak(env, seconds: float) -> None:
    """The running soak started exactly `seconds` ago, whatever the machine's load made of the
    time since provision (a repeat can then never drift into the next checkpoint)."""
    env.pg.execute("UPDATE runbook.soaks SET started_at = %s WHERE status = 'running'", (time.time() - seconds,))


def soak(env):
    return commands.soak(env.project(), "staging", environ=env.environ)


def test_soak_pass_path_with_real_checkpoints(su_env):
    su_env.rewrite(soak={**SHORT, "duration": "2s", "checkpoints": ["1s", "2s"]})
    res = commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert res.data.get("soak_started")
    first = soak(su_env)
    assert first.exit_code == 3 and first.data["soak"]["state"] == "running"
    assert [p["status"] for p in first.data["soak"]["checkpoints"]] == ["pending", "pending"]
    time.sleep(1.2)
    mid = soak(su_env)
    assert mid.exit_code == 3
    assert [p["status"] for p in mid.data["soak"]["checkpoints"]] == ["pass", "pending"]
    time.sleep(1.0)
    done = soak(su_env)
    assert done.exit_code == 0 and done.data["soak"]["state"] == "passed", done.data
    events = [e for e in commands.history(su_env.project(), "staging", environ=su_env.environ).data["events"]
              if e["step"] == "soak"]
    assert [e["summary"].split(":")[0] for e in events] == ["checkpoint 1s", "checkpoint 2s"]


def test_cron_repeats_record_each_checkpoint_once(su_env):
    su_env.rewrite(soak=SHORT)
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    results = []
    for _ in range(4):          # cron repeats within the same checkpoint window (1 s due, 2 s not)
        age_soak(su_env, 1.5)
        results.append(soak(su_env))
    assert [r.exit_code for r in results] == [3, 3, 3, 3]
    rows = su_env.pg.execute("SELECT offset_s, status FROM runbook.checkpoints ORDER BY offset_s")
    assert rows == [(1.0, "pass")]
    assert [p["recorded_now"] for p in results[0].data["soak"]["checkpoints"]] == [True, False, False]
    assert not any(p["recorded_now"] for r in results[1:] for p in r.data["soak"]["checkpoints"])


def test_late_checkpoints_are_marked_late(su_env):
    su_env.rewrite(soak=SHORT)
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 60)        # cron was down: every checkpoint is due, long ago
    res = soak(su_env)
    assert res.exit_code == 0
    points = res.data["soak"]["checkpoints"]
    assert [p["status"] for p in points] == ["pass", "pass", "pass"]
    assert all(p["late"] for p in points)


def test_failing_check_fails_the_soak_and_names_the_rollback(su_env):
    su_env.rewrite(soak={**SHORT, "checks": ["diagnose", {"command": "echo smoke broke; exit 1"}]})
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 1.5)
    res = soak(su_env)
    assert res.exit_code == 4 and res.data["soak"]["state"] == "failed"
    assert any("runbook rollback --env staging --yes" in m for m in res.messages)
    checks = res.data["soak"]["checkpoints"][0]["checks"]
    assert checks[1]["status"] == "fail" and "smoke broke" in checks[1]["detail"]
    assert dotenv(su_env.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "1"     # no auto_rollback


def test_auto_rollback_turns_the_flag_off(su_env):
    su_env.rewrite(soak={**SHORT, "auto_rollback": True, "checks": [{"command": "exit 1"}]})
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 1.5)
    res = soak(su_env)
    assert res.exit_code == 4
    assert dotenv(su_env.dir)["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "0"
    assert any("auto_rollback" in m for m in res.messages)


def test_no_data_is_inconclusive_never_a_pass(su_env):
    su_env.rewrite(soak={**SHORT, "checks": [{"connections": {"application_name": "raptor-web"}},
                                             {"http": {"url": "http://127.0.0.1:9/health", "timeout": "1s"}}]})
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 1.5)
    first = soak(su_env)
    assert first.data["soak"]["checkpoints"][0]["status"] == "inconclusive"
    assert first.exit_code == 3
    shift_soak(su_env, 5)
    final = soak(su_env)
    assert final.exit_code == 4 and final.data["soak"]["state"] == "inconclusive"


def test_connections_check_passes_when_the_app_uses_the_role(su_env):
    su_env.rewrite(soak={**SHORT, "checks": [{"connections": {"application_name": "raptor-web"}}]})
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    url = dotenv(su_env.dir)["RAPTOR_APP_DATABASE_URL"]
    with psycopg.connect(url, application_name="raptor-web"):
        shift_soak(su_env, 1.5)
        res = soak(su_env)
    assert res.data["soak"]["checkpoints"][0]["status"] == "pass"


def test_rollback_voids_the_soak_and_reprovision_starts_a_new_one(su_env):
    su_env.rewrite(soak=SHORT)
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    shift_soak(su_env, 60)
    assert soak(su_env).exit_code == 0
    again = commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert not again.data.get("soak_started")            # an idempotent re-run keeps the passed soak
    commands.rollback(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert soak(su_env).exit_code == 3                   # rolled back: nothing to promote
    res = commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert res.data.get("soak_started")


# --- promotion -----------------------------------------------------------------------------

@pytest.fixture
def with_prod(su_env, prod_cluster):
    """prod: a fresh database on its own cluster (prod_cluster in tests/conftest.py)."""
    with prod_database(prod_cluster, su_env, "CREATE TABLE orders (id serial PRIMARY KEY)") as dbname:
        su_env.prod = {"prod": {"provider": "local",
                                "database": {"embedded": str(prod_cluster.data_dir), "database": dbname},
                                "app": {"dotenv": ".runbook/prod.env"}, "promote_from": "staging"}}
        su_env.rewrite(soak=SHORT, extra_envs=su_env.prod)
        yield su_env


def promote(env, **kw):
    return commands.promote(env.project(), "prod", yes=True, environ=env.environ, **kw)


def test_promote_refused_until_staging_soak_passed(with_prod):
    env = with_prod
    with pytest.raises(GateClosed, match="no soak on record"):
        promote(env, sign_off="Ada Lovelace")
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    with pytest.raises(GateClosed, match="still running"):
        promote(env, sign_off="Ada Lovelace")
    shift_soak(env, 60)
    assert soak(env).exit_code == 0
    with pytest.raises(ConfigError, match="sign-off"):
        promote(env, sign_off=" ")
    res = promote(env, sign_off="Ada Lovelace")
    assert res.status == "ok"
    assert dotenv(env.dir, "prod")["FLAG_RAPTOR_APP_ROLE_SEPARATION"] == "1"
    hist = commands.history(env.project(), "prod", environ=env.environ)
    approval = hist.data["approvals"][0]
    assert approval["sign_off"] == "Ada Lovelace" and not approval["forced"] and approval["from_env"] == "staging"


def test_changed_spec_invalidates_the_soak(with_prod):
    env = with_prod
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    shift_soak(env, 60)
    assert soak(env).exit_code == 0
    env.rewrite(soak=SHORT, extra_envs=env.prod,
                schemas={"public": {"tables": ["SELECT"], "sequences": ["USAGE", "SELECT"]}})
    with pytest.raises(GateClosed, match="different role spec"):
        promote(env, sign_off="Ada")


def test_soak_too_old_is_refused(with_prod):
    env = with_prod
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    shift_soak(env, 60)
    assert soak(env).exit_code == 0
    env.pg.execute("UPDATE runbook.soaks SET ended_at = ended_at - 7200")
    with pytest.raises(GateClosed, match="older than soak.valid_for"):
        promote(env, sign_off="Ada")


def test_forced_promotion_needs_a_reason_and_is_journalled(with_prod):
    env = with_prod
    with pytest.raises(ConfigError, match="--reason"):
        promote(env, sign_off="Grace Hopper", force=True)
    res = promote(env, sign_off="Grace Hopper", force=True, reason="incident 4711: staging cluster lost")
    assert res.status == "ok"
    assert any("FORCED" in m for m in res.messages)
    approval = commands.history(env.project(), "prod", environ=env.environ).data["approvals"][0]
    assert approval["forced"] and approval["reason"].startswith("incident 4711")
    assert approval["actor"] and approval["host"]


def test_status_summarises_every_environment(with_prod):
    env = with_prod
    commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    rows = {r["env"]: r for r in commands.status(env.project(), environ=env.environ).data["environments"]}
    assert rows["staging"]["role"] == "present" and rows["staging"]["flag"] == "on"
    assert rows["staging"]["soak"] == "running" and rows["staging"]["last_run"].startswith("provision ok")
    assert rows["prod"]["flag"] == "unset" and rows["prod"]["role"] == "absent"
