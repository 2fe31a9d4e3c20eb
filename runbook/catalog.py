"""Set-based catalog reads: everything the role spec covers, in a few queries, as plain data.

pgbedrock's lesson: read the catalog in bulk once, then compare in plain Python. The queries
take the role's OID (NULL when the role does not exist yet, which makes every privilege false)
so one shape serves plan, drift and verify.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

from psycopg import Connection, sql

from runbook.project import SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES, RoleSpec

TABLE_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "f": "foreign table"}
DEFAULT_OBJTYPES = {"r": "tables", "S": "sequences", "f": "functions"}


class Relation(NamedTuple):
    """One table, view or sequence. A NamedTuple rather than a dataclass: a snapshot builds
    tens of thousands of them, and this is three times cheaper to construct."""

    schema: str
    name: str
    kind: str                   # pg_class.relkind: r p v m f S
    owner: str
    held: frozenset[str]        # privileges the role holds (directly, via PUBLIC or membership)
    direct: frozenset[str]      # privileges granted to the role itself (from relacl)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_sequence(self) -> bool:
        return self.kind == "S"


@dataclass(frozen=True)
class Routine:
    schema: str
    signature: str
    owner: str
    executable: bool


@dataclass(frozen=True)
class SchemaFacts:
    name: str
    exists: bool
    owner: str | None = None
    usage: bool = False
    create: bool = False
    # objtype (r, S, f) → privileges in pg_default_acl FOR ROLE owner IN SCHEMA name TO role
    defaults: dict[str, frozenset[str]] = field(default_factory=dict)
    # the same for every creator (the owner included); empty in a snapshot built without them
    by_creator: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    # creator → objtype → privileges the role gets WITH GRANT OPTION on future objects here
    grantable: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    create_direct: bool = True    # CREATE granted to the role itself (else through PUBLIC or a membership)

    def defaults_of(self, creator: str, owner: str) -> dict[str, frozenset[str]]:
        if creator in self.by_creator:
            return self.by_creator[creator]
        return self.defaults if creator == owner else {}


class ForeignGrants(NamedTuple):
    """On one relation: what its owner granted the role, and who else did. A REVOKE by the admin
    (acting as the owner) removes only the owner's grants; PostgreSQL before 19 cannot revoke as
    another grantor."""

    own: frozenset[str]
    grantors: tuple[str, ...]


@dataclass(frozen=True)
class CreatorFacts:
    """A role whose future tables the role must reach, and what the reading session may do for it."""

    name: str
    exists: bool
    can_alter: bool = True       # ALTER DEFAULT PRIVILEGES FOR ROLE it (membership; PG 16+: its privileges)
    can_set: bool = True         # SET ROLE to it (the future-table probe)


@dataclass(frozen=True)
class Snapshot:
    role: str
    role_exists: bool
    owner: str
    schemas: dict[str, SchemaFacts]
    relations: list[Relation]
    routines: list[Routine]
    database: str = ""
    can_connect: bool = True      # CONNECT on the database (PUBLIC has it unless someone hardened it)
    creators: dict[str, CreatorFacts] = field(default_factory=dict)
    # creator → objtype → privileges granted to the role by a default ACL without IN SCHEMA (every schema)
    global_defaults: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    grant_options: list[Relation] = field(default_factory=list)   # the role may pass these on: beyond any spec
    # relations where a role other than the owner granted the role something (GRANTED BY it)
    foreign: dict[str, "ForeignGrants"] = field(default_factory=dict)
    # alternating rotation on platform credentials (no group role): each other login's (spec, snapshot)
    more: tuple[tuple[Any, "Snapshot"], ...] = ()

    def creator_names(self) -> tuple[str, ...]:
        return tuple(self.creators) or (self.owner,)

    def in_schema(self, schema: str) -> list[Relation]:
        return [r for r in self.relations if r.schema == schema]


# Privileges are evaluated once per distinct (schema, kind, owner, ACL), not once per object:
# has_table_privilege depends on nothing else (bar the system-catalog rule, hence the oid test),
# and a schema of 50,000 tables granted with ON ALL … IN SCHEMA holds a handful of distinct ACLs.
# Each group comes back as one row with its members' names in an array: a few rows to send and
# decode instead of one per object. Extension members are excluded through an InitPlan array
# (a handful of relations), which keeps the planner off a hash anti-join over all of pg_class.
_RELATIONS = sql.SQL("""
SELECT g.nspname, g.relkind::text, pg_get_userbyid(g.relowner),
       ARRAY(SELECT p FROM unnest(CASE WHEN g.relkind = 'S' THEN {seqp}::text[] ELSE {tabp}::text[] END) AS p
             WHERE CASE WHEN g.relkind = 'S' THEN has_sequence_privilege({roid}::oid, g.rep, p)
                        ELSE coalesce(has_table_privilege({roid}::oid, g.rep, p), false) END),
       ARRAY(SELECT DISTINCT a.privilege_type FROM aclexplode(g.relacl) AS a WHERE a.grantee = {roid}::oid),
       g.names,
       EXISTS (SELECT 1 FROM aclexplode(g.relacl) AS a WHERE a.grantee = {roid}::oid AND a.is_grantable),
       ARRAY(SELECT DISTINCT a.privilege_type FROM aclexplode(g.relacl) AS a
             WHERE a.grantee = {roid}::oid AND a.grantor = g.relowner),
       ARRAY(SELECT DISTINCT pg_get_userbyid(a.grantor) FROM aclexplode(g.relacl) AS a
             WHERE a.grantee = {roid}::oid AND a.grantor <> g.relowner)
