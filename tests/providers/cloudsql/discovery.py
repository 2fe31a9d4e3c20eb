"""Google's own API descriptions, as the Google fakes' referee.

The discovery documents ship offline in google-api-python-client
(`googleapiclient/discovery_cache/documents/<api>.<version>.json`); nothing here is written from
memory. `Api.check_request` says what is wrong with a request (no such method at that path,
an undocumented or mistyped query parameter, a body field the schema does not have, a JSON type
that does not match, an output-only field sent in); `Api.check_response` says what is wrong with
an answer the fake is about to give (so the fakes cannot drift from the schemas either).

An output-only field is one the document marks `readOnly` or describes as "Output only".
"""

from __future__ import annotations

import base64
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)$")
_DURATION = re.compile(r"^-?\d+(?:\.\d+)?s$")
_INT = re.compile(r"^-?\d+$")


def documents_dir() -> Path:
    import googleapiclient

    return Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"


@dataclass(frozen=True)
class Method:
    id: str
    http_method: str
    pattern: re.Pattern[str]
    parameters: dict[str, dict[str, Any]]
    request: str | None
    response: str | None


def _walk(resource: dict[str, Any]):
    for method in (resource.get("methods") or {}).values():
        yield method
    for child in (resource.get("resources") or {}).values():
        yield from _walk(child)


def _path_regex(doc_path: str) -> re.Pattern[str]:
    # {x} and {+x} in flatPath are single segments; a segment never holds ':' (the custom verb)
    out, pos = "", 0
    for m in re.finditer(r"\{\+?([^}]+)\}", doc_path):
        out += re.escape(doc_path[pos:m.start()]) + rf"(?P<{re.sub(r'[^A-Za-z0-9_]', '_', m.group(1))}>[^/:]+)"
        pos = m.end()
    return re.compile("^/" + out + re.escape(doc_path[pos:]) + "$")


def output_only(prop: dict[str, Any]) -> bool:
    return bool(prop.get("readOnly")) or str(prop.get("description") or "").lstrip().startswith(
        ("Output only", "Optional. Output only"))


