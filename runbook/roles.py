"""The application role itself: facts, and the statements that create, alter and drop it.

Passwords never travel as plaintext SQL: we send a SCRAM-SHA-256 verifier computed client-side
(libpq's PQencryptPasswordConn), so nothing readable reaches pg_stat_activity or server logs.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass

from psycopg import Connection, sql

from runbook.changes import Change, PasswordChange
from runbook.errors import Refused
from runbook.project import RoleSpec
from runbook.secret import Secret

_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 40) -> Secret:
    # letters and digits only: survives URLs, dotenv files and shells without quoting surprises
    return Secret("".join(secrets.choice(_ALPHABET) for _ in range(length)))


# The mark of a role pg-runbook made (or was told to adopt): a comment on the role, naming the
# project identity it serves. Roles are shared catalog objects and commenting on one needs
# CREATEROLE (PG16+: and ADMIN OPTION on it) or superuser, so the owner, the threat, cannot forge
# or move it, whereas it can write anything into a journal it can reach.
MARKER_PREFIX = "pg-runbook managed role "


@dataclass(frozen=True)
class Identity:
    """Whose role this is: one app's one environment, in one database."""

    app: str
    env: str
    database: str

    def marker(self) -> str:
        return MARKER_PREFIX + json.dumps({"app": self.app, "env": self.env, "database": self.database},
                                          sort_keys=True, separators=(",", ":"))

    def __str__(self) -> str:
        return f"app {self.app}, environment {self.env}, database {self.database}"


def parse_marker(comment: str | None) -> Identity | None:
    if not comment or not comment.startswith(MARKER_PREFIX):
        return None
    try:
        body = json.loads(comment[len(MARKER_PREFIX):])
        return Identity(str(body["app"]), str(body["env"]), str(body["database"]))
    except (ValueError, KeyError, TypeError):
        return None


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
    # roles that can use this role's privileges (SET ROLE or inherit), the admin itself left out:
    # on PG16+ the CREATEROLE admin that made the role holds an ADMIN-only membership in it
    members: tuple[str, ...] = ()
    comment: str | None = None
    admin_user: str = ""
    admin_option: bool = True            # the admin may ALTER/COMMENT it (PG16+: needs ADMIN OPTION)
    owns: int = 0                        # objects it owns in this database (an app role owns none)

    def unsafe_attributes(self, spec: RoleSpec | None = None) -> list[str]:
        """Attributes the role must not have; BYPASSRLS is wanted when the spec says `rls: bypass`."""
        bypass_ok = spec is not None and spec.rls == "bypass"
        names = [("SUPERUSER", self.superuser), ("CREATEROLE", self.createrole), ("CREATEDB", self.createdb),
                 ("REPLICATION", self.replication), ("BYPASSRLS", self.bypassrls and not bypass_ok)]
        return [n for n, on in names if on]

    @property
    def marked_for(self) -> Identity | None:
        return parse_marker(self.comment)


_FACTS = sql.SQL("""
    SELECT r.rolcanlogin, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
           COALESCE(r.rolvaliduntil < pg_catalog.now(), false), r.rolconnlimit,
           ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                 WHERE m.member = r.oid ORDER BY 1),
           ARRAY(SELECT u.rolname::text FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles u ON u.oid = m.member
                 WHERE m.roleid = r.oid AND u.rolname <> CURRENT_USER {usable} ORDER BY 1),
           pg_catalog.shobj_description(r.oid, 'pg_authid'), CURRENT_USER::text,
           {admin_option},
           (SELECT pg_catalog.count(*) FROM pg_catalog.pg_shdepend d
             WHERE d.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND d.refobjid = r.oid AND d.deptype = 'o'
               AND d.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))
    FROM pg_catalog.pg_roles r WHERE r.rolname = %s
""")


def facts(conn: Connection, name: str) -> RoleFacts:
    # PG16+ splits membership into ADMIN / INHERIT / SET options: one with neither INHERIT nor SET
    # hands the member none of the role's privileges
    usable = sql.SQL("AND (m.inherit_option OR m.set_option)" if conn.info.server_version >= 160000 else "")
    admin_option = sql.SQL("pg_catalog.pg_has_role(CURRENT_USER, r.oid, 'MEMBER WITH ADMIN OPTION')"
                           if conn.info.server_version >= 160000 else "true")
    row = conn.execute(_FACTS.format(usable=usable, admin_option=admin_option), (name,)).fetchone()
    if row is None:
        admin = conn.execute("SELECT CURRENT_USER::text").fetchone()[0]
        return RoleFacts(name, exists=False, admin_user=admin)
    return RoleFacts(name, True, *[bool(x) for x in row[:7]], int(row[7]), tuple(row[8]), tuple(row[9]),
                     row[10], row[11], bool(row[12]), int(row[13]))


