"""The feature flag: on (provision; the soak clock starts) or off (rollback; the soak ends).
The soak transitions are changes of this step, journalled with it (runbook/soak.py does them).
A rollback journals a marker before its flag goes off, so a provision that began earlier and
reaches its flag-on step later leaves the flag off."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from providers.base import Digest
from runbook.changes import Change, SoakChange
from runbook.context import RunState, StepContext
from runbook.engine import Step, Verdict
from runbook.errors import ConfigError, GateClosed

ROLLBACK_MARK = "rolled_back_at"


@dataclass(frozen=True)
class FlagObserved:
    value: str | Digest | None          # the flag as the app's config holds it
    soak_start: str | None = None       # flag on: why a soak starts (None: the current one stands, or no journal)
    soak_open: bool = False             # flag off: a running (or passed) soak the journal holds, to end


def _matches(current: str | Digest | None, want: str) -> bool:
    return current == Digest.of(want) if isinstance(current, Digest) else current == want


class SetFlag(Step[FlagObserved]):
    """Turn the feature flag on or off."""

    kind = "flag"
    touches_app = True

    @property
    def target(self) -> str:
        raw = self.params.get("value", "on")
        # YAML 1.1 reads a bare on/off as a boolean
        value = {True: "on", False: "off"}.get(raw, str(raw).lower()) if isinstance(raw, bool) else str(raw).lower()
        if value not in ("on", "off"):
            raise ConfigError(f"flag step value must be on or off, not {value!r}")
        return value

    @property
    def name(self) -> str:
        return f"flag {self.target}"

    def _value(self, ctx: StepContext) -> str:
        assert ctx.flag is not None
        return ctx.flag.on_value if self.target == "on" else ctx.flag.off_value

    def observe(self, ctx: StepContext) -> FlagObserved:
        if ctx.flag is None:
            # a role without a flag (`roles:` entry): its soak starts with the provision that makes
            # its URL live; a rollback has no flag of it to turn off and leaves its soak alone
            store = ctx.store
            if store is None or self.target == "off":
                return FlagObserved(None)
            from runbook import soak
            reason = soak.start_reason(store, ctx.env.name, ctx.digest, flag_changed=False)
            return FlagObserved(None, soak_start=None if reason is None else
                                ("its URL is live (no flag)" if reason == "flag on" else reason))
        value = ctx.app.received_flag()
        store = ctx.store
        if store is None:
            return FlagObserved(value)       # `plan` and rollback read no journal; rollback ends the soak there
        from runbook import soak
        if self.target == "off":
            return FlagObserved(value, soak_open=soak.to_end(store, ctx.env.name, "rolled-back"))
        changing = not _matches(value, self._value(ctx))
        return FlagObserved(value, soak_start=soak.start_reason(store, ctx.env.name, ctx.digest, flag_changed=changing))

    def plan(self, ctx: StepContext, observed: FlagObserved) -> list[Change]:
        changes: list[Change] = []
        if ctx.flag is None:
            if observed.soak_start is not None:
                changes.append(SoakChange(f"start the soak clock ({observed.soak_start})", touches_app=False,
                                          reason=observed.soak_start))
            return changes
        want = self._value(ctx)
        current = observed.value
        if not _matches(current, want):
            was = "unset" if current is None else ("(write-only)" if isinstance(current, Digest) else repr(current))
            changes.append(Change(f"set {ctx.flag.name}={want!r} (was {was})", reversible=True))
        if observed.soak_start is not None:
            changes.append(SoakChange(f"start the soak clock ({observed.soak_start})", touches_app=False,
                                      reason=observed.soak_start))
        if observed.soak_open:
            changes.append(SoakChange("end the soak: the flag goes off (a rolled-back soak does not allow promotion)",
                                      touches_app=False, start=False))
        return changes

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        from runbook import soak

        if any(c.touches_app for c in changes):
            self._set(ctx)
        store = ctx.store
        for change in changes:
            if not isinstance(change, SoakChange) or store is None:
                continue
            if change.start:
                soak.start(store, ctx.env.name, ctx.digest, ctx.run_id)
                state.soak_started = True
                ctx.note(f"soak clock started ({change.reason}); `runbook soak --env {ctx.env.name}` "
                         "evaluates its checkpoints")
            elif soak.end(store, ctx.env.name, "rolled-back", f"flag turned off by {ctx.command}"):
                ctx.note("soak ended: the flag is off (a rolled-back soak does not allow promotion)")

    def _set(self, ctx: StepContext) -> None:
        assert ctx.flag is not None
        if self.target == "on":
            self._refuse_after_rollback(ctx)
        ctx.app.set_flag(self._value(ctx))
        if self.target == "on":
            # a rollback that got in between our check and our write wins: put its value back
            try:
                self._refuse_after_rollback(ctx)
            except GateClosed:
                ctx.app.set_flag(ctx.flag.off_value)
                raise

    def _refuse_after_rollback(self, ctx: StepContext) -> None:
        assert ctx.flag is not None
        since = ctx.run_started_at
        if since is None:
            return
        mark = rolled_back_since(ctx, since)
        if mark is not None:
            who = f" by {mark['by']}" if mark.get("by") else ""
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mark["at"]))
            raise GateClosed(f"{ctx.env.name} was rolled back at {when}{who}, after this run started; "
                             f"{ctx.flag.name} stays {ctx.flag.off_value!r}. Run `runbook provision --env "
                             f"{ctx.env.name}` again to turn it back on")

    def verify(self, ctx: StepContext) -> Verdict:
        if ctx.flag is None:
            return Verdict.ok(f"{ctx.role.name} has no flag: the app reads {ctx.url_var} directly")
        current = ctx.app.received_flag()
        want = self._value(ctx)
        if not _matches(current, want):
            return Verdict("fail", f"{ctx.flag.name} is {current!r}, expected {want!r}")
        return Verdict.ok(f"{ctx.flag.name}={want}")


def rolled_back_since(ctx: StepContext, since: float) -> dict[str, Any] | None:
    """The latest rollback marker journalled at or after `since` (store or local journal), if any."""
    found = None
    for event in ctx.journal_history():
        step, kind, data, who = event.get("step"), event.get("kind"), event.get("data"), event
        if kind == "info" and isinstance(data, dict) and "kind" in data:
            who = data       # imported from the local journal: the original record is inside
            step, kind, data = data.get("step"), data.get("kind"), data.get("data")
        # a marker names the role it rolled back (several roles); one without names every role
        if who.get("role") not in (None, ctx.role.name) or event.get("role") not in (None, ctx.role.name):
            continue
        if step == "rollback" and kind == "marker" and isinstance(data, dict):
            at = data.get(ROLLBACK_MARK)
            if isinstance(at, (int, float)) and at >= since:
                by = "@".join(str(who[k]) for k in ("actor", "host") if who.get(k))
                found = {"at": float(at), "by": by}
    return found
