"""Test logins whose passwords never reach the server log: like the engine, send a SCRAM verifier.

The clusters run with log_statement = all and the session-wide canary check fails if a canary
password shows up there, so test set-up must not send `PASSWORD 'plaintext'` either.
"""

from __future__ import annotations

import psycopg
from psycopg import sql


def create_login(pg, name: str, password: str, attributes: str = "") -> None:
    with pg.connect() as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256").decode()
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
            sql.Identifier(name), sql.SQL(attributes), sql.Literal(verifier)))


def set_password(pg, name: str, password: str) -> None:
    with pg.connect() as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256").decode()
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(verifier)))


def login_fails(url: str) -> bool:
    """Whether a login with exactly this URL is refused (an old credential after a rotation)."""
    try:
        psycopg.connect(url, autocommit=True, connect_timeout=5).close()
    except psycopg.OperationalError:
        return True
    return False
