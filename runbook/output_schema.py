"""The JSON Schema of `--output json` (`runbook schema output`), versioned.

Every JSON document the CLI prints carries `output_version`. Within one version, fields are only
ever added where this schema allows extra ones (`data` and the objects inside it); removing or
renaming a field, or changing its type, makes a new version. Scripts should check
`output_version` and ignore fields they do not know."""

from __future__ import annotations

from typing import Any

# 2: every step and check names the role it is about (`roles:`; for `role:` its one role)
OUTPUT_VERSION = 2

_STR_OR_NULL = {"type": ["string", "null"]}
_TIME = {"type": ["number", "null"], "description": "seconds since the epoch (UTC)"}
_EXIT = {"type": "integer", "enum": [0, 1, 2, 3, 4, 5, 6, 130],
         "description": "0 done, 1 failed, 2 bad input, 3 waiting, 4 check failed, 5 locked, 6 not recorded, 130 interrupted"}
_VERSION = {"const": OUTPUT_VERSION, "description": "the version of this schema the document follows"}


def _obj(properties: dict[str, Any], *, required: list[str] | None = None, extra: bool = False,
         description: str | None = None) -> dict[str, Any]:
    needed = [k for k in properties if k != "output_version"] if required is None else required
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": needed,
                           "additionalProperties": extra}
    if description:
        out["description"] = description
    return out


_CHANGE = _obj({"summary": {"type": "string"}, "reversible": {"type": "boolean"}, "count": {"type": ["integer", "null"]}},
               description="one change a step made or would make")
_ROLE = {"type": ["string", "null"], "description": "the managed role the step or check is about", "examples": ["raptor_app"]}
_STEP = _obj({
    "step": {"type": "string"},
    "role": _ROLE,
    "status": {"enum": ["planned", "unchanged", "applied", "failed", "pending", "skipped"]},
    "changes": {"type": "array", "items": {"$ref": "#/$defs/change"}},
    "verify": {"anyOf": [{"type": "null"}, _obj({"status": {"enum": ["pass", "fail", "inconclusive"]},
                                                  "detail": {"type": "string"}})]},
    "notes": {"type": "array", "items": {"type": "string"}},
}, description="one step of a playbook run")
_CHECK = _obj({"check": {"type": "string"}, "status": {"enum": ["pass", "fail", "inconclusive"]},
               "detail": {"type": "string"}, "fix": _STR_OR_NULL, "role": _ROLE},
              description="one check (diagnose, drift, soak)")
_CHECKPOINT = _obj({
    "checkpoint": {"type": "string", "examples": ["24h"]},
    "status": {"enum": ["pass", "fail", "inconclusive", "pending"]},
    "late": {"type": "boolean"},
    "evaluated_at": _TIME,
    "checks": {"type": "array", "items": _obj({"check": {"type": "string"}, "status": {"type": "string"}},
                                               required=["check", "status"], extra=True)},
    "recorded_now": {"type": "boolean"},
    "not_recorded": {**_STR_OR_NULL, "description": "why a checkpoint evaluated now could not be recorded (exit 6)"},
}, required=["checkpoint", "status", "late", "evaluated_at", "checks", "recorded_now"], extra=True)
_SOAK = _obj({
    "env": {"type": "string"},
    "state": {"enum": ["none", "running", "passed", "failed", "inconclusive", "rolled-back", "superseded", "retired",
                       "ended", "stale"]},
    "started_at": _TIME, "digest": _STR_OR_NULL, "digest_matches": {"type": "boolean"},
    "remaining": {**_STR_OR_NULL, "description": "time left of the soak, as a duration (72h, 1h30m)"},
    "checkpoints": {"type": "array", "items": {"$ref": "#/$defs/checkpoint"}},
    "message": {"type": "string"},
}, extra=True)
_FINDING = _obj({"kind": {"type": "string"}, "schema": {"type": "string"}, "detail": {"type": "string"},
                 "objects": {"type": "array", "items": {"type": "string"}}}, extra=True)

