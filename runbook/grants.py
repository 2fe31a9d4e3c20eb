"""Grant diff: spec + snapshot → findings and the statements that converge them. Pure; no I/O.

Statements are built only with psycopg.sql. Deny-list revokes follow in the same transaction, so
a deny-listed table is never reachable in between.

Statement strategy (`_strategy`), chosen per schema, kind and privilege set from the snapshot:
`GRANT/REVOKE … ON ALL … IN SCHEMA` writes the ACL of every object of that kind in the schema,
so its cost is the schema's size; naming the objects writes only theirs, but the server also
resolves each name. Naming is used when it touches fewer than half the objects (a 1 % drift at
50,000 tables: 500 ACL writes instead of 50,000), in statements of at most `CHUNK` names; a new
role, or a drift over most of the schema, gets the one `ON ALL` statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter

from psycopg import sql

from runbook.catalog import DEFAULT_OBJTYPES, Relation, Snapshot
from runbook.changes import Change
from runbook.project import RoleSpec

_OBJ_WORD = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS"}
CHUNK = 1000          # names per targeted statement: ~30 kB of SQL, well inside any statement limit


def _strategy(touched: int, total: int) -> str:
    """'named' when naming the touched objects writes fewer ACLs than ON ALL would (each name also
    costs a lookup, so naming counts double), else 'all'."""
    return "named" if touched and 2 * touched < total else "all"


def _named(verb: str, privs: frozenset[str] | list[str], is_seq: bool, schema: str, names: list[str],
           role: sql.Identifier, total: int, why: str) -> list[Change]:
    """GRANT/REVOKE naming exactly `names`, CHUNK names per statement, in a stable order."""
    word = "sequences" if is_seq else "tables"
    nsp = sql.Identifier(schema)
    to = sql.SQL("TO" if verb == "GRANT" else "FROM")
    out = []
    names = sorted(names)
    for start in range(0, len(names), CHUNK):
        part = names[start:start + CHUNK]
        targets = sql.SQL(", ").join(sql.SQL("{}.{}").format(nsp, sql.Identifier(n)) for n in part)
        shown = f"{len(part)} of {len(names)}" if len(names) > CHUNK else f"{len(part)}"
        what = " ".join(filter(None, (verb.lower(), ", ".join(sorted(privs)), why)))
        out.append(Change(
            f"{what} on {shown} {word} in {schema} by name "
            f"({len(names)} of {total:,} {word} need it: cheaper than ON ALL {word.upper()})",
            sql.SQL("{} {} ON {} {} {} {}").format(
                sql.SQL(verb), _privs(privs), sql.SQL("SEQUENCE" if is_seq else "TABLE"), targets, to, role),
            count=len(part)))
    return out


@dataclass(frozen=True)
class Finding:
    """One thing that is not as the spec says, for humans (drift, diagnose, soak)."""

    kind: str          # unreachable | denied-reachable | extra-privilege | default-missing | schema-usage | schema-create | schema-missing | routine
    schema: str
    objects: tuple[str, ...]
    detail: str

    def summary(self) -> str:
        shown = ", ".join(self.objects[:5]) + (f" (+{len(self.objects) - 5} more)" if len(self.objects) > 5 else "")
        return f"{self.detail}: {shown}" if shown else self.detail


def _privs(privs: list[str] | frozenset[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL(p) for p in sorted(privs))


def _deny_test(spec: RoleSpec):
    """Whether the deny list names a relation (by name, or schema-qualified), as one set lookup per
    relation: it is matched tens of thousands of times."""
    names = frozenset(e for e in spec.denied if "." not in e)
    qualified = frozenset(e for e in spec.denied if "." in e)
    if not qualified:
        return lambda rel: rel.name in names
    return lambda rel: rel.name in names or rel.qualified in qualified


def _by_schema(snap: Snapshot) -> dict[str, list[Relation]]:
    out: dict[str, list[Relation]] = {}
    for schema, rels in groupby(snap.relations, key=attrgetter("schema")):   # one run per schema when sorted
        out.setdefault(schema, []).extend(rels)
    return out


def _compare(objs: list[Relation], wanted: frozenset[str], fresh: bool, foreign=None) -> tuple[int, set[str]]:
    """How many objects lack part of `wanted`, and the direct privileges beyond it; each distinct
    (held, direct) pair is compared once (a catalog snapshot shares them between objects).
    Where another grantor gave the role privileges, only the owner's are ours to revoke."""
    if fresh:
        return len(objs), set()
    lacking, extra = 0, set()
    seen: dict[tuple[frozenset[str], frozenset[str]], bool] = {}
    for r in objs:
        other = foreign.get(r.qualified) if foreign else None
        if other is not None:
            lacking += bool(wanted - r.held)
            extra |= other.own - wanted
            continue
        key = (r.held, r.direct)
        short = seen.get(key)
        if short is None:
            short = seen[key] = bool(wanted - r.held)
            extra |= r.direct - wanted
        lacking += short
    return lacking, extra


