"""Text the tool did not write — journal rows, a provider's or a command's output — never
drives the operator's terminal: human output shows each control character as an escape, so a
tampered row reads as tampered; JSON keeps the exact text, JSON-escaped."""

from __future__ import annotations

import json

import pytest

from runbook import commands
from runbook.cli import main
from runbook.render import clean

# (no NUL: PostgreSQL text cannot hold one; clean() is tested with it below)
HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07\x1b[31mred\rover\x9b6n\u202eevil\u2028next\x7f"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def no_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f
           or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029"]
    assert not bad, f"control characters reached the terminal: {bad!r}"


def test_clean_neutralises_every_kind_of_control():
    shown = clean(HOSTILE + "\x00\ttab\nline")
    no_controls(shown)
    assert shown.endswith("\ttab\nline")
    assert "\\x1b[2J" in shown and "\\x9b" in shown and "\\u202e" in shown and "\\x0d" in shown
    assert clean("plain text, ünïcødé ☃") == "plain text, ünïcødé ☃"


def test_history_of_a_tampered_journal(su_env, capsys, monkeypatch):
    monkeypatch.setenv("RB_TEST_ADMIN_DSN", su_env.admin_dsn)
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    # whoever can write the journal (a shared store, a restored dump) plants escapes everywhere
    # (rows are keyed by app since the journal-trust change: plant them under this project's)
    su_env.pg.execute("INSERT INTO runbook.events (run_id, app, env, at, step, kind, summary) "
                      "VALUES (NULL, (SELECT app FROM runbook.runs LIMIT 1), 'staging', extract(epoch from now()), "
                      "%s, %s, %s)", (HOSTILE, HOSTILE, HOSTILE))
    su_env.pg.execute("UPDATE runbook.runs SET actor = %s, host = %s, command = %s", (HOSTILE, HOSTILE, "provision"))
    code, out, err = run_cli(capsys, "-f", str(su_env.path), "history", "--env", "staging")
    assert code == 0, err
    no_controls(out + err)
    assert "\\x1b[2J" in err
    code, out, err = run_cli(capsys, "-f", str(su_env.path), "--output", "json", "history", "--env", "staging")
    assert code == 0, err
    assert "\x1b" not in out and "\\u001b" in out
    events = json.loads(out)["data"]["events"]
    assert any(e["summary"] == HOSTILE for e in events)      # exact, once decoded


def test_a_check_and_a_restart_printing_escapes(su_env, capsys, monkeypatch):
    monkeypatch.setenv("RB_TEST_ADMIN_DSN", su_env.admin_dsn)
    printer = "printf 'ok\\033[2J\\033]0;pwned\\007\\302\\233\\n'"
    su_env.rewrite(soak={"duration": "3s", "checkpoints": ["1s", "3s"], "valid_for": "1h",
                         "checks": [{"command": {"run": printer}}]})
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    su_env.pg.execute("UPDATE runbook.soaks SET started_at = started_at - 1.5 WHERE status = 'running'")
    code, out, err = run_cli(capsys, "-f", str(su_env.path), "soak", "--env", "staging")
    assert code == 3, err
    no_controls(out + err)
    code, out, err = run_cli(capsys, "-f", str(su_env.path), "--output", "json", "soak", "--env", "staging")
    details = [c["detail"] for p in json.loads(out)["data"]["soak"]["checkpoints"] for c in p["checks"]]
    assert any("ok\x1b[2J\x1b]0;pwned\x07\x9b" in d for d in details), details    # exact in JSON
    code, out, err = run_cli(capsys, "-f", str(su_env.path), "history", "--env", "staging")
    no_controls(out + err)
    # a provider's message (the restart's failure) ends as the one error line, clean too
    su_env.rewrite(restart=printer + " >&2; exit 3")
    su_env.pg.execute("ALTER ROLE {} PASSWORD NULL".format(su_env.role))   # so the run has something to do
    (su_env.dir / ".runbook" / "staging.env").unlink()
    code, out, err = run_cli(capsys, "-f", str(su_env.path), "provision", "--env", "staging", "--yes")
    assert code != 0 and "exited 3" in err, err
    no_controls(out + err)
