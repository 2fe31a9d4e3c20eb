"""The role's URL in the app's config: written (or attached where the platform keeps it) by
provision and rotate, removed by retire."""

from __future__ import annotations

from dataclasses import dataclass

from providers.base import Credential, Digest
from runbook.app_url import UrlState, shown, url_in_hand
from runbook.changes import Change, CredentialChange
from runbook.context import RunState, StepContext
from runbook.engine import Step, Verdict
from runbook.errors import ConfigError
from runbook.login import login_route, try_login


@dataclass(frozen=True)
class UrlObserved:
    url: UrlState
    fresh: bool                        # an earlier step of this run made a new password or credential
    credential: Credential | None      # what would be written: None in a preview, or nothing to write
    missing: str | None = None         # why there is nothing to write although the URL must change


class WriteUrl(Step[UrlObserved]):
    """Put a working URL for the role in the app's config (or attach it where the platform can)."""

    kind = "url"
    touches_app = True

    def observe(self, ctx: StepContext) -> UrlObserved:
        url = ctx.url_state()
        fresh = ctx.state.new_password is not None or ctx.state.credential is not None
        if ctx.plan_only or (not fresh and url.logs_in is not False):
            return UrlObserved(url, fresh, None)
        if ctx.api_credentials:
            cred = ctx.platform_credential()
            if cred is None:
                return UrlObserved(url, fresh, None, f"credential {ctx.role.name} does not exist; "
                                                     "the role step must run before url")
            return UrlObserved(url, fresh, cred)
        if ctx.state.new_password is not None or not ctx.info.password_auth:
            login = ctx.state.login or ctx.role.name       # alternating: the login the role step gave a password
            return UrlObserved(url, fresh, ctx.db.credential_for(login, ctx.state.new_password))
        return UrlObserved(url, fresh, None, f"{ctx.url_var} does not log in and no new password was set in this "
                                             "run; the role step must run before url")

    def plan(self, ctx: StepContext, observed: UrlObserved) -> list[Change]:
        state = observed.url
        if not observed.fresh and state.logs_in is not False:
            return []
        why = state.reason if state.logs_in is False else "new credential"
        if ctx.plan_only:
            if ctx.api_credentials:
                return [Change(f"attach credential {ctx.role.name} to the app as {ctx.url_var} "
                               f"(the platform keeps it current; {why})")]
            return [Change(f"set {ctx.url_var} = postgres://{ctx.role.name}:****@… ({why})")]
        if observed.missing is not None or observed.credential is None:
            raise ConfigError(observed.missing or f"no credential for {ctx.role.name} to write")
        cred = observed.credential
        verb = "attach" if ctx.api_credentials else "set"
        data = {"url_digest": Digest.of(cred.url()).sha256}
        if ctx.state.login:
            data["url_login"] = ctx.state.login      # alternating: which login a write-only store now holds
        return [CredentialChange(f"{verb} {ctx.url_var} = {cred.masked_url()} ({why})", data=data, credential=cred)]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        cred = next(c.credential for c in changes if isinstance(c, CredentialChange) and c.credential is not None)
        if ctx.api_credentials and ctx.state.login:
            _prove_from_its_side(ctx, cred)
        ctx.app.put_url(cred)
        state.written = cred

    def verify(self, ctx: StepContext) -> Verdict:
        state = ctx.url_state()        # read afresh after any apply (engine), else this run's one login
        if state.logs_in is False:
            return Verdict("fail", state.reason, fix=f"runbook provision --env {ctx.env.name}")
        written = url_in_hand(ctx.state.written, state)
        if written is not None:
            # write-only: the store cannot be read back, so log in with the URL still in memory
            # (the same address and pooler form the app gets) before counting the step done
            written_login = ctx.state.login or ctx.role.name
            ok, why = try_login(written, written_login, ctx.expected_endpoint(written_login), route=login_route(ctx.db))
            if not ok:
                return Verdict("fail", f"the URL just written to {ctx.url_var} does not log in: {why}",
                               fix=f"fix the login (pooler, pg_hba, password), then runbook provision --env {ctx.env.name}")
            return Verdict.ok(f"{ctx.url_var} logs in as {written_login} (checked with the URL written, "
                              "before the write-only store took it)")
        return Verdict.ok(state.reason or f"{ctx.url_var} logs in as {ctx.role.name}")


def _prove_from_its_side(ctx: StepContext, cred: Credential) -> None:
    """Alternating on platform credentials (no group role): before the app's attachment moves to
    a credential, log in as it the way the app will and read what it reaches; one that cannot do
    what the spec says (or cannot log in) leaves the app where it is."""
    import psycopg

    from runbook import catalog, grants
    from runbook.errors import CheckFailed
    from runbook.login import connect_as_app

    spec = ctx.role.model_copy(update={"name": cred.name})
    app_side = cred.as_app()
    try:
        with connect_as_app(app_side.url(), app_side, timeout=10, application_name="runbook:prove",
                            route=login_route(ctx.db)) as conn:
            snap = catalog.snapshot(conn, spec, ctx.owner)
    except (ValueError, psycopg.Error) as exc:
        raise CheckFailed(f"url: credential {cred.name} does not log in ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                          f"the app's {ctx.url_var} was not moved to it") from None
    left = grants.verified(spec, snap)
    if left:
        raise CheckFailed(f"url: credential {cred.name}, logged in as itself: {left[0].summary()}; the app's "
                          f"{ctx.url_var} was not moved to it", hint=f"runbook drift --env {ctx.env.name} --fix")


def _configured_url(ctx: StepContext) -> str | Digest | None:
    current = ctx.app.received_url()
    if current is None:
        # a store the app no longer reads can still hold the URL (an ECS secret outlives the
        # task definition's reference when a retire stopped between the two)
        current = ctx.app.stored_url()
    return current


@dataclass(frozen=True)
class ConfiguredUrl:
    value: str | Digest | None         # the URL in the app's config (or a store it no longer reads)


class UnsetUrl(Step[ConfiguredUrl]):
    """Remove the role's URL from the app's config (detach it where it was attached)."""

    kind = "unset_url"
    touches_app = True

    def observe(self, ctx: StepContext) -> ConfiguredUrl:
        return ConfiguredUrl(_configured_url(ctx))

    def plan(self, ctx: StepContext, observed: ConfiguredUrl) -> list[Change]:
        if observed.value is None:
            return []
        return [Change(f"remove {ctx.url_var} ({shown(observed.value)}) from the app's config", reversible=False)]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        from runbook.alternating import api_login, url_login

        # alternating on platform credentials: the attachment is the login the app's URL names (the
        # role's own `single` credential while a conversion is half-way), else the current login's
        named = url_login(ctx.role, ctx.app.received_url()) if ctx.api_credentials else None
        ctx.app.remove_url(named or (api_login(ctx) if ctx.api_credentials else ctx.role.name))

    def verify(self, ctx: StepContext) -> Verdict:
        return Verdict.ok() if _configured_url(ctx) is None else Verdict("fail", f"{ctx.url_var} is still set")
