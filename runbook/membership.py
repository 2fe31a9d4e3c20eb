"""`member_of:` — the memberships a role's spec grants it (a migrator in the owner role, so that
what it creates with SET ROLE belongs to the owner and every role's default privileges cover it).

The target of a membership is never something that hands out more than the owner's objects: a
superuser, a role with CREATEROLE / REPLICATION / BYPASSRLS, the admin the tool connects as, a
platform's admin group or a predefined role that reads or writes files or all data, directly or
through the target's own memberships. Found in one set-based read, before anything changes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psycopg import sql

from runbook.changes import Change
from runbook.errors import Refused

# predefined roles whose members reach beyond the owner's objects (server files, all data, other sessions)
_POWERFUL_PREDEFINED = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files",
                        "pg_read_all_data", "pg_write_all_data", "pg_signal_backend", "pg_create_subscription",
                        "pg_checkpoint", "pg_use_reserved_connections", "pg_signal_autovacuum_worker")
_PLATFORM_ADMIN_GROUPS = ("rds_superuser", "cloudsqlsuperuser", "supabase_admin", "azure_pg_admin", "rds_ad")

_TARGETS = """
SELECT t.name, r.oid IS NOT NULL, coalesce(r.rolsuper, false), coalesce(r.rolcreaterole, false),
       coalesce(r.rolreplication, false), coalesce(r.rolbypassrls, false),
       t.name = CURRENT_USER OR t.name = SESSION_USER,
       (SELECT pg_catalog.array_agg(p.rolname::text ORDER BY p.rolname) FROM pg_catalog.pg_roles p
         WHERE r.oid IS NOT NULL AND p.oid <> r.oid AND pg_catalog.pg_has_role(r.oid, p.oid, 'MEMBER')
           AND (p.rolsuper OR p.rolcreaterole OR p.rolreplication OR p.rolbypassrls
                OR p.rolname = ANY(%(powerful)s) OR p.rolname = CURRENT_USER)),
       r.oid IS NOT NULL AND m.oid IS NOT NULL AND pg_catalog.pg_has_role(r.oid, m.oid, 'MEMBER')
  FROM pg_catalog.unnest(%(targets)s::text[]) AS t(name)
  LEFT JOIN pg_catalog.pg_roles r ON r.rolname = t.name
  LEFT JOIN pg_catalog.pg_roles m ON m.rolname = %(role)s
"""

_DIRECT = """
SELECT g.rolname::text FROM pg_catalog.pg_auth_members a
  JOIN pg_catalog.pg_roles g ON g.oid = a.roleid JOIN pg_catalog.pg_roles u ON u.oid = a.member
 WHERE u.rolname = %s ORDER BY 1
"""


def refuse_unsafe(conn: Any, role: str, member_of: Iterable[str]) -> None:
    """Refused (one line, nothing changed) for the first target `role` must not be a member of."""
    targets = list(member_of)
    if not targets:
        return
    powerful = list(_POWERFUL_PREDEFINED + _PLATFORM_ADMIN_GROUPS)
    rows = conn.execute(_TARGETS, {"targets": targets, "powerful": powerful, "role": role}).fetchall()
    for name, exists, superuser, createrole, replication, bypassrls, is_admin, via, cycle in rows:
        why = None
        if not exists:
            why = "does not exist (create the owner first; pg-runbook never creates it)"
        elif is_admin:
            why = "is the admin user pg-runbook connects as"
        elif superuser:
            why = "is a superuser"
        elif name in powerful:
            why = "is a platform admin group or a predefined role beyond the owner's objects"
        elif createrole or replication or bypassrls:
            attr = "CREATEROLE" if createrole else "REPLICATION" if replication else "BYPASSRLS"
            why = f"has {attr}"
        elif via:
            why = f"is a member of {via[0]}, which reaches beyond the owner's objects"
        elif cycle:
            why = f"is itself a member of {role} (the membership would make a cycle)"
        if why is not None:
            raise Refused(f"role {role}: member_of names {name}, which {why}; {role} may only be a member of a "
                          "plain owner role")


def current(conn: Any, role: str) -> tuple[str, ...]:
    """The roles `role` is directly a member of."""
    return tuple(r[0] for r in conn.execute(_DIRECT, (role,)).fetchall())


def missing(conn: Any, role: str, member_of: Iterable[str]) -> list[str]:
    have = set(current(conn, role))
    return [g for g in member_of if g not in have]


def grants(role: str, targets: Iterable[str]) -> list[Change]:
    return [Change(f"grant {g} to {role} (member_of)", sql.SQL("GRANT {} TO {}").format(sql.Identifier(g),
                                                                                         sql.Identifier(role)))
            for g in targets]


def findings(conn: Any, role: str, member_of: Iterable[str], managed: set[str]) -> list[Any]:
    """Drift: a membership member_of gives that the role lacks (an extra one is the role's own
    drift finding, runbook.roles.drift_findings)."""
    from runbook.grants import Finding

    return [Finding("membership", "", (g,), f"{role} is not a member of {g}, which its member_of gives it")
            for g in missing(conn, role, member_of)]
