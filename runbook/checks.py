"""Checks: the runbook's four diagnose checks, and the soak checks built on them.

A check returns pass, fail or inconclusive with a detail and, when it fails, the fix. A check
that cannot get data, or errors, is inconclusive: never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from providers.base import Digest
from runbook.engine import Verdict
from runbook.errors import RunbookError
from runbook.secret import redact


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str             # pass | fail | inconclusive
    detail: str
    fix: str | None = None
    role: str | None = None     # the managed role checked (set by the verb that ran the check)

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": redact(self.detail),
                "fix": redact(self.fix) if self.fix else None, "role": self.role}


def _guard(name: str, fn) -> CheckResult:
    from runbook.pooler import PoolerRefused

    try:
        return fn()
    except PoolerRefused:
        raise                  # bad configuration (exit 2), not a check that could not look
    except RunbookError as exc:
        return CheckResult(name, "inconclusive", exc.message)
    except Exception as exc:   # a check that errors proves nothing either way
        return CheckResult(name, "inconclusive", f"{type(exc).__name__}: {redact(str(exc))[:200]}")


def check_role(ctx) -> CheckResult:
    name = ctx.role.name
    fix = f"runbook provision --env {ctx.env.name}"
    if ctx.api_credentials:
        names = ctx.role.logins      # alternating: both credentials; else the role's own
        missing = [n for n in names if ctx.db.credential(n) is None]
        if missing:
            return CheckResult("role", "fail", f"credential {', '.join(missing)} does not exist", fix)
        return CheckResult("role", "pass", f"credential {', '.join(names)} exists")
    from runbook import roles      # roles, catalog and grants bring psycopg: imported when a check reads SQL

    facts = roles.facts(ctx.admin(), name)
    if not facts.exists:
        return CheckResult("role", "fail", f"role {name} does not exist", fix)
    if ctx.role.rotation == "alternating":
        return _check_logins(ctx, facts, fix)
    if not facts.can_login:
        return CheckResult("role", "fail", f"role {name} exists but has NOLOGIN", f"ALTER ROLE {name} LOGIN, or {fix}")
    if facts.valid_until_past:
        return CheckResult("role", "fail", f"role {name}'s password has expired (VALID UNTIL)", f"runbook rotate --env {ctx.env.name}")
    if facts.unsafe_attributes(ctx.role):
        return CheckResult("role", "fail", f"role {name} has {', '.join(facts.unsafe_attributes(ctx.role))}", fix)
    extra = roles.drift_findings(ctx.role, facts, ctx.role_grants)
    if extra:
        return CheckResult("role", "fail", "; ".join(f.detail for f in extra), f"runbook drift --env {ctx.env.name} --fix")
    from runbook.app_url import url_state

    state = url_state(ctx)
    if state.logs_in is False and state.value is not None:
        return CheckResult("role", "fail", f"role {name} exists but the app's URL does not log in: {state.reason}",
                           f"runbook rotate --env {ctx.env.name}")
    how = "logs in with the app's URL" if state.logs_in else "exists (login not tried: " + (state.reason or "no URL") + ")"
    return CheckResult("role", "pass", f"role {name} {how}")


def _check_logins(ctx, group, fix: str) -> CheckResult:
    """`rotation: alternating`: the group, its two logins, and which one the app is on."""
    from runbook import roles
    from runbook.alternating import app_login, current_turn, url_login
    from runbook.app_url import url_state

    spec = ctx.role
    extra = roles.role_findings(ctx.admin(), spec, ctx.role_grants)
    if extra:
        return CheckResult("role", "fail", "; ".join(f.detail for f in extra[:3]), f"runbook drift --env {ctx.env.name} --fix")
    logins = {n: roles.facts(ctx.admin(), n) for n in spec.logins}
    live = [n for n, f in logins.items() if f.can_login] + ([spec.name] if group.can_login else [])
    turn = current_turn(ctx) if ctx.store is not None else None
    state = url_state(ctx)
    user = app_login(spec, state, turn) if turn is not None else (url_login(spec, state.value) if state.logs_in else None)
    if state.logs_in is False and state.value is not None:
        return CheckResult("role", "fail", f"the app's URL does not log in as a login of {spec.name}: {state.reason}",
                           f"runbook rotate --env {ctx.env.name}")
    if not live:
        return CheckResult("role", "fail", f"none of {', '.join(spec.logins)} can log in", fix)
    journal = "" if turn is None else (f"; the journal says {turn.current} is current" if turn.current else
                                       "; the journal names no current login yet")
    if turn is not None and turn.pending:
        journal += f"; a rotation to {turn.pending} is half-way (rerun `runbook rotate --env {ctx.env.name}`)"
    made = ", ".join(f"{n} ({'LOGIN' if f.can_login else 'NOLOGIN'})" for n, f in logins.items() if f.exists)
    on = (f"the app logs in as {user}" if state.logs_in else f"the app's URL is {user}'s ({state.reason})") if user \
        else "login not tried: " + (state.reason or "no URL")
    return CheckResult("role", "pass", f"group {spec.name} with logins {made}; {on}{journal}")


def check_grants(ctx) -> CheckResult:
    from runbook import catalog, grants

    from runbook.alternating import grant_specs

    # alternating on platform credentials: each login holds the grants (no group role)
    snaps = [(spec, catalog.snapshot(ctx.admin(), spec, ctx.owner)) for spec in grant_specs(ctx)]
    snap = snaps[0][1]
    gone = [spec.name for spec, each in snaps if not each.role_exists]
    if gone:
        return CheckResult("grants", "fail", f"role {gone[0]} does not exist", f"runbook provision --env {ctx.env.name}")
    found = [f for spec, each in snaps for f in grants.findings(spec, each)]
    if not ctx.api_credentials:
        from runbook import roles

        found = roles.role_findings(ctx.admin(), ctx.role, ctx.role_grants) + found
    if found:
        return CheckResult("grants", "fail", "; ".join(f.summary() for f in found[:3])
                           + (f" (+{len(found) - 3} more)" if len(found) > 3 else ""),
                           f"runbook drift --env {ctx.env.name} --fix")
    from runbook import rls

    # read once per check run: a soak asks for it in diagnose and in drift, at the same moment
    every = ctx.__dict__.get("_rls_found")
    if every is None:
        every = ctx.__dict__.setdefault("_rls_found", rls.role_findings(ctx.admin(), ctx))
    to = rls.grantees(ctx)       # the role, or both logins of an alternating role on platform credentials
    blocked = [f for f in every if f.who in to]
    if blocked:
        return CheckResult("grants", "fail", "; ".join(f.summary() for f in blocked[:3])
                           + (f" (+{len(blocked) - 3} more)" if len(blocked) > 3 else ""),
                           rls.fix(ctx.role, blocked, ctx.admin(), to=to))
    return CheckResult("grants", "pass", f"{len(snap.relations)} relations and {len(snap.routines)} routines as specified; no drift")


def check_url(ctx) -> CheckResult:
    from runbook.app_url import shown, url_state

    state = url_state(ctx)
    where = ", ".join(f"{k}: {v}" for k, v in ctx.app.describe().items())
    if state.value is None:
        return CheckResult("url", "fail", f"{ctx.url_var} is not set ({where})", f"runbook provision --env {ctx.env.name}")
    if state.logs_in is False:
        return CheckResult("url", "fail", f"{ctx.url_var}={shown(state.value)}: {state.reason}", f"runbook rotate --env {ctx.env.name}")
    if state.logs_in is None and isinstance(state.value, Digest):
        # the digest says the store holds the URL pg-runbook wrote, not that it still logs in (a
        # password changed behind the tool's back): unproven is never a pass. The app's own
        # sessions as the role, opened since that URL was written, are the proof it has.
        from runbook.app_url import WRITE_ONLY_PROOF

        sessions = _app_sessions_since_write(ctx, state.value)
        if sessions:
            return CheckResult("url", "pass", f"{ctx.url_var}={shown(state.value)}: login proved by {sessions} "
                               f"session(s) the app opened as {ctx.role.name} since pg-runbook wrote the URL")
        return CheckResult("url", "inconclusive", f"{ctx.url_var}={shown(state.value)}: login not proved ({state.reason})",
                           WRITE_ONLY_PROOF.format(var=ctx.url_var, env=ctx.env.name)
                           + ", or let the app connect: a session it opens as the role proves the URL (the admin "
                           "needs pg_read_all_stats to see when sessions started)")
    return CheckResult("url", "pass", f"{ctx.url_var}={shown(state.value)}")


def _app_sessions_since_write(ctx, digest: Digest) -> int:
    """Sessions of the role, opened by anything but pg-runbook since the journal's last write of
    the URL with this digest: only a working URL opens them. 0 when there is no journal to say when."""
    if ctx.store is None:
        return 0
    written = next((e.get("at") for e in reversed(ctx.store.events(ctx.env.name, limit=500))
                    if e.get("step") == "url" and (e.get("data") or {}).get("url_digest") == digest.sha256), None)
    if written is None:
        return 0
    # backend_start is NULL for sessions the admin may not see in full (pg_read_all_stats lets it)
    row = ctx.admin().execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s) AND application_name NOT LIKE 'runbook:%%' "
        "AND backend_start >= to_timestamp(%s)", (list(ctx.role.logins), float(written))).fetchone()
    return int(row[0]) if row else 0


def check_flag(ctx) -> CheckResult:
    flag = ctx.flag
    value = ctx.app.received_flag()
    on = value == Digest.of(flag.on_value) if isinstance(value, Digest) else value == flag.on_value
    off = value == Digest.of(flag.off_value) if isinstance(value, Digest) else value == flag.off_value
    if on:
        return CheckResult("flag", "pass", f"{flag.name}={flag.on_value!r} (the app uses the role)")
    if off:
        return CheckResult("flag", "fail", f"{flag.name}={flag.off_value!r}: rolled back; the app uses the owner",
                           f"runbook provision --env {ctx.env.name} once the cause is fixed")
    return CheckResult("flag", "fail", f"{flag.name} is {'unset' if value is None else repr(value)}",
                       f"runbook provision --env {ctx.env.name}")


def four_checks(ctx) -> list[CheckResult]:
    """The runbook's four checks, in order (the soak's `diagnose`)."""
    return [
        _guard("role", lambda: check_role(ctx)),
        _guard("grants", lambda: check_grants(ctx)),
        _guard("url", lambda: check_url(ctx)),
        *([_guard("flag", lambda: check_flag(ctx))] if ctx.flag is not None else []),
    ]


def diagnose(ctx) -> list[CheckResult]:
    """The runbook's four checks, in order; then the role's errors in the database log, where
    the platform has a log the tool can read."""
    results = four_checks(ctx)
    errors = _guard("errors", lambda: check_errors(ctx, required=False) or CheckResult("errors", "skip", ""))
    return results + ([errors] if errors.status != "skip" else [])


def _errors_since(ctx) -> tuple[float, str]:
    """When the flag went on (the soak's start), or the last day when no soak is on record."""
    import time

    soak = None
    if ctx.store is not None:
        soak = ctx.store.open_soak(ctx.env.name) or ctx.store.latest_soak(ctx.env.name)
    if soak:
        return float(soak["started_at"]), "since the flag went on"
    return time.time() - 86400.0, "in the last 24 h (no soak on record)"


def check_errors(ctx, max_errors: int = 0, *, required: bool = True) -> CheckResult | None:
    """The role's "permission denied" and authentication failures in the database's own log
    (`rotation: alternating`: each login's, added up; the group never logs in).

    `required` False (the check nobody wrote, on by default): None where the platform has no
    log the tool can read, instead of an inconclusive that no operator asked for."""
    from runbook import dblog

    since, when = _errors_since(ctx)
    permission_denied = auth_failed = 0
    first: list[str] = []
    partial = source = ""
    for role in ctx.role.logins:
        log = ctx.db.read_log(since, role, asked=required, admin_dsn=ctx.admin_dsn())
        if log is None or log.problem:
            if not required:
                return None
            if log is None:
                return CheckResult("errors", "inconclusive", f"{ctx.db.key}: no database log the tool can read",
                                   "on local, set database.server_log to the server's log file")
            return CheckResult("errors", "inconclusive", f"{log.source}: {log.problem}", log.fix)
        if log.text:
            # a text log attributes lines through log_line_prefix: names with spaces could forge them
            rows = ctx.admin().execute("SELECT rolname FROM pg_catalog.pg_roles UNION ALL "
                                       "SELECT datname FROM pg_catalog.pg_database").fetchall()
            problem = dblog.names_problem((r[0] for r in rows), role)
            if problem:
                return CheckResult("errors", "inconclusive", f"{log.source}: {problem}")
        if log.by_message:
            row = ctx.admin().execute("SELECT pg_catalog.current_setting('lc_messages')").fetchone()
            problem = dblog.locale_problem(str(row[0]) if row else "")
            if problem:
                return CheckResult("errors", "inconclusive", f"{log.source}: {problem}", dblog.LOCALE_FIX)
        found = dblog.count(log.records, role, since)
        permission_denied, auth_failed = permission_denied + found.permission_denied, auth_failed + found.auth_failed
        first += list(found.first)
        partial, source = partial or (log.partial or ""), log.source
    who = " and ".join(ctx.role.logins)
    summary = (f"{permission_denied} permission denied, {auth_failed} authentication failure(s) for "
               f"{who} {when} (max {max_errors}) in {source}")
    if permission_denied + auth_failed > max_errors:
        return CheckResult("errors", "fail", redact(summary + ": " + " | ".join(first)),
                           f"grant what the app needs (`runbook drift --env {ctx.env.name}`), or fix the app's URL "
                           f"(`runbook rotate --env {ctx.env.name}`); raise errors.max only for errors the app expects")
    if partial:
        return CheckResult("errors", "inconclusive", f"{summary}; {partial}, so more may be unread")
    return CheckResult("errors", "pass", summary)


def checkpoint_checks(ctx, soak) -> list[CheckResult]:
    """Every check of one soak checkpoint: the ones written, and `errors` when none were
    written and the platform has a log the tool can read."""
    results = [soak_check(ctx, check) for check in soak.checks]
    if "checks" not in soak.model_fields_set:
        extra = _guard("errors", lambda: check_errors(ctx, required=False) or CheckResult("errors", "skip", ""))
        if extra.status != "skip":
            results.append(extra)
    return results


def check_connections(ctx, application_name: str | None, min_sessions: int) -> CheckResult:
    label = f"connections{': ' + application_name if application_name else ''}"
    rows = ctx.admin().execute(
        """
        SELECT usename, count(*) FROM pg_stat_activity
        WHERE (usename = ANY(%(logins)s) OR usename = %(owner)s) AND (%(app)s::text IS NULL OR application_name = %(app)s)
          AND pid <> pg_backend_pid() AND application_name NOT LIKE 'runbook:%%'
        GROUP BY 1
        """, {"logins": list(ctx.role.logins), "owner": ctx.owner, "app": application_name}).fetchall()
    counts = dict(rows)
    # rotation: alternating: the app connects as either login of the role
    as_role, as_owner = sum(counts.get(n, 0) for n in ctx.role.logins), counts.get(ctx.owner, 0)
    if as_owner and ctx.owner != ctx.role.name and application_name:
        return CheckResult(label, "fail", f"{as_owner} session(s) of {application_name} still connect as the owner {ctx.owner}",
                           "check the app reads the new URL variable and was restarted")
    if as_role >= min_sessions:
        return CheckResult(label, "pass", f"{as_role} session(s) connected as {ctx.role.name}")
    return CheckResult(label, "inconclusive", f"no session connected as {ctx.role.name} right now (no data)")


def run_command(cmd: str, timeout: float, cwd: str, env: dict[str, str] | None = None) -> CheckResult:
    from runbook import shell

    label = f"command: {cmd}"
    try:
        res = shell.run(cmd, timeout=timeout, cwd=cwd, env=env)
    except shell.CommandTimeout:
        return CheckResult(label, "inconclusive", f"timed out after {timeout:.0f}s; it was stopped")
    except OSError as exc:
        return CheckResult(label, "inconclusive", f"could not run: {exc.strerror}")
    tail = redact("\n".join((res.stdout + res.stderr).strip().splitlines()[-3:]))[:300]
    if res.returncode == 0:
        return CheckResult(label, "pass", f"exit 0{': ' + tail if tail else ''}")
    if res.returncode in (126, 127):
        return CheckResult(label, "inconclusive", f"could not run (exit {res.returncode}): {tail}")
    return CheckResult(label, "fail", f"exit {res.returncode}: {tail}", "see the command's output above")


def http_status(url: str, status: int, timeout: float) -> Verdict:
    import httpx

    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return Verdict("inconclusive", f"{url}: {type(exc).__name__}")
    if response.status_code == status:
        return Verdict("pass", f"{url} answered {status}")
    return Verdict("fail", f"{url} answered {response.status_code}, expected {status}")


def soak_check(ctx, spec) -> CheckResult:
    """One soak check from the project's soak.checks list."""
    kind = spec.kind
    if kind == "diagnose":
        def run():
            results = four_checks(ctx)
            bad = [r for r in results if r.status == "fail"]
            unsure = [r for r in results if r.status == "inconclusive"]
            if bad:
                return CheckResult("diagnose", "fail", "; ".join(f"{r.name}: {r.detail}" for r in bad), bad[0].fix)
            if unsure:
                return CheckResult("diagnose", "inconclusive", "; ".join(f"{r.name}: {r.detail}" for r in unsure))
            return CheckResult("diagnose", "pass", "all four checks pass")
        return _guard("diagnose", run)
    if kind == "drift":
        def run():
            r = check_grants(ctx)
            if r.status == "pass":      # the catalog agrees: prove it on a future table too
                from runbook import probe

                status, detail, fix = probe.check(ctx)
                if status != "pass":
                    return CheckResult("drift", status, detail, fix)
            return CheckResult("drift", r.status, r.detail, r.fix)
        return _guard("drift", run)
    if kind == "errors":
        return _guard("errors", lambda: check_errors(ctx, spec.errors.max if spec.errors else 0))
    if kind == "connections":
        c = spec.connections
        return _guard(spec.label(), lambda: check_connections(ctx, c.application_name if c else None, c.min_sessions if c else 1))
    if kind == "command":
        from runbook.shell import child_env

        cmd = spec.command.run.replace("{env}", ctx.env.name)
        return _guard(spec.label(), lambda: run_command(cmd, spec.command.timeout.total_seconds(), str(ctx.project.base_dir),
                                                        child_env(ctx.environ, spec.command.pass_env)))
    if kind == "http":
        h = spec.http

        def run():
            v = http_status(h.url, h.status, h.timeout.total_seconds())
            return CheckResult(spec.label(), v.status, v.detail)
        return _guard(spec.label(), run)
    return CheckResult(kind, "inconclusive", f"unknown check {kind}")
