"""Alternating rotation in SQL (`role.rotation: alternating`; runbook/alternating.py says how the
current login is known): the group role and its two logins for the role and rotate_password
steps, and the drain step that ends a rotation once the app is live on the new login: wait for
the app's sessions on the old login to end, then invalidate it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from runbook import alternating as alt
from runbook import roles
from runbook.changes import Change
from runbook.context import RunState, StepContext
from runbook.durations import format_duration
from runbook.engine import Step, Verdict
from runbook.errors import ConfigError, DrainTimeout, Refused
from runbook.project import Project, RoleSpec


def refuse_unsupported(ctx: StepContext) -> None:
    if not ctx.info.password_auth:
        raise ConfigError("role.rotation: alternating needs password logins; with IAM authentication there is no "
                          "password to rotate (use rotation: single)")


@dataclass(frozen=True)
class Logins:
    group: roles.RoleFacts
    logins: tuple[roles.RoleFacts, ...]
    current: str                      # the login the app is (or is to be) on after this step
    app_user: str | None              # the login the app's URL logs in as, if it does
    turn: alt.Turn


def observe_logins(ctx: StepContext, *, adopt: bool) -> Logins:
    """The group and both logins, each refused unless ours, before anything touches them."""
    refuse_unsupported(ctx)
    conn, spec = ctx.admin(), ctx.role
    ident = roles.identity(ctx)
    group = roles.facts(conn, spec.name)
    if group.exists:
        roles.refuse_unmanageable(group, ident, owner=ctx.owner, adopt=adopt)
    logins = tuple(roles.facts(conn, name) for name in spec.logins)
    for login in logins:
        alt.refuse_login(login, spec, ident, ctx.info.role_grants)
    url = ctx.url_state() if group.exists else None
    turn = alt.current_turn(ctx)
    app_user = alt.app_login(spec, url, turn) if url is not None else None
    if app_user in spec.logins:
        current = app_user
    else:
        current = turn.pending or turn.current or spec.logins[0]
    return Logins(group, logins, current, app_user, turn)


def _login_spec(ctx: StepContext, name: str) -> RoleSpec:
    """The spec as it applies to one login (its name; the attributes and connection limit are the role's)."""
    return ctx.role.model_copy(update={"name": name})


def plan_role(ctx: StepContext, seen: Logins, adopting: bool) -> list[Change]:
    """provision: the group, then the current login (created, or given a password when the app's
    URL does not log in as it), both logins members of the group. The other login is left idle."""
    spec, info = ctx.role, ctx.info
    no_su = info.details.get("no_superuser_clause") == "1"
    ident = roles.identity(ctx)
    changes: list[Change] = []
    group = seen.group
    if not group.exists:
        changes += [roles.create_group(spec, no_superuser_clause=no_su), roles.mark(spec.name, ident)]
        group = roles.RoleFacts(spec.name, exists=True)
    else:
        if adopting:
            changes.append(roles.mark(spec.name, ident))
        # a `single` role being converted keeps LOGIN until the drain step has moved the app off it
        changes += roles.fix_attributes(spec, group, no_superuser_clause=no_su, login=False)
        changes += roles.membership_drift(spec.name, info.role_grants, group, spec.logins)
    for login in seen.logins:
        lspec = _login_spec(ctx, login.name)
        wanted = (spec.name, *info.role_grants)
        is_current = login.name == seen.current
        if not login.exists:
            if not is_current:
                continue            # made by the rotation that first needs it
            changes.append(roles.create(lspec, roles.generate_password(), no_superuser_clause=no_su))
            changes.append(roles.mark(login.name, ident))
            changes += roles.grant_memberships(login.name, wanted, login)
            continue
        changes += roles.fix_attributes(lspec, login, no_superuser_clause=no_su, login=is_current and login.can_login,
                                        limit=True)
        changes += roles.grant_memberships(login.name, wanted, login)
        if is_current and seen.app_user != login.name:
            why = "the app's URL does not log in as it" if seen.app_user is None else f"the app is on {seen.app_user}"
            changes.append(roles.set_password(login.name, roles.generate_password(), why))
    return changes


def plan_rotate(ctx: StepContext, seen: Logins) -> list[Change]:
    """rotate: a new password on the idle login, unless a rotation is half-way (then finish that
    one: its target gets a password only if the app's URL is not on it yet)."""
    spec = ctx.role
    if not seen.group.exists:
        from runbook.steps.role import raise_missing

        raise_missing(ctx)
    if not any(login.exists for login in seen.logins):
        raise ConfigError(f"{spec.name} has neither login {' nor '.join(spec.logins)} yet; run `runbook provision "
                          f"--env {ctx.env.name}` first (it moves a single role to alternating without downtime)")
    pending = seen.turn.pending
    if pending is not None and pending == seen.app_user:
        ctx.note(f"finishing the rotation of {spec.name} to {pending} that an earlier run began")
        return [Change(f"carry on the rotation of {spec.name} to {pending} (its URL is already the app's)",
                       data={"rotating_to": pending, "from": alt.other(spec, pending)})]
    if pending is not None:
        target = pending
    else:
        on = seen.app_user if seen.app_user in spec.logins else seen.current
        target = alt.other(spec, on)
    facts = next(f for f in seen.logins if f.name == target)
    no_su = ctx.info.details.get("no_superuser_clause") == "1"
    data = {"rotating_to": target, "from": alt.other(spec, target)}
    changes: list[Change] = []
    if not facts.exists:
        changes.append(roles.create(_login_spec(ctx, target), roles.generate_password(), no_superuser_clause=no_su))
        changes.append(roles.mark(target, roles.identity(ctx)))
        changes += roles.grant_memberships(target, (spec.name, *ctx.info.role_grants), facts)
    else:
        changes += roles.grant_memberships(target, (spec.name, *ctx.info.role_grants), facts)
        changes.append(roles.set_password(target, roles.generate_password(), f"rotation from {data['from']}"))
    # journalled with the result: a rerun finishes this rotation instead of starting another
    changes[0] = replace(changes[0], data={**changes[0].data, **data})
    return changes


def apply_logins(ctx: StepContext, changes: list[Change], state: RunState) -> None:
    from runbook.changes import PasswordChange

    roles.apply_all(ctx.admin(), changes)
    for change in changes:
        if isinstance(change, PasswordChange) and change.password is not None:
            state.new_password, state.login = change.password, change.login
        elif change.data.get("rotating_to"):
            state.login = change.data["rotating_to"]


@dataclass(frozen=True)
class DrainObserved:
    target: str | None = None                      # the login the app is on now
    old: tuple[tuple[str, int], ...] = ()          # logins still able to log in, with their open sessions
    record: bool = False                           # the journal does not say `target` is current yet
    api: bool = False                              # platform credentials: invalidate = rotate through the API
    destroy: bool = False                          # … a converted `single` credential: destroyed, not rotated


class Drain(Step[DrainObserved]):
    """End an alternating rotation: once the app is live on the new login (the restart step ran
    before this one), wait for its sessions on the old login to end, then invalidate the old
    login. A timeout stops the run with the old login still valid, the rotation half-way."""

    kind = "drain"

    @staticmethod
    def applies(project: Project) -> bool:
        """Left out of the playbook unless a role rotates alternating (runbook/playbook.py)."""
        return any(r.rotation == "alternating" for r in _role_specs(project))

    def observe(self, ctx: StepContext) -> DrainObserved:
        spec = ctx.role
        if not alt.alternating(spec):
            return DrainObserved()
        if ctx.api_credentials:
            return self._observe_api(ctx)
        if ctx.plan_only:
            return self._preview(ctx)
        conn = ctx.admin()
        url = ctx.url_state()
        turn = alt.current_turn(ctx)
        user = alt.app_login(spec, url, turn)
        target = ctx.state.login or (user if user in spec.logins else None)
        if target is None:
            return DrainObserved()
        ident = roles.identity(ctx)
        old: list[tuple[str, int]] = []
        for name in (alt.other(spec, target), spec.name):
            facts = roles.facts(conn, name)
            if name != spec.name:
                alt.refuse_login(facts, spec, ident, ctx.info.role_grants)
            else:
                roles.refuse_unless_managed(facts, ident, owner=ctx.owner, action="invalidate")
            if facts.exists and facts.can_login:
                old.append((name, alt.sessions(conn, name)))
        return DrainObserved(target, tuple(old), turn.current != target)

    def _observe_api(self, ctx: StepContext) -> DrainObserved:
        """Platform credentials (Heroku) have no NOLOGIN: the old one stays valid until the
        journal says the rotation to the app's login finished, and is invalidated by a rotation
        through the API, whose new password nobody was given."""
        spec = ctx.role
        single = alt.converting(ctx)
        if single is not None:
            return self._observe_conversion(ctx, single)
        turn = alt.current_turn(ctx)      # read once: api_login would read it again
        rotating = "rotate_password" in ctx.state.changed
        if ctx.plan_only and rotating and turn.pending is None:
            target = alt.other(spec, alt.api_login(ctx, turn))     # a preview switched nothing yet
        else:
            target = ctx.state.login or alt.api_login(ctx, turn)
        if not (rotating or turn.pending == target):
            return DrainObserved(target, (), turn.current != target, api=True)
        old = alt.other(spec, target)
        return DrainObserved(target, ((old, alt.sessions(ctx.admin(), old)),), True, api=True)

    def _observe_conversion(self, ctx: StepContext, single: str) -> DrainObserved:
        """A `single` credential converted to the pair: it is destroyed once the app's URL names a
        login of the pair (read from the app, never from the journal alone) and its sessions ended."""
        spec = ctx.role
        on = alt.url_login(spec, ctx.app.received_url())
        if ctx.plan_only and on not in spec.logins and "role" in ctx.state.changed:
            on = alt.api_login(ctx)          # a preview moved nothing yet
        if on not in spec.logins:
            return DrainObserved()           # the app is still on it: nothing may be taken away
        if not ctx.plan_only and not alt.conversion_recorded(ctx.rotation_events(), spec):
            raise Refused(f"credential {single} exists beside {' and '.join(spec.logins)}, and pg-runbook's journal does "
                          f"not say it converted it from rotation: single; it is left alone (destroy it yourself "
                          f"once nothing uses it, then run provision again)")
        return DrainObserved(on, ((single, alt.sessions(ctx.admin(), single)),), True, api=True, destroy=True)

    def _preview(self, ctx: StepContext) -> DrainObserved:
        """What a run would drain, from what the steps before it would change (a preview applies
        nothing, so no login has its new password yet): read-only, like every observe."""
        spec = ctx.role
        rotating = "rotate_password" in ctx.state.changed
        if not rotating and "role" not in ctx.state.changed:
            return DrainObserved()
        seen = observe_logins(ctx, adopt=spec.adopt)
        if rotating:
            on = seen.app_user if seen.app_user in spec.logins else seen.current
            target = seen.turn.pending or alt.other(spec, on)
        else:
            target = seen.current
        able = {f.name: f.can_login for f in (*seen.logins, seen.group)}
        conn = ctx.admin()
        old = tuple((n, alt.sessions(conn, n)) for n in (alt.other(spec, target), spec.name) if able.get(n))
        return DrainObserved(target, old, seen.turn.current != target)

    def plan(self, ctx: StepContext, observed: DrainObserved) -> list[Change]:
        target = observed.target
        if target is None:
            return []
        wait = format_duration(ctx.settings.drain_timeout)
        changes: list[Change] = []
        for name, open_now in observed.old:
            how = f"after its {open_now} open session(s) end (up to {wait})" if open_now else "it has no open sessions"
            data = {"current_login": target, "retired_login": name}
            if observed.destroy:
                changes.append(Change(f"destroy credential {name} through the {ctx.db.key} API, the role's `single` "
                                      f"credential before the conversion (the app is on {target}; {how})",
                                      reversible=False, data={**data, "api": True, "destroy": True}))
                continue
            if observed.api:
                changes.append(Change(f"rotate credential {name} through the {ctx.db.key} API so its password stops "
                                      f"working (the app is on {target}; {how})", data={**data, "api": True}))
                continue
            changes.append(roles.invalidate(name, f"the app is on {target}; {how}", data))
        if not changes and observed.record:
            changes.append(Change(f"record {target} as the current login of {ctx.role.name}",
                                  data={"current_login": target}))
        return changes

    def apply(self, ctx: StepContext, changes: list[Change], state: RunState) -> None:
        conn = ctx.admin()
        timeout = ctx.settings.drain_timeout.total_seconds()
        for change in changes:
            old = change.data.get("retired_login")
            if old is None:
                continue
            left = alt.drain(conn, old, timeout, ctx.session.report_progress)
            if left:
                raise DrainTimeout(
                    f"rotation of {ctx.role.name} is half-way: {left} session(s) of {old} still open after "
                    f"{format_duration(ctx.settings.drain_timeout)}; the app's URL names {change.data['current_login']} "
                    f"and {old} keeps its password; rerun `runbook rotate --env {ctx.env.name}` once they end "
                    "(or give --drain-timeout more)")
            if change.data.get("destroy"):
                ctx.db.destroy(old)
            elif change.data.get("api"):
                ctx.db.rotate(old)
            else:
                roles.apply_all(conn, [change])

    def verify(self, ctx: StepContext) -> Verdict:
        spec = ctx.role
        if not alt.alternating(spec):
            return Verdict.ok()
        if ctx.api_credentials:
            single = alt.converting(ctx)
            if single is not None:
                return Verdict("fail", f"credential {single} of the role before its conversion still exists",
                               fix=f"runbook provision --env {ctx.env.name}")
            return Verdict.ok(f"{ctx.state.login or alt.api_login(ctx)} is the current credential of {spec.name}")
        conn = ctx.admin()
        live = [name for name in (*spec.logins, spec.name) if roles.facts(conn, name).can_login]
        if len(live) != 1:
            return Verdict("fail", f"{spec.name} should have exactly one login able to log in; found "
                           f"{', '.join(live) or 'none'}", fix=f"runbook rotate --env {ctx.env.name}")
        return Verdict.ok(f"{live[0]} is the current login of {spec.name}")


def _role_specs(project: Project) -> list[RoleSpec]:
    # every role of a `roles:` map: the step stays in the playbook if any one of them alternates,
    # and observes nothing for the ones that rotate single
    return [managed.spec for managed in project.roles.values()]
