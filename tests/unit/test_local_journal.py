"""The local journal (.runbook/journal.jsonl) under concurrent use: appends and drains from
several processes and threads at once lose nothing and copy nothing twice."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from runbook.local_journal import LocalJournal
from runbook.journal import SqliteStore

WRITERS = 2
PER_WRITER = 1500


def _append_many(path: str, writer: int, start: multiprocessing.synchronize.Event) -> None:
    journal = LocalJournal(Path(path))
    start.wait(30)
    for seq in range(PER_WRITER):
        env = ("a", "b", "keep")[seq % 3]
        journal.append({"env": env, "step": "flag off", "kind": "intent", "summary": f"w{writer} #{seq}",
                        "data": {"writer": writer, "seq": seq}})


def _drain_until(path: str, store_path: str, start: multiprocessing.synchronize.Event,
                 writers_done: multiprocessing.synchronize.Event, moved: multiprocessing.Queue) -> None:
    journal = LocalJournal(Path(path))
    store = SqliteStore(Path(store_path))
    total = 0
    start.wait(30)
    try:
        while not writers_done.is_set():
            for env in ("a", "b"):
                total += journal.drain_into(store, env)
        for env in ("a", "b"):          # whatever was appended after the last pass
            total += journal.drain_into(store, env)
    finally:
        store.close()
        moved.put(total)


def test_two_processes_append_while_a_third_drains(tmp_path):
    """Nothing lost, nothing copied twice, and the undrained environment's records untouched."""
    ctx = multiprocessing.get_context("spawn")
    path, store_path = tmp_path / ".runbook" / "journal.jsonl", tmp_path / "state.db"
    start, writers_done, moved = ctx.Event(), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_append_many, args=(str(path), w, start)) for w in range(WRITERS)]
    drainer = ctx.Process(target=_drain_until, args=(str(path), str(store_path), start, writers_done, moved))
    for proc in (*writers, drainer):
        proc.start()
    start.set()
    for proc in writers:
        proc.join(120)
        assert proc.exitcode == 0
    writers_done.set()
    drainer.join(120)
    assert drainer.exitcode == 0

    store = SqliteStore(store_path)
    try:
        events = store.events(None, limit=10_000)
    finally:
        store.close()
    copied = [(e["data"]["data"]["writer"], e["data"]["data"]["seq"]) for e in events]
    expected = {(w, s) for w in range(WRITERS) for s in range(PER_WRITER) if s % 3 != 2}
    assert len(copied) == len(set(copied)), "a record was copied twice"
    assert set(copied) == expected, f"lost: {sorted(expected - set(copied))[:5]}"
    assert moved.get(timeout=10) == len(expected)
    left = list(LocalJournal(path).records())
    assert sorted((r["data"]["writer"], r["data"]["seq"]) for r in left) == sorted(
        (w, s) for w in range(WRITERS) for s in range(PER_WRITER) if s % 3 == 2)
    assert {r["env"] for r in left} == {"keep"}
    assert not list(path.parent.glob("*.tmp")), "a rewrite left its temp file behind"


class ListStore:
    """A store that only remembers what it was given (no event_many: the one-by-one path)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def event(self, run_id, env, step, kind, summary, data=None) -> None:
        self.rows.append((run_id, env, step, kind, summary, data))


def test_threads_draining_different_envs_while_appending(tmp_path):
    journal = LocalJournal(tmp_path / "journal.jsonl")
    stores = {f"env-{i}": ListStore() for i in range(8)}

    def work(env: str) -> None:
        for seq in range(40):
            journal.append({"env": env, "step": "s", "kind": "result", "summary": str(seq), "data": {"seq": seq}})
            if seq % 5 == 4:
                journal.drain_into(stores[env], env, run_id=7)
        journal.drain_into(stores[env], env, run_id=7)

    threads = [threading.Thread(target=work, args=(env,)) for env in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for env, store in stores.items():
        assert [row[5]["seq"] for row in store.rows] == list(range(40)), env   # each once, in order
        assert {row[:4] for row in store.rows} == {(7, env, "s", "result")}
    assert list(journal.records()) == []
    assert journal.path.read_text() == ""


def test_torn_line_and_file_mode(tmp_path):
    journal = LocalJournal(tmp_path / "journal.jsonl")
    journal.path.write_text('{"env": "a", "summary": "torn by a cr')        # a crash mid-append
    journal.append({"env": "a", "step": "s", "kind": "intent", "summary": "after the crash"})
    assert [r["summary"] for r in journal.records()] == ["after the crash"]
    store = ListStore()
    assert journal.drain_into(store, "a") == 1
    assert journal.path.read_text() == ""               # the torn line went with the rewrite
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"


def test_a_stuck_drain_elsewhere_leaves_the_records_for_later(tmp_path):
    journal = LocalJournal(tmp_path / "journal.jsonl", drain_wait=0.05)
    journal.append({"env": "a", "step": "s", "kind": "intent", "summary": "x"})
    lock = journal._drain_lock("a")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)                  # another process draining "a", stuck on its store
        store = ListStore()
        assert journal.drain_into(store, "a") == 0 and store.rows == []
        journal.append({"env": "b", "step": "s", "kind": "intent", "summary": "y"})   # appends never wait
        assert journal.drain_into(store, "b") == 1      # other environments drain meanwhile
    finally:
        os.close(fd)
    assert journal.drain_into(store, "a") == 1
    assert [r[1] for r in store.rows] == ["b", "a"]


def test_a_failing_store_keeps_the_records(tmp_path):
    class Down(ListStore):
        def event(self, *a, **kw):
            raise OSError("store went away")

    journal = LocalJournal(tmp_path / "journal.jsonl")
    journal.append({"env": "a", "step": "s", "kind": "intent", "summary": "x"})
    with pytest.raises(OSError):
        journal.drain_into(Down(), "a")
    assert [json.loads(line)["summary"] for line in journal.path.read_text().splitlines()] == ["x"]
