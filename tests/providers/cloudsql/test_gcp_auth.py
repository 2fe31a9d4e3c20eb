"""The Google token: the env override, and Application Default Credentials refreshed on expiry."""

from __future__ import annotations

import httpx
import pytest

from providers.gcp_auth import TOKEN_ENV, GoogleAuth, google_error
from runbook.errors import ConfigError, ProviderError


class FakeCredentials:
    """Stands in for google.auth credentials: expires after `lifetime` header() calls."""

    def __init__(self, lifetime: int = 2, fail: bool = False) -> None:
        self.token: str | None = None
        self.uses = 0
        self.refreshes = 0
        self.lifetime = lifetime
        self.fail = fail
        self.quota_project_id = "billing-project"

    @property
    def valid(self) -> bool:
        return self.token is not None and self.uses < self.lifetime

    def refresh(self, request) -> None:
        from google.auth.exceptions import RefreshError

        assert callable(request)
        if self.fail:
            raise RefreshError("invalid_grant: Token has been expired or revoked.")
        self.refreshes += 1
        self.uses = 0
        self.token = f"ya29.adc-{self.refreshes}"

    def apply(self, headers: dict) -> None:
        self.uses += 1
        headers["authorization"] = f"Bearer {self.token}"
        headers["x-goog-user-project"] = self.quota_project_id


def test_the_env_token_is_used_as_is_and_google_auth_is_not_asked(monkeypatch):
    import google.auth

    monkeypatch.setattr(google.auth, "default", lambda **kw: pytest.fail("ADC must not be consulted"))
    auth = GoogleAuth({TOKEN_ENV: " ya29.from-env \n"})
    assert auth.headers() == {"Authorization": "Bearer ya29.from-env"}
    assert auth.account_key.startswith("gcp:") and "ya29" not in auth.account_key


def test_adc_is_refreshed_when_it_expires(monkeypatch):
    import google.auth

    creds = FakeCredentials(lifetime=2)
    seen_scopes = []

    def default(scopes=None, **kw):
        seen_scopes.append(scopes)
        return creds, "proj"

    monkeypatch.setattr(google.auth, "default", default)
    auth = GoogleAuth({})
    seen = [auth.headers()["authorization"] for _ in range(5)]
    assert seen == ["Bearer ya29.adc-1", "Bearer ya29.adc-1", "Bearer ya29.adc-2", "Bearer ya29.adc-2", "Bearer ya29.adc-3"]
    assert auth.headers()["x-goog-user-project"] == "billing-project"
    assert seen_scopes == [["https://www.googleapis.com/auth/cloud-platform"]]   # loaded once


def test_no_credentials_is_a_config_error_with_the_fix(monkeypatch):
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    def missing(**kw):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", missing)
    with pytest.raises(ConfigError, match="gcloud auth application-default login.*GOOGLE_OAUTH_ACCESS_TOKEN"):
        GoogleAuth({}).headers()


def test_a_failed_refresh_is_one_line(monkeypatch):
    import google.auth

    monkeypatch.setattr(google.auth, "default", lambda **kw: (FakeCredentials(fail=True), None))
    with pytest.raises(ProviderError) as exc:
        GoogleAuth({}).headers()
    assert str(exc.value) == "Google credentials could not be refreshed: RefreshError"


@pytest.mark.parametrize("status, body, expected", [
    (404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "gone"}}, "HTTP 404 NOT_FOUND: gone"),
    (403, {"error": {"code": 403, "message": "denied"}}, "HTTP 403: denied"),
    (502, "<html>bad gateway</html>", "HTTP 502"),
    (400, ["not", "an", "object"], "HTTP 400"),
])
def test_google_error_quotes_only_the_envelope(status, body, expected):
    response = httpx.Response(status, json=body) if not isinstance(body, str) else httpx.Response(status, text=body)
    assert google_error(response) == expected
