"""The official Supabase Management API description, and a checker of requests and answers against it.

openapi.json is the document the Supabase CLI generates its client from (source, commit and
sha256 in SOURCE.json beside it; `load()` refuses a file whose sha256 differs). `Contract`
matches a request to its operation by path template and method, then checks the path and query
parameters, the request body, and a 2xx answer's status and body against the document's schemas
(OpenAPI 3.0 semantics, `nullable` included, through openapi-schema-validator). It returns the
violations as sentences; the fake records them as errors, which fail the test.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
URI = "urn:supabase-management-api"


def source() -> dict[str, str]:
    return json.loads((HERE / "SOURCE.json").read_text())


@lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    raw = (HERE / "openapi.json").read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != source()["sha256"]:
        raise AssertionError(f"openapi.json's sha256 is {digest}, not the one SOURCE.json records")
    return json.loads(raw)


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True)
class Operation:
    template: str
    method: str
    regex: re.Pattern[str]
    spec: dict[str, Any]


class Contract:
    def __init__(self) -> None:
        from openapi_schema_validator import OAS30Validator
        from referencing import Registry
        from referencing.jsonschema import DRAFT4

        self.doc = load()
        self._validator = OAS30Validator
        self._registry = Registry().with_resource(URI, DRAFT4.create_resource(self.doc))
        self.operations: list[Operation] = []
        for template, item in self.doc["paths"].items():
            regex = re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")
            for method, spec in item.items():
                if method in ("get", "post", "put", "patch", "delete", "head"):
                    self.operations.append(Operation(template, method.upper(), regex, spec))
        # a literal segment beats a parameter: /v1/projects/{ref}/secrets is not /v1/projects/{ref}
        self.operations.sort(key=lambda op: (op.template.count("{"), -len(op.template)))

    def operation(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for op in self.operations:
            match = op.regex.match(path)
            if match and op.method == method:
                return op, match.groupdict()
        return None

    def _errors(self, pointer: str, value: Any) -> list[str]:
        validator = self._validator({"$ref": URI + pointer}, registry=self._registry)
        return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in validator.iter_errors(value)]

    def check_request(self, method: str, path: str, query: dict[str, str], body: Any, raw: bytes) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path}: no such operation in the Management API"]
        op, values = found
        where = f"{method} {op.template}"
        out: list[str] = []
        params = op.spec.get("parameters", [])
        for index, param in enumerate(params):
            name, place = param["name"], param["in"]
            given = values.get(name) if place == "path" else query.get(name) if place == "query" else None
            if given is None:
                if param.get("required") and place in ("path", "query"):
                    out.append(f"{where}: required {place} parameter {name} missing")
                continue
            value: Any = given
            kind = param.get("schema", {}).get("type")
            if kind in ("integer", "number"):
                try:
                    value = int(given) if kind == "integer" else float(given)
                except ValueError:
                    pass
            elif kind == "boolean":
                value = {"true": True, "false": False}.get(given, given)
            pointer = _pointer("paths", op.template, op.method.lower(), "parameters", str(index), "schema")
            out += [f"{where}: {place} parameter {name}: {e}" for e in self._errors(pointer, value)]
        known = {p["name"] for p in params if p["in"] == "query"}
        out += [f"{where}: unknown query parameter {name}" for name in query if name not in known]
        request = op.spec.get("requestBody")
        if request is None:
            if raw:
                out.append(f"{where}: takes no request body, got {len(raw)} bytes")
        elif not raw:
            if request.get("required"):
                out.append(f"{where}: request body required")
        else:
            if body is None:
                out.append(f"{where}: request body is not JSON")
            else:
                pointer = _pointer("paths", op.template, op.method.lower(), "requestBody", "content",
                                   "application/json", "schema")
                out += [f"{where}: request body {e}" for e in self._errors(pointer, body)]
        return out

    def check_response(self, method: str, path: str, status: int, payload: Any) -> list[str]:
        """A 2xx answer must be one the operation declares, with a body its schema accepts."""
        if not 200 <= status < 300:
            return []
        found = self.operation(method, path)
        if found is None:
            return []     # already reported for the request
        op, _ = found
        where = f"{method} {op.template}"
        declared = op.spec.get("responses", {})
        if str(status) not in declared:
            return [f"{where}: answered {status}, which the operation does not declare ({', '.join(declared)})"]
        content = declared[str(status)].get("content")
        if not content:
            return [] if payload is None else [f"{where}: {status} declares no body, but the fake sent one"]
        pointer = _pointer("paths", op.template, op.method.lower(), "responses", str(status), "content",
                           "application/json", "schema")
        return [f"{where}: {status} answer {e}" for e in self._errors(pointer, payload)]