def _lacking(objs: list[Relation], wanted: frozenset[str]) -> list[str]:
    """Names of the objects that lack part of `wanted` (each distinct held set compared once)."""
    short: dict[frozenset[str], bool] = {}
    out = []
    for r in objs:
        lack = short.get(r.held)
        if lack is None:
            lack = short[r.held] = bool(wanted - r.held)
        if lack:
            out.append(r.name)
    return out


def findings(spec: RoleSpec, snap: Snapshot) -> list[Finding]:
    """Everything the spec covers that the role cannot reach, and everything denied it can."""
    out: list[Finding] = []
    role = spec.name
    by_schema = _by_schema(snap)
    is_denied = _deny_test(spec)
    if not snap.can_connect:
        out.append(Finding("connect", "", (), f"{role} lacks CONNECT on database {snap.database}"))
    for schema, grants in spec.schemas.items():
        facts = snap.schemas.get(schema)
        if facts is None or not facts.exists:
            out.append(Finding("schema-missing", schema, (), f"schema {schema} does not exist"))
            continue
        wants_any = bool(grants.tables or grants.sequences or grants.functions)
        if wants_any and not facts.usage:
            out.append(Finding("schema-usage", schema, (), f"{role} lacks USAGE on schema {schema}"))
        if facts.create:
            how = "" if facts.create_direct else (
                f" through PUBLIC or a membership (REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC, or the granting "
                "role, by hand)")
            out.append(Finding("schema-create", schema, (), f"{role} can CREATE objects in schema {schema}{how}"))
        missing: dict[str, list[str]] = {}
        extra: list[str] = []
        denied: list[str] = []
        wanted_for = {False: frozenset(grants.tables), True: frozenset(grants.sequences)}
        # relations share a few distinct privilege sets: compare each combination once
        verdicts: dict[tuple[bool, frozenset[str], frozenset[str]], tuple[str, str]] = {}
        for rel in by_schema.get(schema, ()):
            if is_denied(rel):
                if rel.held:
                    denied.append(rel.qualified)
                continue
            key = (rel.kind == "S", rel.held, rel.direct)
            verdict = verdicts.get(key)
            if verdict is None:
                wanted = wanted_for[key[0]]
                verdict = verdicts[key] = (", ".join(sorted(wanted - rel.held)), ", ".join(sorted(rel.direct - wanted)))
            lacking, beyond = verdict
            if lacking:
                missing.setdefault(lacking, []).append(rel.qualified)
            if beyond:
                other = snap.foreign.get(rel.qualified)
                by = f"; granted by {', '.join(other.grantors)}: revoke as them" if other and \
                    set(beyond.split(", ")) - other.own else ""
                extra.append(f"{rel.qualified} ({beyond}{by})")
        for privs, objs in missing.items():
            out.append(Finding("unreachable", schema, tuple(objs), f"{role} lacks {privs} on {len(objs)} object(s) in {schema}"))
        if extra:
            out.append(Finding("extra-privilege", schema, tuple(extra), f"{role} holds privileges beyond the spec in {schema}"))
        if denied:
            out.append(Finding("denied-reachable", schema, tuple(denied), f"{role} can reach deny-listed table(s) in {schema}"))
        passable = [r.qualified for r in snap.grant_options if r.schema == schema]
        if passable:
            out.append(Finding("extra-privilege", schema, tuple(passable),
                               f"{role} holds privileges WITH GRANT OPTION (it may pass them on) in {schema}"))
        if grants.functions:
            blocked = [r.signature for r in snap.routines if r.schema == schema and not r.executable]
            if blocked:
                out.append(Finding("routine", schema, tuple(blocked), f"{role} lacks EXECUTE on {len(blocked)} routine(s) in {schema}"))
        for creator in snap.creator_names():
            out.extend(_default_findings(spec, snap, schema, grants, creator))
    out.extend(_global_default_findings(spec, snap))
    return out