def identity(ctx) -> Identity:
    """The project identity a role of this run belongs to (the database as the admin session sees it)."""
    return Identity(ctx.project.spec.app, ctx.env.name, ctx.admin().info.dbname)


def refuse_unmanageable(current: RoleFacts, ident: Identity, *, owner: str, adopt: bool) -> bool:
    """Raise Refused unless pg-runbook may manage this existing role for `ident`; True when it is
    to be adopted now (no marker yet, `role.adopt: true`). Never the owner, the admin or a
    superuser, marked or not; never another identity's; and, to adopt, never a role that owns
    objects here or that others draw privileges from."""
    name = current.name
    if name == owner:
        raise Refused(f"role {name} is the owner of the app's objects (role.owner); pg-runbook never manages "
                      "the owner: give the app its own role.name")
    if name == current.admin_user:
        raise Refused(f"role {name} is the admin user pg-runbook connects as; give the app its own role.name")
    if current.superuser:
        raise Refused(f"role {name} is a superuser; pg-runbook will not manage it (nor strip its SUPERUSER): "
                      "give the app its own role.name")
    marked = current.marked_for
    if marked is not None:
        if marked != ident:
            raise Refused(f"role {name} belongs to {marked}; refusing to manage it for {ident} "
                          "(roles are cluster-wide: give this environment its own role.name)")
        return False        # ours; members granted behind our back are drift, revoked by the role step
    if current.members:
        raise Refused(f"role {name} is granted to {', '.join(current.members)}, who would get every privilege "
                      f"pg-runbook gives it; pg-runbook adopts only a role nobody else draws on "
                      f"(REVOKE {name} FROM {current.members[0]}, or pick another role.name)")
    if current.owns:
        # role.owner may be left to default, so the owner is known by what it owns, not by its name
        raise Refused(f"role {name} owns {current.owns} object(s) in this database: it is an owner, not an app "
                      "role; pg-runbook will not manage it (give the app its own role.name)")
    if not adopt:
        raise Refused(f"role {name} already exists and pg-runbook did not create it (no pg-runbook mark on it); "
                      "to let pg-runbook take it over, set role.adopt: true (its password and privileges "
                      "will be reset to the spec)")
    if not current.admin_option:
        raise Refused(f"admin user {current.admin_user} has no ADMIN OPTION on {name} (PostgreSQL 16+ needs it to "
                      f"alter a role it did not create); as a superuser: GRANT {name} TO {current.admin_user} "
                      "WITH ADMIN OPTION, INHERIT FALSE, SET FALSE")
    return True


def refuse_unless_managed(current: RoleFacts, ident: Identity, *, owner: str, action: str,
                          adopting: bool = False) -> None:
    """For steps that change or destroy an existing role: it must already carry our mark
    (`adopting`: a plan in which the role step would adopt it first)."""
    if not current.exists:
        return
    if adopting:
        refuse_unmanageable(current, ident, owner=owner, adopt=True)
        return
    if current.marked_for is None and current.name not in (owner, current.admin_user) and not current.superuser:
        raise Refused(f"role {current.name} exists but pg-runbook did not create or adopt it (no pg-runbook mark); "
                      f"refusing to {action} it (provision with role.adopt: true first, if it is the app's)")
    refuse_unmanageable(current, ident, owner=owner, adopt=False)


def mark(name: str, ident: Identity) -> Change:
    return Change(f"mark {name} as managed by pg-runbook ({ident})",
                  sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(name), sql.Literal(ident.marker())))


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


def create(spec: RoleSpec, password: Secret | None, *, no_superuser_clause: bool = False) -> Change:
    """CREATE ROLE; with a password, a PasswordChange that carries it to apply (shown as '****')."""
    head = sql.SQL(" ").join([sql.SQL("CREATE ROLE {} WITH").format(sql.Identifier(spec.name)),
                              *_attributes(spec, no_superuser_clause=no_superuser_clause)])
    summary = f"create login role {spec.name}" + (" with a generated password (SCRAM verifier)" if password else " (no password)")
    if password is None:
        return Change(summary, head, reversible=True)
    return PasswordChange(summary, sql.SQL("{} PASSWORD {}").format(head, sql.Literal("****")), reversible=True,
                          login=spec.name, head=head, password=password)


def set_password(name: str, password: Secret, reason: str) -> PasswordChange:
    head = sql.SQL("ALTER ROLE {} WITH LOGIN").format(sql.Identifier(name))
    return PasswordChange(f"set a new password for {name} ({reason})",
                          sql.SQL("{} PASSWORD {}").format(head, sql.Literal("****")),
                          login=name, head=head, password=password)


