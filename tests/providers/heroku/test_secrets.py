"""Response bodies (every config var, every password) never reach logs, output or errors."""

from __future__ import annotations

import logging

import pytest

from runbook.errors import ProviderError
from tests.providers.heroku.conftest import ADDON, APP, FLAG, URL_VAR


def test_no_body_password_or_token_reaches_logs(fake, open_db, open_app, pg, canary_password, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    # the CLI clamps httpx to WARNING for the whole process; an earlier test in this worker may have run it
    caplog.set_level(logging.DEBUG, logger="httpx")
    owner_password = fake.owner_url(ADDON).split(":")[2].split("@")[0]
    role = pg.role("raxx_app")
    fake.provision_polls = 2
    fake.passwords.extend(["first-" + canary_password, canary_password])
    fake.inject("503", path="/config-vars")
    fake.inject("429", api="data", retry_after=0)

    db, app = open_db(fake), open_app(fake)
    db.describe()
    db.admin_dsn()
    cred = db.create_credential(role)
    app.attach_url(cred, URL_VAR)
    app.get_config([URL_VAR, "DATABASE_URL"])
    app.set_config({FLAG: "1"})
    db.rotate(role)
    fake.inject("error", path="/config-vars", status=422, error_id="invalid_params", message="Bad request.")
    with pytest.raises(ProviderError) as err:
        app.get_config([URL_VAR])
    app.detach_url(role, URL_VAR)
    db.destroy(role)

    out = capsys.readouterr()
    emitted = caplog.text + out.out + out.err + err.value.message
    assert "HTTP Request: GET" in caplog.text          # the clients did log, at DEBUG
    assert "heroku: config vars RAPTOR_APP_ROLE_ENABLED changed" in caplog.text
    for secret in (canary_password, owner_password, fake.token, "postgres://", '"credentials"', '"password"'):
        assert secret not in emitted


def test_an_error_line_never_carries_the_body(bare_fake, open_app):
    bare_fake.inject("error", path="/config-vars", status=400, error_id="bad_request",
                     message="Value for DATABASE_URL postgres://u:hunter2-secret@h/db is invalid")
    with pytest.raises(ProviderError) as err:
        open_app(bare_fake).get_config([FLAG])
    assert "hunter2-secret" not in err.value.message
    assert err.value.message.startswith(f"heroku: GET /apps/{APP}/config-vars failed: HTTP 400 bad_request: ")
