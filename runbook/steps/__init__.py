"""Step kinds, by the name a playbook uses for them."""

from __future__ import annotations

import importlib

from runbook.engine import Step

KINDS: dict[str, str] = {
    "preflight": "runbook.steps.preflight:Preflight",
    "role": "runbook.steps.role:EnsureRole",
    "rotate_password": "runbook.steps.role:RotatePassword",
    "grants": "runbook.steps.privileges:Grants",
    "url": "runbook.steps.app_config:WriteUrl",
    "flag": "runbook.steps.app_config:SetFlag",
    "restart": "runbook.steps.app_config:Restart",
    "unset_url": "runbook.steps.app_config:UnsetUrl",
    "verify": "runbook.steps.verify:VerifyFromApp",
    "drop_role": "runbook.steps.retire:DropRole",
    "end_soak": "runbook.steps.soak_clock:EndSoak",
    "sql": "runbook.steps.custom:SqlStep",
    "command": "runbook.steps.custom:CommandStep",
    "http_check": "runbook.steps.custom:HttpCheckStep",
}


def step_class(kind: str) -> type[Step]:
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
