"""Typed errors. The CLI catches RunbookError once and turns it into one line and an exit code.

Each class's `exit_code` is the only place an exit code is defined: a verb that stops raises
one; a verb that returns (a check failed, a soak is pending) leaves a status whose code is its
error class's (runbook.run.Result.exit_code). 0 is success."""

from __future__ import annotations


class RunbookError(Exception):
    """Something failed; the run stopped. Exit 1."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(RunbookError):
    """Bad file, bad input or a refused precondition; nothing was changed. Exit 2."""

    exit_code = 2


class Refused(ConfigError):
    """A precondition (plan tier, admin powers, pooler mode) rules the change out. Exit 2."""


class GateClosed(RunbookError):
    """Waiting: soak pending, checkpoint not due, promotion not allowed yet. Exit 3."""

    exit_code = 3


class DrainTimeout(GateClosed):
    """Waiting: an alternating rotation is half-way; the app's sessions on the old login did not
    end within the drain timeout, so the old login keeps its password. Rerun to finish. Exit 3."""


class CheckFailed(RunbookError):
    """A check ran and failed. Exit 4."""

    exit_code = 4


class Locked(RunbookError):
    """Another run holds this environment's lock. Exit 5."""

    exit_code = 5


class NotRecorded(RunbookError):
    """A soak checkpoint was due and evaluated but the journal refused the write (a read-only DSN)."""

    exit_code = 6


class NotYetLive(RunbookError):
    """Done, not yet live: every change is made and stored (e.g. the flag is off), but the
    platform is still rolling it out (an ECS deployment) when the wait ran out. Exit 7."""

    exit_code = 7


class ProviderError(RunbookError):
    """A provider API answered with an error, or never answered within the retry budget."""

