"""RDS log files, faked from botocore's own service model: moto (5.2) lists one fixed, empty
file for describe_db_log_files (and fails on its FileLastWritten filter) and has no
download_db_log_file_portion. Both calls are answered here, from a before-call hook on the
boto3 session, after the request is validated against the operation's input shape; every
answer is checked against the output shape. Everything else still goes to moto."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class LogFile:
    text: str
    last_written_ms: int


@dataclass
class RdsLogFiles:
    """instance → {file name → LogFile}; `lines_per_portion` small, so paging is exercised."""

    files: dict[str, dict[str, LogFile]] = field(default_factory=dict)
    lines_per_portion: int = 3
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    deny: bool = False
    _pending: dict[str, Any] | None = None

    def add(self, instance: str, name: str, text: str, last_written: float) -> None:
        self.files.setdefault(instance, {})[name] = LogFile(text, int(last_written * 1000))

    def install(self, session: Any) -> None:
        for op in ("DescribeDBLogFiles", "DownloadDBLogFilePortion"):
            session.events.register(f"before-parameter-build.rds.{op}", self._params)
            session.events.register(f"before-call.rds.{op}", self._handle)

    # -- the hooks: the API parameters as the caller gave them, then the answer ---------------

    def _params(self, params, model, **_: Any) -> None:
        self._pending = dict(params)

    def _handle(self, model, **_: Any):
        from botocore.validate import ParamValidator

        params, self._pending = self._pending, None
        assert params is not None, f"{model.name}: no parameters seen"
        report = ParamValidator().validate(params, model.input_shape)
        if report.has_errors():
            pytest.fail(f"{model.name}: request does not match botocore's model: {report.generate_report()}")
        self.calls.append((model.name, dict(params)))
        if self.deny:
            return self._error(403, "AccessDenied", "User is not authorized to perform: rds:" + model.name)
        instance = params["DBInstanceIdentifier"]
        if instance not in self.files:
            return self._error(404, "DBInstanceNotFound", f"DBInstance {instance} not found.")
        if model.name == "DescribeDBLogFiles":
            body = self._describe(instance, params)
        else:
            body = self._download(instance, params)
            if body is None:
                return self._error(404, "DBLogFileNotFoundFault", f"{params['LogFileName']} not found")
        self._check_output(model, body)
        return self._ok(body)

    def _describe(self, instance: str, params: dict[str, Any]) -> dict[str, Any]:
        since = params.get("FileLastWritten", 0)
        rows = [{"LogFileName": name, "LastWritten": f.last_written_ms, "Size": len(f.text.encode())}
                for name, f in sorted(self.files[instance].items()) if f.last_written_ms >= since]
        start = int(params.get("Marker") or 0)
        size = int(params.get("MaxRecords") or 100)
        page = rows[start:start + size]
        body: dict[str, Any] = {"DescribeDBLogFiles": page}
        if start + size < len(rows):
            body["Marker"] = str(start + size)
        return body

    def _download(self, instance: str, params: dict[str, Any]) -> dict[str, Any] | None:
        entry = self.files[instance].get(params["LogFileName"])
        if entry is None:
            return None
        lines = entry.text.splitlines(keepends=True)
        marker = params.get("Marker") or "0"
        if not marker.isdigit():
            pytest.fail(f"DownloadDBLogFilePortion: a Marker the service never issued: {marker!r}")
        start = int(marker)
        n = int(params.get("NumberOfLines") or self.lines_per_portion)
        end = min(len(lines), start + min(n, self.lines_per_portion))
        return {"LogFileData": "".join(lines[start:end]), "Marker": str(end), "AdditionalDataPending": end < len(lines)}

    @staticmethod
    def _check_output(model, body: dict[str, Any]) -> None:
        members = model.output_shape.members
        unknown = set(body) - set(members)
        assert not unknown, f"{model.name}: output keys outside botocore's model: {unknown}"

    @staticmethod
    def _ok(body: dict[str, Any]):
        from botocore.awsrequest import AWSResponse

        return AWSResponse("https://rds.fake/", 200, {}, None), {**body, "ResponseMetadata": {"HTTPStatusCode": 200}}

    @staticmethod
    def _error(status: int, code: str, message: str):
        from botocore.awsrequest import AWSResponse

        return (AWSResponse("https://rds.fake/", status, {}, None),
                {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}})
