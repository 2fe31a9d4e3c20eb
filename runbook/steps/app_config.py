"""The app side: the role's URL in the app's config, the feature flag, and the restart."""

from __future__ import annotations

import time

from providers.base import Digest
from runbook.changes import Change
from runbook.context import UrlState
from runbook.engine import Step, Verdict
from runbook.errors import ConfigError, GateClosed
from runbook.login import login_route, try_login
from runbook.secret import Secret, mask_url


def _written_digest(ctx) -> str | None:
    """The digest of the URL pg-runbook last wrote (for write-only stores such as Supabase secrets)."""
    if ctx.store is None:
        return None
    for event in reversed(ctx.store.events(ctx.env.name, limit=500)):
        digest = (event.get("data") or {}).get("url_digest")
        if event.get("step") == "url" and digest:
            return digest
    return None


def expected_endpoint(ctx):
    """The role's credential as the tool would write it (no password): the only place a login
    with the app's URL may go. Where the platform issues credentials itself (Heroku), the one it
    gave this run, if any; otherwise None (the platform's attachment writes the URL; the other
    rules of login.py still hold)."""
    if ctx.api_credentials:
        # with the platform's connection pooling its attachment names the pooler, not the credential's host
        return None if ctx.app.url_is_pooled or ctx.credential is None else ctx.credential.as_app()
    return ctx.db.credential_for(ctx.role.name, None)


def url_state(ctx, *, refresh: bool = False) -> UrlState:
    if ctx.url_state is not None and not refresh:
        return ctx.url_state
    value = ctx.app.received_url()
    if value is None or value == "":
        state = UrlState(None, False, f"{ctx.url_var} is not set")
    elif isinstance(value, Digest):
        written = _written_digest(ctx)
        if written and written == value.sha256:
            state = UrlState(value, None, "write-only store; its digest matches the URL pg-runbook wrote")
        else:
            state = UrlState(value, False, f"{ctx.url_var} holds a value pg-runbook did not write (digest differs)")
    elif problem := ctx.app.url_problem(value):
        # the platform knows why its app could not use this URL even if the login works (Cloud Run: no socket mount)
        state = UrlState(value, False, problem)
    elif not ctx.info.password_auth and login_route(ctx.db) is None:
        state = UrlState(value, None, "IAM authentication: a login needs a token, so it is not tried")
    else:
        ok, why = try_login(Secret(value), ctx.role.name, expected_endpoint(ctx), route=login_route(ctx.db))
        state = UrlState(value, ok, "" if ok else f"{ctx.url_var} does not log in: {why}")
    ctx.url_state = state
    return state


def url_in_hand(ctx, state: UrlState) -> Secret | None:
    """The URL this run wrote, when the app's write-only store holds exactly it: the one thing a
    write-only store's URL can be logged in with (Edge Function secrets return only digests)."""
    cred = ctx.pending_credential
    if cred is None or not isinstance(state.value, Digest) or Digest.of(cred.url()) != state.value:
        return None
    return cred.url()


WRITE_ONLY_PROOF = ("{var} is in a write-only store, so pg-runbook cannot log in with what the app gets; "
                    "`runbook rotate --env {env}` writes a new URL and logs in with it before counting it done")


def shown(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Digest):
        return f"sha256:{value.sha256[:12]}…"
    return mask_url(value)


