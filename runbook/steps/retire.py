"""Take the role out: no more logins, sessions ended, what it owns handed to the owner, then
the role (or the platform credential) destroyed."""

from __future__ import annotations

from psycopg import sql

from runbook import roles
from runbook.changes import Change
from runbook.engine import Step, Verdict


class DropRole(Step):
    kind = "drop_role"

    def observe(self, ctx):
        if ctx.api_credentials:
            return {"credential": ctx.db.credential(ctx.role.name)}
        conn = ctx.admin()
        facts = roles.facts(conn, ctx.role.name)
        if not facts.exists:
            return {"facts": facts}
        owned, sessions, can_act, superuser = conn.execute(
            """
            SELECT (SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = %(r)s),
                   (SELECT count(*) FROM pg_stat_activity WHERE usename = %(r)s),
                   pg_has_role(current_user, %(r)s, 'USAGE'),
                   (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
            """, {"r": ctx.role.name}).fetchone()
        return {"facts": facts, "owned": owned, "sessions": sessions, "can_act": can_act or superuser}

    def plan(self, ctx, observed):
        name = ctx.role.name
        if ctx.api_credentials:
            if observed["credential"] is None:
                return []
            return [Change(f"destroy credential {name} through the {ctx.db.key} API (after detaching it)", reversible=False)]
        if not observed["facts"].exists:
            return []
        role, owner = sql.Identifier(name), sql.Identifier(ctx.owner)
        changes = [Change(f"stop new logins as {name}", sql.SQL("ALTER ROLE {} NOLOGIN").format(role))]
        if not observed["can_act"]:
            # PG16+: CREATEROLE gives ADMIN on the roles it made, not their privileges; ending their
            # sessions and REASSIGN/DROP OWNED need them
            changes.append(Change(f"let the admin act for {name} (needed to end its sessions and reassign)",
                                  sql.SQL("GRANT {} TO CURRENT_USER").format(role)))
        changes.append(Change(
            f"end {observed['sessions']} open session(s) of {name}",
            sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}").format(sql.Literal(name))))
        changes += [
            Change(f"hand {observed['owned']} object(s) owned by {name} to {ctx.owner}",
                   sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, owner), reversible=False),
            Change(f"revoke every privilege and default privilege held by {name}",
                   sql.SQL("DROP OWNED BY {}").format(role), reversible=False),
            Change(f"drop role {name}", sql.SQL("DROP ROLE {}").format(role), reversible=False),
        ]
        return changes

    def apply(self, ctx, changes):
        if ctx.api_credentials:
            ctx.db.destroy(ctx.role.name)
            return
        conn = ctx.admin()
        for change in changes[:-3]:
            conn.execute(change.statement)
        with conn.transaction():
            for change in changes[-3:]:
                conn.execute(change.statement)

    def verify(self, ctx):
        if ctx.api_credentials:
            gone = ctx.db.credential(ctx.role.name) is None
        else:
            gone = not roles.facts(ctx.admin(), ctx.role.name).exists
        return Verdict.ok("role removed") if gone else Verdict("fail", f"{ctx.role.name} still exists")
