"""Set-based catalog reads: everything the role spec covers, in three queries, as plain data.

pgbedrock's lesson: read the catalog in bulk once, then compare in plain Python. The queries
take the role's OID (NULL when the role does not exist yet, which makes every privilege false)
so one shape serves plan, drift and verify.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import Connection, sql

from runbook.project import SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES, RoleSpec

TABLE_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "f": "foreign table"}
DEFAULT_OBJTYPES = {"r": "tables", "S": "sequences", "f": "functions"}


@dataclass(frozen=True)
class Relation:
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

    def in_schema(self, schema: str) -> list[Relation]:
        return [r for r in self.relations if r.schema == schema]


_RELATIONS = sql.SQL("""
SELECT n.nspname, c.relname, c.relkind::text, pg_get_userbyid(c.relowner),
       ARRAY(SELECT p FROM unnest(CASE WHEN c.relkind = 'S' THEN {seqp}::text[] ELSE {tabp}::text[] END) AS p
             WHERE CASE WHEN c.relkind = 'S' THEN has_sequence_privilege({roid}::oid, c.oid, p)
                        ELSE coalesce(has_table_privilege({roid}::oid, c.oid, p), false) END) AS held,
       ARRAY(SELECT DISTINCT a.privilege_type FROM aclexplode(c.relacl) AS a
             WHERE a.grantee = {roid}::oid) AS direct
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY({schemas})
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
""")

_ROUTINES = sql.SQL("""
SELECT n.nspname, p.oid::regprocedure::text, pg_get_userbyid(p.proowner),
       coalesce(has_function_privilege({roid}::oid, p.oid, 'EXECUTE'), false)
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY({schemas})
  AND p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
ORDER BY 1, 2
""")

_SCHEMAS = sql.SQL("""
SELECT s.name, n.oid IS NOT NULL, pg_get_userbyid(n.nspowner),
       coalesce(has_schema_privilege({roid}::oid, n.oid, 'USAGE'), false),
       coalesce(has_schema_privilege({roid}::oid, n.oid, 'CREATE'), false),
       (SELECT coalesce(json_object_agg(x.objtype, x.privs), '{{}}'::json)
          FROM (SELECT d.defaclobjtype::text AS objtype, array_agg(DISTINCT a.privilege_type) AS privs
                  FROM pg_default_acl d, aclexplode(d.defaclacl) a
                 WHERE d.defaclnamespace = n.oid AND d.defaclrole = {owner_oid}::oid
                   AND a.grantee = {roid}::oid
                 GROUP BY d.defaclobjtype) x)
FROM unnest({schemas}::text[]) AS s(name)
LEFT JOIN pg_namespace n ON n.nspname = s.name
""")


def role_oid(conn: Connection, role: str) -> int | None:
    row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return int(row[0]) if row else None


def snapshot(conn: Connection, spec: RoleSpec, owner: str) -> Snapshot:
    """Read everything the spec covers: three queries, whatever the number of objects."""
    roid = role_oid(conn, spec.name)
    owner_oid = role_oid(conn, owner)
    schemas = list(spec.schemas)
    params = {
        "roid": sql.Literal(roid),
        "owner_oid": sql.Literal(owner_oid),
        "schemas": sql.Literal(schemas),
        "tabp": sql.Literal(list(TABLE_PRIVILEGES)),
        "seqp": sql.Literal(list(SEQUENCE_PRIVILEGES)),
    }
    relations = [
        Relation(s, n, k, o, frozenset(h), frozenset(d))
        for s, n, k, o, h, d in conn.execute(_RELATIONS.format(**params)).fetchall()
    ]
    routines = [Routine(s, sig, o, bool(x)) for s, sig, o, x in conn.execute(_ROUTINES.format(**params)).fetchall()]
    facts: dict[str, SchemaFacts] = {}
    for name, exists, sowner, usage, create, defaults in conn.execute(_SCHEMAS.format(**params)).fetchall():
        facts[name] = SchemaFacts(
            name=name, exists=bool(exists), owner=sowner if exists else None, usage=bool(usage),
            create=bool(create), defaults={k: frozenset(v) for k, v in (defaults or {}).items()},
        )
    database, can_connect = conn.execute(sql.SQL("""
        SELECT d.datname,
               CASE WHEN {roid}::oid IS NOT NULL THEN has_database_privilege({roid}::oid, d.oid, 'CONNECT')
                    ELSE d.datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(d.datacl) a
                                                     WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT') END
        FROM pg_database d WHERE d.datname = current_database()
    """).format(**params)).fetchone()
    return Snapshot(spec.name, roid is not None, owner, facts, relations, routines, database, bool(can_connect))
