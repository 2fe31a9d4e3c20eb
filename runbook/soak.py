"""The soak: a clock started when the flag went on, checkpoints evaluated once each when due.

Safe from cron: each run evaluates only the checkpoints that are due and not yet recorded
(the store's UNIQUE(soak_id, offset) makes a concurrent second evaluation a no-op), marks a
checkpoint late when it is evaluated well after it fell due, and reports time remaining.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from runbook.checks import CheckResult, checkpoint_checks
from runbook.durations import format_duration
from runbook.readonly import cannot_write
from runbook.secret import redact

# a checkpoint evaluated more than this after it fell due is recorded as late
LATE_AFTER = 0.1          # of the interval to the previous checkpoint
LATE_MIN_SECONDS = 2.0


@dataclass
class CheckpointView:
    offset: float
    status: str                    # pass | fail | inconclusive | pending
    late: bool = False
    at: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    new: bool = False
    unrecorded: str | None = None      # evaluated now, but the journal refused the write (why)

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": format_duration(self.offset), "status": self.status, "late": self.late,
                "evaluated_at": self.at, "checks": self.results, "recorded_now": self.new,
                "not_recorded": self.unrecorded}


@dataclass
class SoakView:
    env: str
    state: str                     # none | running | passed | failed | rolled-back | superseded | stale
    started_at: float | None = None
    digest: str | None = None
    digest_matches: bool = True
    remaining: float | None = None
    checkpoints: list[CheckpointView] = field(default_factory=list)
    soak_id: int | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "state": self.state, "started_at": self.started_at, "digest": self.digest,
                "digest_matches": self.digest_matches,
                "remaining": None if self.remaining is None else format_duration(self.remaining),
                "checkpoints": [c.to_json() for c in self.checkpoints], "message": self.message}


def _late(offset: float, previous: float, now: float, started: float) -> bool:
    due_at = started + offset
    grace = max(LATE_MIN_SECONDS, (offset - previous) * LATE_AFTER)
    return now - due_at > grace


def _aggregate(results: list[CheckResult]) -> str:
    if any(r.status == "fail" for r in results):
        return "fail"
    if any(r.status == "inconclusive" for r in results) or not results:
        return "inconclusive"
    return "pass"


def view(store, env: str, spec, digest: str, *, now: float | None = None) -> SoakView:
    """The soak as recorded: no checks run."""
    now = now or time.time()
    soak = store.open_soak(env) or store.latest_soak(env)
    if soak is None:
        return SoakView(env, "none", message=f"no soak recorded; `runbook provision --env {env}` starts one")
    offsets = [c.total_seconds() for c in spec.checkpoints]
    recorded = {round(c["offset_s"], 3): c for c in store.checkpoints(soak["id"])}
    points: list[CheckpointView] = []
    for off in offsets:
        rec = recorded.get(round(off, 3))
        if rec:
            details = rec.get("details") or {}
            points.append(CheckpointView(off, rec["status"], rec["late"], rec["at"], details.get("checks", [])))
        else:
            points.append(CheckpointView(off, "pending"))
    started = soak["started_at"]
    remaining = max(0.0, started + spec.duration.total_seconds() - now)
    state = soak["status"]
    if state == "running":
        if any(p.status == "fail" for p in points):
            state = "failed"
        elif all(p.status == "pass" for p in points):
            state = "passed"
        elif all(p.status != "pending" for p in points):
            state = "inconclusive"       # no data is never a pass: this soak cannot pass any more
    return SoakView(env, state, started, soak["digest"], soak["digest"] == digest, remaining, points, soak["id"])


def evaluate(ctx, store, *, now: float | None = None) -> SoakView:
    """Evaluate the checkpoints that are due and not yet recorded; record each once."""
    spec = ctx.project.spec.soak
    now = now or time.time()
    current = view(store, ctx.env.name, spec, ctx.digest, now=now)
    if current.state != "running" and current.state not in ("passed", "failed", "inconclusive"):
        return current
    soak = store.open_soak(ctx.env.name)
    if soak is None:
        return current
    if soak["digest"] != ctx.digest:
        current.digest_matches = False
        current.message = ("the role spec changed since this soak started; it cannot pass for the new spec — "
                           f"run `runbook provision --env {ctx.env.name}` to start a new soak")
        return current
    started = soak["started_at"]
    previous = 0.0
    for point in current.checkpoints:
        due = started + point.offset <= now
        if point.status == "pending" and due:
            results = checkpoint_checks(ctx, spec)
            status = _aggregate(results)
            late = _late(point.offset, previous, now, started)
            payload = {"checks": [r.to_json() for r in results]}
            try:
                recorded = store.record_checkpoint(soak["id"], point.offset, now, late, status, payload)
            except Exception as exc:
                if not cannot_write(exc):
                    raise
                # a read-only DSN: show what was found, say it was not kept, change nothing
                point.status, point.late, point.at, point.results = status, late, now, payload["checks"]
                point.unrecorded = redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                return current
            if recorded:
                point.status, point.late, point.at, point.results, point.new = status, late, now, payload["checks"], True
                store.event(ctx.run_id, ctx.env.name, "soak", "result",
                            f"checkpoint {format_duration(point.offset)}: {status}{' (late)' if late else ''}", payload)
            else:
                # another cron run recorded it between our read and our write; show theirs
                return view(store, ctx.env.name, spec, ctx.digest, now=now)
            if status == "fail":
                break          # the soak has failed; later checkpoints are moot
        previous = point.offset
    final = view(store, ctx.env.name, spec, ctx.digest, now=now)
    for old, new in zip(current.checkpoints, final.checkpoints):
        new.new = old.new
    if final.state == "passed":
        store.end_soak(ctx.env.name, "passed", "every checkpoint passed", now)
        final.state = "passed"
    elif final.state == "failed":
        store.end_soak(ctx.env.name, "failed", "a checkpoint failed", now)
    elif final.state == "inconclusive":
        store.end_soak(ctx.env.name, "inconclusive", "a checkpoint had no data or its check errored", now)
    return final


def outcome(view: SoakView, location: str, *, now: float | None = None) -> tuple[str, list[str]]:
    """What a soak run reports for `view` (as evaluate() left it): the result's status, whose
    typed error gives the exit code (0 passed, 3 pending, 4 failed or inconclusive, 6 not
    recorded), and what to tell the operator."""
    env = view.env
    unrecorded = [p for p in view.checkpoints if p.unrecorded]
    if unrecorded:
        # evaluated, shown, and not kept: the next run that can write evaluates it again
        point = unrecorded[0]
        return "not-recorded", [
            f"checkpoint {format_duration(point.offset)} was due and evaluated ({point.status}) but could not be "
            f"recorded at {location}: {point.unrecorded}; it is not kept — run `runbook soak --env {env}` with a "
            "DSN (or --state) that can write the journal"]
    if view.state in ("none", "superseded", "rolled-back", "retired", "ended") or not view.digest_matches:
        if view.state in ("rolled-back", "retired", "ended"):
            return "waiting", [f"the last soak of {env} {view.state}; provision again to start a new one"]
        return "waiting", []
    if view.state == "inconclusive":
        return "check-failed", [
            "the soak is inconclusive (a checkpoint had no data); it cannot pass. Fix the check, then "
            f"`runbook provision --env {env}` after a rollback, or re-provision with a changed spec, to soak again"]
    if view.state == "failed":
        return "check-failed", [f"the soak failed; roll back with: runbook rollback --env {env} --yes"]
    if view.state == "passed":
        return "ok", ["the soak passed; promote with: runbook promote --env <prod> --sign-off NAME"]
    nxt = next((p for p in view.checkpoints if p.status == "pending"), None)
    if nxt is not None and view.started_at:
        due_in = view.started_at + nxt.offset - (now or time.time())
        return "waiting", [f"next checkpoint {format_duration(nxt.offset)} due in {format_duration(max(0, due_in))}"]
    return "waiting", []


def end_by_rollback(store, env: str, *, now: float | None = None) -> bool:
    """A rollback ends the running soak and voids a passed one: a rolled-back environment is
    no ground for promotion. True if a soak changed."""
    return store.end_soak(env, "rolled-back", "flag turned off by rollback", now or time.time(), include_passed=True)


def passed_soak(store, env: str, digest: str, valid_for: timedelta, *, now: float | None = None) -> tuple[dict | None, str]:
    """The most recent passed soak of this spec digest within valid_for, or why there is none."""
    now = now or time.time()
    latest = store.latest_soak(env)
    if latest is None:
        return None, f"{env} has no soak on record"
    if latest["digest"] != digest:
        return None, (f"{env}'s latest soak was of a different role spec (digest {latest['digest']}, now {digest}); "
                      f"provision {env} and soak again")
    if latest["status"] != "passed":
        if latest["status"] == "running":
            left = ""
            return None, f"{env}'s soak is still running{left}; `runbook soak --env {env}` shows what is due"
        return None, f"{env}'s latest soak {latest['status']}" + (f": {latest['end_reason']}" if latest.get("end_reason") else "")
    age = now - (latest.get("ended_at") or latest["started_at"])
    if age > valid_for.total_seconds():
        return None, (f"{env}'s passed soak is {format_duration(age)} old, older than soak.valid_for "
                      f"({format_duration(valid_for)}); soak again")
    return latest, "ok"


# --- soak transitions the playbook's steps make (the flag step, end_soak), as journalled changes ---

def start_reason(store, env: str, digest: str, *, flag_changed: bool) -> str | None:
    """Why a soak of `digest` starts now that the flag is on, or None when the current one stands:
    a running soak of the same spec, or (the flag untouched by this run) a passed one."""
    soak = store.open_soak(env)
    if soak is not None and soak["digest"] == digest:
        return None
    latest = store.latest_soak(env)
    if soak is None and latest and latest["digest"] == digest and latest["status"] == "passed" and not flag_changed:
        return None     # a re-run of an environment whose soak already passed keeps that soak
    previous = soak or latest
    return "the role spec changed" if previous and previous["digest"] != digest else "flag on"


def start(store, env: str, digest: str, run_id: int | None, *, now: float | None = None) -> int:
    """Start the soak clock of `digest` (a running soak of another spec is superseded)."""
    return store.start_soak(env, digest, run_id, time.time() if now is None else now)


def end(store, env: str, status: str, reason: str, *, now: float | None = None) -> bool:
    """End the running soak; a rolled-back end voids a passed one too (it must not allow promotion)."""
    return store.end_soak(env, status, reason, time.time() if now is None else now,
                          include_passed=status == "rolled-back")


def to_end(store, env: str, status: str) -> bool:
    """Whether `end(store, env, status, …)` would end a soak now."""
    soak = store.open_soak(env)
    if soak is None and status == "rolled-back":
        latest = store.latest_soak(env)
        return bool(latest and latest.get("status") == "passed")
    return soak is not None
