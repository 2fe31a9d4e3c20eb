"""Row-level security: tables the role reaches but whose rows it will never see.

A table with RLS enabled (`relrowsecurity`) shows a role no rows and refuses its writes unless a
permissive policy applies to it (by name, through a role it inherits, or PUBLIC), or the role
has BYPASSRLS. The owner usually bypasses RLS, which is why an app that moves from the owner to
a role with grants but no policy suddenly reads nothing (Supabase enables RLS by default).
`FORCE ROW LEVEL SECURITY` subjects the owner too: such tables are called out for it.

One catalog read (`read`), then a pure comparison (`findings`): one row per RLS-enabled table
in the covered schemas, whatever their number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from psycopg import sql

from runbook.project import RoleSpec

# pg_policy.polcmd → the privilege it governs ("*" is ALL)
_CMD = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}
_RLS_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


class RlsTable(NamedTuple):
    schema: str
    name: str
    owner: str
    forced: bool
    held: frozenset[str]            # SELECT/INSERT/UPDATE/DELETE the role holds now
    role_cmds: frozenset[str]       # commands a permissive policy covers for the role (or PUBLIC)
    owner_cmds: frozenset[str]      # the same for the table's owner
    owner_bypasses: bool            # the owner is superuser or BYPASSRLS

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class RlsFacts:
    role_exists: bool
    role_bypasses: bool             # superuser or BYPASSRLS: RLS never applies
    tables: list[RlsTable]


@dataclass(frozen=True)
class RlsFinding:
    """A table the role reaches (or will, per the spec) with RLS on and no policy for `commands`."""

    table: str
    owner: str
    commands: tuple[str, ...]
    who: str                        # the role, or the owner for a FORCE ROW LEVEL SECURITY table

    def summary(self) -> str:
        if self.who == self.owner:
            return (f"{self.table} has FORCE ROW LEVEL SECURITY and no policy for its owner {self.owner} "
                    f"({', '.join(self.commands)}): the owner sees no rows either")
        return (f"{self.table} has row-level security and no policy for {self.who} "
                f"({', '.join(self.commands)}): reads return no rows, writes fail")


# One round trip: the role's facts, LEFT JOINed to one row per RLS-enabled table (none: one row of NULLs).
_READ = sql.SQL("""
WITH r AS (SELECT oid, rolsuper OR rolbypassrls AS bypass FROM pg_roles WHERE rolname = {name})
SELECT (SELECT oid FROM r) IS NOT NULL, coalesce((SELECT bypass FROM r), false), t.*
FROM (SELECT (SELECT oid FROM r) AS roid) AS me
LEFT JOIN LATERAL (
  SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner), c.relforcerowsecurity,
         ARRAY(SELECT p FROM unnest({privs}::text[]) p
               WHERE me.roid IS NOT NULL AND has_table_privilege(me.roid, c.oid, p)),
         ARRAY(SELECT DISTINCT pol.polcmd::text FROM pg_policy pol
               WHERE pol.polrelid = c.oid AND pol.polpermissive
                 AND (0::oid = ANY (pol.polroles)
                      OR (me.roid IS NOT NULL
                          AND EXISTS (SELECT 1 FROM unnest(pol.polroles) AS x(oid)
                                      WHERE x.oid <> 0 AND pg_has_role(me.roid, x.oid, 'USAGE'))))),
         ARRAY(SELECT DISTINCT pol.polcmd::text FROM pg_policy pol
               WHERE pol.polrelid = c.oid AND pol.polpermissive
                 AND (0::oid = ANY (pol.polroles)
                      OR EXISTS (SELECT 1 FROM unnest(pol.polroles) AS x(oid)
                                 WHERE x.oid <> 0 AND pg_has_role(c.relowner, x.oid, 'USAGE')))),
         o.rolsuper OR o.rolbypassrls
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_roles o ON o.oid = c.relowner
  WHERE n.nspname = ANY ({schemas}) AND c.relkind IN ('r', 'p') AND c.relrowsecurity
    AND NOT c.relispartition      -- reached through its parent, whose policies apply
) AS t ON true
ORDER BY 3, 4
""")


def read(conn, spec: RoleSpec) -> RlsFacts:
    """The RLS-enabled tables of the covered schemas and the policies that apply, in one query."""
    rows = conn.execute(_READ.format(name=sql.Literal(spec.name), schemas=sql.Literal(list(spec.schemas)),
                                     privs=sql.Literal(list(_RLS_PRIVILEGES)))).fetchall()
    exists, bypasses = bool(rows[0][0]), bool(rows[0][1])
    tables = [RlsTable(schema, name, owner, bool(forced), frozenset(held), _commands(role_cmds),
                       _commands(owner_cmds), bool(owner_bypasses))
              for _, _, schema, name, owner, forced, held, role_cmds, owner_cmds, owner_bypasses in rows
              if schema is not None]
    return RlsFacts(exists, bypasses, tables)


def _commands(polcmds: list[str]) -> frozenset[str]:
    if "*" in polcmds:
        return frozenset(_RLS_PRIVILEGES)
    return frozenset(_CMD[c] for c in polcmds if c in _CMD)


def _denied(spec: RoleSpec, table: RlsTable) -> bool:
    return table.name in spec.denied or table.qualified in spec.denied


def findings(spec: RoleSpec, facts: RlsFacts, *, bypass: bool | None = None) -> list[RlsFinding]:
    """Pure. For the role: every RLS table it reaches (the privileges it holds, plus those the
    spec grants on tables it does not deny) with a command no permissive policy covers, unless the
    role bypasses RLS (or will: `rls: bypass`). For owners: FORCE tables with no policy for them."""
    bypassing = facts.role_bypasses if bypass is None else bypass
    out: list[RlsFinding] = []
    for t in facts.tables:
        if not bypassing and t.owner != spec.name:
            granted = frozenset() if _denied(spec, t) else frozenset(
                p for p in spec.schemas[t.schema].tables if p in _RLS_PRIVILEGES) if t.schema in spec.schemas else frozenset()
            missing = sorted((t.held | granted) - t.role_cmds, key=_RLS_PRIVILEGES.index)
            if missing:
                out.append(RlsFinding(t.qualified, t.owner, tuple(missing), spec.name))
        if t.forced and not t.owner_bypasses:
            missing = [p for p in _RLS_PRIVILEGES if p not in t.owner_cmds]
            if missing:
                out.append(RlsFinding(t.qualified, t.owner, tuple(missing), t.owner))
    return out


def grantees(ctx) -> tuple[str, ...]:
    """Who a policy must name to reach the app: the role (a group role's logins inherit what its
    policies give it), or, where there is no group role (alternating on platform credentials:
    Heroku), both of its logins, the idle one included, so a rotation changes nothing."""
    from runbook.alternating import grant_specs

    return tuple(spec.name for spec in grant_specs(ctx))


def role_findings(conn, ctx, *, planned: bool = False) -> list[RlsFinding]:
    """`findings` for each grantee (one catalog read each); an owner's FORCE finding once.
    `planned`: as `check`'s, BYPASSRLS judged by what provision will give too."""
    from runbook.alternating import grant_specs

    out: list[RlsFinding] = []
    for spec in grant_specs(ctx):
        facts = read(conn, spec)
        bypass = (facts.role_bypasses or role_bypass_wanted(ctx.role)) if planned else None
        out += [f for f in findings(spec, facts, bypass=bypass) if f not in out]
    return out


