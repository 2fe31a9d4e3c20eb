"""An app-like client for the zero-downtime tests: it reads its URL from the dotenv file when it
starts and when it is restarted, opens a new connection with it every 50 ms, and holds one
long-lived session. The restart command (RESTART below) asks it to restart and waits until it
has: the client first serves one more request with the URL it has (the old worker finishing its
work), then re-reads the file, opens its new long session and only then closes the old one, the
way a graceful restart hands over."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.projects import dotenv

VAR = "RAPTOR_APP_DATABASE_URL"
# run by the dotenv platform in the project's folder; bounded by its restart_timeout
RESTART = ("touch .runbook/reload && while [ ! -e .runbook/reloaded ]; do sleep 0.02; done && rm .runbook/reloaded")


@dataclass
class Attempt:
    generation: int          # how many restarts the client had been through
    user: str
    error: str | None


@dataclass
class AppClient:
    dir: Path
    interval: float = 0.05
    attempts: list[Attempt] = field(default_factory=list)
    long_errors: list[str] = field(default_factory=list)
    long_users: list[str] = field(default_factory=list)       # the long session's user, one per generation
    generation: int = 0

    def __post_init__(self) -> None:
        self.url = dotenv(self.dir)[VAR]
        self.long = self._open(self.url)
        self.long_users.append(self.long.execute("SELECT current_user").fetchone()[0])
        self._stop = threading.Event()
        self._served = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "AppClient":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # one request on the current URL before stopping: what the app does after its last restart
        # counts too (waits for an event, bounded only so that a broken client cannot hang the suite)
        seen = len(self.attempts)
        self._served.clear()
        while len(self.attempts) <= seen and self._thread.is_alive():
            self._served.wait(30)
            self._served.clear()
        self._stop.set()
        self._thread.join()
        self.long.close()

    @property
    def failures(self) -> list[Attempt]:
        return [a for a in self.attempts if a.error is not None]

    @staticmethod
    def _open(url: str) -> psycopg.Connection:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, prepare_threshold=None)

    def _attempt(self) -> None:
        user = psycopg.conninfo.conninfo_to_dict(self.url).get("user", "")
        try:
            with self._open(self.url) as conn:
                conn.execute("SELECT 1")
            self.attempts.append(Attempt(self.generation, str(user), None))
            self._served.set()
        except psycopg.Error as exc:
            self.attempts.append(Attempt(self.generation, str(user), str(exc).strip().splitlines()[0]))
        self._served.set()

    def _touch_long(self) -> None:
        try:
            self.long.execute("SELECT 1")
        except psycopg.Error as exc:
            self.long_errors.append(str(exc).strip().splitlines()[0])

    def _run(self) -> None:
        request, done = self.dir / ".runbook" / "reload", self.dir / ".runbook" / "reloaded"
        while not self._stop.is_set():
            self._attempt()
            self._touch_long()
            if request.exists():
                self._attempt()          # the old worker's last request, after the restart was asked for
                request.unlink()
                self.url = dotenv(self.dir)[VAR]
                self.generation += 1
                try:
                    fresh = self._open(self.url)
                    self.long_users.append(fresh.execute("SELECT current_user").fetchone()[0])
                except psycopg.Error as exc:
                    self.long_errors.append(str(exc).strip().splitlines()[0])
                else:
                    self._touch_long()   # the old long session still works at the moment of handover
                    old, self.long = self.long, fresh
                    old.close()
                done.touch()
            self._stop.wait(self.interval)
