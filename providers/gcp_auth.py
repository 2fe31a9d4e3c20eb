"""Google Cloud API access shared by `cloudsql` and `cloudrun`: the OAuth token and the error shape.

The token comes from, in order:
1. `GOOGLE_OAUTH_ACCESS_TOKEN` in the run's environment (the variable Terraform's google provider
   reads): a ready-made bearer token, e.g. `$(gcloud auth print-access-token)`. Tests use it so
   that no metadata server or credentials file is needed.
2. Application Default Credentials through google-auth (`gcloud auth application-default login`,
   GOOGLE_APPLICATION_CREDENTIALS, or the metadata server on GCE/Cloud Run/GKE), refreshed when
   it expires. google-auth is imported only here, only when this path is taken.
"""

from __future__ import annotations

import hashlib
import threading
from types import SimpleNamespace
from collections.abc import Mapping
from typing import Any

import httpx

from runbook.errors import ConfigError, ProviderError

TOKEN_ENV = "GOOGLE_OAUTH_ACCESS_TOKEN"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class _HttpxRequest:
    """google.auth.transport.Request over httpx, so ADC refreshes need no `requests` package."""

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None, **kwargs: Any):
        from google.auth import exceptions

        try:
            response = httpx.request(method, url, content=body, headers=dict(headers or {}), timeout=timeout or 30)
        except httpx.HTTPError as exc:
            raise exceptions.TransportError(type(exc).__name__) from None

        return SimpleNamespace(status=response.status_code, headers=dict(response.headers), data=response.content)


class GoogleAuth:
    """Authorization headers for Google APIs; call `headers()` before each request."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._static = (environ.get(TOKEN_ENV) or "").strip() or None
        self._credentials: Any = None
        self._lock = threading.Lock()

    @property
    def account_key(self) -> str:
        """A stable, non-secret key for the shared rate budget of this identity."""
        if self._static:
            return "gcp:" + hashlib.sha256(self._static.encode()).hexdigest()[:16]
        creds = self._load()
        ident = getattr(creds, "service_account_email", None) or getattr(creds, "quota_project_id", None) or "adc"
        return f"gcp:{ident}"

    def _load(self) -> Any:
        if self._credentials is None:
            try:
                import google.auth
                from google.auth.exceptions import DefaultCredentialsError
            except ImportError:
                raise ConfigError(f"google-auth is not installed (pip install 'pg-runbook[gcp]'), "
                                  f"or set {TOKEN_ENV} to an access token") from None
            try:
                self._credentials, _ = google.auth.default(scopes=list(SCOPES))
            except DefaultCredentialsError:
                raise ConfigError(
                    "no Google credentials: run `gcloud auth application-default login`, set "
                    f"GOOGLE_APPLICATION_CREDENTIALS, or set {TOKEN_ENV}") from None
        return self._credentials

    def access_token(self) -> "Secret":
        """The bearer token itself (Cloud SQL IAM database authentication takes it as the password)."""
        from runbook.secret import Secret

        value = self.headers().get("Authorization") or self.headers().get("authorization") or ""
        token = value.removeprefix("Bearer ").strip()
        if not token:
            raise ProviderError("Google credentials gave no access token")
        return Secret(token)

    def headers(self) -> dict[str, str]:
        if self._static:
            return {"Authorization": f"Bearer {self._static}"}
        with self._lock:
            creds = self._load()
            if not creds.valid:
                from google.auth.exceptions import RefreshError, TransportError

                try:
                    creds.refresh(_HttpxRequest())
                except (RefreshError, TransportError) as exc:
                    # google-auth's messages name the token endpoint and the reason, never the token
                    raise ProviderError(f"Google credentials could not be refreshed: {type(exc).__name__}") from None
            out: dict[str, str] = {}
            creds.apply(out)   # adds x-goog-user-project for user credentials with a quota project
            return out


def google_error(response: httpx.Response) -> str:
    """`HTTP 404 NOT_FOUND: Secret [...] not found` from Google's {"error": {...}} envelope."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return f"HTTP {response.status_code}"
    status = err.get("status") or ""
    message = str(err.get("message") or "")[:300]
    return f"HTTP {response.status_code} {status}: {message}".replace(" :", ":").strip()
