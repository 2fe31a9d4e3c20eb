"""Cloud SQL's server log for the soak's `errors` check, through the Cloud Logging fake."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from runbook import dblog
from tests.providers.cloudsql.fake_google import INSTANCE
from tests.providers.cloudsql.fake_logging import FakeLogging

NOW = time.time()


def line(at: float, user: str, level: str, message: str, db: str = "raptor") -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d} UTC"
    return f"{stamp} [4242]: [3-1] db={db},user={user} {level}:  {message}"


@pytest.fixture
def logging_fake(bare_fake) -> Iterator[FakeLogging]:
    fake = FakeLogging(bare_fake.token, bare_fake.violations)
    fake.server.start()
    yield fake
    fake.server.stop()


def open_with_logging(open_db, bare_fake, logging_fake):
    return open_db(bare_fake, environ={"LOGGING_API_URL": logging_fake.server.url})


def test_the_roles_errors_from_the_instances_postgres_log(bare_fake, logging_fake, open_db):
    since = NOW - 3600
    logging_fake.add(INSTANCE, since + 1, "ERROR", line(since + 1, "app", "ERROR", "permission denied for table orders"))
    logging_fake.add(INSTANCE, since + 2, "ERROR", line(since + 2, "app", "FATAL",
                                                      'password authentication failed for user "app"'))
    logging_fake.add(INSTANCE, since + 3, "ERROR", line(since + 3, "owner", "ERROR", "permission denied for table x"))
    # the owner's RAISE with a newline: one entry, its own prefix first
    logging_fake.add(INSTANCE, since + 4, "ERROR", line(since + 4, "owner", "ERROR", "x\n" + line(
        since + 4, "app", "ERROR", "permission denied forged")) + " user=app")
    logging_fake.add(INSTANCE, since - 60, "ERROR", line(since - 60, "app", "ERROR", "permission denied before"))
    logging_fake.add("other-instance", since + 5, "ERROR", line(since + 5, "app", "ERROR", "permission denied elsewhere"))
    lines = open_with_logging(open_db, bare_fake, logging_fake).read_log(since, "app")
    assert lines.problem is None and lines.text
    found = dblog.count(lines.records, "app", since)
    assert (found.permission_denied, found.auth_failed) == (1, 1), found
    assert len(logging_fake.bodies) == 2 and logging_fake.bodies[1]["pageToken"] == "2"   # paged
    assert 'resource.labels.database_id="' in logging_fake.bodies[0]["filter"]
    assert bare_fake.errors == []        # requests and answers matched logging v2's discovery document


def test_no_permission_is_inconclusive_with_the_role_to_grant(bare_fake, logging_fake, open_db):
    logging_fake.forbidden = True
    lines = open_with_logging(open_db, bare_fake, logging_fake).read_log(NOW - 60, "app")
    assert "may not list log entries" in lines.problem and "roles/logging.viewer" in lines.fix


def test_not_asked_it_reads_nothing(bare_fake, logging_fake, open_db):
    assert open_with_logging(open_db, bare_fake, logging_fake).read_log(NOW - 60, "app", asked=False) is None
    assert logging_fake.bodies == []