class Api:
    def __init__(self, name: str) -> None:
        self.name = name
        self.doc = json.loads((documents_dir() / f"{name}.json").read_text())
        self.schemas: dict[str, Any] = self.doc["schemas"]
        self.standard = self.doc.get("parameters") or {}
        self.methods = [
            Method(m["id"], m["httpMethod"], _path_regex(m.get("flatPath") or m["path"]),
                   m.get("parameters") or {}, (m.get("request") or {}).get("$ref"),
                   (m.get("response") or {}).get("$ref"))
            for m in _walk(self.doc)]

    def method(self, http_method: str, path: str) -> Method | None:
        found = [m for m in self.methods if m.http_method == http_method and m.pattern.match(path)]
        # the most literal template wins (`…/secrets/{s}:addVersion` over `…/{+name}`)
        return min(found, key=lambda m: m.pattern.pattern.count("[^/:]+"), default=None)

    # -- requests ---------------------------------------------------------------------------

    def check_request(self, http_method: str, path: str, query: dict[str, str], body: Any,
                      raw: bytes) -> tuple[Method | None, list[str]]:
        method = self.method(http_method, path)
        if method is None:
            return None, [f"{self.name}: no method {http_method} {path}"]
        problems: list[str] = []
        for key, value in query.items():
            spec = method.parameters.get(key) or self.standard.get(key)
            if spec is None or spec.get("location") != "query":
                problems.append(f"{method.id}: undocumented query parameter {key!r}")
                continue
            problems += [f"{method.id}: query {key}: {p}" for p in _scalar(spec, value, from_query=True)]
        for key, spec in method.parameters.items():
            if spec.get("location") == "query" and spec.get("required") and key not in query:
                problems.append(f"{method.id}: required query parameter {key!r} missing")
        if method.request is None:
            if raw.strip():
                problems.append(f"{method.id}: takes no request body, got {raw[:80]!r}")
        elif not raw.strip():
            problems.append(f"{method.id}: a {method.request} body is required")
        elif body is None:
            problems.append(f"{method.id}: the body is not JSON")
        else:
            problems += [f"{method.id}: {p}" for p in self.check(method.request, body, where=method.request, request=True)]
        return method, problems

    def check_response(self, method: Method, status: int, body: Any) -> list[str]:
        if status >= 400:
            err = body.get("error") if isinstance(body, dict) else None
            if not (isinstance(err, dict) and isinstance(err.get("code"), int) and isinstance(err.get("message"), str)
                    and set(body) == {"error"}):
                return [f"{method.id}: error answer is not Google's {{error: {{code, message, status}}}}: {body!r}"]
            return []
        if method.response is None:
            return [] if body in (None, {}) else [f"{method.id}: answers no body, the fake sent {body!r}"]
        return self.check(method.response, body, where=method.response, request=False)

    # -- schemas ----------------------------------------------------------------------------

    def check(self, ref: str, value: Any, *, where: str, request: bool) -> list[str]:
        return self._value({"$ref": ref}, value, where, request)

    def _value(self, spec: dict[str, Any], value: Any, where: str, request: bool) -> list[str]:
        if "$ref" in spec:
            schema = self.schemas[spec["$ref"]]
            return self._value({**schema, "description": spec.get("description", "")}, value, where, request)
        kind = spec.get("type")
        if kind == "any" or kind is None and "properties" not in spec:
            return []
        if kind == "object":
            if not isinstance(value, dict):
                return [f"{where}: expected an object, got {type(value).__name__}"]
            props: dict[str, Any] = spec.get("properties") or {}
            extra = spec.get("additionalProperties")
            problems: list[str] = []
            for key, item in value.items():
                if key in props:
                    prop = props[key]
                    if request and output_only(prop):
                        problems.append(f"{where}.{key}: output only, must not be sent")
                    problems += self._value(prop, item, f"{where}.{key}", request)
                elif extra is not None:
                    problems += self._value(extra, item, f"{where}[{key!r}]", request)
                elif key == "@type" and not props:
                    continue
                else:
                    problems.append(f"{where}.{key}: no such field in {spec.get('id') or 'the schema'}")
            return problems
        if kind == "array":
            if not isinstance(value, list):
                return [f"{where}: expected an array, got {type(value).__name__}"]
            return [p for i, item in enumerate(value) for p in self._value(spec["items"], item, f"{where}[{i}]", request)]
        return [f"{where}: {p}" for p in _scalar(spec, value)]


def _scalar(spec: dict[str, Any], value: Any, *, from_query: bool = False) -> list[str]:
    kind, fmt = spec.get("type"), spec.get("format")
    if from_query and kind == "boolean":
        return [] if value in ("true", "false") else [f"expected true/false, got {value!r}"]
    if from_query and kind == "integer":
        return [] if _INT.match(value) else [f"expected an integer, got {value!r}"]
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"expected a boolean, got {value!r}"]
    if kind == "integer":
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"expected an integer, got {value!r}"]
    if kind == "number":
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"expected a number, got {value!r}"]
    if kind == "string":
        if not isinstance(value, str):
            return [f"expected a string ({fmt or 'text'}), got {value!r}"]
        if spec.get("enum") and value not in spec["enum"]:
            return [f"{value!r} is not one of {spec['enum']}"]
        if fmt in ("int64", "uint64") and not _INT.match(value):
            return [f"expected an {fmt} as a decimal string, got {value!r}"]
        if fmt == "google-datetime" and not _DATETIME.match(value):
            return [f"expected an RFC 3339 time, got {value!r}"]
        if fmt == "google-duration" and not _DURATION.match(value):
            return [f"expected a duration like '3.5s', got {value!r}"]
        if fmt == "byte":
            try:
                base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
            except ValueError:
                return [f"expected base64, got {value[:20]!r}…"]
        return []
    return [f"unknown type {kind!r}"]


@functools.cache
def api(name: str) -> Api:
    """`sqladmin.v1`, `secretmanager.v1`, `run.v2`: parsed once per test process."""
    return Api(name)
