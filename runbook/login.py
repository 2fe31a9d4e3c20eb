"""Logging in as the application role, the way the app will: with the URL from its config."""

from __future__ import annotations

from runbook.secret import Secret, redact


def try_login(url: str | Secret, role: str, *, timeout: int = 5) -> tuple[bool, str]:
    """(True, "") when the URL logs in as `role`; (False, why) otherwise. Never raises."""
    import psycopg

    raw = url.reveal() if isinstance(url, Secret) else url
    try:
        # prepare_threshold=None: the URL may go through a transaction pooler
        with psycopg.connect(raw, connect_timeout=max(1, timeout), autocommit=True, prepare_threshold=None,
                             application_name="runbook:login-check") as conn:
            who = conn.execute("SELECT current_user").fetchone()[0]
    except psycopg.Error as exc:
        text = redact(str(exc)).strip().splitlines()
        why = text[0] if text else type(exc).__name__
        fix = _pooler_fix(raw, why, role)
        return False, f"{why}; {fix}" if fix else why
    except Exception as exc:   # a malformed URL in someone's config is data, not a crash
        return False, f"{type(exc).__name__}: {redact(str(exc))[:200]}"
    if who != role:
        return False, f"the URL logs in as {who}, not {role}"
    return True, ""


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