class WriteUrl(Step):
    """Put a working URL for the role in the app's config (or attach it where the platform can)."""

    kind = "url"
    touches_app = True

    def observe(self, ctx):
        return url_state(ctx)

    def plan(self, ctx, state: UrlState):
        fresh = ctx.new_password is not None or ctx.credential_created
        if not fresh and state.logs_in is not False:
            return []
        ctx.app_change_planned = True
        why = state.reason if state.logs_in is False else "new credential"
        if ctx.plan_only:
            if ctx.api_credentials:
                return [Change(f"attach credential {ctx.role.name} to the app as {ctx.url_var} "
                               f"(the platform keeps it current; {why})")]
            return [Change(f"set {ctx.url_var} = postgres://{ctx.role.name}:****@… ({why})")]
        if ctx.api_credentials:
            cred = ctx.credential or ctx.db.credential(ctx.role.name)
            if cred is None:
                raise ConfigError(f"credential {ctx.role.name} does not exist; the role step must run before url")
        elif ctx.new_password is not None or not ctx.info.password_auth:
            cred = ctx.db.credential_for(ctx.role.name, ctx.new_password)
        else:
            raise ConfigError(f"{ctx.url_var} does not log in and no new password was set in this run; "
                              "the role step must run before url")
        ctx.pending_credential = cred
        verb = "attach" if ctx.api_credentials else "set"
        return [Change(f"{verb} {ctx.url_var} = {cred.masked_url()} ({why})",
                       data={"url_digest": Digest.of(cred.url()).sha256})]

    def apply(self, ctx, changes):
        cred = ctx.pending_credential
        ctx.app.put_url(cred)
        ctx.app_changed = True
        ctx.url_state = None

    def verify(self, ctx):
        state = url_state(ctx, refresh=True)
        if state.logs_in is False:
            return Verdict("fail", state.reason, fix=f"runbook provision --env {ctx.env.name}")
        written = url_in_hand(ctx, state)
        if written is not None:
            # write-only: the store cannot be read back, so log in with the URL still in memory
            # (the same address and pooler form the app gets) before counting the step done
            ok, why = try_login(written, ctx.role.name, expected_endpoint(ctx), route=login_route(ctx.db))
            if not ok:
                return Verdict("fail", f"the URL just written to {ctx.url_var} does not log in: {why}",
                               fix=f"fix the login (pooler, pg_hba, password), then runbook provision --env {ctx.env.name}")
            return Verdict.ok(f"{ctx.url_var} logs in as {ctx.role.name} (checked with the URL written, "
                              "before the write-only store took it)")
        return Verdict.ok(state.reason or f"{ctx.url_var} logs in as {ctx.role.name}")


class SetFlag(Step):
    """Turn the feature flag on (provision: the soak clock starts) or off (rollback)."""

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

    def _value(self, ctx) -> str:
        return ctx.flag.on_value if self.target == "on" else ctx.flag.off_value

    def observe(self, ctx):
        return ctx.app.received_flag()

    def plan(self, ctx, current):
        want = self._value(ctx)
        if isinstance(current, Digest):
            current_matches = current == Digest.of(want)
        else:
            current_matches = current == want
        if current_matches:
            return []
        ctx.app_change_planned = True
        was = "unset" if current is None else ("(write-only)" if isinstance(current, Digest) else repr(current))
        return [Change(f"set {ctx.flag.name}={want!r} (was {was})", reversible=True)]

    def apply(self, ctx, changes):
        if self.target == "on":
            self._refuse_after_rollback(ctx)
        ctx.app.set_flag(self._value(ctx))
        ctx.app_changed = True
        self.changed = True
        if self.target == "on":
            # a rollback that got in between our check and our write wins: put its value back
            try:
                self._refuse_after_rollback(ctx)
            except GateClosed:
                ctx.app.set_flag(ctx.flag.off_value)
                raise

    def _refuse_after_rollback(self, ctx) -> None:
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

    def verify(self, ctx):
        current = ctx.app.received_flag()
        want = self._value(ctx)
        ok = current == Digest.of(want) if isinstance(current, Digest) else current == want
        if not ok:
            return Verdict("fail", f"{ctx.flag.name} is {current!r}, expected {want!r}")
        self._soak_clock(ctx)
        return Verdict.ok(f"{ctx.flag.name}={want}")

    def _soak_clock(self, ctx) -> None:
        store = ctx.store
        if store is None or ctx.plan_only:
            return
        now = time.time()
        if self.target == "off":
            if store.end_soak(ctx.env.name, "rolled-back", f"flag turned off by {ctx.command}", now, include_passed=True):
                ctx.note("soak ended: the flag is off (a rolled-back soak does not allow promotion)")
            return
        soak = store.open_soak(ctx.env.name)
        if soak is not None and soak["digest"] == ctx.digest:
            return
        latest = store.latest_soak(ctx.env.name)
        if (soak is None and latest and latest["digest"] == ctx.digest and latest["status"] == "passed"
                and not getattr(self, "changed", False)):
            return     # a re-run of an environment whose soak already passed keeps that soak
        store.start_soak(ctx.env.name, ctx.digest, ctx.run_id, now)
        ctx.soak_started = True
        why = "the role spec changed" if (soak or latest) and (soak or latest)["digest"] != ctx.digest else "flag on"
        ctx.note(f"soak clock started ({why}); `runbook soak --env {ctx.env.name}` evaluates its checkpoints")


