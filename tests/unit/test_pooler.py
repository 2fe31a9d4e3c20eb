"""database.pooler and the known pooler endpoints: pure, no connection."""

from __future__ import annotations

import pytest
import yaml

from runbook import pooler, project
from runbook.errors import ConfigError
from runbook.secret import Secret
from tests.projects import OTHER_PLATFORM_ENVS, spec_dict


def no_connection():
    raise AssertionError("a known transaction pooler must be refused without connecting")


@pytest.mark.parametrize("dsn, details, mode", [
    ("postgresql://postgres.abcdefghijklmnopqrst:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres", {}, "transaction"),
    ("postgresql://postgres.abcdefghijklmnopqrst:pw@aws-1-us-east-1.pooler.supabase.com:5432/postgres", {}, "session"),
    ("host=db.abcdefghijklmnopqrst.supabase.co port=6543 user=postgres", {}, "transaction"),
    ("host=pgbouncer.internal port=6543 user=admin", {}, "transaction"),
    ("postgresql://admin@raptor.proxy-c0ffee123abc.eu-west-1.rds.amazonaws.com:5432/app", {}, "transaction"),
    ("postgresql://admin@raptor.c0ffee123abc.eu-west-1.rds.amazonaws.com:5432/app", {}, None),
    ("postgresql://u@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d", {"dsn_env": "DATABASE_CONNECTION_POOL_URL"}, "transaction"),
    ("postgresql://u@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d", {"dsn_env": "DATABASE_URL"}, None),
    ("postgresql://u@10.0.0.5:5432/d", {"pooler": "session"}, "session"),
    ("host=/tmp port=5432 user=postgres", {}, None),
])
def test_known_endpoints(dsn, details, mode):
    found = pooler.recognise(Secret(dsn), details)
    assert (found.mode if found else None) == mode


def test_a_known_transaction_endpoint_is_refused_before_connecting():
    dsn = Secret("postgresql://postgres.abcdefghijklmnopqrst:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres")
    found = pooler.detect("auto", dsn, None, no_connection)
    assert found.mode == "transaction" and "6543" in found.how
    message = pooler.refusal(found, "staging").message
    assert "\n" not in message and "direct or session-mode DSN" in message and "pw" not in message


def test_a_declared_transaction_pooler_needs_no_probe():
    assert pooler.detect("transaction", Secret("host=db port=5432"), None, no_connection).mode == "transaction"


def test_declared_mode_overrides_a_recognised_endpoint_until_the_probe_disagrees():
    class Direct:
        class info:
            backend_pid = 42

        def execute(self, *_):
            class Row:
                def fetchone(self):
                    return (42,)
            return Row()

    dsn = Secret("host=pgbouncer.internal port=6543 user=admin")
    assert pooler.detect("auto", dsn, Direct(), no_connection).mode == "transaction"
    assert pooler.detect("none", dsn, Direct(), no_connection).mode == "none"


def test_every_database_block_takes_pooler():
    data = spec_dict("raptor_app")
    data["environments"].update(OTHER_PLATFORM_ENVS)
    data["environments"]["staging"]["database"]["pooler"] = "session"
    for env in OTHER_PLATFORM_ENVS:
        data["environments"][env] = {**OTHER_PLATFORM_ENVS[env],
                                     "database": {**OTHER_PLATFORM_ENVS[env]["database"], "pooler": "none"}}
    loaded = project.loads(yaml.safe_dump(data))
    assert loaded.env("staging").database.pooler == "session"
    assert {loaded.env(e).database.pooler for e in OTHER_PLATFORM_ENVS} == {"none"}
    assert project.loads(yaml.safe_dump(spec_dict("raptor_app"))).env("staging").database.pooler == "auto"
    schema = project.json_schema()
    for name in ("LocalDatabaseConfig", "HerokuDatabaseConfig", "RdsDatabaseConfig", "CloudSqlDatabaseConfig",
                 "SupabaseDatabaseConfig"):
        assert schema["$defs"][name]["properties"]["pooler"]["enum"] == ["auto", "none", "session", "transaction"]


def test_a_bad_pooler_value_names_its_line():
    data = spec_dict("raptor_app")
    data["environments"]["staging"]["database"]["pooler"] = "transactions"
    with pytest.raises(ConfigError, match=r"runbook\.yaml:\d+: environments\.staging\.database\.pooler: Input should be"):
        project.loads(yaml.safe_dump(data))


@pytest.mark.parametrize("reason, pooled", [
    ('connection failed: connection to server at "127.0.0.1", port 6432 failed: FATAL:  SASL authentication failed', True),
    ("FATAL:  no such user: raptor_app", True),
    ("FATAL:  Tenant or user not found", True),
    ('FATAL:  password authentication failed for user "raptor_app"', False),
])
def test_a_poolers_refusal_of_the_app_login_gets_the_poolers_fix(reason, pooled):
    fix = pooler.login_refusal_fix(reason, "127.0.0.1", 6432, "raptor_app")
    assert (fix is not None) == pooled
    if fix:
        assert "127.0.0.1:6432" in fix and "auth_file" in fix
