import json
import logging
from urllib.parse import quote, quote_plus

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


def test_many_registrations_compile_each_value_a_logarithmic_number_of_times(fresh_redactor):
    values = [f"many-{i:05d}-p@ss/w+rd" for i in range(3000)]
    for i, value in enumerate(values):
        Secret(value)
        if i % 7 == 0:                     # a long process redacts between registrations
            assert redact("nothing secret here") == "nothing secret here"
    sample = values[::101] + [quote(values[5], safe=""), quote_plus(values[9])]
    out = redact(" | ".join(sample))
    assert out == " | ".join([MASK] * len(sample))
    forms = 3 * len(values)                # raw, quote and quote_plus forms
    # the old redactor recompiled every known form on each registration: ~forms²/2 ≈ 40 million here
    assert sum(fresh_redactor) <= forms * 14, sum(fresh_redactor)


def test_a_longer_secret_is_masked_whole_even_when_registered_later(fresh_redactor):
    from runbook import secret

    for value in ("shorty-1", "filler-1", "filler-2", "filler-3"):
        Secret(value)
    assert redact("a shorty-1 b") == f"a {MASK} b"
    Secret("xx-shorty-1-and-more")         # contains the first one
    assert redact("xx-shorty-1-and-more, shorty-1, filler-3.") == f"{MASK}, {MASK}, {MASK}."
    assert len(secret._pattern) == 2       # really in two compiled chunks, the short one first
