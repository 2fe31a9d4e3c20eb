"""Hostile and malformed project files, kept as data in corpus/: each one ends with exit 2,
one line naming the problem (file:line where there is a line), no traceback, and nothing
changed in the database or the app's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbook.cli import main

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p for p in CORPUS.glob("*.yaml"))


def expectation(path: Path) -> str:
    side = path.with_suffix(".expect")
    if side.exists():
        return side.read_text().strip()
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    return first.removeprefix("# expect:").strip()


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_corpus_is_large_enough():
    assert len(CASES) >= 50


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_validate_rejects_with_one_line(path, capsys):
    code, out, err = run(["-f", str(path), "validate"], capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}"), lines[0]
    assert "Traceback" not in err
    assert expectation(path) in lines[0], lines[0]


def test_huge_file_is_refused(tmp_path, capsys):
    path = tmp_path / "runbook.yaml"
    path.write_text("# padding\n" * 150_000)
    code, _, err = run(["-f", str(path), "validate"], capsys)
    assert code == 2 and "larger than" in err


def test_missing_file_says_how_to_start(tmp_path, capsys):
    code, _, err = run(["-f", str(tmp_path / "nope.yaml"), "validate"], capsys)
    assert code == 2 and "runbook init" in err


def _nothing_changed(env) -> None:
    assert not env.pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (env.role,))
    assert not (env.dir / ".runbook" / "staging.env").exists()


@pytest.mark.parametrize("dsn, words", [
    ("hostaddr=256.1.1.1 dbname=x user=y", "could not parse network address"),
    ("postgresql://u@[zz::bad/db", "bad database DSN"),
    ("host=127.0.0.1 port={port} dbname=nope_nope user=nobody_at_all password=x sslmode=disable", "cannot connect"),
    ("this is not a dsn", "bad database DSN"),
])
def test_bad_dsns_exit_2_and_change_nothing(su_env, capsys, monkeypatch, dsn, words):
    monkeypatch.chdir(su_env.dir)
    monkeypatch.setenv("RB_TEST_ADMIN_DSN", dsn.replace("{port}", str(su_env.pg.port)))
    code, _, err = run(["provision", "--env", "staging", "--yes"], capsys)
    assert code == 2, err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    _nothing_changed(su_env)


def test_unknown_environment_exits_2_and_changes_nothing(su_env, capsys, monkeypatch):
    monkeypatch.chdir(su_env.dir)
    for key, value in su_env.environ.items():
        monkeypatch.setenv(key, value)
    code, _, err = run(["provision", "--env", "stagign", "--yes"], capsys)
    assert code == 2 and "did you mean 'staging'" in err
    _nothing_changed(su_env)


def test_hostile_role_name_in_a_real_project_changes_nothing(su_env, capsys, monkeypatch):
    monkeypatch.chdir(su_env.dir)
    for key, value in su_env.environ.items():
        monkeypatch.setenv(key, value)
    text = su_env.path.read_text().replace(f"name: {su_env.role}", "name: 'x\"; DROP ROLE y; --'")
    su_env.path.write_text(text)
    code, _, err = run(["provision", "--env", "staging", "--yes"], capsys)
    assert code == 2 and "not a plain identifier" in err
    _nothing_changed(su_env)
