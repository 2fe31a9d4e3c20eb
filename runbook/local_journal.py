"""The local journal: a JSON-lines file beside the project (`.runbook/journal.jsonl`), where
`rollback` writes first, since the state store may be the thing that is down; the next run that
reaches a store imports it."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.journal import StateStore, _json, actor, host


@dataclass
class _Removal:
    lines: Counter[str]
    done: bool = False
    error: BaseException | None = None


class _Rewrites:
    """The removals that drains of one journal in this process have queued, and the lock that lets
    one thread at a time apply all of them in a single rewrite (a group commit)."""

    def __init__(self) -> None:
        self.queue_lock = threading.Lock()
        self.writer = threading.Lock()
        self.queued: list[_Removal] = []


class Registry:
    """What the drains of one process share: a lock per journal and environment (the thread
    draining it here) and the queued removals per journal. Held by the runtime that runs them
    (runbook.run.Runtime, one per fleet), not by this module: two fleets in one process, or two
    tests, never share state they did not ask to share. Every cross-process guarantee rests on
    the flocks; this only lets threads of one process queue without polling and group-commit."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._drain_threads: dict[str, threading.Lock] = {}     # journal and env → the thread draining it here
        self._rewrites: dict[str, _Rewrites] = {}                # journal → its queued removals

    def drain_thread_lock(self, journal: Path, env: str) -> threading.Lock:
        with self._guard:
            return self._drain_threads.setdefault(f"{os.path.abspath(journal)}\0{env}", threading.Lock())

    def rewrites_of(self, journal: Path) -> _Rewrites:
        with self._guard:
            return self._rewrites.setdefault(os.path.abspath(journal), _Rewrites())


def _open_plain(path: Path, flags: int) -> int:
    """Open a file of the journal as a plain regular file, or refuse: whoever can write in
    `.runbook/` may have planted a symlink there (appends would land in its target) or a FIFO
    (rollback, which writes here first, would block on it for ever)."""
    from runbook.errors import ConfigError

    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symlink; refused, nothing was written") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file; refused, nothing was written")
    return fd