def fix(spec: RoleSpec, found: list[RlsFinding], conn=None, *, to: tuple[str, ...] = ()) -> str:
    """The fix for the first of the role's findings: a policy per missing command (the USING clause
    is the operator's rule, not ours), or `rls: bypass`. `to`: the roles the policy names (default:
    the role; its two logins where there is no group role)."""
    to = to or (spec.name,)
    first = next((f for f in found if f.who in to), None)
    if first is None:
        return ("FORCE ROW LEVEL SECURITY applies to the owner too: add a policy for it, or "
                "ALTER TABLE … NO FORCE ROW LEVEL SECURITY")
    schema, _, table = first.table.partition(".")
    statements = []
    for command in first.commands:
        stmt = sql.SQL("CREATE POLICY {} ON {}.{} FOR {} TO {} {}").format(
            sql.Identifier(f"{spec.name}_{command.lower()}"), sql.Identifier(schema), sql.Identifier(table),
            sql.SQL(command), sql.SQL(", ").join(map(sql.Identifier, to)),
            sql.SQL("WITH CHECK (<rule>)" if command == "INSERT" else "USING (<rule>)"))
        statements.append(stmt.as_string(conn))
    tables = {f.table for f in found if f.who in to}
    more = f" (and the same on {len(tables) - 1} more table(s))" if len(tables) > 1 else ""
    return (f"{'; '.join(statements)}{more}; or set role.rls: bypass to give {spec.name} BYPASSRLS "
            "(where the admin may grant it)")


def admin_may_bypass(conn) -> tuple[bool, str]:
    """Whether the admin can give a role BYPASSRLS: a superuser can; from PostgreSQL 16 a CREATEROLE
    role that has BYPASSRLS itself can too. Before 16, only a superuser."""
    su, createrole, bypass, version = conn.execute(
        "SELECT rolsuper, rolcreaterole, rolbypassrls, current_setting('server_version_num')::int "
        "FROM pg_roles WHERE rolname = current_user").fetchone()
    if su or (version >= 160000 and createrole and bypass):
        return True, ""
    if version < 160000:
        return False, f"only a superuser can give BYPASSRLS on PostgreSQL {version // 10000}"
    return False, "the admin needs CREATEROLE and BYPASSRLS itself to give BYPASSRLS"


def role_bypass_wanted(spec: RoleSpec) -> bool:
    return getattr(spec, "rls", "enforce") == "bypass"


def check(ctx, *, planned: bool = False):
    """For the engine's steps: the role's findings as a failing Verdict (None when there are none);
    owners' FORCE findings become notes. `planned`: judge by what provision will do (the spec's
    grants, and BYPASSRLS when `rls: bypass`), for plan."""
    from runbook.engine import Verdict

    spec, to = ctx.role, grantees(ctx)
    found = role_findings(ctx.admin(), ctx, planned=planned)     # each login where there is no group role
    for f in found:
        if f.who not in to:
            ctx.note(f.summary())
    mine = [f for f in found if f.who in to]
    if not mine:
        return None
    shown = "; ".join(f.summary() for f in mine[:3]) + (f" (+{len(mine) - 3} more)" if len(mine) > 3 else "")
    return Verdict("fail", shown, fix=fix(spec, mine, ctx.admin(), to=to))
