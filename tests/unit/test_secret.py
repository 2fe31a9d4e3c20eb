import json
import logging

import pytest
from pydantic import BaseModel

from providers.base import Credential
from runbook.secret import MASK, RedactingFilter, Secret, mask_url, redact


def test_secret_masks_everywhere():
    s = Secret("hunter2-very-secret")
    assert str(s) == MASK and repr(s) == f"Secret('{MASK}')" and f"{s}" == MASK and "%s" % s == MASK
    assert s.reveal() == "hunter2-very-secret"
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)


def test_secret_in_pydantic_json():
    class M(BaseModel):
        password: Secret

    m = M(password="pw-abcdefgh")
    assert "pw-abcdefgh" not in m.model_dump_json()
    assert json.loads(m.model_dump_json())["password"] == MASK


def test_redact_known_values_urls_and_keywords():
    Secret("zq9-known-value")
    assert "zq9-known-value" not in redact("oops zq9-known-value leaked")
    assert redact("postgresql://u:p%40ss@h:5432/db") == f"postgresql://u:{MASK}@h:5432/db"
    assert "s3cret" not in redact("host=x password=s3cret user=y")


def test_credential_url_quotes_and_masks():
    cred = Credential("raptor_app", "raptor_app", "db.example", 5432, "my db", Secret("p@ss:w/rd?#"), "require")
    url = cred.url().reveal()
    assert url == "postgresql://raptor_app:p%40ss%3Aw%2Frd%3F%23@db.example:5432/my%20db?sslmode=require"
    assert cred.masked_url() == "postgresql://raptor_app:****@db.example:5432/my%20db?sslmode=require"
    import psycopg.conninfo

    parsed = psycopg.conninfo.conninfo_to_dict(url)
    assert parsed["password"] == "p@ss:w/rd?#" and parsed["dbname"] == "my db"


def test_mask_url_ipv6_and_no_password():
    assert mask_url("postgres://u:pw-xyz-123@[::1]:5432/d") == "postgres://u:****@[::1]:5432/d"
    assert mask_url("postgres://u@h/d") == "postgres://u@h/d"


def test_logging_filter_scrubs_records(caplog):
    Secret("log-canary-998877")
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("connecting with %s", "log-canary-998877")
    assert "log-canary-998877" not in caplog.text
