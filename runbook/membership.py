"""`member_of:` — the memberships a role's spec grants it (a migrator in the owner role, so that
what it creates with SET ROLE belongs to the owner and every role's default privileges cover it).

The target of a membership is never something that hands out more than the owner's objects: a
superuser, a role with CREATEROLE / REPLICATION / BYPASSRLS, the admin the tool connects as, a
platform's admin group or a predefined role that reads or writes files or all data, directly or
through the target's own memberships. Found in one set-based read, before anything changes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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

# what the role holds of each role it is a member of: (INHERIT, SET). Before PostgreSQL 16 a
# membership has no options: INHERIT is the member's attribute, SET ROLE is always allowed.
_HELD_16 = """
SELECT g.rolname::text, bool_or(a.inherit_option), bool_or(a.set_option), bool_or(u.rolinherit)
  FROM pg_catalog.pg_auth_members a
  JOIN pg_catalog.pg_roles g ON g.oid = a.roleid JOIN pg_catalog.pg_roles u ON u.oid = a.member
 WHERE u.rolname = %s GROUP BY 1 ORDER BY 1
"""
_HELD_15 = """
SELECT g.rolname::text, u.rolinherit, true, u.rolinherit
  FROM pg_catalog.pg_auth_members a
  JOIN pg_catalog.pg_roles g ON g.oid = a.roleid JOIN pg_catalog.pg_roles u ON u.oid = a.member
 WHERE u.rolname = %s ORDER BY 1
"""
_INHERITS = "SELECT rolinherit FROM pg_catalog.pg_roles WHERE rolname = %s"


@dataclass(frozen=True)
class Held:
    """The role's memberships in its member_of targets, as the catalog has them."""

    options: dict[str, tuple[bool, bool]]     # target → (INHERIT, SET)
    role_inherits: bool                       # the role's own INHERIT attribute
    options_per_grant: bool                   # PostgreSQL 16+: INHERIT / SET are per membership

    def missing(self, member_of: Iterable[str]) -> list[str]:
        return [g for g in member_of if g not in self.options or not self.options[g][1]]

    def inheriting(self, member_of: Iterable[str]) -> list[str]:
        return [g for g in member_of if g in self.options and self.options[g][0]]


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


def held(conn: Any, role: str) -> Held:
    modern = conn.info.server_version >= 160000
    rows = conn.execute(_HELD_16 if modern else _HELD_15, (role,)).fetchall()
    row = conn.execute(_INHERITS, (role,)).fetchone()
    return Held({r[0]: (bool(r[1]), bool(r[2])) for r in rows}, bool(row[0]) if row else False, modern)


def changes(role: str, member_of: Iterable[str], current: Held) -> list[Change]:
    """member_of is a SET ROLE path, never inherited privileges: the role reaches the owner's
    objects only as the owner (so what it creates belongs to the owner), and its own privileges
    are what its spec says. PostgreSQL 16+: the membership's options; before: NOINHERIT on it."""
    targets = list(member_of)
    out: list[Change] = []
    name = sql.Identifier(role)
    if not current.options_per_grant:
        if current.role_inherits:
            out.append(Change(f"make {role} NOINHERIT (member_of is SET ROLE only on PostgreSQL 15 and older)",
                              sql.SQL("ALTER ROLE {} NOINHERIT").format(name)))
        out += [Change(f"grant {g} to {role} (member_of)", sql.SQL("GRANT {} TO {}").format(sql.Identifier(g), name))
                for g in current.missing(targets)]
        return out
    for g in targets:
        if g in current.missing(targets) or g in current.inheriting(targets):
            out.append(Change(f"grant {g} to {role} WITH INHERIT FALSE, SET TRUE (member_of)",
                              sql.SQL("GRANT {} TO {} WITH INHERIT FALSE, SET TRUE").format(sql.Identifier(g), name)))
    return out


def findings(conn: Any, role: str, member_of: Iterable[str]) -> list[Any]:
    """Drift: a membership member_of gives that the role lacks, or holds with its privileges
    inherited (an extra membership is the role's own drift finding, runbook.roles.drift_findings)."""
    from runbook.grants import Finding

    targets = list(member_of)
    if not targets:
        return []
    current = held(conn, role)
    out = [Finding("membership", "", (g,), f"{role} is not a member of {g}, which its member_of gives it")
           for g in current.missing(targets)]
    out += [Finding("membership", "", (g,), f"{role} inherits {g}'s privileges; member_of is SET ROLE only")
            for g in current.inheriting(targets)]
    return out
