"""The login role: created in SQL (password as a SCRAM verifier) or, where the platform owns
logins (Heroku), through its credentials API."""

from __future__ import annotations

from psycopg import sql

from runbook import roles
from runbook.changes import Change
from runbook.engine import Step, Verdict
from runbook.steps.app_config import url_state


class EnsureRole(Step):
    kind = "role"

    def observe(self, ctx):
        if ctx.api_credentials:
            return {"credential": ctx.db.credential(ctx.role.name)}
        conn = ctx.admin()
        facts = roles.facts(conn, ctx.role.name)
        ident = roles.identity(ctx)
        adopting = False
        if facts.exists:
            # before anything else touches it (a login try included): is this role ours to manage?
            adopting = roles.refuse_unmanageable(facts, ident, owner=ctx.owner, adopt=ctx.role.adopt)
        state = url_state(ctx) if facts.exists else None
        return {"facts": facts, "url": state, "adopting": adopting, "identity": ident}

    def plan(self, ctx, observed):
        role = ctx.role
        if ctx.api_credentials:
            if observed["credential"] is None:
                return [Change(f"create credential {role.name} through the {ctx.db.key} API")]
            ctx.credential = observed["credential"]
            return []
        info = ctx.info
        conn = None if ctx.plan_only else ctx.admin()
        no_su = info.details.get("no_superuser_clause") == "1"
        facts: roles.RoleFacts = observed["facts"]
        ident: roles.Identity = observed["identity"]
        changes: list[Change] = []
        if role.rls == "bypass" and not facts.bypassrls:
            _admin_may_bypass(ctx)
        if not facts.exists and info.login_role_api:
            # the platform makes the login (Cloud SQL IAM users); attributes and grants follow in apply
            return [Change(f"create login role {role.name} through the {ctx.db.key} API (IAM database authentication)",
                           data={"platform_create": True}), roles.mark(role.name, ident)]
        if not facts.exists:
            password = None
            if info.password_auth:
                password = roles.generate_password()
                if not ctx.plan_only:
                    ctx.new_password = password
            changes.append(roles.create(conn, role, password, no_superuser_clause=no_su))
            changes.append(roles.mark(role.name, ident))      # same transaction as the CREATE
            changes.extend(roles.grant_memberships(role.name, info.role_grants, facts))
            return changes
        if observed["adopting"]:
            changes.append(roles.mark(role.name, ident))
        if callable(getattr(ctx.db, "adjust_existing_role", None)) and (
                "cloudsqlsuperuser" in facts.member_of or facts.createrole or facts.createdb):
            # a user made through the platform's API lands in its superuser group; the platform knows how to undo that
            changes.append(Change(f"take {ctx.db.key}'s admin group and CREATEROLE/CREATEDB away from {role.name} "
                                  "(it was created through the platform's API)", data={"platform_adjust": True}))
        changes.extend(roles.fix_attributes(role, facts, no_superuser_clause=no_su))
        changes.extend(roles.grant_memberships(role.name, info.role_grants, facts))
        # the platform's own adjustment takes its admin group away; the rest is drift we revoke
        left_to_platform = ("cloudsqlsuperuser",) if any(c.data.get("platform_adjust") for c in changes) else ()
        changes.extend(roles.membership_drift(role.name, info.role_grants + left_to_platform, facts))
        state = observed["url"]
        if info.password_auth and state is not None and state.logs_in is False:
            password = roles.generate_password()
            if not ctx.plan_only:
                ctx.new_password = password
            changes.append(roles.set_password(conn, role.name, password, state.reason))
        return changes

    def apply(self, ctx, changes):
        if ctx.api_credentials:
            ctx.credential = ctx.db.create_credential(ctx.role.name)
            ctx.credential_created = True
            return
        conn = ctx.admin()
        if any(c.data.get("platform_create") for c in changes):
            ctx.db.create_login_role(conn, ctx.role.name)
            made = roles.facts(conn, ctx.role.name)
            no_su = ctx.info.details.get("no_superuser_clause") == "1"
            changes = [c for c in changes if not c.data.get("platform_create")]
            changes += roles.fix_attributes(ctx.role, made, no_superuser_clause=no_su)
            changes += roles.grant_memberships(ctx.role.name, ctx.info.role_grants, made)
        if any(c.data.get("platform_adjust") for c in changes):
            for sentence in ctx.db.adjust_existing_role(conn, ctx.role.name):
                ctx.note(sentence)
            if not roles.facts(conn, ctx.role.name).exists:
                from runbook.errors import RunbookError

                raise RunbookError(f"{ctx.role.name} was deleted through the platform's API so that it can be "
                                   f"created again in SQL; run `runbook provision --env {ctx.env.name}` again")
        roles.apply_all(conn, changes)

    def verify(self, ctx):
        if ctx.api_credentials:
            cred = ctx.credential or ctx.db.credential(ctx.role.name)
            return Verdict.ok() if cred else Verdict("fail", f"credential {ctx.role.name} is missing after create")
        facts = roles.facts(ctx.admin(), ctx.role.name)
        if not facts.exists or not facts.can_login:
            return Verdict("fail", f"role {ctx.role.name} is missing or cannot log in")
        if facts.unsafe_attributes(ctx.role):
            return Verdict("fail", f"role {ctx.role.name} still has {', '.join(facts.unsafe_attributes(ctx.role))}")
        left = roles.membership_drift(ctx.role.name, ctx.info.role_grants + ("cloudsqlsuperuser",), facts)
        if left:
            return Verdict("fail", f"role {ctx.role.name}: still needed: {left[0].summary}")
        if facts.marked_for != roles.identity(ctx):
            return Verdict("fail", f"role {ctx.role.name} does not carry pg-runbook's mark for {roles.identity(ctx)}")
        return Verdict.ok()