def create_group(spec: RoleSpec, *, no_superuser_clause: bool = False) -> Change:
    """CREATE ROLE NAME NOLOGIN: the group an alternating role's logins inherit every grant from."""
    attrs = ["NOLOGIN", "NOCREATEDB", "NOCREATEROLE", "NOREPLICATION", "INHERIT"]
    if not no_superuser_clause:
        attrs.insert(1, "NOSUPERUSER")
    if spec.rls == "bypass":
        attrs.append("BYPASSRLS")
    return Change(f"create group role {spec.name} (NOLOGIN; holds every grant its logins {' and '.join(spec.logins)} "
                  "inherit)", sql.SQL("CREATE ROLE {} WITH {}").format(sql.Identifier(spec.name),
                                                                     sql.SQL(" ").join(sql.SQL(a) for a in attrs)))


def invalidate(name: str, why: str, data: dict[str, str] | None = None) -> Change:
    """NOLOGIN and PASSWORD NULL: NOLOGIN holds whatever pg_hba says (trust, cert and peer never ask for
    the password), and the verifier is gone so nothing can be replayed; a later rotation gives it a
    new one (ALTER ROLE … LOGIN PASSWORD). Open sessions are not ended: that is the drain's business."""
    return Change(f"invalidate {name}'s password and stop its logins ({why})",
                  sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD NULL").format(sql.Identifier(name)),
                  data=dict(data or {}))


def fix_attributes(spec: RoleSpec, current: RoleFacts, *, no_superuser_clause: bool, login: bool = True,
                   limit: bool | None = None) -> list[Change]:
    """One ALTER ROLE naming only what differs: PostgreSQL 16+ refuses a CREATEROLE admin any
    mention of SUPERUSER, REPLICATION or BYPASSRLS, even to switch them off on a role without them.
    BYPASSRLS is given, not dropped, when the spec says `rls: bypass`."""
    bad = current.unsafe_attributes(spec)
    bypass_missing = spec.rls == "bypass" and not current.bypassrls
    clauses: list[sql.Composable] = [sql.SQL(f"NO{b}") for b in bad]
    if bypass_missing:
        clauses.append(sql.SQL("BYPASSRLS"))
    # login=False: a group role or an idle login of an alternating role, whose NOLOGIN is wanted
    if login and not current.can_login:
        clauses.append(sql.SQL("LOGIN"))
    # limit (default: as login): an idle login keeps the spec's connection limit; a group has none
    limit = (login if limit is None else limit) and spec.connection_limit is not None \
        and spec.connection_limit != current.connection_limit
    if limit:
        clauses.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connection_limit)))
    if not clauses:
        return []
    why = ", ".join([*(f"drop {b}" for b in bad), *([] if current.can_login or not login else ["allow LOGIN"]),
                     *(["give BYPASSRLS (rls: bypass)"] if bypass_missing else []),
                     *(["connection limit"] if limit else [])])
    return [Change(f"alter role {spec.name}: {why}",
                   sql.SQL("ALTER ROLE {} WITH {}").format(sql.Identifier(spec.name), sql.SQL(" ").join(clauses)))]


def apply_all(conn: Connection, changes: list[Change]) -> None:
    """The changes in one transaction; a statement the admin may not run ends as one line, with
    nothing applied."""
    import psycopg

    with conn.transaction():
        for change in changes:
            statement = change.executable(conn)
            if statement is None:
                continue
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                why = (exc.diag.message_detail or exc.diag.message_primary or "permission denied").strip().rstrip(".")
                raise Refused(f"the admin user may not {change.summary}: {why}; nothing was changed "
                              f"(run as a superuser: {change.sql_text(conn)})") from None


def grant_memberships(name: str, roles: tuple[str, ...], current: RoleFacts) -> list[Change]:
    return [
        Change(f"grant {r} to {name}", sql.SQL("GRANT {} TO {}").format(sql.Identifier(r), sql.Identifier(name)))
        for r in roles if r not in current.member_of
    ]


def membership_drift(name: str, allowed: tuple[str, ...], current: RoleFacts,
                     members_allowed: tuple[str, ...] = ()) -> list[Change]:
    """Memberships the spec does not give, both ways: roles ours is a member of (it inherits their
    privileges, CREATEROLE included) and roles that are members of ours (they get its DML), but for
    `members_allowed` (an alternating role's own logins)."""
    role = sql.Identifier(name)
    out = [Change(f"revoke membership of {name} in {g} (the spec does not give it)",
                  sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(g), role))
           for g in current.member_of if g not in allowed]
    out += [Change(f"revoke {name} from {m} (it would reach everything {name} may)",
                   sql.SQL("REVOKE {} FROM {}").format(role, sql.Identifier(m)))
            for m in current.members if m not in members_allowed]
    return out


