"""The step runner: observe → plan → (intent) apply (result) → verify, for each step in order.

The engine knows steps and the two adapter protocols, never a particular provider. Every side
effect is bracketed by an intent written before it and a result written after it, so a run that
died in between is visible in the journal; the next run re-observes rather than assuming.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from runbook.changes import Change
from runbook.errors import CheckFailed, RunbookError
from runbook.secret import redact

Status = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    status: Status
    detail: str = ""
    fix: str | None = None

    @staticmethod
    def ok(detail: str = "") -> "Verdict":
        return Verdict("pass", detail)


@dataclass
class StepReport:
    step: str
    changes: list[Change] = field(default_factory=list)
    status: str = "pending"        # planned | applied | unchanged | failed | skipped
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status,
            "changes": [c.to_json() for c in self.changes],
            "verify": None if self.verdict is None else {"status": self.verdict.status, "detail": redact(self.verdict.detail)},
            "notes": [redact(n) for n in self.notes],
        }


class Step:
    """Base class. Subclasses set `kind` and override what they need."""

    kind = "step"
    mutates = True
    # True for steps that change the app's config: their intents mark a restart as owed until a
    # restart result follows in the journal (a run that dies in between leaves the debt visible)
    touches_app = False

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = dict(params or {})

    @property
    def name(self) -> str:
        return self.kind

    def observe(self, ctx: Any) -> Any:
        return None

    def plan(self, ctx: Any, observed: Any) -> list[Change]:
        return []

    def apply(self, ctx: Any, changes: list[Change]) -> None:
        return None

    def verify(self, ctx: Any) -> Verdict:
        return Verdict.ok()

    def compensate(self, ctx: Any) -> list[Change]:
        return []


Journal = Callable[[str, str, str, Any], None]


# Test-only fault injection for the crash matrix: die by SIGKILL after a side effect, before its
# result is journalled. Not a feature: RUNBOOK_FAULT_KILL_AFTER alone does nothing (a stray export
# must never kill a production run halfway); it needs RUNBOOK_FAULT_TOKEN set to a digest of the
# step name that only a test computes on purpose, through fault_environ().
_FAULT_SALT = b"pg-runbook test-only fault injection; never set this in production: "


def _fault_token(step: str) -> str:
    import hashlib

    return hashlib.sha256(_FAULT_SALT + step.encode()).hexdigest()


def fault_environ(step: str) -> dict[str, str]:
    """The environment that arms the kill after `step` (tests only)."""
    return {"RUNBOOK_FAULT_KILL_AFTER": step, "RUNBOOK_FAULT_TOKEN": _fault_token(step)}


def _fault_kill(step: str) -> None:
    target = os.environ.get("RUNBOOK_FAULT_KILL_AFTER")
    if not target or target != step:
        return
    import hmac

    if hmac.compare_digest(os.environ.get("RUNBOOK_FAULT_TOKEN", ""), _fault_token(step)):
        os.kill(os.getpid(), signal.SIGKILL)


def run(steps: list[Step], ctx: Any, *, plan_only: bool, journal: Journal,
        on_step: Callable[[StepReport], None] | None = None) -> list[StepReport]:
    """Run the steps in order. Raises the first failure after journalling it."""
    reports: list[StepReport] = []
    for step in steps:
        report = StepReport(step.name)
        reports.append(report)
        try:
            observed = step.observe(ctx)
            changes = step.plan(ctx, observed)
            report.changes = list(changes)
            report.notes.extend(getattr(ctx, "take_notes", lambda: [])())
            if plan_only:
                report.status = "planned" if changes else "unchanged"
                if on_step:
                    on_step(report)
                continue
            if changes:
                intent: dict[str, Any] = {"changes": [c.to_json() for c in changes]}
                if step.touches_app:
                    intent["app"] = True
                journal(step.name, "intent", "; ".join(c.summary for c in changes), intent)
                started = time.monotonic()
                step.apply(ctx, changes)
                _fault_kill(step.name)
                extra = {k: v for c in changes for k, v in c.data.items()}
                journal(step.name, "result", f"applied {len(changes)} change(s)",
                        {"seconds": round(time.monotonic() - started, 3), **extra})
                report.status = "applied"
            else:
                report.status = "unchanged"
            report.notes.extend(getattr(ctx, "take_notes", lambda: [])())
            verdict = step.verify(ctx)
            report.verdict = verdict
            report.notes.extend(getattr(ctx, "take_notes", lambda: [])())
            if verdict.status == "fail":
                raise CheckFailed(f"{step.name}: {verdict.detail}", hint=verdict.fix)
            if on_step:
                on_step(report)
        except RunbookError as exc:
            report.status = "failed"
            journal(step.name, "error", exc.message, {"type": type(exc).__name__})
            if on_step:
                on_step(report)
            raise
        except Exception as exc:
            report.status = "failed"
            journal(step.name, "error", f"{type(exc).__name__}: {redact(str(exc))[:500]}", {"type": type(exc).__name__})
            if on_step:
                on_step(report)
            raise
    return reports