class RoleDrift(Step):
    """`drift --fix` for the role itself: attributes and memberships the spec does not give."""

    kind = "role_drift"

    def observe(self, ctx):
        facts = roles.facts(ctx.admin(), ctx.role.name)
        roles.refuse_unless_managed(facts, roles.identity(ctx), owner=ctx.owner, action="fix")
        return facts

    def plan(self, ctx, facts):
        if ctx.api_credentials:
            return []
        return roles.drift_fixes(ctx.role, facts, ctx.info.role_grants,
                                 no_superuser_clause=ctx.info.details.get("no_superuser_clause") == "1")

    def apply(self, ctx, changes):
        roles.apply_all(ctx.admin(), changes)

    def verify(self, ctx):
        if ctx.api_credentials:
            return Verdict.ok()
        left = roles.drift_findings(ctx.role, roles.facts(ctx.admin(), ctx.role.name), ctx.info.role_grants)
        return Verdict("fail", left[0].detail) if left else Verdict.ok()


class RotatePassword(Step):
    """A new password (or, for API credentials, a rotation through the platform)."""

    kind = "rotate_password"

    def observe(self, ctx):
        if ctx.api_credentials:
            return ctx.db.credential(ctx.role.name)
        facts = roles.facts(ctx.admin(), ctx.role.name)
        roles.refuse_unless_managed(facts, roles.identity(ctx), owner=ctx.owner, action="rotate the password of")
        return facts

    def plan(self, ctx, observed):
        if ctx.api_credentials:
            if observed is None:
                raise_missing(ctx)
            return [Change(f"rotate credential {ctx.role.name} through the {ctx.db.key} API")]
        if not observed.exists:
            raise_missing(ctx)
        if not ctx.info.password_auth:
            ctx.note("the role authenticates with IAM tokens; there is no password to rotate")
            return []
        password = roles.generate_password()
        if not ctx.plan_only:
            ctx.new_password = password
        return [roles.set_password(None if ctx.plan_only else ctx.admin(), ctx.role.name, password, "rotation")]

    def apply(self, ctx, changes):
        if ctx.api_credentials:
            ctx.credential = ctx.db.rotate(ctx.role.name)
            ctx.credential_created = True
            ctx.url_state = None
            return
        conn = ctx.admin()
        with conn.transaction():
            for change in changes:
                conn.execute(change.statement)
        ctx.url_state = None


def _admin_may_bypass(ctx) -> None:
    """`rls: bypass` where the admin cannot give BYPASSRLS is refused before anything changes."""
    from runbook.errors import Refused
    from runbook.rls import admin_may_bypass

    may, why = admin_may_bypass(ctx.admin())
    if not may:
        raise Refused(f"role.rls: bypass: {why}; write policies for {ctx.role.name} instead "
                      f"(CREATE POLICY … TO {ctx.role.name}) and drop `rls: bypass`")


def raise_missing(ctx) -> None:
    from runbook.errors import ConfigError

    raise ConfigError(f"{ctx.role.name} does not exist in {ctx.env.name}; run `runbook provision --env {ctx.env.name}` first")
