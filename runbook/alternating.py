"""Alternating rotation (`role.rotation: alternating`): a NOLOGIN group role holds every grant,
and two logins `NAME_a` / `NAME_b`, members of it, take turns being the one the app uses.

Which login is current comes from two places that must agree before anything is invalidated:
the app's URL (what the app will receive) and the journal (a rotation's `rotating_to` result, and
the drain step's `current_login` result once the old login is invalidated). A rotation whose
`rotating_to` has no `current_login` after it is half-way: the next run finishes it instead of
starting another one, so a login the running app still uses is never given a new password.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runbook.errors import Refused

if TYPE_CHECKING:
    from psycopg import Connection

    from runbook.project import RoleSpec
    from runbook.roles import Identity, RoleFacts


def alternating(spec: RoleSpec) -> bool:
    return spec.rotation == "alternating"


def other(spec: RoleSpec, login: str) -> str:
    a, b = spec.logins
    return b if login == a else a


@dataclass(frozen=True)
class Turn:
    """Where the role's rotation stands, from the journal (results only: an intent proves nothing)."""

    current: str | None = None      # the login the last finished rotation (or provision) made current
    pending: str | None = None      # a rotation began towards this login and has not finished
    written: str | None = None      # the login of the URL the url step last wrote (for write-only stores)


def journal_turn(history: list[dict[str, Any]], spec: RoleSpec) -> Turn:
    current = pending = written = None
    for event in history:
        data = event.get("data")
        if event.get("kind") != "result" or not isinstance(data, dict):
            continue
        if event.get("step") == "url" and data.get("url_digest"):
            written = data.get("url_login") if data.get("url_login") in spec.logins else None
        target = data.get("rotating_to")
        if target in spec.logins:
            pending = target
        done = data.get("current_login")
        if done in spec.logins:
            current, pending = done, None
    return Turn(current, pending, written)


def current_turn(ctx: Any) -> Turn:
    """The selected role's turn from the journal, however long ago it last rotated: the store
    answers with the few events that decide it (a dedicated query, not a window of recent events,
    which a busy journal would push a rotation out of)."""
    return journal_turn(ctx.rotation_events(), ctx.role)


def app_login(spec: RoleSpec, url: object, turn: Turn) -> str | None:
    """The login the app's URL logs in as: read from the URL, or, where the store is write-only and
    its digest is the one pg-runbook wrote (UrlState.logs_in None), the login that write named."""
    from providers.base import Digest

    logs_in, value = getattr(url, "logs_in", None), getattr(url, "value", None)
    if logs_in:
        return url_login(spec, value)
    if logs_in is None and isinstance(value, Digest):
        return turn.written
    return None


def url_user(value: object) -> str | None:
    """The user a URL names (None when it is not a URL the tool can read)."""
    if not isinstance(value, str):
        return None
    from psycopg.conninfo import conninfo_to_dict

    try:
        user = conninfo_to_dict(value).get("user")
    except Exception:
        return None
    return str(user) if user else None


def url_login(spec: RoleSpec, value: object) -> str | None:
    """Which of the role's logins (or the role itself) a URL names: the user, or a pooler's
    `{login}.{tenant}` form of it (Supavisor)."""
    user = url_user(value)
    if user is None:
        return None
    for login in (*spec.logins, spec.name):
        if user == login or user.startswith(login + "."):
            return login
    return None


def expected_login(spec: RoleSpec, value: object) -> str:
    """The login a URL of the app must log in as: for `alternating`, whichever of the two logins it
    names (or the role itself while a `single` role is being converted); else the role."""
    if not alternating(spec):
        return spec.name
    return url_login(spec, value) or spec.logins[0]


