"""Take the role out: no more logins, sessions ended, what it owns handed to the owner, then
the role (or the platform credential) destroyed.

Only a role pg-runbook made (or adopted) for this environment, never the owner or the admin:
retire ends with DROP OWNED, which in the owner's hands drops the app's schema and every table.
DROP OWNED runs only once REASSIGN OWNED has left the role owning nothing in this database (it
then only revokes privileges), checked in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from psycopg import Connection, sql

from providers.base import Credential
from runbook import roles
from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.engine import Step, Verdict
from runbook.errors import Refused

# what the role owns in this database, from the dependency catalog (every kind of object)
_OWNED_HERE = """
    SELECT pg_catalog.count(*) FROM pg_catalog.pg_shdepend d JOIN pg_catalog.pg_roles r ON r.oid = d.refobjid
    WHERE d.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND d.deptype = 'o' AND r.rolname = %s
      AND d.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
"""


@dataclass(frozen=True)
class RetireFacts:
    credential: Credential | None = None     # API credentials: the one to destroy
    exists: bool = False                     # SQL roles: the role is there (and ours to retire)
    owned: int = 0                           # objects it owns in this database
    sessions: int = 0                        # its open sessions
    can_act: bool = False                    # the admin may act as it (end sessions, reassign)
    name: str = ""                           # the role these facts are about
    more: tuple["RetireFacts", ...] = ()     # `rotation: alternating`: its logins, retired before the group


class DropRole(Step[RetireFacts]):
    kind = "drop_role"

    def observe(self, ctx: StepContext) -> RetireFacts:
        if ctx.api_credentials:
            if ctx.role.rotation == "alternating":     # both credentials go (and a converted `single` one left over)
                return RetireFacts(more=tuple(RetireFacts(credential=c, name=n) for n in _api_names(ctx)
                                              if (c := ctx.db.credential(n)) is not None))
            return RetireFacts(credential=ctx.platform_credential())
        group = self._facts(ctx, ctx.role.name)
        if ctx.role.rotation != "alternating":
            return group
        from runbook.alternating import refuse_login

        logins = []
        for name in ctx.role.logins:
            facts = roles.facts(ctx.admin(), name)
            refuse_login(facts, ctx.role, roles.identity(ctx), ctx.info.role_grants)
            if facts.exists:
                logins.append(self._facts(ctx, name))
        return replace(group, more=tuple(logins))

    def _facts(self, ctx: StepContext, name: str) -> RetireFacts:
        conn = ctx.admin()
        facts = roles.facts(conn, name)
        if not facts.exists:
            return RetireFacts(name=name)
        roles.refuse_unless_managed(facts, roles.identity(ctx), owner=ctx.owner, action="retire")
        row = conn.execute(
            f"""
            SELECT ({_OWNED_HERE}),
                   (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE usename = %s),
                   pg_catalog.pg_has_role(CURRENT_USER, %s, 'USAGE'),
                   (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER)
            """, (name, name, name)).fetchone()
        owned, sessions, can_act, superuser = row if row is not None else (0, 0, False, False)
        return RetireFacts(exists=True, owned=int(owned), sessions=int(sessions), can_act=bool(can_act or superuser),
                           name=name)

    def plan(self, ctx: StepContext, observed: RetireFacts) -> list[Change]:
        name = ctx.role.name
        if ctx.api_credentials and ctx.role.rotation == "alternating":
            return [Change(f"destroy credential {f.name} through the {ctx.db.key} API (after detaching it)",
                           reversible=False, data={"destroy": f.name}) for f in observed.more]
        if ctx.api_credentials:
            if observed.credential is None:
                return []
            return [Change(f"destroy credential {name} through the {ctx.db.key} API (after detaching it)", reversible=False)]
        # an alternating role's logins first, each with the same rules, then its group
        return [c for facts in (*observed.more, observed) for c in _plan_one(ctx, facts)]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        if ctx.api_credentials:
            for name in [c.data["destroy"] for c in changes if c.data.get("destroy")] or [ctx.role.name]:
                ctx.db.destroy(name)
            return
        conn = ctx.admin()
        groups: dict[str, list[Change]] = {}
        for change in changes:
            groups.setdefault(change.data["retire"], []).append(change)
        for name, own in groups.items():
            _apply_one(conn, name, own)

    def verify(self, ctx: StepContext) -> Verdict:
        if ctx.api_credentials:
            names = _api_names(ctx) if ctx.role.rotation == "alternating" else (ctx.role.name,)
            gone = all(ctx.db.credential(n) is None for n in names)
        else:
            names = (ctx.role.name, *(ctx.role.logins if ctx.role.rotation == "alternating" else ()))
            left = [n for n in names if roles.facts(ctx.admin(), n).exists]
            gone = not left
        return Verdict.ok("role removed") if gone else Verdict("fail", f"{ctx.role.name} still exists")


def _api_names(ctx: StepContext) -> tuple[str, ...]:
    # a conversion from `single` stopped half-way leaves the role's own credential beside the pair
    return (*ctx.role.logins, ctx.role.name)


def _plan_one(ctx: StepContext, observed: RetireFacts) -> list[Change]:
    name = observed.name or ctx.role.name
    if not observed.exists:
        return []
    role, owner = sql.Identifier(name), sql.Identifier(ctx.owner)
    changes = [Change(f"stop new logins as {name}", sql.SQL("ALTER ROLE {} NOLOGIN").format(role))]
    if not observed.can_act:
        # PG16+: CREATEROLE gives ADMIN on the roles it made, not their privileges; ending their
        # sessions and REASSIGN/DROP OWNED need them
        changes.append(Change(f"let the admin act for {name} (needed to end its sessions and reassign)",
                              sql.SQL("GRANT {} TO CURRENT_USER").format(role)))
    changes.append(Change(
        f"end {observed.sessions} open session(s) of {name}",
        sql.SQL("SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                "WHERE usename = {}").format(sql.Literal(name))))
    changes += [
        Change(f"hand {observed.owned} object(s) owned by {name} to {ctx.owner}",
               sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, owner), reversible=False),
        Change(f"revoke every privilege and default privilege held by {name} (it owns nothing by then)",
               sql.SQL("DROP OWNED BY {}").format(role), reversible=False),
        Change(f"drop role {name}", sql.SQL("DROP ROLE {}").format(role), reversible=False),
    ]
    return [replace(c, data={"retire": name}) for c in changes]


def _apply_one(conn: Connection[Any], name: str, changes: list[Change]) -> None:
    for change in changes[:-3]:
        _run(conn, change)
    reassign, drop_owned, drop_role = changes[-3:]
    with conn.transaction():
        _run(conn, reassign)
        # DROP OWNED drops whatever the role still owns: after the reassignment that must be nothing
        row = conn.execute(_OWNED_HERE, (name,)).fetchone()
        left = row[0] if row else 0
        if left:
            raise Refused(f"{name} still owns {left} object(s) after REASSIGN OWNED; refusing DROP OWNED "
                          "(it would drop them); nothing was dropped")
        _run(conn, drop_owned)
        _run(conn, drop_role)


def _run(conn: Connection[Any], change: Change) -> None:
    if change.statement is not None:
        conn.execute(change.statement)
