"""The journal's role scope on a SQLite file written before the role column existed."""

from __future__ import annotations

import sqlite3

from runbook.journal import SqliteStore

OLD_DDL = [
    "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL, command TEXT NOT NULL, "
    "status TEXT NOT NULL, actor TEXT, host TEXT, pid INTEGER, started_at REAL NOT NULL, finished_at REAL, "
    "digest TEXT, detail TEXT, app TEXT)",
    "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER, env TEXT NOT NULL, at REAL NOT NULL, "
    "step TEXT, kind TEXT NOT NULL, summary TEXT, data TEXT, app TEXT)",
    "CREATE TABLE soaks (id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL, digest TEXT NOT NULL, "
    "run_id INTEGER, started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL DEFAULT 'running', "
    "end_reason TEXT, app TEXT)",
    "CREATE TABLE checkpoints (id INTEGER PRIMARY KEY AUTOINCREMENT, soak_id INTEGER NOT NULL, offset_s REAL NOT NULL, "
    "at REAL NOT NULL, late BOOLEAN NOT NULL, status TEXT NOT NULL, details TEXT, UNIQUE (soak_id, offset_s))",
    "CREATE TABLE approvals (id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT NOT NULL, from_env TEXT, soak_id INTEGER, "
    "digest TEXT, sign_off TEXT NOT NULL, actor TEXT, host TEXT, at REAL NOT NULL, forced BOOLEAN NOT NULL, "
    "reason TEXT, app TEXT)",
]


def _old_file(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for ddl in OLD_DDL:
        conn.execute(ddl)
    conn.execute("INSERT INTO soaks (env, digest, started_at, status, app) VALUES ('staging', 'aaaa', 1.0, 'running', "
                 "'raptor')")
    conn.execute("INSERT INTO events (env, at, step, kind, app) VALUES ('staging', 1.0, 'flag', 'result', 'raptor')")
    conn.commit()
    conn.close()
    return path


def test_a_read_only_open_of_an_old_file_reads_its_rows_as_the_shorthand_s(tmp_path):
    store = SqliteStore(_old_file(tmp_path), app="raptor", create=False)
    try:
        assert not store.has_role
        assert store.open_soak("staging")["digest"] == "aaaa"                 # the shorthand: unscoped, as before
        assert store.open_soak("staging", ("raptor_app", "aaaa"))["digest"] == "aaaa"   # its very spec claims it
        assert store.open_soak("staging", ("raptor_ro", "bbbb")) is None
        assert store.latest_soak("staging", ("raptor_ro", "bbbb")) is None
        assert [e["step"] for e in store.events("staging")] == ["flag"]
        assert store.last_approval("staging", "raptor_app") is None
    finally:
        store.close()


def test_a_writing_open_adds_the_column_and_scopes_new_rows(tmp_path):
    store = SqliteStore(_old_file(tmp_path), app="raptor")
    try:
        assert store.has_role
        assert store.open_soak("staging", ("raptor_app", "aaaa"))["role"] is None       # legacy, claimed by digest
        store.start_soak("staging", "bbbb", None, 2.0, ("raptor_ro", "bbbb"))
        assert store.open_soak("staging", ("raptor_ro", "bbbb"))["role"] == "raptor_ro"
        assert store.open_soak("staging", ("raptor_app", "aaaa"))["digest"] == "aaaa"    # not superseded by ro's
        store.approve("prod", "staging", None, "bbbb", "Ada", False, None, role="raptor_ro")
        assert store.last_approval("prod", "raptor_ro")["digest"] == "bbbb"
        assert store.last_approval("prod", "raptor_app") is None
    finally:
        store.close()
