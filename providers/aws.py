"""The AWS plumbing shared by providers.rds and providers.ecs: one boto3 Session, clients created
on first use, bounded retries, and AWS failures as one-line errors.

boto3/botocore are imported only inside the code that calls AWS, so importing this module (and
providers.rds / providers.ecs) stays light.

Bounds (RetryPolicy): botocore's standard retry mode makes at most `attempts` attempts, each
within `timeout_seconds` to connect and to read; on top of that no retry starts unless its
longest possible pause ends inside `total_seconds` from the start of the call. So a call ends
within the budget plus, at most, one attempt's timeouts, and says which bound stopped it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from providers.base import OpenContext
from runbook.errors import ConfigError, ProviderError
from runbook.secret import install_log_hygiene, redact

# AWS_ENDPOINT_URL_<ID>: the per-service override botocore documents, read from ctx.environ
_ENDPOINT_IDS = {"rds": "RDS", "secretsmanager": "SECRETS_MANAGER", "ssm": "SSM", "ecs": "ECS"}

# botocore's standard mode pauses rand(0, 1) × min(2 ** (attempt - 1), 20) s before a retry
_MAX_PAUSE = 20.0
# what standard mode retries (AWS SDKs reference guide, "Retry behavior"): these error codes,
# these HTTP statuses, and any failure without an answer (connect/read timeouts, resets)
_TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled",
    "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException", "RequestTimeout", "RequestTimeoutException",
})
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


def aws_region(configured: str | None, environ: Mapping[str, str]) -> str | None:
    """The region from the project file or the environment; None leaves it to boto3's chain
    (the profile's `region` in ~/.aws/config), which Aws.region asks on first use."""
    return configured or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None


class AwsError(ProviderError):
    """An AWS API answered with an error; `code` is its error code (DBInstanceNotFound, …)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Tally:
    """One logical call, as the retry guard saw it."""

    started: float
    attempts: int = 0
    operation: str = ""
    out_of_time: bool = False


class Aws:
    """boto3 clients for one region, created on first use from one Session."""

    def __init__(self, ctx: OpenContext, *, region: str | None, profile: str | None = None,
                 session: Any = None, clock: Callable[[], float] = time.monotonic,
                 region_key: str = "region") -> None:
        self.ctx = ctx
        self._region = region
        self.region_key = region_key
        self.profile = profile
        self.clock = clock
        self._session = session
        self._clients: dict[str, Any] = {}
        self._local = threading.local()     # the call in progress, per thread

    @property
    def region(self) -> str:
        """The configured region, else the one boto3 resolves (the profile's, in ~/.aws/config)."""
        if self._region is None:
            self._region = getattr(self.session(), "region_name", None) or None
            if not self._region:
                raise ConfigError(f"no AWS region: set {self.region_key}, AWS_REGION, or region in the AWS "
                                  "profile (~/.aws/config)")
        return self._region

    def session(self) -> Any:
        if self._session is None:
            try:
                import boto3
                from botocore.exceptions import ProfileNotFound
            except ImportError:
                raise ConfigError("the AWS providers need boto3: pip install 'pg-runbook[aws]'") from None
            # ctx.environ stands in for os.environ in the first links of boto3's default chain
            # (a configured profile, else keys, else AWS_PROFILE); files and roles follow as usual
            kwargs: dict[str, Any] = {"region_name": self._region} if self._region else {}
            env = self.ctx.environ
            if self.profile:
                kwargs["profile_name"] = self.profile
            else:
                if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
                    kwargs["aws_access_key_id"] = env["AWS_ACCESS_KEY_ID"]
                    kwargs["aws_secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
                    if env.get("AWS_SESSION_TOKEN"):
                        kwargs["aws_session_token"] = env["AWS_SESSION_TOKEN"]
                if env.get("AWS_PROFILE"):
                    # as boto3 does: keys from the environment win, the profile still gives the region
                    kwargs["profile_name"] = env["AWS_PROFILE"]
            try:
                self._session = boto3.session.Session(**kwargs)
            except ProfileNotFound:
                raise ConfigError(f"AWS profile {kwargs['profile_name']!r} is not configured") from None
        return self._session

    def endpoint_url(self, service: str) -> str | None:
        env = self.ctx.environ
        return env.get(f"AWS_ENDPOINT_URL_{_ENDPOINT_IDS.get(service, service.upper())}") or env.get("AWS_ENDPOINT_URL") or None

    def client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config

            # botocore logs request and response bodies (secret values) at DEBUG
            install_log_hygiene()
            retry = self.ctx.retry
            timeout = min(retry.timeout_seconds, retry.total_seconds)
            config = Config(
                region_name=self.region,
                # total_max_attempts counts the first call; botocore's max_attempts would add one
                retries={"mode": "standard", "total_max_attempts": max(1, retry.attempts)},
                connect_timeout=timeout,
                read_timeout=timeout,
                user_agent_extra="pg-runbook",
            )
            kwargs: dict[str, Any] = {"config": config}
            endpoint = self.endpoint_url(service)
            if endpoint:
                kwargs["endpoint_url"] = endpoint
            made = self.session().client(service, **kwargs)
            # ahead of botocore's own retry handler: a False answer vetoes its retry
            event = made.meta.service_model.service_id.hyphenize()
            made.meta.events.register_first(f"needs-retry.{event}", self._retry_guard)
            self._clients[service] = made
        return self._clients[service]

    def call(self, service: str, operation: str, /, **params: Any) -> dict[str, Any]:
        client = self.client(service)
        return self._guarded(service, lambda: getattr(client, operation)(**params))

    def pages(self, service: str, operation: str, /, **params: Any):
        paginator = self.client(service).get_paginator(operation)
        iterator = self._guarded(service, lambda: iter(paginator.paginate(**params)))
        while True:
            page = self._guarded(service, lambda: next(iterator, None))
            if page is None:
                return
            yield page

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- bounds -------------------------------------------------------------------------------

    def _retry_guard(self, attempts: int, response: Any = None, caught_exception: Any = None,
                     operation: Any = None, **_: Any) -> bool | None:
        """botocore's needs-retry event, after every attempt: veto a retry whose longest pause
        would end past the call's time budget. None leaves the decision to botocore."""
        tally: _Tally | None = getattr(self._local, "call", None)
        if tally is None:
            return None
        tally.attempts = attempts
        tally.operation = getattr(operation, "name", "") or tally.operation
        if not _transient(response, caught_exception):
            return None
        longest_pause = min(2.0 ** (attempts - 1), _MAX_PAUSE)
        if self.clock() - tally.started + longest_pause < self.ctx.retry.total_seconds:
            return None
        tally.out_of_time = attempts < self.ctx.retry.attempts    # else the count ends it anyway
        return False

    def _guarded(self, service: str, fn: Callable[[], Any]) -> Any:
        """Run one AWS call; its failures become one-line ProviderError/ConfigError.

        Only AWS's own error code and message are quoted (scrubbed of known secrets): never the
        request parameters, which hold secret values.
        """
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            NoRegionError,
            ParamValidationError,
            PartialCredentialsError,
        )

        tally = self._local.call = _Tally(started=self.clock())
        try:
            return fn()
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or "Unknown")
            raw = str(err.get("Message") or "").strip()
            message = f": {redact(raw.splitlines()[0])}" if raw else ""
            raise AwsError(f"AWS {service} {exc.operation_name} {self._outcome(tally)}: {code}{message}",
                           code=code) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise ConfigError("no usable AWS credentials (boto3 looks at AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                              "AWS_PROFILE, ~/.aws and instance/task roles)") from None
        except NoRegionError:
            raise ConfigError("no AWS region: set region in the project file or AWS_REGION") from None
        except ParamValidationError:
            # its text echoes parameter values; the operation is all that is safe to say
            raise ProviderError(f"AWS {service}: request rejected by botocore's parameter validation") from None
        except BotoCoreError as exc:
            # connection, timeout and endpoint errors: their text names the endpoint, not the body
            retried = tally.attempts > 1 or tally.out_of_time
            what = f"AWS {service} {tally.operation} {self._outcome(tally)}" if retried else f"AWS {service}"
            raise ProviderError(f"{what}: {redact(str(exc))}") from None
        finally:
            self._local.call = None

    def _outcome(self, tally: _Tally) -> str:
        """What stopped the call: the answer itself, the attempt count, or the time budget."""
        n = tally.attempts
        if tally.out_of_time:
            spent = self.clock() - tally.started
            return (f"still failing after {n} attempt{'s' if n != 1 else ''} in {spent:.1f}s (another retry "
                    f"would overrun the {self.ctx.retry.total_seconds:g}s retry budget)")
        return f"still failing after {n} attempts" if n > 1 else "failed"


def _transient(response: Any, caught_exception: Any) -> bool:
    """Would botocore's standard mode retry this outcome?"""
    if caught_exception is not None:
        return True
    if not response:
        return False
    http, parsed = response
    code = ((parsed or {}).get("Error") or {}).get("Code")
    return http.status_code in _TRANSIENT_STATUS or code in _TRANSIENT_CODES
