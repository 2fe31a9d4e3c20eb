"""The Secret Manager side of the Google fakes: secrets, versions, aliases and IAM policies.

As the v1 API behaves: resources are named by project *number* (`projects/123…/secrets/id`) even
when asked by project id; `latest` is the newest version whatever its state (accessing it when
disabled is FAILED_PRECONDITION); a version is read by number, `latest` or alias; addVersion
checks a sent `dataCrc32c`, and access always answers with one; setIamPolicy needs the etag of
the policy read (ABORTED otherwise). A revision reads a secret only if its service account holds
roles/secretmanager.secretAccessor on the secret (or in `project_accessors`, the project-wide
grants), in the words Cloud Run uses when it does not.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any, Callable

import google_crc32c

from tests.providers.loopback import FakeServer, Request

PROJECT_NUMBER = "123456789012"
ACCESSOR = "roles/secretmanager.secretAccessor"
TIME = "2024-05-01T10:00:00Z"


def _error(code: int, status: str, message: str) -> tuple[int, dict]:
    return code, {"error": {"code": code, "message": message, "status": status}}


class SecretStore:
    def __init__(self, project: str) -> None:
        self.project = project
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}   # (project id, secret id) → secret
        self.project_accessors: set[str] = set()    # service accounts granted secretAccessor project-wide
        self.deny_set_iam = False                   # the caller may not change secrets' IAM policies
        self.corrupt_next_access = False            # the next access answers a payload with a wrong CRC32C
        self.page_size = 2                          # versions.list pages (small: the tool must follow them)

    # -- set-up and inspection -------------------------------------------------------------

    def put(self, secret: str, *values: str, labels: dict[str, str] | None = None, project: str | None = None,
            replication: dict[str, Any] | None = None, aliases: dict[str, str] | None = None,
            accessors: tuple[str, ...] = ()) -> dict[str, Any]:
        """A secret made outside the tool (Terraform, gcloud), with these versions."""
        entry = self._new(replication or {"automatic": {}}, labels or {})
        entry["versions"] = [self._version(v.encode()) for v in values]
        entry["aliases"] = dict(aliases or {})
        if accessors:
            entry["policy"]["bindings"] = [{"role": ACCESSOR, "members": [f"serviceAccount:{a}" for a in accessors]}]
        self.secrets[(project or self.project, secret)] = entry
        return entry

    def value(self, secret: str, project: str | None = None) -> str | None:
        entry = self.secrets.get((project or self.project, secret))
        return entry["versions"][-1]["data"].decode() if entry and entry["versions"] else None

    def states(self, secret: str, project: str | None = None) -> list[str]:
        return [v["state"] for v in self.secrets[(project or self.project, secret)]["versions"]]

    def accessors(self, secret: str, project: str | None = None) -> set[str]:
        entry = self.secrets[(project or self.project, secret)]
        return {m.split(":", 1)[1] for b in entry["policy"]["bindings"] if b["role"] == ACCESSOR and not b.get("condition")
                for m in b["members"] if m.startswith("serviceAccount:")}

    @staticmethod
    def _new(replication: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
        return {"versions": [], "labels": labels, "replication": replication, "aliases": {},
                "etag": f'"{uuid.uuid4().hex[:12]}"', "policy": {"version": 1, "bindings": [],
                                                                   "etag": base64.b64encode(b"policy-0").decode()}}

    @staticmethod
    def _version(data: bytes) -> dict[str, Any]:
        return {"data": data, "state": "ENABLED", "crc": google_crc32c.value(data)}

    def _name(self, secret: str, version: int | None = None) -> str:
        name = f"projects/{PROJECT_NUMBER}/secrets/{secret}"
        return name if version is None else f"{name}/versions/{version}"

    def _secret_json(self, sid: str, entry: dict[str, Any]) -> dict[str, Any]:
        out = {"name": self._name(sid), "replication": entry["replication"], "createTime": TIME,
               "labels": entry["labels"], "etag": entry["etag"]}
        if entry["aliases"]:
            out["versionAliases"] = {k: str(v) for k, v in entry["aliases"].items()}
        return out

    def _version_json(self, sid: str, n: int, version: dict[str, Any]) -> dict[str, Any]:
        return {"name": self._name(sid, n), "createTime": TIME, "state": version["state"],
                "etag": f'"v{n}-{version["state"].lower()}"'}

    # -- reading a version the way Cloud Run and access do ---------------------------------

    def _project_of(self, token: str) -> str | None:
        return self.project if token in (self.project, PROJECT_NUMBER) else None

    def number(self, entry: dict[str, Any], version: str) -> int | None:
        """The version number `version` (number, latest or alias) names, if any."""
        count = len(entry["versions"])
        if version == "latest":
            return count or None
        if version.isdigit():
            return int(version) if 1 <= int(version) <= count else None
        target = entry["aliases"].get(version)
        return int(target) if target is not None else None

    def resolve(self, project: str, ref: str, version: str, account: str | None) -> tuple[bytes | None, str | None]:
        """What a revision's env var reads: (value, None) or (None, Cloud Run's reason)."""
        match = re.fullmatch(r"projects/([^/]+)/secrets/([^/]+)", ref)
        owner, sid = (self._project_of(match[1]), match[2]) if match else (project, ref)
        entry = self.secrets.get((owner, sid)) if owner else None
        n = self.number(entry, version) if entry else None
        path = f"projects/{PROJECT_NUMBER}/secrets/{sid}/versions/{version}"
        if entry is None or n is None:
            return None, f"Secret {path} was not found"
        if account not in self.project_accessors and account not in self.accessors(sid, owner):
            return None, (f"Permission denied on secret: {path} for Revision service account {account}. The service "
                          "account used must be granted the 'Secret Manager Secret Accessor' role "
                          f"({ACCESSOR}) at the secret, project or higher level.")
        if entry["versions"][n - 1]["state"] != "ENABLED":
            return None, f"Secret Version {path} is in {entry['versions'][n - 1]['state']} state"
        return entry["versions"][n - 1]["data"], None

    # -- routes ----------------------------------------------------------------------------

    def routes(self, sm: FakeServer, authed: Callable[[Request], tuple[int, dict] | None]) -> None:
        p, s = r"(?P<p>[^/]+)", r"(?P<s>[^/:]+)"

        def secret_of(req: Request, m: re.Match[str]) -> tuple[tuple[int, dict] | None, dict[str, Any] | None]:
            if denied := authed(req):
                return denied, None
            owner = self._project_of(m["p"])
            entry = self.secrets.get((owner, m["s"])) if owner else None
            if entry is None:
                return _error(404, "NOT_FOUND", f"Secret [projects/{PROJECT_NUMBER}/secrets/{m['s']}] not found."), None
            return None, entry

        @sm.route("POST", rf"/v1/projects/{p}/secrets")
        def create_secret(req: Request, m: re.Match[str]):
            if denied := authed(req):
                return denied
            sid = req.query.get("secretId") or ""
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", sid):
                return _error(400, "INVALID_ARGUMENT", "Invalid secret id.")
            replication = req.body.get("replication") or {}
            if len(replication) != 1:
                return _error(400, "INVALID_ARGUMENT", "Secret.replication must set exactly one of automatic, userManaged.")
            if "userManaged" in replication and not (replication["userManaged"].get("replicas")):
                return _error(400, "INVALID_ARGUMENT", "Secret.replication.user_managed.replicas must not be empty.")
            owner = self._project_of(m["p"])
            if (owner, sid) in self.secrets:
                return _error(409, "ALREADY_EXISTS", f"Secret [{self._name(sid)}] already exists.")
            entry = self._new(replication, req.body.get("labels") or {})
            self.secrets[(owner or m["p"], sid)] = entry
            return 200, self._secret_json(sid, entry)

        @sm.route("GET", rf"/v1/projects/{p}/secrets/{s}")
        def get_secret(req: Request, m: re.Match[str]):
            failed, entry = secret_of(req, m)
            return failed or (200, self._secret_json(m["s"], entry))

        @sm.route("PATCH", rf"/v1/projects/{p}/secrets/{s}")
        def patch_secret(req: Request, m: re.Match[str]):
            failed, entry = secret_of(req, m)
            if failed:
                return failed
            if req.query.get("updateMask") != "versionAliases":
                return _error(400, "INVALID_ARGUMENT", "this fake updates versionAliases only")
            if req.body.get("etag") not in (None, entry["etag"]):
                return _error(409, "ABORTED", "The etag does not match the secret's current etag.")
            aliases = req.body.get("versionAliases") or {}
            if any(not self.number(entry, str(v)) or not str(v).isdigit() for v in aliases.values()):
                return _error(400, "INVALID_ARGUMENT", "A version alias names a version that does not exist.")
            entry["aliases"] = {k: str(v) for k, v in aliases.items()}
            entry["etag"] = f'"{uuid.uuid4().hex[:12]}"'
            return 200, self._secret_json(m["s"], entry)

        @sm.route("DELETE", rf"/v1/projects/{p}/secrets/{s}")
        def delete_secret(req: Request, m: re.Match[str]):
            failed, _ = secret_of(req, m)
            if failed:
                return failed
            self.secrets.pop((self._project_of(m["p"]), m["s"]))
            return 200, {}

        @sm.route("POST", rf"/v1/projects/{p}/secrets/{s}:addVersion")
        def add_version(req: Request, m: re.Match[str]):
            failed, entry = secret_of(req, m)
            if failed:
                return failed
            payload = req.body.get("payload") or {}
            data = base64.b64decode(payload.get("data") or "")
            sent = payload.get("dataCrc32c")
            if sent is not None and int(sent) != google_crc32c.value(data):
                return _error(400, "INVALID_ARGUMENT", "Checksum mismatch: the payload's dataCrc32c does not match.")
            entry["versions"].append(self._version(data))
            n = len(entry["versions"])
            return 200, {**self._version_json(m["s"], n, entry["versions"][-1]),
                         "clientSpecifiedPayloadChecksum": sent is not None}

        @sm.route("GET", rf"/v1/projects/{p}/secrets/{s}/versions/(?P<v>[^/:]+):access")
        def access(req: Request, m: re.Match[str]):
            failed, entry = secret_of(req, m)
            if failed:
                return failed
            n = self.number(entry, m["v"])
            if n is None:
                return _error(404, "NOT_FOUND", f"Secret Version [{self._name(m['s'])}/versions/{m['v']}] not found.")
            version = entry["versions"][n - 1]
            if version["state"] != "ENABLED":
                return _error(400, "FAILED_PRECONDITION",
                              f"Secret Version [{self._name(m['s'], n)}] is in {version['state']} state.")
            crc = version["crc"] ^ (0xFFFF if self.corrupt_next_access else 0)
            self.corrupt_next_access = False
            return 200, {"name": self._name(m["s"], n),
                         "payload": {"data": base64.b64encode(version["data"]).decode(), "dataCrc32c": str(crc)}}

        @sm.route("GET", rf"/v1/projects/{p}/secrets/{s}/versions")
        def list_versions(req: Request, m: re.Match[str]):
            failed, entry = secret_of(req, m)
            if failed:
                return failed
            wanted = req.query.get("filter")
            if wanted not in (None, "state:ENABLED", "state:DISABLED"):
                return _error(400, "INVALID_ARGUMENT", f"this fake filters by state only, not {wanted!r}")
            listed = [(n, v) for n, v in reversed(list(enumerate(entry["versions"], 1)))   # newest first
                      if wanted is None or v["state"] == wanted.split(":")[1]]
            start = int(req.query.get("pageToken") or 0)
            size = min(int(req.query.get("pageSize") or 25), self.page_size)
            page = listed[start:start + size]
            out: dict[str, Any] = {"versions": [self._version_json(m["s"], n, v) for n, v in page],
                                   "totalSize": len(listed)}
            if start + size < len(listed):
                out["nextPageToken"] = str(start + size)
            return 200, out

        @sm.route("POST", rf"/v1/projects/{p}/secrets/{s}/versions/(?P<v>[0-9]+):disable")
        def disable(req: Request, m: re.Match[str]):
            failed, entry = secret_of(req, m)
            if failed:
                return failed
            n = int(m["v"])
            if not 1 <= n <= len(entry["versions"]):
                return _error(404, "NOT_FOUND", f"Secret Version [{self._name(m['s'], n)}] not found.")
            if entry["versions"][n - 1]["state"] == "DESTROYED":
                return _error(400, "FAILED_PRECONDITION", f"Secret Version [{self._name(m['s'], n)}] is destroyed.")
            entry["versions"][n - 1]["state"] = "DISABLED"
            return 200, self._version_json(m["s"], n, entry["versions"][n - 1])

        @sm.route("GET", rf"/v1/projects/{p}/secrets/{s}:getIamPolicy")
        def get_policy(req: Request, m: re.Match[str]):
            failed, entry = secret_of(req, m)
            if failed:
                return failed
            policy = entry["policy"]
            return 200, {k: v for k, v in policy.items() if v or k == "etag"}

        @sm.route("POST", rf"/v1/projects/{p}/secrets/{s}:setIamPolicy")
        def set_policy(req: Request, m: re.Match[str]):
            failed, entry = secret_of(req, m)
            if failed:
                return failed
            if self.deny_set_iam:
                return _error(403, "PERMISSION_DENIED", "Permission 'secretmanager.secrets.setIamPolicy' denied on "
                                                        f"resource '{self._name(m['s'])}' (or it may not exist).")
            policy = req.body.get("policy") or {}
            if policy.get("etag") != entry["policy"]["etag"]:
                return _error(409, "ABORTED", "There were concurrent policy changes. Please retry the whole "
                                              "read-modify-write with exponential backoff.")
            generation = int(base64.b64decode(entry["policy"]["etag"]).decode().split("-")[1]) + 1
            entry["policy"] = {"version": policy.get("version") or 1, "bindings": policy.get("bindings") or [],
                               "etag": base64.b64encode(f"policy-{generation}".encode()).decode()}
            return 200, entry["policy"]