def verified(spec: RoleSpec, snap: Snapshot) -> list[Finding]:
    """`findings` as verification judges them: without a schema the spec names that does not exist
    (plan and drift report it; it is no privilege the role holds wrongly)."""
    return [f for f in findings(spec, snap) if f.kind != "schema-missing"]


def _wanted(grants, objtype: str) -> frozenset[str]:
    return frozenset({"r": grants.tables, "S": grants.sequences, "f": grants.functions}[objtype])


def _default_findings(spec: RoleSpec, snap: Snapshot, schema: str, grants, creator: str) -> list[Finding]:
    """What future objects `creator` makes in `schema` will lack, or give beyond the spec."""
    facts = snap.schemas[schema]
    who = snap.creators.get(creator)
    if who is not None and not who.exists:
        return [Finding("creator-missing", schema, (creator,),
                        f"creator {creator} does not exist: no default privileges can be set for it")]
    out: list[Finding] = []
    held = facts.defaults_of(creator, snap.owner)
    every = snap.global_defaults.get(creator, {})
    options = facts.grantable.get(creator, {})
    for objtype, word in DEFAULT_OBJTYPES.items():
        want = _wanted(grants, objtype)
        have = held.get(objtype, frozenset()) | every.get(objtype, frozenset())
        if objtype == "f" and not want:
            continue
        if want - have:
            out.append(Finding(
                "default-missing", schema, (creator,),
                f"future {word} in {schema} created by {creator} will not be granted to {spec.name} "
                f"(default privileges lack {', '.join(sorted(want - have))})"))
        elif held.get(objtype, frozenset()) - want and objtype != "f":
            out.append(Finding(
                "extra-privilege", schema, (creator,),
                f"default privileges on future {word} in {schema} by {creator} grant "
                f"{', '.join(sorted(held.get(objtype, frozenset()) - want))} beyond the spec"))
        if options.get(objtype):
            out.append(Finding(
                "extra-privilege", schema, (creator,),
                f"default privileges on future {word} in {schema} by {creator} grant "
                f"{', '.join(sorted(options[objtype]))} WITH GRANT OPTION"))
    return out


def _global_default_findings(spec: RoleSpec, snap: Snapshot) -> list[Finding]:
    """Default privileges without IN SCHEMA reach every schema, covered or not: beyond any per-schema spec."""
    return [Finding("extra-privilege", "", (creator,),
                    f"default privileges by {creator} in every schema (no IN SCHEMA) grant {spec.name} "
                    f"{', '.join(sorted(privs))} on future {DEFAULT_OBJTYPES[objtype]}")
            for creator in snap.creator_names()
            for objtype, privs in sorted(snap.global_defaults.get(creator, {}).items()) if privs]


def refused_creators(spec: RoleSpec, snap: Snapshot, admin: str) -> list[Finding]:
    """Creators whose default privileges need a change the reading session may not make."""
    wanted = {f.objects[0] for f in findings(spec, snap) if f.kind in ("default-missing", "extra-privilege")
              and f.objects and f.objects[0] in snap.creators}
    return [Finding("creator-refused", "", (c,),
                    f"{admin} cannot ALTER DEFAULT PRIVILEGES FOR ROLE {c} (not a member of it); "
                    f"fix: GRANT {c} TO {admin}, or run as a member of {c}")
            for c in snap.creator_names() if c in wanted and not snap.creators[c].can_alter]


