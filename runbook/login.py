"""Logging in as the application role, the way the app will: with the URL from its config.

That URL is not the tool's to trust: the app (the owner, in the threat model) can plant one. So
a login with it uses only the URL's own password, only to the host, port, database and user the
tool itself would write, and nothing else libpq could add on the operator's behalf: no password
file, no PGPASSWORD, no PGHOSTADDR diversion, no Kerberos ticket, and `require_auth=scram-sha-256`
so that a server asking for a cleartext (or MD5) password gets nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from runbook.secret import Secret, redact

# URL parameters that change only how the session behaves, never where it goes or what it sends
_HARMLESS = frozenset({"host", "port", "dbname", "user", "password", "sslmode", "application_name",
                       "connect_timeout", "options", "channel_binding", "target_session_attrs",
                       "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"})
_WHERE = ("host", "port", "dbname", "user")


def _endpoint(parts: dict[str, Any]) -> tuple[str, str, str, str]:
    return (str(parts.get("host") or ""), str(parts.get("port") or "5432"), str(parts.get("dbname") or ""),
            str(parts.get("user") or ""))


def app_conninfo(url: str | Secret, expected: Any, *, token_login: bool = False) -> tuple[dict[str, Any] | None, str]:
    """The keyword parameters to log in with `url` (None and why not when it must not be tried).
    `expected`: the Credential the tool would write for the role (its endpoint; no password needed),
    or None where the platform alone writes the URL. `token_login`: a password-less URL is right
    (IAM: the provider's route signs the token the app would)."""
    from psycopg.conninfo import conninfo_to_dict

    raw = url.reveal() if isinstance(url, Secret) else url
    try:
        parts = conninfo_to_dict(raw)
    except Exception as exc:           # a malformed URL in someone's config is data, not a crash
        return None, f"the URL does not parse ({type(exc).__name__})"
    want = conninfo_to_dict(expected.url().reveal()) if expected is not None else dict(parts)
    foreign = sorted(k for k in parts if k not in _HARMLESS)
    if foreign:
        return None, f"the URL sets {', '.join(foreign)}, which pg-runbook will not follow"
    if not parts.get("password") and not token_login:
        return None, "the URL carries no password (pg-runbook logs in only with the URL's own)"
    got, wanted = _endpoint(parts), _endpoint(want)
    if got != wanted:
        diff = [f"{k} {g!r} (expected {w!r})" for k, g, w in zip(_WHERE, got, wanted) if g != w]
        return None, "the URL points elsewhere: " + ", ".join(diff)
    params = _hardened(dict(parts), sslmode=parts.get("sslmode") or want.get("sslmode") or "prefer")
    return params, ""


def _hardened(params: dict[str, Any], *, sslmode: str, routed: bool = False) -> dict[str, Any]:
    # explicit values, empty ones included, keep libpq from filling these in from PG* variables; a
    # provider's route may set its own network address (a tunnel, keeping TLS's name check on the
    # endpoint) and the platform's documented auth method (IAM tokens travel as a password over TLS)
    mine = {"hostaddr": "", "require_auth": "scram-sha-256"}
    for key, value in mine.items():
        if not (routed and params.get(key)):
            params[key] = value
    params.update(passfile=os.devnull, gssencmode="disable", options=params.get("options") or "", sslmode=sslmode)
    return params


Route = Callable[[Secret], Secret]


def connect_as_app(url: str | Secret, expected: Any, *, timeout: int = 5, application_name: str = "runbook:login-check",
                   route: Route | None = None):
    """A session opened with the app's URL under the rules above; raises ValueError(why) when the
    URL must not be tried, psycopg.Error when the server refuses it. search_path pinned.

    `route` (the database provider's `login_route`): where the app's endpoint does not exist on this
    machine (Cloud Run's /cloudsql socket, a private app_host), the provider names its own endpoint for
    the same user, password and database. The URL is checked first, as the app would use it; only
    then is the login moved, to an endpoint the provider chose, never one the URL chose."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from runbook.context import pin_session

    params, why = app_conninfo(url, expected, token_login=route is not None)
    if params is None:
        raise ValueError(why)
    if route is not None:
        secret = url if isinstance(url, Secret) else Secret(url)
        routed = route(secret)
        if routed.reveal() != secret.reveal():
            theirs = conninfo_to_dict(routed.reveal())
            params = _hardened(theirs, sslmode=str(theirs.get("sslmode") or params["sslmode"]), routed=True)
        if not params.get("password"):
            raise ValueError("the URL carries no password (pg-runbook logs in only with the URL's own)")
    params.update(connect_timeout=max(1, timeout), application_name=application_name)
    # prepare_threshold=None: the URL may go through a transaction pooler, which runs each
    # statement on whichever server connection is free
    # one transaction for the whole session, pinned with SET LOCAL: nothing of the tool's stays on a
    # pooled server connection the app will be handed next (the context manager ends it)
    conn = psycopg.connect(autocommit=False, prepare_threshold=None, **params)
    try:
        pin_session(conn, local=True)
    except BaseException:
        conn.close()
        raise
    return conn


def try_login(url: str | Secret, role: str, expected: Any, *, timeout: int = 5,
              route: Route | None = None) -> tuple[bool, str]:
    """(True, "") when the URL logs in as `role`; (False, why) otherwise. Never raises."""
    conn, why = login_session(url, role, expected, timeout=timeout, route=route)
    if conn is not None:
        conn.close()
    return conn is not None, why


def login_session(url: str | Secret, role: str, expected: Any, *, timeout: int = 5,
                  route: Route | None = None) -> tuple[Any, str]:
    """try_login, keeping the session: (the open session, "") when the URL logs in as `role`, its
    one transaction still open; (None, why) otherwise. Never raises. The caller closes it."""
    import psycopg

    conn = None
    try:
        conn = connect_as_app(url, expected, timeout=timeout, route=route)
        who = conn.execute("SELECT CURRENT_USER::text").fetchone()[0]
    except ValueError as exc:
        return None, str(exc)
    except psycopg.Error as exc:
        _close(conn)
        text = redact(str(exc)).strip().splitlines()
        why = text[0] if text else type(exc).__name__
        fix = _pooler_fix(url.reveal() if isinstance(url, Secret) else url, why, role)
        return None, f"{why}; {fix}" if fix else why
    except Exception as exc:
        _close(conn)
        return None, f"{type(exc).__name__}: {redact(str(exc))[:200]}"
    if who != role:
        _close(conn)
        return None, f"the URL logs in as {who}, not {role}"
    return conn, ""


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


def login_route(db: Any) -> Route | None:
    """The database provider's `login_route`, where it has one."""
    return db.login_route if db.routes_logins else None


def _pooler_fix(raw: str, why: str, role: str) -> str | None:
    """When a pooler, not PostgreSQL, turned the login away: what to do about it."""
    from psycopg.conninfo import conninfo_to_dict

    from runbook.pooler import login_refusal_fix

    try:
        parts = conninfo_to_dict(raw)
        host, port = str(parts.get("host") or "localhost"), int(str(parts.get("port") or 5432).split(",")[0])
    except Exception:
        return None
    return login_refusal_fix(why, host, port, role)