FROM (SELECT n.nspname, c.relkind, c.relowner, c.relacl, min(c.oid) AS rep, array_agg(c.relname::text) AS names
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = ANY({schemas})
        AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
        AND NOT c.relispartition
        AND c.oid <> ALL (ARRAY(SELECT d.objid FROM pg_depend d
                                WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'))
      GROUP BY n.nspname, c.relkind, c.relowner, c.relacl, c.oid < 16384) g
""")

# The same grouping for routines: EXECUTE depends only on the owner and proacl.
_ROUTINES = sql.SQL("""
SELECT g.nspname, pg_get_userbyid(g.proowner),
       coalesce(has_function_privilege({roid}::oid, g.rep, 'EXECUTE'), false), g.signatures
FROM (SELECT n.nspname, p.proowner, p.proacl, min(p.oid) AS rep,
             array_agg(p.oid::regprocedure::text) AS signatures
      FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = ANY({schemas})
        AND p.prokind IN ('f', 'p')
        AND NOT EXISTS (SELECT 1 FROM pg_depend d
                        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
      GROUP BY 1, 2, 3) g
""")

_SCHEMAS = sql.SQL("""
SELECT s.name, n.oid IS NOT NULL, pg_get_userbyid(n.nspowner),
       coalesce(has_schema_privilege({roid}::oid, n.oid, 'USAGE'), false),
       coalesce(has_schema_privilege({roid}::oid, n.oid, 'CREATE'), false),
       EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = {roid}::oid AND a.privilege_type = 'CREATE')
FROM unnest({schemas}::text[]) AS s(name)
LEFT JOIN pg_namespace n ON n.nspname = s.name
""")

# Default privileges the role gets from each creator: per covered schema, and without IN SCHEMA
# (schema '' below), which PostgreSQL adds to every schema's. One row per (schema, creator, type).
_DEFAULTS = sql.SQL("""
SELECT coalesce(n.nspname, ''), pg_get_userbyid(d.defaclrole), d.defaclobjtype::text,
       array_agg(DISTINCT a.privilege_type),
       coalesce(array_agg(DISTINCT a.privilege_type) FILTER (WHERE a.is_grantable), '{{}}')
FROM pg_default_acl d
CROSS JOIN LATERAL aclexplode(d.defaclacl) a
LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
WHERE d.defaclrole = ANY({creator_oids}::oid[]) AND a.grantee = {roid}::oid
  AND (d.defaclnamespace = 0 OR n.nspname = ANY({schemas}))
GROUP BY 1, 2, 3
""")

# What the reading session may do for each creator: PostgreSQL 16 split membership into SET
# (SET ROLE) and INHERIT (having its privileges, which ALTER DEFAULT PRIVILEGES FOR ROLE needs).
_CREATORS = sql.SQL("""
SELECT c.name, r.oid IS NOT NULL,
       r.oid IS NOT NULL AND CASE WHEN current_setting('server_version_num')::int >= 160000
                                  THEN pg_has_role(current_user, r.oid, 'USAGE')
                                  ELSE pg_has_role(current_user, r.oid, 'MEMBER') END,
       r.oid IS NOT NULL AND CASE WHEN current_setting('server_version_num')::int >= 160000
                                  THEN pg_has_role(current_user, r.oid, 'SET')
                                  ELSE pg_has_role(current_user, r.oid, 'MEMBER') END
FROM unnest({creators}::text[]) WITH ORDINALITY AS c(name, i)
LEFT JOIN pg_roles r ON r.rolname = c.name
ORDER BY c.i
""")


def _relations(groups: list[tuple], grantable: list[Relation] | None = None,
               foreign: dict[str, "ForeignGrants"] | None = None) -> list[Relation]:
    """Expand the per-ACL groups into relations sorted by schema and name. Members of a group
    share its frozensets, so 50,000 relations cost a handful of them. Relations whose ACL gives
    the role a grant option are added to `grantable`."""
    interned: dict[frozenset[str], frozenset[str]] = {}
    out: list[Relation] = []
    new = tuple.__new__       # what Relation._make does, minus a Python-level call per object
    with _gc_paused():
        for schema, kind, owner, held, direct, names, *option in groups:
            held, direct = frozenset(held), frozenset(direct)
            held, direct = interned.setdefault(held, held), interned.setdefault(direct, direct)
            names.sort()
            out.extend([new(Relation, (schema, name, kind, owner, held, direct)) for name in names])
            if option and option[0] and grantable is not None:
                grantable.extend(out[-len(names):])
            if len(option) == 3 and option[2] and foreign is not None:
                mine = frozenset(option[1])
                for rel in out[-len(names):]:
                    foreign[rel.qualified] = ForeignGrants(mine, tuple(sorted(option[2])))
        # stable sorts: by name (merging the groups' sorted runs), then by schema if there are several
        out.sort(key=_NAME)
        if len({g[0] for g in groups}) > 1:
            out.sort(key=_SCHEMA)
    return out


def _routines(groups: list[tuple]) -> list[Routine]:
    out = [Routine(schema, sig, owner, bool(executable))
           for schema, owner, executable, signatures in groups for sig in signatures]
    out.sort(key=_BY_SCHEMA_SIGNATURE)
    return out


_NAME = attrgetter("name")
_SCHEMA = attrgetter("schema")
_BY_SCHEMA_SIGNATURE = attrgetter("schema", "signature")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building tens of thousands of tuples triggers cyclic-GC passes that find nothing (they
    hold only strings and shared frozensets) and cost as much as the build itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def role_oid(conn: Connection, role: str) -> int | None:
    row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return int(row[0]) if row else None


def snapshot(conn: Connection, spec: RoleSpec, owner: str) -> Snapshot:
    """Read everything the spec covers: three queries, whatever the number of objects."""
    roid = role_oid(conn, spec.name)
    schemas = list(spec.schemas)
    names = list(spec.creators_for(owner))
    params = {
        "roid": sql.Literal(roid),
        "schemas": sql.Literal(schemas),
        "creators": sql.Literal(names),
        "tabp": sql.Literal(list(TABLE_PRIVILEGES)),
        "seqp": sql.Literal(list(SEQUENCE_PRIVILEGES)),
    }
    grantable: list[Relation] = []
    foreign: dict[str, ForeignGrants] = {}
    relations = _relations(conn.execute(_RELATIONS.format(**params)).fetchall(), grantable, foreign)
    routines = _routines(conn.execute(_ROUTINES.format(**params)).fetchall())
    creators = {name: CreatorFacts(name, bool(exists), bool(alter), bool(set_))
                for name, exists, alter, set_ in conn.execute(_CREATORS.format(**params)).fetchall()}
    oids = [oid for oid in (role_oid(conn, c) for c in names) if oid is not None]
    per: dict[str, dict[str, dict[str, frozenset[str]]]] = {}
    options: dict[str, dict[str, dict[str, frozenset[str]]]] = {}
    if roid is not None and oids:
        for schema, creator, objtype, privs, passable in conn.execute(
                _DEFAULTS.format(**params, creator_oids=sql.Literal(oids))).fetchall():
            per.setdefault(schema, {}).setdefault(creator, {})[objtype] = frozenset(privs)
            if passable:
                options.setdefault(schema, {}).setdefault(creator, {})[objtype] = frozenset(passable)
    facts: dict[str, SchemaFacts] = {}
    for name, exists, sowner, usage, create, create_direct in conn.execute(_SCHEMAS.format(**params)).fetchall():
        by_creator = {c: per.get(name, {}).get(c, {}) for c in names}
        facts[name] = SchemaFacts(
            name=name, exists=bool(exists), owner=sowner if exists else None, usage=bool(usage),
            create=bool(create), defaults=by_creator[owner], by_creator=by_creator, grantable=options.get(name, {}),
            create_direct=bool(create_direct),
        )
    database, can_connect = conn.execute(sql.SQL("""
        SELECT d.datname,
               CASE WHEN {roid}::oid IS NOT NULL THEN has_database_privilege({roid}::oid, d.oid, 'CONNECT')
                    ELSE d.datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(d.datacl) a
                                                     WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT') END
        FROM pg_database d WHERE d.datname = current_database()
    """).format(**params)).fetchone()
    return Snapshot(spec.name, roid is not None, owner, facts, relations, routines, database, bool(can_connect),
                    creators, {c: per.get("", {}).get(c, {}) for c in names},
                    sorted(grantable, key=attrgetter("schema", "name")), foreign)
