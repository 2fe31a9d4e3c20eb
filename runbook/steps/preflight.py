"""Before any change: the platform allows it, the server is new enough, and the admin has the
powers the rest of the playbook needs. Read-only; a problem ends the run with exit 2."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runbook.changes import Change
from runbook.context import StepContext
from runbook.engine import Step, Verdict
from runbook.errors import Refused

MIN_SERVER = 130000


@dataclass(frozen=True)
class AdminFacts:
    user: str
    server_version: int
    superuser: bool
    createrole: bool
    owner_exists: bool
    owner_member: bool
    missing_schemas: tuple[str, ...] = ()
    foreign_owned: dict[str, int] = field(default_factory=dict)


def admin_facts(conn: Any, owner: str, schemas: list[str]) -> AdminFacts:
    row = conn.execute(
        """
        SELECT current_user, current_setting('server_version_num')::int, r.rolsuper, r.rolcreaterole,
               o.oid IS NOT NULL,
               o.oid IS NOT NULL AND pg_has_role(current_user, o.oid, 'USAGE'),
               ARRAY(SELECT s FROM unnest(%(schemas)s::text[]) s
                     WHERE NOT EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = s))
        FROM pg_roles r LEFT JOIN pg_roles o ON o.rolname = %(owner)s
        WHERE r.rolname = current_user
        """,
        {"owner": owner, "schemas": schemas},
    ).fetchone()
    foreign = dict(conn.execute(
        """
        SELECT n.nspname, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r','p','v','m','f','S')
          AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
        GROUP BY 1
        """,
        {"schemas": schemas},
    ).fetchall())
    return AdminFacts(row[0], row[1], row[2], row[3], row[4], row[5], tuple(row[6]), foreign)


class AdminPower(str):
    """A preflight problem with the admin's powers only: `plan` notes it and goes on."""


@dataclass(frozen=True)
class PreflightFacts:
    admin: AdminFacts
    problems: tuple[str, ...]          # each a reason to refuse; AdminPower ones spare a preview
    plan: str | None = None            # the platform's plan / tier, for the summary line


class Preflight(Step[PreflightFacts]):
    kind = "preflight"
    mutates = False

    def observe(self, ctx: StepContext) -> PreflightFacts:
        info = ctx.info                     # raises Refused for a plan tier / state the platform rules out
        for key, value in info.details.items():
            if key.startswith("note"):
                ctx.note(value)
        conn = ctx.admin()
        facts = admin_facts(conn, ctx.owner, list(ctx.role.schemas))
        problems: list[str] = []
        if facts.server_version < MIN_SERVER:
            problems.append(f"PostgreSQL {facts.server_version // 10000} is too old; pg-runbook needs 13 or newer")
        if not ctx.api_credentials and not (facts.superuser or facts.createrole):
            problems.append(AdminPower(
                f"admin user {facts.user} can neither create roles nor is superuser; "
                f"connect as a user WITH CREATEROLE (ALTER ROLE {facts.user} CREATEROLE)"))
        if not facts.owner_exists:
            problems.append(f"owner role {ctx.owner} does not exist (role.owner); create it or fix the name")
        elif not facts.superuser and not facts.owner_member:
            problems.append(AdminPower(
                f"admin user {facts.user} is not a member of the owner {ctx.owner}, so it cannot set default "
                f"privileges FOR ROLE {ctx.owner} or grant on its tables; fix: GRANT {ctx.owner} TO {facts.user}"))
        if facts.missing_schemas:
            problems.append(f"schema(s) {', '.join(facts.missing_schemas)} named in role.schemas do not exist")
        platform = ctx.db.preflight_sql(conn)
        if platform and ctx.api_credentials and ctx.role.rotation == "single" and ctx.platform_credential() is None:
            # the URL variable is held: by the role's own alternating pair, the fix is not "detach it"
            platform = _pair_left(ctx) or platform
        problems.extend(platform)
        if ctx.managed.member_of:       # `roles:` member_of: what the platform and the targets allow
            if ctx.api_credentials:
                # the platform makes each credential's role and the owner cannot grant itself to one: what a
                # migrator is for (DDL as the owner) is the owner credential the platform gives the database
                problems.append(f"role {ctx.role.name}: member_of needs SQL roles; {ctx.db.key} credentials are made "
                                "and granted by the platform (drop member_of and run migrations with the database's "
                                "owner credential, or use another platform for a migrator)")
            else:
                from runbook import membership
                membership.refuse_unsafe(conn, ctx.role.name, ctx.managed.member_of)
        if not facts.superuser:
            for schema, count in facts.foreign_owned.items():
                ctx.note(f"{count} object(s) in {schema} are owned by roles {facts.user} cannot act for; "
                         "grants on them will be skipped by PostgreSQL and reported as drift")
        return PreflightFacts(facts, tuple(problems), info.plan)

    def plan(self, ctx: StepContext, observed: PreflightFacts) -> list[Change]:
        facts, problems = observed.admin, list(observed.problems)
        if ctx.plan_only:
            # `plan` with a read-only DSN (CI): what provision would change, and that this DSN could not
            for problem in problems:
                if isinstance(problem, AdminPower):
                    ctx.note(f"provision with this DSN would be refused: {problem}")
            problems = [p for p in problems if not isinstance(p, AdminPower)]
        if problems:
            raise Refused(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        ctx.note(f"server {facts.server_version // 10000}.{facts.server_version % 10000}"
                 f", admin {facts.user}{' (superuser)' if facts.superuser else ''}, owner {ctx.owner}"
                 + (f", plan {observed.plan}" if observed.plan else ""))
        return []

    def verify(self, ctx: StepContext) -> Verdict:
        return Verdict.ok()


def _pair_left(ctx: StepContext) -> list[str]:
    """Platform credentials: a role set back to `single` while the app's URL names a login of its
    alternating pair (asked only once the platform found the URL variable taken). A `single` run
    would have to move the app and retire both; not done: said in one line, before any change."""
    from runbook.alternating import url_user

    name = ctx.role.name
    on = url_user(ctx.app.received_url())
    if on not in ctx.role.pair:
        return []
    return [f"role {name} rotates alternating on {ctx.db.key} (the app's {ctx.url_var} logs in as {on}); going back to "
            f"rotation: single is not supported there: set rotation: alternating again, or `runbook retire --env "
            f"{ctx.env.name}` with rotation: alternating and then provision it as single"]
