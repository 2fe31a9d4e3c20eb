"""The role's URL as the app holds it: does it log in, and where may that login go.

Steps (url, role, verify) and the diagnose checks read it alike, so it lives here rather than
in a step module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from providers.base import Credential, Digest
from runbook.login import login_route, login_session
from runbook.secret import Secret, mask_url

if TYPE_CHECKING:
    from runbook.context import Context


@dataclass(frozen=True)
class UrlState:
    value: str | Digest | None   # as the app platform returned it
    logs_in: bool | None         # None: could not tell (write-only store)
    reason: str = ""


WRITE_ONLY_PROOF = ("{var} is in a write-only store, so pg-runbook cannot log in with what the app gets; "
                    "`runbook rotate --env {env}` writes a new URL and logs in with it before counting it done")


def written_digest(ctx: Context) -> str | None:
    """The digest of the URL pg-runbook last wrote (for write-only stores such as Supabase secrets)."""
    if ctx.store is None:
        return None
    for event in reversed(ctx.store.events(ctx.env.name, limit=500)):
        digest = (event.get("data") or {}).get("url_digest")
        if event.get("step") == "url" and digest:
            return str(digest)
    return None


def expected_endpoint(ctx: Context, issued: Credential | None = None, login: str | None = None) -> Credential | None:
    """The role's credential as the tool would write it (no password): the only place a login
    with the app's URL may go. Where the platform issues credentials itself (Heroku), `issued`:
    the one it gave (None when the run knows of none; the other rules of login.py still hold)."""
    if ctx.api_credentials:
        # with the platform's connection pooling its attachment names the pooler, not the credential's host
        return None if ctx.app.url_is_pooled or issued is None else issued.as_app()
    # alternating rotation: the URL may name either login of the role (runbook/alternating.py)
    return ctx.db.credential_for(login or ctx.role.name, None)


def url_state(ctx: Context, *, issued: Credential | None = None, refresh: bool = False, keep: bool = False) -> UrlState:
    """What the app's URL does, observed once per run unless `refresh` (or an apply forgot it).
    `keep` (a run's steps, whose verify logs in with the same URL): the login that proved it stays
    open, outside any transaction, for verify to take (Context.take_app_session)."""
    if ctx.url_memo is not None and not refresh:
        return ctx.url_memo
    value = ctx.app.received_url()
    if value is None or value == "":
        state = UrlState(None, False, f"{ctx.url_var} is not set")
    elif isinstance(value, Digest):
        written = written_digest(ctx)
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
        from runbook.alternating import expected_login

        login = expected_login(ctx.role, value)
        session, why = login_session(Secret(value), login, expected_endpoint(ctx, issued, login), route=login_route(ctx.db))
        state = UrlState(value, session is not None, "" if session is not None else f"{ctx.url_var} does not log in: {why}")
        ctx.forget_url()
        ctx.url_memo = state
        if session is not None:
            if keep and _idle(session):
                # kept for verify, which would otherwise log in again with the same URL (SCRAM each time)
                ctx.keep_app_session(state, session)
            else:
                session.close()
        return state
    ctx.forget_url()
    ctx.url_memo = state
    return state


def _idle(session: object) -> bool:
    """End the login's transaction (it read CURRENT_USER): a transaction pooler in front of the
    app's URL must not keep a server connection for us while the steps in between run."""
    try:
        session.commit()           # type: ignore[attr-defined]
        return True
    except Exception:
        return False


def url_in_hand(written: Credential | None, state: UrlState) -> Secret | None:
    """The URL this run wrote, when the app's write-only store holds exactly it: the one thing a
    write-only store's URL can be logged in with (Edge Function secrets return only digests)."""
    if written is None or not isinstance(state.value, Digest) or Digest.of(written.url()) != state.value:
        return None
    return written.url()


def shown(value: str | Digest | None) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Digest):
        return f"sha256:{value.sha256[:12]}…"
    return mask_url(value)
