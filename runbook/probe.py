"""The future-table probe: prove that default privileges land, the way a migration will meet them.

Comparing ACL text trusts PostgreSQL to apply it the way we read it; peers' users report grants
that silently never reach new tables. So, inside one transaction that is always rolled back,
for each creator and each covered schema: SET ROLE the creator, create a table with a serial
column (and a deny-listed name the same way), and ask has_table_privilege /
has_sequence_privilege what the role holds on them. Nothing is left behind: the transaction
never commits, and lock_timeout bounds every wait.

Names are random per run (`runbook_probe_<hex>`), so the owner cannot pre-plant one; the
deny-listed name is one that does not exist in the schema at that moment.

Event triggers fire inside the probe, as the creator. A superuser's function is the platform's
or the admin's code (Supabase ships several, and the README's deny guard is one); any other
(a function the owner, a creator or another non-superuser owns, and so can rewrite) would run
code of the threat's choosing in the admin's session, which it could `RESET ROLE` back to. The
probe then does not run: inconclusive, naming the trigger and the fix.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from psycopg import Connection, errors as pg_errors, sql

from runbook.project import SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES, RoleSpec

if TYPE_CHECKING:
    from runbook.engine import Verdict

Status = Literal["pass", "fail", "inconclusive", "skipped"]


@dataclass(frozen=True)
class ProbeResult:
    creator: str
    schema: str
    status: Status
    detail: str
    fix: str | None = None
    deny_gap: str | None = None     # the deny-listed name a future table would be reachable under


# Event triggers that would run inside the probe and whose function a non-superuser (or the
# owner's side) controls. evtenabled O/A fire in an ordinary (origin) session.
_UNTRUSTED_TRIGGERS = sql.SQL("""
SELECT e.evtname, pg_get_userbyid(p.proowner)
FROM pg_event_trigger e
JOIN pg_proc p ON p.oid = e.evtfoid
JOIN pg_roles r ON r.oid = p.proowner
WHERE e.evtenabled IN ('O', 'A') AND e.evtevent IN ('ddl_command_start', 'ddl_command_end')
  AND (e.evttags IS NULL OR 'CREATE TABLE' = ANY(e.evttags))
  AND (NOT r.rolsuper OR (r.rolname = ANY({suspects}) AND r.rolname <> session_user))
ORDER BY 1
""")

_CREATORS = sql.SQL("""
SELECT c.name, r.oid IS NOT NULL, r.oid IS NOT NULL AND pg_has_role(session_user, r.oid, {mode})
FROM unnest({names}::text[]) WITH ORDINALITY AS c(name, i)
LEFT JOIN pg_roles r ON r.rolname = c.name
ORDER BY c.i
""")

# What the role holds on one new table and its serial's sequence: every privilege, with and
# without grant option, and what the table's ACL grants it by name.
_HELD = sql.SQL("""
SELECT ARRAY(SELECT p FROM unnest({tabp}::text[]) p WHERE has_table_privilege({role}::oid, {rel}::oid, p)),
       ARRAY(SELECT p FROM unnest({tabp}::text[]) p
             WHERE has_table_privilege({role}::oid, {rel}::oid, p || ' WITH GRANT OPTION')),
       ARRAY(SELECT DISTINCT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = {rel}::oid AND a.grantee = {role}::oid),
       ARRAY(SELECT p FROM unnest({seqp}::text[]) p WHERE has_sequence_privilege({role}::oid, {seq}::oid, p)),
       ARRAY(SELECT p FROM unnest({seqp}::text[]) p
             WHERE has_sequence_privilege({role}::oid, {seq}::oid, p || ' WITH GRANT OPTION')),
       ARRAY(SELECT DISTINCT a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = {seq}::oid AND a.grantee = {role}::oid)
