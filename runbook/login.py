"""Logging in as the application role, the way the app will: with the URL from its config."""

from __future__ import annotations

from runbook.secret import Secret, redact


def login_url(db: object, value: str | Secret) -> Secret:
    """What the tool logs in with to prove the app's URL `value`: the URL itself, unless the
    database provider maps it (`login_url`: the same URL through the tool's tunnel, or with a
    fresh IAM token as the app would sign one)."""
    url = value if isinstance(value, Secret) else Secret(value)
    hook = getattr(db, "login_url", None)
    return hook(url) if callable(hook) else url


def proves_token_login(db: object) -> bool:
    """True when the provider can sign the token a password-less (IAM) login needs."""
    return callable(getattr(db, "login_url", None))


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