def plan(spec: RoleSpec, snap: Snapshot, *, assume_role_missing: bool = False) -> list[Change]:
    """The statements that converge the role's privileges, in the order they must run."""
    role = sql.Identifier(spec.name)
    changes: list[Change] = []
    revokes: list[Change] = []
    by_schema = _by_schema(snap)
    is_denied = _deny_test(spec)
    fresh_role = assume_role_missing or not snap.role_exists
    if not snap.can_connect and snap.database:
        # a hardened database (REVOKE CONNECT … FROM PUBLIC) needs it granted by name
        changes.append(Change(f"grant CONNECT on database {snap.database}",
                              sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(snap.database), role)))
    for schema, grants in spec.schemas.items():
        facts = snap.schemas.get(schema)
        if facts is None or not facts.exists:
            continue
        nsp = sql.Identifier(schema)
        fresh = assume_role_missing or not snap.role_exists
        if (grants.tables or grants.sequences or grants.functions) and (fresh or not facts.usage):
            changes.append(Change(f"grant USAGE on schema {schema}",
                                  sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(nsp, role)))
        if facts.create and facts.create_direct and not fresh:
            changes.append(Change(f"revoke CREATE on schema {schema}",
                                  sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {}").format(nsp, role)))
        rels = by_schema.get(schema, [])
        granted_all = fresh
        for is_seq, word, wanted_list in ((False, "TABLES", grants.tables), (True, "SEQUENCES", grants.sequences)):
            wanted = frozenset(wanted_list)
            objs = [r for r in rels if (r.kind == "S") == is_seq and not is_denied(r)]
            lacking, extra = _compare(objs, wanted, fresh, snap.foreign)
            surplus = sorted(extra)
            if wanted and lacking:
                if _strategy(lacking, len(objs)) == "named":
                    names = _lacking(objs, wanted)
                    changes.extend(_named("GRANT", wanted, is_seq, schema, names, role, len(objs), ""))
                else:
                    changes.append(Change(
                        f"grant {', '.join(sorted(wanted))} on {lacking} {word.lower()} in {schema}",
                        sql.SQL("GRANT {} ON ALL {} IN SCHEMA {} TO {}").format(_privs(wanted), sql.SQL(word), nsp, role),
                        count=lacking))
                    granted_all = True
            if surplus:
                # objects holding privileges beyond the spec, grouped by exactly what is beyond it
                beyond: dict[frozenset[str], list[str]] = {}
                for r in objs:
                    if r.direct - wanted:
                        beyond.setdefault(r.direct - wanted, []).append(r.name)
                if _strategy(sum(map(len, beyond.values())), len(objs)) == "named":
                    for privs, names in sorted(beyond.items(), key=lambda kv: sorted(kv[0])):
                        changes.extend(_named("REVOKE", privs, is_seq, schema, names, role, len(objs),
                                              "(beyond the spec)"))
                else:
                    changes.append(Change(
                        f"revoke {', '.join(surplus)} (beyond the spec) on {word.lower()} in {schema}",
                        sql.SQL("REVOKE {} ON ALL {} IN SCHEMA {} FROM {}").format(_privs(surplus), sql.SQL(word), nsp, role)))
        if grants.functions:
            blocked = [r for r in snap.routines if r.schema == schema and not r.executable]
            if blocked:
                changes.append(Change(
                    f"grant EXECUTE on {len(blocked)} routines in {schema}",
                    sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO {}").format(nsp, role),
                    count=len(blocked)))
        for creator in snap.creator_names():
            who = snap.creators.get(creator)
            if who is not None and not (who.exists and who.can_alter):
                continue      # refused_creators says why; the others still converge
            changes.extend(_default_changes(spec, snap, schema, grants, creator, fresh))
        for rel in snap.grant_options:
            if rel.schema == schema and not fresh:
                # CASCADE: what the role passed on goes with its grant option
                changes.append(Change(
                    f"revoke the grant option on {rel.qualified}",
                    sql.SQL("REVOKE GRANT OPTION FOR ALL PRIVILEGES ON {} {}.{} FROM {} CASCADE").format(
                        sql.SQL("SEQUENCE" if rel.is_sequence else "TABLE"), nsp, sql.Identifier(rel.name), role)))
        # deny list: revoke whenever an ON ALL grant above could have touched it, or it is reachable now
        for rel in rels:
            if is_denied(rel) and (rel.direct or rel.held or granted_all):
                mine = _own(snap, rel)
                if rel.held and not mine and not granted_all:
                    continue  # reachable only through PUBLIC, a membership or another grantor: our REVOKE cannot help
                revokes.append(Change(
                    f"revoke everything on deny-listed {rel.qualified}",
                    sql.SQL("REVOKE ALL ON {} {}.{} FROM {}").format(
                        sql.SQL("SEQUENCE" if rel.is_sequence else "TABLE"),
                        nsp, sql.Identifier(rel.name), role)))
    for creator in snap.creator_names():
        who = snap.creators.get(creator)
        if fresh_role or (who is not None and not (who.exists and who.can_alter)):
            continue
        for objtype, privs in sorted(snap.global_defaults.get(creator, {}).items()):
            if privs:     # the per-schema grants above do not rely on them; what is left is beyond the spec
                changes.append(Change(
                    f"default privileges: stop granting {', '.join(sorted(privs))} on future "
                    f"{_OBJ_WORD[objtype].lower()} in every schema by {creator}",
                    sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE {} ON {} FROM {}").format(
                        sql.Identifier(creator), _privs(privs), sql.SQL(_OBJ_WORD[objtype]), role)))
    return changes + revokes


def _default_changes(spec: RoleSpec, snap: Snapshot, schema: str, grants, creator: str, fresh: bool) -> list[Change]:
    facts = snap.schemas[schema]
    role, nsp, who = sql.Identifier(spec.name), sql.Identifier(schema), sql.Identifier(creator)
    held = {} if fresh else facts.defaults_of(creator, snap.owner)
    options = {} if fresh else facts.grantable.get(creator, {})
    out: list[Change] = []
    for objtype, word in _OBJ_WORD.items():
        want = _wanted(grants, objtype)
        have = held.get(objtype, frozenset())      # global ones are revoked below: not relied on
        if want - have:
            out.append(Change(
                f"default privileges: future {word.lower()} in {schema} by {creator} get {', '.join(sorted(want))}",
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}").format(
                    who, nsp, _privs(want), sql.SQL(word), role)))
        if objtype != "f" and have - want:
            out.append(Change(
                f"default privileges: stop granting {', '.join(sorted(have - want))} on future {word.lower()} in {schema}"
                + ("" if creator == snap.owner else f" by {creator}"),
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} REVOKE {} ON {} FROM {}").format(
                    who, nsp, _privs(have - want), sql.SQL(word), role)))
        if options.get(objtype):
            out.append(Change(
                f"default privileges: future {word.lower()} in {schema} by {creator} without grant option",
                sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} REVOKE GRANT OPTION FOR {} ON {} FROM {}").format(
                    who, nsp, _privs(options[objtype]), sql.SQL(word), role)))
    return out