def attribute_drift(spec: RoleSpec, current: RoleFacts) -> list[str]:
    """Role attributes the spec does not give, as sentences (drift and diagnose report them)."""
    out = [f"{spec.name} has {a}" for a in current.unsafe_attributes(spec)]
    if spec.rls == "bypass" and not current.bypassrls:
        out.append(f"{spec.name} lacks BYPASSRLS, which the spec gives it (rls: bypass)")
    if _is_group(spec, current):
        return out          # the connection limit is its logins'
    if spec.connection_limit is not None and spec.connection_limit != current.connection_limit:
        out.append(f"{spec.name} has CONNECTION LIMIT {current.connection_limit}, the spec says {spec.connection_limit}")
    return out


def drift_findings(spec: RoleSpec, current: RoleFacts, allowed: tuple[str, ...]) -> list:
    """Attributes and memberships the spec does not give, as drift findings."""
    from runbook.grants import Finding

    if not current.exists:
        return []
    out = [Finding("role", "", (), s) for s in attribute_drift(spec, current)]
    out += [Finding("membership", "", (g,), f"{spec.name} is a member of {g}, which the spec does not give "
                    f"(it inherits or can SET ROLE to {g}'s privileges)") for g in current.member_of if g not in allowed]
    out += [Finding("membership", "", (m,), f"{spec.name} is granted to {m}, which reaches everything {spec.name} may")
            for m in current.members if not (_is_group(spec, current) and m in spec.logins)]
    return out


def _is_group(spec: RoleSpec, current: RoleFacts) -> bool:
    return spec.rotation == "alternating" and current.name == spec.name


def drift_fixes(spec: RoleSpec, current: RoleFacts, allowed: tuple[str, ...], *, no_superuser_clause: bool) -> list[Change]:
    if not current.exists:
        return []
    group = _is_group(spec, current)
    return [c for c in fix_attributes(spec, current, no_superuser_clause=no_superuser_clause, login=not group)
            if current.can_login or group] + membership_drift(spec.name, allowed, current,
                                                              spec.logins if group else ())


def role_findings(conn: Connection, spec: RoleSpec, allowed: tuple[str, ...]) -> list:
    """drift_findings for the role and, with `rotation: alternating`, for each of its logins: the
    group's grants reach the app only through them, so a login that lost its membership, gained
    another or a member, or an attribute, is drift too."""
    out = drift_findings(spec, facts(conn, spec.name), allowed)
    if spec.rotation != "alternating":
        return out
    from runbook.grants import Finding

    for login in (facts(conn, name) for name in spec.logins):
        if not login.exists:
            continue
        if login.marked_for is None:
            out.append(Finding("role", "", (login.name,), f"login {login.name} of {spec.name} carries no pg-runbook mark"))
        out += [Finding("role", "", (login.name,), f"login {login.name} has {a}") for a in login.unsafe_attributes(spec)]
        if spec.name not in login.member_of:
            out.append(Finding("membership", "", (login.name,), f"login {login.name} is not a member of {spec.name}, "
                               "so it reaches none of the grants"))
        out += [Finding("membership", "", (g,), f"login {login.name} is a member of {g}, which the spec does not give")
                for g in login.member_of if g not in (spec.name, *allowed)]
        out += [Finding("membership", "", (m,), f"login {login.name} is granted to {m}, which reaches everything "
                        f"{spec.name} may") for m in login.members]
        if spec.connection_limit is not None and login.connection_limit != spec.connection_limit:
            out.append(Finding("role", "", (login.name,), f"login {login.name} has CONNECTION LIMIT "
                               f"{login.connection_limit}, the spec says {spec.connection_limit}"))
    return out


def login_drift_fixes(spec: RoleSpec, logins: tuple[RoleFacts, ...], allowed: tuple[str, ...], *,
                      no_superuser_clause: bool) -> list[Change]:
    """`drift --fix` for an alternating role's logins (the group's own fixes are drift_fixes')."""
    out: list[Change] = []
    for login in logins:
        if not login.exists or login.marked_for is None:
            continue          # an unmarked login is refused by provision and rotate, never fixed
        lspec = spec.model_copy(update={"name": login.name})
        out += fix_attributes(lspec, login, no_superuser_clause=no_superuser_clause, login=login.can_login, limit=True)
        out += grant_memberships(login.name, (spec.name,), login)
        out += membership_drift(login.name, (spec.name, *allowed), login)
    return out
