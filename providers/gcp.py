"""Google Cloud plumbing shared by `cloudsql` and `cloudrun`: config field types, the API client,
JSON bodies, and waiting on long-running operations (sqladmin's and google.longrunning's).

The OAuth token and Google's error envelope live in providers.gcp_auth.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from providers.base import OpenContext
from providers.gcp_auth import GoogleAuth, google_error
from providers.http import UNDECLARED, ApiClient, RateBudget, shared_budget
from runbook.durations import format_duration, parse_duration
from runbook.errors import ProviderError

_PROJECT = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")   # optional domain: prefix


def _project_id(v: str) -> str:
    if not _PROJECT.match(v):
        raise ValueError(f"project {v!r} is not a Google Cloud project id (e.g. my-project-123)")
    return v


#: a Google Cloud project id, checked when the project file is read
ProjectId = Annotated[str, AfterValidator(_project_id)]
#: a duration as operators write it (10ms, 2s, 10m)
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def api_client(ctx: OpenContext, auth: GoogleAuth, budget: RateBudget | None, *,
               title: str, url_env: str, default_url: str) -> ApiClient:
    """A retrying client for one Google API; `url_env` in the run's environment overrides the base URL."""
    return ApiClient(
        title, ctx.environ.get(url_env) or default_url, headers={"Accept": "application/json"},
        retry=ctx.retry, transport=ctx.http_transport,   # type: ignore[arg-type]
        budget=budget or shared_budget(ctx.budget_key or auth.account_key, UNDECLARED, ctx.runtime), runtime=ctx.runtime,
        describe_error=google_error,
    )


def json_body(response: Any, what: str) -> dict[str, Any]:
    """The JSON object of an answer ({} when empty); one clear line when it is not JSON."""
    try:
        body = response.json() if response.content else {}
    except ValueError:
        raise ProviderError(f"{what} answered with something that is not JSON") from None
    return body if isinstance(body, dict) else {}


def wait_operation(operation: dict[str, Any], *, api: str, what: str, poll: Callable[[str], dict[str, Any]],
                   done: Callable[[dict[str, Any]], bool], interval: timedelta, timeout: timedelta,
                   sleep: Callable[[float], None], follow: str,
                   state: Callable[[dict[str, Any]], str] = lambda op: "in progress",
                   report: Callable[[str, float | None, bool], None] | None = None) -> dict[str, Any]:
    """Poll `operation` by name until `done`, at most `timeout` apart by `interval`, and return it.

    Bounded twice: by the wall clock and by the number of polls the timeout allows, so a recorded
    (non-sleeping) `sleep` in tests still ends the wait. Errors inside the finished operation are
    the caller's to read: their shapes differ between APIs. `report(state, seconds left, done)` is
    called on each change of `state` and once at the end (the operator's progress display)."""
    name = operation.get("name")
    seconds, step = timeout.total_seconds(), interval.total_seconds()
    deadline, polls_left = time.monotonic() + seconds, max(1, int(seconds / max(step, 1e-3)))
    last: str | None = None
    while True:
        finished = done(operation)
        now = state(operation)
        if report is not None and (now != last or finished):
            report(now, None if finished else max(0.0, deadline - time.monotonic()), finished)
        last = now
        if finished:
            break
        if not name:
            raise ProviderError(f"{api}: {what} returned no operation to follow")
        polls_left -= 1
        if time.monotonic() >= deadline or polls_left < 0:
            raise ProviderError(f"{api}: {what} is still {state(operation)} after {format_duration(timeout)}; "
                                f"follow it with `{follow}`")
        sleep(step)
        operation = poll(name)
    return operation