@dataclass
class LocalJournal:
    """A JSON-lines file beside the project: where `rollback` writes when no store answers.

    Safe for any number of threads and processes at once. An append and a rewrite each hold an
    exclusive flock on `<file>.lock`, and an append opens the file only under it, so no record is
    written into a file that a drain has just replaced; a rewrite goes through a temp file of its
    own and an atomic rename. The drains of one environment are serialised by a lock of their own
    (`<file>.locks/drain-<hash of env>.lock`), so each record is copied to a store by one drain
    only, while other environments drain side by side. A drain never holds `<file>.lock` while it
    talks to the store, so an append (a rollback's intent, ahead of its side effect) never waits
    for a store."""

    path: Path
    drain_wait: float = 10.0      # seconds a drain waits for another one; then it leaves its records here
    registry: Registry = field(default_factory=Registry, repr=False, compare=False)   # the runtime's, in a run

    @contextmanager
    def _flock(self, lock_path: Path, *, shared: bool = False, wait: float | None = None) -> Iterator[bool]:
        """Hold an flock on `lock_path`; with `wait`, give up after that many seconds (False).
        flock belongs to the open file, so threads of one process exclude each other too."""
        try:
            fd = _open_plain(lock_path, os.O_RDWR | os.O_CREAT)
        except FileNotFoundError:          # the first use in this project
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = _open_plain(lock_path, os.O_RDWR | os.O_CREAT)
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            if wait is None:
                fcntl.flock(fd, mode)
                yield True
                return
            deadline, pause = time.monotonic() + wait, 0.001
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(pause)
                    pause = min(pause * 2, 0.05)
            yield True
        finally:
            os.close(fd)          # releases the lock

    @property
    def _file_lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _drain_lock(self, env: str) -> Path:
        # one per environment, so that the environments of a fleet drain side by side
        digest = hashlib.sha256(env.encode()).hexdigest()[:16]
        return self.path.with_name(self.path.name + ".locks") / f"drain-{digest}.lock"

    def append(self, record: dict[str, Any]) -> None:
        stamped = {**record, "at": time.time(), "actor": actor(), "host": host(), "pid": os.getpid()}
        line = (_json(stamped) + "\n").encode()
        with self._flock(self._file_lock):
            fd = _open_plain(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                # a crash mid-append leaves a line without its newline; start ours on a fresh line
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                os.write(fd, line)
            finally:
                os.close(fd)

    def _lines(self) -> list[str]:
        try:
            fd = _open_plain(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "r", errors="replace") as fh:
            return fh.read().splitlines()

    @staticmethod
    def _parse(line: str) -> dict[str, Any] | None:
        try:
            record = json.loads(line)
        except ValueError:
            return None           # a torn line from a crash; the rest is still worth reading
        return record if isinstance(record, dict) else None

    def records(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        try:
            with self._flock(self._file_lock, shared=True):
                lines = self._lines()
        except PermissionError:   # a read-only checkout: a rewrite is atomic, so read without the lock
            lines = self._lines()
        for line in lines:
            record = self._parse(line)
            if record is not None:
                yield record

    def drain_into(self, store: StateStore, env: str, run_id: int | None = None) -> int:
        """Copy this env's local records into the store, then drop them from the file. Returns how
        many moved; 0 when another drain held the file for `drain_wait` seconds (they stay here and
        the next run imports them)."""
        if not self.path.exists():
            return 0
        # threads of this process queue on a lock that wakes the next one at once; the file lock
        # (polled, so that it can time out) then only meets drains of other processes
        deadline = time.monotonic() + self.drain_wait
        in_process = self.registry.drain_thread_lock(self.path, env)
        if not in_process.acquire(timeout=self.drain_wait):
            return 0
        try:
            return self._drain(store, env, run_id, max(0.0, deadline - time.monotonic()))
        finally:
            in_process.release()

    def _drain(self, store: StateStore, env: str, run_id: int | None, wait: float) -> int:
        with self._flock(self._drain_lock(env), wait=wait) as mine:
            if not mine:
                return 0
            # no file lock needed to read: a rewrite replaces the file whole, and a line half-written by
            # an append does not parse, so it is neither moved nor dropped
            lines = self._lines()
            tag = json.dumps(env)          # a cheap test first: only lines naming the env are parsed
            moving = [(line, record) for line in lines
                      if tag in line and (record := self._parse(line)) is not None and record.get("env") == env]
            if not moving:
                return 0
            if run_id is None:
                rows = [(None, env, record.get("step", "rollback"), "info",
                         f"imported from local journal: {record.get('summary', '')}", record) for _, record in moving]
            else:
                rows = [(run_id, env, record.get("step", "rollback"), record.get("kind", "info"),
                         str(record.get("summary", "")), record.get("data")) for _, record in moving]
            batch = getattr(store, "event_many", None)
            roles = [record.get("role") if isinstance(record.get("role"), str) else None for _, record in moving]
            if batch is not None and not any(roles):
                batch(rows)
            else:
                # a several-roles rollback's records each name their role: it goes on the row, in order
                for row, role in zip(rows, roles):
                    if role is None:
                        store.event(*row)
                    else:
                        store.event(*row, role=role)
            # only drains remove lines, each only its env's, and we are this env's only drain: every
            # line read above is still there
            self._remove(Counter(line for line, _ in moving))
        return len(moving)

    def _remove(self, lines: Counter[str]) -> None:
        """Drop `lines` from the file. Drains that finish together in one process (a fleet) queue
        their removals, and whichever gets the file first applies them all in one rewrite."""
        job = _Removal(lines)
        rewrites = self.registry.rewrites_of(self.path)
        with rewrites.queue_lock:
            rewrites.queued.append(job)
        with rewrites.writer:
            if not job.done:
                with rewrites.queue_lock:
                    jobs, rewrites.queued = rewrites.queued, []
                drop: Counter[str] = Counter()
                for queued in jobs:
                    drop.update(queued.lines)
                try:
                    with self._flock(self._file_lock):
                        self._rewrite(drop)
                except BaseException as exc:
                    for queued in jobs:
                        queued.error = exc
                for queued in jobs:
                    queued.done = True
        if job.error is not None:
            raise job.error

    def _rewrite(self, drop: Counter[str]) -> None:
        """Replace the file with its current lines minus `drop` (a multiset), through a temp file of
        our own and an atomic rename. Lines torn by a crash go too, as they always did (a record is
        one JSON object: a line that does not end its object was cut short)."""
        keep = []
        for line in self._lines():
            if drop[line] > 0:
                drop[line] -= 1
            elif line.endswith("}"):
                keep.append(line + "\n")
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            # no fsync, like the appends: this file survives a crashed process, not a power cut (and
            # an fsync here costs 5-10 ms on a busy disk, with every other drain of a fleet waiting)
            with os.fdopen(fd, "w") as out:
                out.write("".join(keep))
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