""")


def _set_fix(creator: str, admin: str, modern: bool) -> str:
    return (f"GRANT {creator} TO {admin}" + (" WITH INHERIT FALSE, SET TRUE" if modern else "")
            + f" (so the admin may SET ROLE {creator}), or remove {creator} from role.creators")


def probe(conn: Connection, spec: RoleSpec, owner: str, *, lock_timeout_ms: int) -> list[ProbeResult]:
    """Every (creator, covered schema) pair, probed in one transaction that is rolled back."""
    creators = spec.creators_for(owner)
    modern = conn.info.server_version >= 160000
    admin = conn.execute("SELECT session_user").fetchone()[0]
    out: list[ProbeResult] = []
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms")))
        role = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (spec.name,)).fetchone()
        if role is None:
            return [ProbeResult("", "", "inconclusive", f"role {spec.name} does not exist: nothing to probe")]
        triggers = conn.execute(_UNTRUSTED_TRIGGERS.format(
            suspects=sql.Literal([*creators, spec.name]))).fetchall()
        if triggers:
            shown = ", ".join(f"{name} (function owned by {fowner})" for name, fowner in triggers)
            return [ProbeResult("", "", "inconclusive",
                                f"event trigger(s) {shown} would run inside the future-table probe as the creator; "
                                "not probed",
                                f"ALTER EVENT TRIGGER {triggers[0][0]} DISABLE, or make its function a superuser's")]
        facts = conn.execute(_CREATORS.format(names=sql.Literal(list(creators)),
                                              mode=sql.Literal("SET" if modern else "MEMBER"))).fetchall()
        for creator, exists, can_set in facts:
            if not exists:
                out.append(ProbeResult(creator, "", "inconclusive", f"creator {creator} does not exist",
                                       f"create it, or remove it from role.creators"))
                continue
            if not can_set:
                out.append(ProbeResult(creator, "", "inconclusive",
                                       f"{admin} cannot SET ROLE {creator}: future tables it creates not probed",
                                       _set_fix(creator, admin, modern)))
                continue
            for schema, grants in spec.schemas.items():
                out.append(_probe_one(conn, spec, role[0], creator, schema, grants))
    return out


def _deny_name(conn: Connection, spec: RoleSpec, schema: str) -> str | None:
    """A deny-listed name that applies to `schema` and is free there now."""
    names = [e.split(".", 1)[1] if "." in e else e for e in spec.denied
             if "." not in e or e.split(".", 1)[0] == schema]
    taken = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s)", (schema, names)).fetchall()}
    return next((n for n in names if n not in taken), None)


def _create(conn: Connection, creator: str, schema: str, name: str) -> tuple[int, int]:
    """CREATE TABLE schema.name (id serial) as the creator; the table's and its sequence's OIDs."""
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(creator)))
    conn.execute(sql.SQL("CREATE TABLE {}.{} (id serial)").format(sql.Identifier(schema), sql.Identifier(name)))
    conn.execute("SET LOCAL ROLE NONE")
    rel, seq = conn.execute(
        "SELECT c.oid, pg_catalog.pg_get_serial_sequence(pg_catalog.quote_ident(%s) || '.' || "
        "pg_catalog.quote_ident(%s), 'id')::pg_catalog.regclass::pg_catalog.oid "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s", (schema, name, schema, name)).fetchone()
    return rel, seq


def _held(conn: Connection, role: int, rel: int, seq: int) -> list[frozenset[str]]:
    row = conn.execute(_HELD.format(role=sql.Literal(role), rel=sql.Literal(rel), seq=sql.Literal(seq),
                                    tabp=sql.Literal(list(TABLE_PRIVILEGES)),
                                    seqp=sql.Literal(list(SEQUENCE_PRIVILEGES)))).fetchone()
    return [frozenset(v) for v in row]


def _probe_one(conn: Connection, spec: RoleSpec, role: int, creator: str, schema: str, grants) -> ProbeResult:
    exists, may_create = conn.execute(
        "SELECT n.oid IS NOT NULL, n.oid IS NOT NULL AND pg_catalog.has_schema_privilege(%s, n.oid, 'CREATE') "
        "FROM (SELECT 1) x LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = %s", (creator, schema)).fetchone()
    if not exists:
        return ProbeResult(creator, schema, "skipped", f"schema {schema} does not exist")
    if not may_create:
        return ProbeResult(creator, schema, "skipped", f"{creator} cannot create tables in {schema}")
    where = f"a table {creator} creates in {schema}"
    try:
        with conn.transaction():          # a savepoint: one pair's error leaves the others to run
            rel, seq = _create(conn, creator, schema, f"runbook_probe_{secrets.token_hex(8)}")
            t_held, t_option, t_direct, s_held, s_option, s_direct = _held(conn, role, rel, seq)
            deny = _deny_name(conn, spec, schema) if grants.tables or grants.sequences else None
            d_held = d_left = frozenset()
            if deny is not None:
                d_rel, d_seq = _create(conn, creator, schema, deny)
                # the table only: its serial's sequence is not deny-listed (`drift` matches names)
                d_held = _held(conn, role, d_rel, d_seq)[0]
                # what `drift --fix` does to a deny-listed table, then what is left must be nothing
                conn.execute(sql.SQL("REVOKE ALL ON TABLE {}.{} FROM {}").format(
                    sql.Identifier(schema), sql.Identifier(deny), sql.Identifier(spec.name)))
                d_left = _held(conn, role, d_rel, d_seq)[0]
    except pg_errors.LockNotAvailable:
        return ProbeResult(creator, schema, "inconclusive", f"{where}: lock_timeout met; not probed",
                           "retry when the database is quieter, or raise settings.lock_timeout")
    except pg_errors.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return ProbeResult(creator, schema, "inconclusive", f"{where}: could not be created ({first})")
    problems: list[str] = []
    for what, want, held, option, direct in (
            ("table", frozenset(grants.tables), t_held, t_option, t_direct),
            ("its sequence", frozenset(grants.sequences), s_held, s_option, s_direct)):
        if want - held:
            problems.append(f"{spec.name} lacks {', '.join(sorted(want - held))} on {what}")
        if direct - want:
            problems.append(f"{spec.name} gets {', '.join(sorted(direct - want))} beyond the spec on {what}")
        if option:
            problems.append(f"{spec.name} gets {', '.join(sorted(option))} WITH GRANT OPTION on {what}")
    if d_left:
        problems.append(f"a deny-listed {deny} would be reachable by {spec.name} through PUBLIC or a membership "
                        f"({', '.join(sorted(d_left))}), even after drift --fix")
    if problems:
        return ProbeResult(creator, schema, "fail", f"{where}: " + "; ".join(problems),
                           "runbook drift --fix (default privileges FOR ROLE " + creator + f" IN SCHEMA {schema})")
    gap = deny if d_held else None
    return ProbeResult(creator, schema, "pass", f"{where} is reachable as specified", deny_gap=gap)


def verdict(results: list[ProbeResult], env: str) -> tuple[str, str, str | None]:
    """(status, detail, fix) of the whole probe: a fail names schema and creator; an unprobed
    creator is inconclusive; a pass needs at least one pair actually probed."""
    bad = [r for r in results if r.status == "fail"]
    if bad:
        return "fail", "future-table probe: " + "; ".join(r.detail for r in bad[:3]), \
            f"runbook drift --env {env} --fix"
    unsure = [r for r in results if r.status == "inconclusive"]
    if unsure:
        return "inconclusive", "future-table probe: " + "; ".join(r.detail for r in unsure[:3]), unsure[0].fix
    passed = [r for r in results if r.status == "pass"]
    if not passed:
        return "inconclusive", "future-table probe: no creator can create tables in any covered schema", None
    pairs = ", ".join(f"{r.creator} in {r.schema}" for r in passed[:4]) + (" …" if len(passed) > 4 else "")
    gaps = sorted({r.deny_gap for r in passed if r.deny_gap})
    gap = (f"; a deny-listed table created later ({', '.join(gaps[:3])}) is reachable through default privileges "
           "until drift --fix revokes it (README: the deny guard event trigger closes this)") if gaps else ""
    return "pass", f"future-table probe: tables created by {pairs} are reachable as specified{gap}", None


def check(ctx: Any) -> tuple[str, str, str | None]:
    """The probe from a run's context (the admin's session), as (status, detail, fix)."""
    lock_ms = int(ctx.settings.lock_timeout.total_seconds() * 1000)
    return verdict(probe(ctx.admin(), ctx.role, ctx.owner, lock_timeout_ms=lock_ms), ctx.env.name)


def step_verdict(ctx: Any) -> Verdict:
    """The probe as a step's Verdict (verify): a fail stops the run with exit 4."""
    from runbook.engine import Verdict

    status, detail, fix = check(ctx)
    return Verdict(status, detail, fix=fix)
