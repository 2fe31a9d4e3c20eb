"""Step kinds, by the name a playbook uses for them."""

from __future__ import annotations

import importlib
from typing import Any

from runbook.engine import Step

KINDS: dict[str, str] = {
    "preflight": "runbook.steps.preflight:Preflight",
    "role": "runbook.steps.role:EnsureRole",
    "rotate_password": "runbook.steps.role:RotatePassword",
    "grants": "runbook.steps.grants:Grants",
    "url": "runbook.steps.url:WriteUrl",
    "flag": "runbook.steps.flag:SetFlag",
    "restart": "runbook.steps.restart:Restart",
    "drain": "runbook.steps.drain:Drain",
    "unset_url": "runbook.steps.url:UnsetUrl",
    "verify": "runbook.steps.verify:VerifyFromApp",
    "drop_role": "runbook.steps.retire:DropRole",
    "end_soak": "runbook.steps.soak_clock:EndSoak",
    "sql": "runbook.steps.custom:SqlStep",
    "command": "runbook.steps.custom:CommandStep",
    "http_check": "runbook.steps.custom:HttpCheckStep",
}


def step_class(kind: str) -> type[Step[Any]]:
    module, _, name = KINDS[kind].partition(":")
    found: type[Step[Any]] = getattr(importlib.import_module(module), name)
    return found
