"""The application role itself: facts, and the statements that create, alter and drop it.

Passwords never travel as plaintext SQL: we send a SCRAM-SHA-256 verifier computed client-side
(libpq's PQencryptPasswordConn), so nothing readable reaches pg_stat_activity or server logs.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

from psycopg import Connection, sql

from runbook.changes import Change
from runbook.project import RoleSpec
from runbook.secret import Secret

_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 40) -> Secret:
    # letters and digits only: survives URLs, dotenv files and shells without quoting surprises
    return Secret("".join(secrets.choice(_ALPHABET) for _ in range(length)))


@dataclass(frozen=True)
class RoleFacts:
    name: str
    exists: bool
    can_login: bool = False
    superuser: bool = False
    createrole: bool = False
    createdb: bool = False
    replication: bool = False
    bypassrls: bool = False
    valid_until_past: bool = False
    connection_limit: int = -1
    member_of: tuple[str, ...] = ()

    def unsafe_attributes(self, spec: RoleSpec | None = None) -> list[str]:
        """Attributes the role must not have; BYPASSRLS is wanted when the spec says `rls: bypass`."""
        bypass_ok = spec is not None and spec.rls == "bypass"
        names = [("SUPERUSER", self.superuser), ("CREATEROLE", self.createrole), ("CREATEDB", self.createdb),
                 ("REPLICATION", self.replication), ("BYPASSRLS", self.bypassrls and not bypass_ok)]
        return [n for n, on in names if on]


def facts(conn: Connection, name: str) -> RoleFacts:
    row = conn.execute(
        """
        SELECT r.rolcanlogin, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
               coalesce(r.rolvaliduntil < now(), false), r.rolconnlimit,
               ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                     WHERE m.member = r.oid ORDER BY 1)
        FROM pg_roles r WHERE r.rolname = %s
        """,
        (name,),
    ).fetchone()
    if row is None:
        return RoleFacts(name, exists=False)
    return RoleFacts(name, True, *[bool(x) for x in row[:7]], int(row[7]), tuple(row[8]))


def verifier(conn: Connection, user: str, password: Secret) -> str:
    raw = conn.pgconn.encrypt_password(password.reveal().encode(), user.encode(), b"scram-sha-256")
    return raw.decode()


def _attributes(spec: RoleSpec, *, no_superuser_clause: bool) -> list[sql.Composable]:
    attrs = ["LOGIN", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "INHERIT"]
    if not no_superuser_clause:
        # hosted Supabase rejects an explicit NOSUPERUSER from its `postgres` user; it is the default anyway
        attrs.insert(1, "NOSUPERUSER")
    if spec.rls == "bypass":
        attrs.append("BYPASSRLS")     # asked for; NOBYPASSRLS is the default (and PG 15 lets only a superuser say it)
    out: list[sql.Composable] = [sql.SQL(a) for a in attrs]
    if spec.connection_limit is not None:
        out.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connection_limit)))
    return out


def create(conn: Connection | None, spec: RoleSpec, password: Secret | None, *, no_superuser_clause: bool = False) -> Change:
    parts = [sql.SQL("CREATE ROLE {} WITH").format(sql.Identifier(spec.name)), *_attributes(spec, no_superuser_clause=no_superuser_clause)]
    if password is not None:
        value = verifier(conn, spec.name, password) if conn is not None else "****"
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(value)))
    return Change(f"create login role {spec.name}" + (" with a generated password (SCRAM verifier)" if password else " (no password)"),
                  sql.SQL(" ").join(parts), reversible=True)


def set_password(conn: Connection | None, name: str, password: Secret, reason: str) -> Change:
    value = verifier(conn, name, password) if conn is not None else "****"
    return Change(f"set a new password for {name} ({reason})",
                  sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(value)))


def fix_attributes(spec: RoleSpec, current: RoleFacts, *, no_superuser_clause: bool) -> list[Change]:
    out: list[Change] = []
    bad = current.unsafe_attributes(spec)
    bypass_missing = spec.rls == "bypass" and not current.bypassrls
    if bad or bypass_missing or not current.can_login or (
            spec.connection_limit is not None and spec.connection_limit != current.connection_limit):
        attrs = sql.SQL(" ").join(_attributes(spec, no_superuser_clause=no_superuser_clause and not current.superuser)
                                  + ([sql.SQL("NOBYPASSRLS")] if "BYPASSRLS" in bad else []))
        why = ", ".join([*(f"drop {b}" for b in bad), *([] if current.can_login else ["allow LOGIN"]),
                         *(["give BYPASSRLS (rls: bypass)"] if bypass_missing else [])]) or "connection limit"
        out.append(Change(f"alter role {spec.name}: {why}",
                          sql.SQL("ALTER ROLE {} WITH {}").format(sql.Identifier(spec.name), attrs)))
    return out


def grant_memberships(name: str, roles: tuple[str, ...], current: RoleFacts) -> list[Change]:
    return [
        Change(f"grant {r} to {name}", sql.SQL("GRANT {} TO {}").format(sql.Identifier(r), sql.Identifier(name)))
        for r in roles if r not in current.member_of
    ]