_DATA = {
    "type": "object",
    "description": "what the command found; keys depend on the command (more may be added within a version)",
    "properties": {
        "sql": {"type": "array", "items": {"type": "string"}, "description": "plan: the SQL that would run, masked"},
        "soak_started": {"type": "boolean", "description": "provision/promote: the flag went on, the soak clock started"},
        "findings": {"type": "array", "items": {"$ref": "#/$defs/finding"}, "description": "drift"},
        "relations": {"type": "integer"}, "routines": {"type": "integer"}, "catalog_seconds": {"type": "number"},
        "soak": {"$ref": "#/$defs/soak"},
        "roles": {"type": "object", "description": "several roles: soak → each role's soak; drift → each role's state"},
        "by_role": {"type": "object", "description": "drift with several roles: each role's catalog counts, rls, probe"},
        "journal": {"type": "string", "description": "rollback: where its records went (a store, or local:path)"},
        "environments": {"type": "array", "description": "status: one row per environment",
                         "items": _obj({"env": {"type": "string"}, "role": {"type": "string"}, "flag": {"type": "string"},
                                        "soak": {"type": "string"}, "last_run": {"type": "string"}},
                                       required=["env"], extra=True)},
        "runs": {"type": "array", "items": {"type": "object"}, "description": "history"},
        "events": {"type": "array", "items": {"type": "object"}, "description": "history"},
        "approvals": {"type": "array", "items": {"type": "object"}, "description": "history"},
        "soaks": {"type": "array", "items": {"type": "object"}, "description": "history"},
        "local": {"type": "array", "items": {"type": "object"}, "description": "history: records only in the local journal"},
    },
    "additionalProperties": True,
}

_RESULT = _obj({
    "output_version": _VERSION,
    "command": {"type": "string", "examples": ["provision"]},
    "env": _STR_OR_NULL,
    "status": {"enum": ["ok", "unchanged", "planned", "failed", "waiting", "check-failed", "cancelled", "not-recorded"]},
    "exit_code": _EXIT,
    "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
    "checks": {"type": "array", "items": {"$ref": "#/$defs/check"}},
    "messages": {"type": "array", "items": {"type": "string"}},
    "data": _DATA,
}, description="one command on one environment")

_OUTCOME = _obj({
    "env": {"type": "string"}, "status": {"type": "string"}, "exit_code": _EXIT, "seconds": {"type": "number"},
    "message": {"type": "string"}, "error": _STR_OR_NULL, "hint": _STR_OR_NULL,
    "result": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/result"}]},
})
_FLEET = _obj({
    "output_version": _VERSION,
    "command": {"type": "string"},
    "fleet": {"const": True},
    "results": {"type": "array", "items": _OUTCOME},
    "summary": _obj({"environments": {"type": "integer"}, "parallel": {"type": "integer"}, "exit_code": _EXIT,
                     "seconds": {"type": "number"}, "statuses": {"type": "object", "additionalProperties": {"type": "integer"}},
                     "interrupted": {"type": "boolean"}, "worst": {"type": "array", "items": {"type": "string"}}}),
}, description="one command over several environments (--env a,b or a glob)")
_VALIDATE = _obj({
    "output_version": _VERSION, "valid": {"const": True}, "file": {"type": "string"}, "role": {"type": "string"},
    "digest": {"type": "string"},
    "roles": {"type": "object", "additionalProperties": {"type": "string"},
              "description": "every managed role → its spec digest (the shorthand's one role too)"},
    "environments": {"type": "object", "additionalProperties": _obj({"database": {"type": "string"}, "app": {"type": "string"}})},
}, description="runbook validate")
_INIT = {"anyOf": [
    _obj({"output_version": _VERSION, "file": {"type": "string"}, "schema": {"type": "string"}}),
    _obj({"output_version": _VERSION, "written": {"type": "array", "items": {"type": "string"}}}),
], "description": "runbook init (the starter and its schema, or --ci templates)"}


def schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:pg-runbook:output:v{OUTPUT_VERSION}",
        "title": f"pg-runbook --output json, version {OUTPUT_VERSION}",
        "description": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        # every object printed at the top carries the version (results inside a fleet or demo do not)
        "if": {"type": "object"}, "then": {"required": ["output_version"]},
        "oneOf": [{"$ref": "#/$defs/result"}, {"$ref": "#/$defs/fleet"}, {"$ref": "#/$defs/validate"},
                  {"$ref": "#/$defs/init"}, {"$ref": "#/$defs/demo"}],
        "$defs": {"change": _CHANGE, "step": _STEP, "check": _CHECK, "checkpoint": _CHECKPOINT, "soak": _SOAK,
                  "finding": _FINDING, "result": _RESULT, "fleet": _FLEET, "validate": _VALIDATE, "init": _INIT,
                  "demo": {"type": "array", "items": {"$ref": "#/$defs/result"},
                           "description": "runbook demo: each command's result in order"}},
    }