def _own(snap: Snapshot, rel: Relation) -> frozenset[str]:
    """What the relation's owner granted the role: all a REVOKE by the admin can take back."""
    other = snap.foreign.get(rel.qualified)
    return rel.direct if other is None else other.own


def unfixable(spec: RoleSpec, snap: Snapshot) -> list[Finding]:
    """Deny-listed objects reachable through PUBLIC, another role, or another grantor's GRANT:
    revoking from ours cannot help."""
    out = []
    denied = _deny_test(spec)
    for r in snap.relations:
        if not (denied(r) and r.held and not _own(snap, r)):
            continue
        other = snap.foreign.get(r.qualified)
        how = (f"granted by {', '.join(other.grantors)}; REVOKE ALL ON TABLE {r.qualified} FROM {spec.name} as them"
               if other and r.direct else
               f"through PUBLIC or a role membership; REVOKE ALL ON TABLE {r.qualified} FROM PUBLIC (or the granting role)")
        out.append(Finding("denied-reachable", r.schema, (r.qualified,),
                           f"{r.qualified} is reachable by {spec.name} {how} by hand"))
    return out


def presets_found(spec: RoleSpec, snap: Snapshot) -> list[str]:
    """The covered relations a deny preset (not `deny:` itself) matches, for plan to list."""
    from runbook.project import DENY_PRESETS

    preset = {n for p in spec.deny_presets for n in DENY_PRESETS[p]} - set(spec.deny)
    return [r.qualified for r in snap.relations if r.name in preset and r.kind != "S"]
