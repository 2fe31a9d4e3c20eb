"""The login role: created in SQL (password as a SCRAM verifier) or, where the platform owns
logins (Heroku), through its credentials API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from providers.base import Credential
from runbook import alternating as alt
from runbook import roles
from runbook.app_url import UrlState
from runbook.changes import Change, PasswordChange
from runbook.context import RunState, StepContext
from runbook.engine import Step, Verdict
from runbook.errors import ConfigError, Refused, RunbookError
from runbook.steps.drain import Logins, apply_logins, observe_logins, plan_role, plan_rotate


@dataclass(frozen=True)
class RoleObserved:
    credential: Credential | None = None      # API credentials: the one the platform holds
    facts: roles.RoleFacts | None = None      # SQL roles: the role as the catalog has it
    identity: roles.Identity | None = None
    adopting: bool = False                    # an unmarked role that `role.adopt: true` takes over now
    url: UrlState | None = None               # the app's URL, when the role exists
    bypass_refused: str | None = None         # `rls: bypass` wanted and the admin cannot give it: why
    logins: Logins | None = None              # `rotation: alternating`: the group and its two logins
    api_logins: tuple[tuple[str, Credential | None], ...] = ()   # alternating on API credentials: each login's
    current: str | None = None                # … and the one the app is (or is to be) on
    converting: str | None = None             # … the `single` credential the app is still attached as


def _api_logins(ctx: StepContext) -> tuple[tuple[str, Credential | None], ...]:
    return tuple((name, ctx.db.credential(name)) for name in ctx.role.logins)


def _password(changes: list[Change]) -> PasswordChange | None:
    return next((c for c in changes if isinstance(c, PasswordChange) and c.password is not None), None)


class EnsureRole(Step[RoleObserved]):
    kind = "role"

    def observe(self, ctx: StepContext) -> RoleObserved:
        if ctx.api_credentials:
            if ctx.role.rotation == "alternating":
                # no group role: both credentials are made (and granted) now, so a rotation only switches.
                # A `single` credential of the same name is being converted: the app stays on it until the
                # url step has proved the pair's current login from its own side and moved the attachment
                single = alt.converting(ctx)
                on = alt.url_login(ctx.role, ctx.app.received_url()) if single else None
                return RoleObserved(credential=ctx.platform_credential(), api_logins=_api_logins(ctx),
                                    current=alt.api_login(ctx), converting=single if on == single else None)
            return RoleObserved(credential=ctx.platform_credential())
        conn = ctx.admin()
        if ctx.role.rotation == "alternating":
            seen = observe_logins(ctx, adopt=ctx.role.adopt)
            adopting = seen.group.exists and seen.group.marked_for is None
            return RoleObserved(facts=seen.group, identity=roles.identity(ctx), adopting=adopting, logins=seen)
        facts = roles.facts(conn, ctx.role.name)
        ident = roles.identity(ctx)
        adopting = False
        if facts.exists:
            # before anything else touches it (a login try included): is this role ours to manage?
            adopting = roles.refuse_unmanageable(facts, ident, owner=ctx.owner, adopt=ctx.role.adopt)
        refused = None
        if ctx.role.rls == "bypass" and not facts.bypassrls:
            from runbook.rls import admin_may_bypass

            may, why = admin_may_bypass(conn)
            refused = None if may else why
        return RoleObserved(facts=facts, identity=ident, adopting=adopting,
                            url=ctx.url_state() if facts.exists else None, bypass_refused=refused)

    def plan(self, ctx: StepContext, observed: RoleObserved) -> list[Change]:
        role = ctx.role
        if ctx.api_credentials:
            if observed.api_logins:
                ordered = sorted(observed.api_logins, key=lambda pair: pair[0] != observed.current)
                made = [Change(f"create credential {name} through the {ctx.db.key} API ("
                               + ("the app's login)" if name == observed.current else "idle until a rotation)"),
                               data={"create_credential": name})
                        for name, cred in ordered if cred is None]
                if observed.converting is not None:
                    # not `rotating_to`: the journal must not read the conversion as a half-way rotation
                    made.append(Change(
                        f"convert {observed.converting} to alternating: the app's attachment moves to {observed.current} "
                        f"once both credentials hold every grant and {observed.current} proved them from its own side; "
                        f"{observed.converting} keeps working until its sessions end, then it is destroyed",
                        data={"converting_to": observed.current, "converting_from": observed.converting}))
                return made
            if observed.credential is None:
                return [Change(f"create credential {role.name} through the {ctx.db.key} API")]
            return []
        info = ctx.info
        no_su = info.details.get("no_superuser_clause") == "1"
        facts, ident = observed.facts, observed.identity
        assert facts is not None and ident is not None     # observe reads both for SQL roles
        changes: list[Change] = []
        if observed.bypass_refused is not None:
            # `rls: bypass` where the admin cannot give BYPASSRLS is refused before anything changes
            raise Refused(f"role.rls: bypass: {observed.bypass_refused}; write policies for {role.name} instead "
                          f"(CREATE POLICY … TO {role.name}) and drop `rls: bypass`")
        if observed.logins is not None:
            return plan_role(ctx, observed.logins, observed.adopting)
        if not facts.exists and info.login_role_api:
            # the platform makes the login (Cloud SQL IAM users); attributes and grants follow in apply
            return [Change(f"create login role {role.name} through the {ctx.db.key} API (IAM database authentication)",
                           data={"platform_create": True}), roles.mark(role.name, ident)]
        if not facts.exists:
            password = roles.generate_password() if info.password_auth else None
            changes.append(roles.create(role, password, no_superuser_clause=no_su))
            changes.append(roles.mark(role.name, ident))      # same transaction as the CREATE
            changes.extend(roles.grant_memberships(role.name, info.role_grants, facts))
            return changes
        if observed.adopting:
            changes.append(roles.mark(role.name, ident))
        if ctx.db.adjusts_existing_roles and (
                "cloudsqlsuperuser" in facts.member_of or facts.createrole or facts.createdb):
            # a user made through the platform's API lands in its superuser group; the platform knows how to undo that
            changes.append(Change(f"take {ctx.db.key}'s admin group and CREATEROLE/CREATEDB away from {role.name} "
                                  "(it was created through the platform's API)", data={"platform_adjust": True}))
        changes.extend(roles.fix_attributes(role, facts, no_superuser_clause=no_su))
        changes.extend(roles.grant_memberships(role.name, info.role_grants, facts))
        # the platform's own adjustment takes its admin group away; the rest is drift we revoke
        left_to_platform = ("cloudsqlsuperuser",) if any(c.data.get("platform_adjust") for c in changes) else ()
        changes.extend(roles.membership_drift(role.name, ctx.role_grants + left_to_platform, facts))
        url = observed.url
        if info.password_auth and url is not None and url.logs_in is False:
            changes.append(roles.set_password(role.name, roles.generate_password(), url.reason))
        return changes

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        if ctx.api_credentials:
            if ctx.role.rotation == "alternating":
                current = alt.api_login(ctx)
                for change in changes:
                    if change.data.get("converting_to"):
                        continue
                    issued = ctx.db.create_credential(change.data["create_credential"])
                    if issued.name == current:
                        state.credential, state.login = issued, current
                target = next((c.data["converting_to"] for c in changes if c.data.get("converting_to")), None)
                if target is not None:
                    # the url step attaches it (after grants): the same hand-over a rotation makes
                    cred = ctx.db.credential(target)
                    if cred is None:
                        raise RunbookError(f"credential {target} of {ctx.role.name} is missing after create; "
                                           f"run `runbook provision --env {ctx.env.name}` again")
                    state.credential, state.login = cred, target
                return
            state.credential = ctx.db.create_credential(ctx.role.name)
            return
        conn = ctx.admin()
        if ctx.role.rotation == "alternating":
            apply_logins(ctx, changes, state)
            return
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
                raise RunbookError(f"{ctx.role.name} was deleted through the platform's API so that it can be "
                                   f"created again in SQL; run `runbook provision --env {ctx.env.name}` again")
        roles.apply_all(conn, changes)
        password = _password(changes)
        if password is not None:
            state.new_password = password.password

    def verify(self, ctx: StepContext) -> Verdict:
        if ctx.api_credentials:
            if ctx.role.rotation == "alternating":
                missing = [name for name, cred in _api_logins(ctx) if cred is None]
                return Verdict("fail", f"credential(s) {', '.join(missing)} missing after create") if missing \
                    else Verdict.ok(f"credentials {', '.join(ctx.role.logins)}")
            cred = ctx.platform_credential()
            return Verdict.ok() if cred else Verdict("fail", f"credential {ctx.role.name} is missing after create")
        facts = roles.facts(ctx.admin(), ctx.role.name)
        if ctx.role.rotation == "alternating":
            return _verify_logins(ctx, facts)
        return _verify_role(ctx, facts)

    def verify_unchanged(self, ctx: StepContext, observed: RoleObserved) -> Verdict:
        # nothing was applied since observe read the role's facts: judge those, not a second read
        if ctx.api_credentials or ctx.role.rotation == "alternating" or observed.facts is None:
            return self.verify(ctx)
        return _verify_role(ctx, observed.facts)


def _verify_role(ctx: StepContext, facts: roles.RoleFacts) -> Verdict:
    if not facts.exists or not facts.can_login:
        return Verdict("fail", f"role {ctx.role.name} is missing or cannot log in")
    if facts.unsafe_attributes(ctx.role):
        return Verdict("fail", f"role {ctx.role.name} still has {', '.join(facts.unsafe_attributes(ctx.role))}")
    left = roles.membership_drift(ctx.role.name, ctx.role_grants + ("cloudsqlsuperuser",), facts)
    if left:
        return Verdict("fail", f"role {ctx.role.name}: still needed: {left[0].summary}")
    if facts.marked_for != roles.identity(ctx):
        return Verdict("fail", f"role {ctx.role.name} does not carry pg-runbook's mark for {roles.identity(ctx)}")
    return Verdict.ok()


def _verify_logins(ctx: StepContext, group: roles.RoleFacts) -> Verdict:
    spec, ident = ctx.role, roles.identity(ctx)
    if not group.exists or group.marked_for != ident:
        return Verdict("fail", f"group role {spec.name} is missing or does not carry pg-runbook's mark for {ident}")
    if group.unsafe_attributes(spec):
        return Verdict("fail", f"role {spec.name} still has {', '.join(group.unsafe_attributes(spec))}")
    made = [f for f in (roles.facts(ctx.admin(), n) for n in spec.logins) if f.exists]
    if not any(f.can_login for f in made) and not group.can_login:
        return Verdict("fail", f"none of {', '.join(spec.logins)} can log in")
    for login in made:
        if login.marked_for != ident or spec.name not in login.member_of or login.unsafe_attributes(spec):
            return Verdict("fail", f"login {login.name} is not a marked, plain member of {spec.name}")
    return Verdict.ok(f"group {spec.name} with login(s) {', '.join(f.name for f in made)}")


@dataclass(frozen=True)
class LoginsDrift:
    group: roles.RoleFacts
    logins: tuple[roles.RoleFacts, ...]


class RoleDrift(Step["roles.RoleFacts | LoginsDrift"]):
    """`drift --fix` for the role itself: attributes and memberships the spec does not give
    (`rotation: alternating`: for the group and each of its logins)."""

    kind = "role_drift"

    def observe(self, ctx: StepContext) -> roles.RoleFacts | LoginsDrift:
        facts = roles.facts(ctx.admin(), ctx.role.name)
        roles.refuse_unless_managed(facts, roles.identity(ctx), owner=ctx.owner, action="fix")
        if ctx.role.rotation == "alternating":
            return LoginsDrift(facts, tuple(roles.facts(ctx.admin(), n) for n in ctx.role.logins))
        return facts

    def plan(self, ctx: StepContext, observed: roles.RoleFacts | LoginsDrift) -> list[Change]:
        if ctx.api_credentials:
            return []
        no_su = ctx.info.details.get("no_superuser_clause") == "1"
        if isinstance(observed, LoginsDrift):
            return roles.drift_fixes(ctx.role, observed.group, ctx.role_grants, no_superuser_clause=no_su) \
                + roles.login_drift_fixes(ctx.role, observed.logins, ctx.role_grants, no_superuser_clause=no_su)
        return roles.drift_fixes(ctx.role, observed, ctx.role_grants, no_superuser_clause=no_su)

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        roles.apply_all(ctx.admin(), changes)

    def verify(self, ctx: StepContext) -> Verdict:
        if ctx.api_credentials:
            return Verdict.ok()
        left = roles.role_findings(ctx.admin(), ctx.role, ctx.role_grants)
        return Verdict("fail", left[0].detail) if left else Verdict.ok()


@dataclass(frozen=True)
class RotateObserved:
    credential: Credential | None = None      # API credentials: the one to rotate
    facts: roles.RoleFacts | None = None      # SQL roles
    logins: Logins | None = None              # `rotation: alternating`
    api_logins: tuple[tuple[str, Credential | None], ...] = ()   # alternating on API credentials
    current: str | None = None                # … the login the app's URL names


class RotatePassword(Step[RotateObserved]):
    """A new password (or, for API credentials, a rotation through the platform)."""

    kind = "rotate_password"

    def observe(self, ctx: StepContext) -> RotateObserved:
        if ctx.api_credentials:
            if ctx.role.rotation == "alternating":
                single = alt.converting(ctx)
                if single is not None:
                    raise ConfigError(f"credential {single} exists beside the pair of {ctx.role.name} (a conversion from "
                                      f"rotation: single half-way?); run `runbook provision --env {ctx.env.name}` first, "
                                      "which finishes a conversion it began and refuses otherwise")
                return RotateObserved(api_logins=_api_logins(ctx), current=alt.api_login(ctx))
            return RotateObserved(credential=ctx.platform_credential())
        if ctx.role.rotation == "alternating":
            seen = observe_logins(ctx, adopt=False)
            if seen.group.exists and seen.group.marked_for is None:
                roles.refuse_unless_managed(seen.group, roles.identity(ctx), owner=ctx.owner,
                                            action="rotate the logins of")
            return RotateObserved(logins=seen)
        facts = roles.facts(ctx.admin(), ctx.role.name)
        roles.refuse_unless_managed(facts, roles.identity(ctx), owner=ctx.owner, action="rotate the password of")
        return RotateObserved(facts=facts)

    def plan(self, ctx: StepContext, observed: RotateObserved) -> list[Change]:
        if ctx.api_credentials and observed.api_logins:
            return _plan_switch(ctx, observed)
        if ctx.api_credentials:
            if observed.credential is None:
                raise_missing(ctx)
            return [Change(f"rotate credential {ctx.role.name} through the {ctx.db.key} API")]
        if observed.logins is not None:
            return plan_rotate(ctx, observed.logins)
        if observed.facts is None or not observed.facts.exists:
            raise_missing(ctx)
        if not ctx.info.password_auth:
            ctx.note("the role authenticates with IAM tokens; there is no password to rotate")
            return []
        return [roles.set_password(ctx.role.name, roles.generate_password(), "rotation")]

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        if ctx.api_credentials and ctx.role.rotation == "alternating":
            target = changes[0].data["rotating_to"]
            cred = ctx.db.credential(target)
            if cred is None:
                raise_missing(ctx)
            state.credential, state.login = cred, target
            return
        if ctx.api_credentials:
            state.credential = ctx.db.rotate(ctx.role.name)
            return
        if ctx.role.rotation == "alternating":
            apply_logins(ctx, changes, state)
            return
        conn = ctx.admin()
        with conn.transaction():
            for change in changes:
                statement = change.executable(conn)
                if statement is not None:
                    conn.execute(statement)
        password = _password(changes)
        if password is not None:
            state.new_password = password.password


def _plan_switch(ctx: StepContext, observed: RotateObserved) -> list[Change]:
    """Alternating on API credentials: the app's attachment moves to the idle credential (its
    password was made new when it was last invalidated, or when provision created it); the drain
    step then rotates the old one through the API. A half-way rotation is finished, not restarted."""
    spec = ctx.role
    on = observed.current or spec.logins[0]
    turn = alt.current_turn(ctx)
    made = {name: cred for name, cred in observed.api_logins}
    if not any(made.values()):
        raise_missing(ctx)
    if turn.pending is not None and turn.pending == on:
        ctx.note(f"finishing the rotation of {spec.name} to {on} that an earlier run began")
        target = on
        what = f"carry on the rotation of {spec.name} to {on} (the app's attachment is already its)"
    else:
        target = turn.pending or alt.other(spec, on)
        what = f"attach credential {target} to the app in place of {alt.other(spec, target)}"
    if made.get(target) is None:
        raise ConfigError(f"credential {target} of {spec.name} does not exist; run `runbook provision --env "
                          f"{ctx.env.name}` first (it creates both logins of an alternating role)")
    return [Change(what, data={"rotating_to": target, "from": alt.other(spec, target)})]


def raise_missing(ctx: StepContext) -> NoReturn:
    raise ConfigError(f"{ctx.role.name} does not exist in {ctx.env.name}; run `runbook provision --env {ctx.env.name}` first")
