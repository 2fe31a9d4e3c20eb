"""Logging in as the application role, the way the app will: with the URL from its config."""

from __future__ import annotations

from runbook.secret import Secret, redact


def try_login(url: str | Secret, role: str, *, timeout: int = 5) -> tuple[bool, str]:
    """(True, "") when the URL logs in as `role`; (False, why) otherwise. Never raises."""
    import psycopg

    raw = url.reveal() if isinstance(url, Secret) else url
    try:
        with psycopg.connect(raw, connect_timeout=max(1, timeout), autocommit=True,
                             application_name="runbook:login-check") as conn:
            who = conn.execute("SELECT current_user").fetchone()[0]
    except psycopg.Error as exc:
        text = redact(str(exc)).strip().splitlines()
        return False, text[0] if text else type(exc).__name__
    except Exception as exc:   # a malformed URL in someone's config is data, not a crash
        return False, f"{type(exc).__name__}: {redact(str(exc))[:200]}"
    if who != role:
        return False, f"the URL logs in as {who}, not {role}"
    return True, ""


def login_url(db, url: str | Secret) -> Secret:
    """The URL the tool logs in with to prove the app's: the app's own, unless the database provider
    routes it (`login_route`: the same user, password and database over the tool's endpoint, when
    the app's endpoint, such as Cloud Run's /cloudsql socket, does not exist where the tool runs)."""
    secret = url if isinstance(url, Secret) else Secret(url)
    route = getattr(db, "login_route", None)
    return route(secret) if callable(route) else secret
