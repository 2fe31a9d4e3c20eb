"""Optional dependencies: which provider or app platform needs which library, and the package
extra that installs it. Checked when an environment's adapters are first opened, for both sides
at once, so a missing library ends the run in one line before anything on either side changed.

Only the module is looked up (importlib.util.find_spec), never imported: the provider imports it
itself when it calls it, and `runbook --help` stays free of it."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from runbook.errors import ConfigError

_BOTO = (("boto3", "boto3"), ("botocore", "botocore"))
_GOOGLE = (("google.auth", "google-auth"),)

# provider / platform key → ((module, the distribution that provides it), extra, an environment
# variable that stands in for the library: Google's providers take an access token instead)
NEEDS: dict[str, tuple[tuple[tuple[str, str], ...], str, str | None]] = {
    "rds": (_BOTO, "aws", None),
    "ecs": (_BOTO, "aws", None),
    "cloudsql": (_GOOGLE, "gcp", "GOOGLE_OAUTH_ACCESS_TOKEN"),
    "cloudrun": (_GOOGLE, "gcp", "GOOGLE_OAUTH_ACCESS_TOKEN"),
}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):     # a parent package missing, or a module without a spec
        return False


def missing(key: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(the first missing distribution, its extra) for one provider or platform key; None if usable."""
    need = NEEDS.get(key)
    if need is None:
        return None
    modules, extra, stand_in = need
    if stand_in and environ.get(stand_in):
        return None
    for module, distribution in modules:
        if not installed(module):
            return distribution, extra
    return None


def require(env_name: str, keys: Mapping[str, str], environ: Mapping[str, str]) -> None:
    """Raise ConfigError (exit 2) naming the extra when any of `keys` ({"database": "rds",
    "app": "ecs"}) lacks its library."""
    for side, key in keys.items():
        gap = missing(key, environ)
        if gap is not None:
            package, extra = gap
            # README "Install" gives the pipx and uv spellings of the same extra
            raise ConfigError(f"{env_name}: {side} {key!r} needs {package}, which is not installed: "
                              f"pip install 'pg-runbook[{extra}]'; nothing was changed")
