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
from typing import Any, ClassVar, Generic, Literal, TypeVar

from runbook.changes import Change
from runbook.context import Context, RunState, StepContext
from runbook.errors import CheckFailed, RunbookError
from runbook.secret import redact

Status = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    status: Status
    detail: str = ""
    fix: str | None = None
    # what verify read, for the caller (drift --fix reports from the grants step's snapshot)
    evidence: Any = field(default=None, compare=False, repr=False)

    @staticmethod
    def ok(detail: str = "") -> "Verdict":
        return Verdict("pass", detail)

    def with_evidence(self, evidence: Any) -> "Verdict":
        return Verdict(self.status, self.detail, self.fix, evidence)


@dataclass
class StepReport:
    step: str
    changes: list[Change] = field(default_factory=list)
    status: str = "pending"        # planned | applied | unchanged | failed | skipped
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)
    role: str | None = None        # the managed role the step ran for (runbook.run.Run.for_each_role sets it)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "role": self.role,
            "status": self.status,
            "changes": [c.to_json() for c in self.changes],
            "verify": None if self.verdict is None else {"status": self.verdict.status, "detail": redact(self.verdict.detail)},
            "notes": [redact(n) for n in self.notes],
        }


Observed = TypeVar("Observed")


class Step(Generic[Observed]):
    """One step of a playbook. `observe` reads (the database, the app's config, the journal) and
    returns a small frozen fact; `plan` turns the facts into Changes and has no side effects (it
    may note things for the report); `apply` makes exactly those changes and records in `state`
    what later steps need; `verify` reads again and judges. Subclasses set `kind`."""

    kind: ClassVar[str] = "step"
    mutates: ClassVar[bool] = True
    # True for steps that change the app's config: their intents mark a restart as owed until a
    # restart result follows in the journal (a run that dies in between leaves the debt visible)
    touches_app: ClassVar[bool] = False

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params: dict[str, Any] = dict(params or {})

    @property
    def name(self) -> str:
        return self.kind

    def observe(self, ctx: StepContext) -> Observed:
        raise NotImplementedError(f"{type(self).__name__}.observe")

    def plan(self, ctx: StepContext, observed: Observed) -> list[Change]:
        return []

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        return None

    def verify(self, ctx: StepContext) -> Verdict:
        return Verdict.ok()

    def verify_unchanged(self, ctx: StepContext, observed: Observed) -> Verdict:
        """`verify` after a plan with no changes. Nothing was applied since `observe` read
        `observed`, so a step whose verify would only read the same facts again may judge these."""
        return self.verify(ctx)

    def compensate(self, ctx: StepContext) -> list[Change]:
        return []


class Check(Step[None]):
    """A step that only observes in verify (nothing to observe before its plan)."""

    def observe(self, ctx: StepContext) -> None:
        return None


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


def run(steps: list[Step[Any]], session: Context, *, plan_only: bool, journal: Journal,
        on_step: Callable[[StepReport], None] | None = None, state: RunState | None = None) -> list[StepReport]:
    """Run the steps in order. Raises the first failure after journalling it. `plan_only` is the
    one place a preview is decided; `state` (a fresh one by default) is where the caller reads
    what the run produced (the soak started, the grants step's last snapshot)."""
    state = RunState() if state is None else state
    session.forget_url()                                  # a preview's observations are not the run's
    session.credential_memo = None
    ctx = StepContext(session, state, plan_only)
    reports: list[StepReport] = []
    for step in steps:
        report = StepReport(step.name)
        reports.append(report)
        try:
            observed = step.observe(ctx)
            changes = step.plan(ctx, observed)
            report.changes = list(changes)
            report.notes.extend(session.take_notes())
            if plan_only:
                report.status = "planned" if changes else "unchanged"
                if changes:
                    _changed(state, step, changes)      # what the run would have done, for the steps after
                if on_step:
                    on_step(report)
                continue
            if changes:
                intent: dict[str, Any] = {"changes": [c.to_json() for c in changes]}
                if _touches_app(step, changes):
                    intent["app"] = True
                journal(step.name, "intent", "; ".join(c.summary for c in changes), intent)
                started = time.monotonic()
                step.apply(ctx, changes, state)
                # what the app's URL does is observed again after any change (a restart or a
                # command step can change what the app receives); unchanged, the run's one read stands
                ctx.forget_url()
                _changed(state, step, changes)
                _fault_kill(step.name)
                extra = {k: v for c in changes for k, v in c.data.items()}
                journal(step.name, "result", f"applied {len(changes)} change(s)",
                        {"seconds": round(time.monotonic() - started, 3), **extra})
                report.status = "applied"
            else:
                report.status = "unchanged"
            report.notes.extend(session.take_notes())
            verdict = step.verify(ctx) if report.status == "applied" else step.verify_unchanged(ctx, observed)
            if verdict.evidence is not None:
                state.verified[step.name] = verdict.evidence
            report.verdict = verdict
            report.notes.extend(session.take_notes())
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


def _touches_app(step: Step[Any], changes: list[Change]) -> bool:
    return step.touches_app and any(c.touches_app for c in changes)


def _changed(state: RunState, step: Step[Any], changes: list[Change]) -> None:
    state.changed.append(step.name)
    if _touches_app(step, changes):
        state.app_changed = True
