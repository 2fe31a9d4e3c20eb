"""providers.aws: every AWS call is bounded by the attempt count and by the retry budget, and its
one-line error says which bound ended it (moto behind a before-send handler that fails on purpose).

A fake clock moves one second per attempt and botocore's pauses are zeroed, so the time budget
binds deterministically and nothing waits for real.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from providers.aws import Aws
from providers.base import RetryPolicy
from runbook.errors import ProviderError
from tests.providers.rds.conftest import REGION

ROOT = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def no_pauses(monkeypatch):
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)


def _aws(ctx, clock: Clock, **policy: float) -> Aws:
    retry = RetryPolicy(**{"attempts": 10, "total_seconds": 5.0, "timeout_seconds": 2.0, **policy})
    return Aws(dataclasses.replace(ctx, retry=retry), region=REGION, clock=clock)


def _failing(aws: Aws, clock: Clock, kind: str) -> list[str]:
    """Every SSM attempt takes a second and fails with `kind`; returns the attempts seen."""
    from botocore.awsrequest import AWSResponse
    from botocore.exceptions import ReadTimeoutError
    from moto.core.botocore_stubber import MockRawResponse
    from moto.core.models import botocore_stubber

    seen: list[str] = []

    def fail(event_name: str, request, **kwargs):
        seen.append(event_name)
        clock.now += 1.0
        if kind == "read_timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        body = json.dumps({"__type": "ServiceUnavailable", "message": "injected"})
        return AWSResponse(request.url, 503, {"x-amzn-ErrorType": "ServiceUnavailable"}, MockRawResponse(body))

    events = aws.client("ssm").meta.events
    events.unregister("before-send", botocore_stubber)
    events.register("before-send", fail)
    return seen


def test_the_time_budget_ends_retries_before_the_count(aws, ctx, no_pauses):
    clock = Clock()
    client = _aws(ctx, clock)
    seen = _failing(client, clock, "503")
    with pytest.raises(ProviderError) as err:
        client.call("ssm", "get_parameter", Name="/raptor/flag")
    # attempt 3 ends at 3 s; a retry may pause up to 4 s more, past the 5 s budget: not started
    assert len(seen) == 3
    assert err.value.message == ("AWS ssm GetParameter still failing after 3 attempts in 3.0s (another retry would "
                                 "overrun the 5s retry budget): ServiceUnavailable: injected")


def test_timeouts_are_bounded_by_the_time_budget_too(aws, ctx, no_pauses):
    clock = Clock()
    client = _aws(ctx, clock)
    seen = _failing(client, clock, "read_timeout")
    with pytest.raises(ProviderError) as err:
        client.call("ssm", "get_parameter", Name="/raptor/flag")
    assert len(seen) == 3
    assert err.value.message.startswith(
        "AWS ssm GetParameter still failing after 3 attempts in 3.0s (another retry would overrun the 5s retry "
        "budget): Read timeout on endpoint URL")


def test_the_attempt_count_ends_retries_within_a_large_budget(aws, ctx, no_pauses):
    clock = Clock()
    client = _aws(ctx, clock, attempts=3, total_seconds=600)
    seen = _failing(client, clock, "503")
    with pytest.raises(ProviderError) as err:
        client.call("ssm", "get_parameter", Name="/raptor/flag")
    assert len(seen) == 3
    assert err.value.message == "AWS ssm GetParameter still failing after 3 attempts: ServiceUnavailable: injected"


def test_an_answer_that_is_not_transient_is_not_retried_and_says_failed(aws, ctx, no_pauses):
    clock = Clock()
    with pytest.raises(ProviderError) as err:
        _aws(ctx, clock).call("ssm", "get_parameter", Name="/raptor/none")
    assert err.value.message.startswith("AWS ssm GetParameter failed: ParameterNotFound")


def test_each_attempt_is_bounded_by_the_budget_when_it_is_the_smaller(ctx):
    config = _aws(ctx, Clock(), total_seconds=1.5, timeout_seconds=30).client("ssm").meta.config
    assert config.connect_timeout == config.read_timeout == 1.5


def test_importing_the_aws_module_leaves_boto3_unloaded():
    code = "import sys, providers.aws; print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(ROOT))
    assert out.stdout.strip() == "[]"