def refuse_login(facts: RoleFacts, spec: RoleSpec, ident: Identity, allowed_groups: tuple[str, ...]) -> None:
    """A login of an alternating role must be ours (marked for this identity, never adopted), no
    superuser, a member of nothing but the group (and the platform's memberships), and nobody's
    group: the owner could otherwise have handed it more than the group holds."""
    if not facts.exists:
        return
    name = facts.name
    if facts.superuser:
        raise Refused(f"role {name} is a superuser; pg-runbook will not use it as a login of {spec.name}")
    marked = facts.marked_for
    if marked is None:
        raise Refused(f"role {name} already exists and pg-runbook did not create it (no pg-runbook mark on it); "
                      f"refusing to use it as a login of {spec.name} (drop it, or pick another role.name)")
    if marked != ident:
        raise Refused(f"role {name} belongs to {marked}; refusing to use it as a login of {spec.name} for {ident}")
    extra = [g for g in facts.member_of if g not in (spec.name, *allowed_groups)]
    if extra:
        raise Refused(f"login {name} is a member of {', '.join(extra)}, which pg-runbook did not grant; refusing to "
                      f"use it (REVOKE {extra[0]} FROM {name} after checking who did it)")
    if facts.members:
        raise Refused(f"login {name} is granted to {', '.join(facts.members)}, who would reach everything {spec.name} "
                      f"may; refusing to use it (REVOKE {name} FROM {facts.members[0]})")


_SESSIONS = """
    SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity
    WHERE usename = %s AND pid <> pg_catalog.pg_backend_pid()
"""


def sessions(conn: Connection[Any], login: str) -> int:
    row = conn.execute(_SESSIONS, (login,)).fetchone()
    return int(row[0]) if row else 0


def drain(conn: Connection[Any], login: str, timeout: float, progress: Any, *, poll: float = 0.5) -> int:
    """Wait until `login` has no sessions left (the app's processes moved to the new login), saying
    so each time the count changes. Returns the sessions still open when `timeout` ran out (0: drained)."""
    from providers.base import Progress

    deadline = time.monotonic() + timeout
    last = -1
    while True:
        left = sessions(conn, login)
        remaining = max(0.0, deadline - time.monotonic())
        if left != last or left == 0:
            progress(Progress(f"sessions of {login}", f"{left} open", remaining=remaining, done=left == 0,
                              fields={"login": login, "sessions": left}))
            last = left
        if left == 0 or remaining <= 0:
            return left
        time.sleep(min(poll, remaining))


def api_login(ctx: Any, turn: Turn | None = None) -> str:
    """Where the platform issues the logins as credentials (Heroku): the one the app is on, which
    is the credential the step reads. For `alternating`, the login the app's URL names, else the
    journal's (a half-way rotation's target first), else the first login; for `single`, the role.
    `turn`: the journal's, when the caller has already read it."""
    spec = ctx.role
    if not alternating(spec):
        return str(spec.name)
    on = url_login(spec, ctx.app.received_url())
    if on in spec.logins:
        return str(on)
    turn = turn if turn is not None else current_turn(ctx)
    return turn.pending or turn.current or spec.logins[0]


def converting(ctx: Any) -> str | None:
    """Platform credentials (Heroku): the role's own `single` credential while an alternating role
    is being converted from it (it keeps the app working until the app's attachment has moved to a
    login of the pair and its sessions drained; then it is destroyed). None when there is none."""
    spec = ctx.role
    if not (ctx.api_credentials and alternating(spec)):
        return None
    return str(spec.name) if ctx.db.credential(spec.name) is not None else None


def conversion_recorded(history: list[dict[str, Any]], spec: RoleSpec) -> bool:
    """Whether a role step's result says pg-runbook began converting the role's `single` credential
    (journalled before the url step can move the app off it, so every crash after that finds it).
    A condition on top of the app's URL, never instead of it: the owner may write to the journal."""
    return any(event.get("kind") == "result" and isinstance(event.get("data"), dict)
               and event["data"].get("converting_from") == spec.name for event in history)


def grant_specs(ctx: Any) -> list[RoleSpec]:
    """The roles the spec's grants go to: the role itself, or, where there is no group role
    (platform credentials: Heroku), each of its two logins, so that nothing depends on which is current."""
    spec = ctx.role
    if ctx.api_credentials and alternating(spec):
        return [spec.model_copy(update={"name": name}) for name in spec.logins]
    return [spec]