ROLLBACK_MARK = "rolled_back_at"


def rolled_back_since(ctx, since: float) -> dict | None:
    """The latest rollback marker journalled at or after `since` (store or local journal), if any."""
    found = None
    for event in ctx.journal_history():
        step, kind, data, who = event.get("step"), event.get("kind"), event.get("data"), event
        if kind == "info" and isinstance(data, dict) and "kind" in data:
            who = data       # imported from the local journal: the original record is inside
            step, kind, data = data.get("step"), data.get("kind"), data.get("data")
        if step == "rollback" and kind == "marker" and isinstance(data, dict):
            at = data.get(ROLLBACK_MARK)
            if isinstance(at, (int, float)) and at >= since:
                by = "@".join(str(who[k]) for k in ("actor", "host") if who.get(k))
                found = {"at": float(at), "by": by}
    return found


def owed_restart(ctx) -> dict | None:
    """The journal event of an app-config change that no restart has followed yet, if any.

    A run that changed the config and died (or failed) before restarting leaves its intent in the
    journal; the next run must pay that restart even though it finds nothing left to change.
    """
    owed = None
    for event in ctx.journal_history():
        step, kind, data = event.get("step"), event.get("kind"), event.get("data")
        if kind == "info" and isinstance(data, dict) and "kind" in data:
            # a record imported from the local journal keeps its own step/kind/data inside
            step, kind, data = data.get("step"), data.get("kind"), data.get("data")
        if step == "restart" and kind == "result":
            owed = None
        elif kind == "intent" and isinstance(data, dict) and data.get("app"):
            owed = event
    return owed


class Restart(Step):
    """Restart the app when its config changed and the platform did not restart it already:
    in this run, or in an earlier run that died or failed before its restart."""

    kind = "restart"

    def observe(self, ctx):
        if ctx.app_changed or (ctx.plan_only and ctx.app_change_planned) or self.params.get("always"):
            return "now"
        if ctx.plan_only and ctx.store is None:
            return None
        return owed_restart(ctx)

    def plan(self, ctx, needed):
        if not needed:
            return []
        owed = needed != "now"
        if ctx.app.config_change_restarts and not self.params.get("always"):
            if not owed:      # an owed one was paid by the platform when the config changed
                ctx.note(f"{ctx.app.key} restarts the app itself when its config changes; no second restart")
            return []
        if not ctx.app.can_restart:
            if not owed:      # said when the change was made; not again on every later run
                ctx.note("no restart command configured (app.restart); restart the app yourself to pick up the change")
            return []
        if owed:
            run = needed.get("run_id")
            by = f"run #{run}" if run else "an earlier run"
            return [Change(f"restart the app ({ctx.app.key}): {by} changed its config ({needed.get('step')}) "
                           "and did not restart it", reversible=False)]
        return [Change(f"restart the app ({ctx.app.key})", reversible=False)]

    def apply(self, ctx, changes):
        ctx.app.restart()


class UnsetUrl(Step):
    """Remove the role's URL from the app's config (detach it where it was attached)."""

    kind = "unset_url"
    touches_app = True

    def observe(self, ctx):
        current = ctx.app.received_url()
        if current is None:
            # a store the app no longer reads can still hold the URL (an ECS secret outlives the
            # task definition's reference when a retire stopped between the two)
            current = ctx.app.stored_url()
        return current

    def plan(self, ctx, current):
        if current is None:
            return []
        ctx.app_change_planned = True
        return [Change(f"remove {ctx.url_var} ({shown(current)}) from the app's config", reversible=False)]

    def apply(self, ctx, changes):
        ctx.app.remove_url(ctx.role.name)
        ctx.app_changed = True

    def verify(self, ctx):
        return Verdict.ok() if self.observe(ctx) is None else Verdict("fail", f"{ctx.url_var} is still set")
