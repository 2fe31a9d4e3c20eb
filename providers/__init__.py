"""The platform registry: provider keys → their config models, loaded lazily.

Nothing here imports a provider's API library; a provider module imports boto3 or
google-auth only inside the code that needs it, so `runbook --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

# key → "module:ConfigClass"
DATABASES: dict[str, str] = {
    "local": "providers.local:LocalDatabaseConfig",
    "heroku": "providers.heroku:HerokuDatabaseConfig",
    "rds": "providers.rds:RdsDatabaseConfig",
    "cloudsql": "providers.cloudsql:CloudSqlDatabaseConfig",
    "supabase": "providers.supabase:SupabaseDatabaseConfig",
}
PLATFORMS: dict[str, str] = {
    "dotenv": "providers.dotenv:DotenvAppConfig",
    "heroku": "providers.heroku:HerokuAppConfig",
    "ecs": "providers.ecs:EcsAppConfig",
    "cloudrun": "providers.cloudrun:CloudRunAppConfig",
    "supabase": "providers.supabase:SupabaseAppConfig",
}
# the app platform an environment gets when `app.platform` is not given
DEFAULT_PLATFORM: dict[str, str] = {
    "local": "dotenv",
    "heroku": "heroku",
    "rds": "ecs",
    "cloudsql": "cloudrun",
    "supabase": "supabase",
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def shared_clients(runtime: Any) -> Any:
    """While open, the runtime's ApiClients share one httpx client per account (a fleet's;
    providers/clients.py). Here so that runbook/ reaches it through the registry."""
    from providers.clients import shared_clients as sharing

    return sharing(runtime)


def database_config(key: str) -> Any:
    from providers.base import with_pooler

    return with_pooler(_load(DATABASES[key]))


def platform_config(key: str) -> Any:
    return _load(PLATFORMS[key])


def all_database_configs() -> list[Any]:
    from providers.base import with_pooler

    return [with_pooler(_load(ref)) for ref in DATABASES.values()]


def all_platform_configs() -> list[Any]:
    return [_load(ref) for ref in PLATFORMS.values()]
