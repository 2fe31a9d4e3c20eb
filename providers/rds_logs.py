"""RDS / Aurora PostgreSQL log files through the RDS API: `describe_db_log_files` for the files
written since a moment, `download_db_log_file_portion` page by page (runbook.dblog's caps).

RDS writes stderr lines with a fixed log_line_prefix, or csvlog files beside them when the
parameter group sets log_destination = csvlog (then the .csv files are read: their user field
attributes a line without parsing a prefix). An Aurora cluster's log is per instance: every
member is read, since the app's sessions may land on any of them.
"""

from __future__ import annotations

from typing import Any, Iterator

from runbook.dblog import Budget, LogLines, LogRecord, lines_of, parse_csvlog, parse_text

# RDS for PostgreSQL's log_line_prefix (not modifiable in a parameter group)
RDS_PREFIX = "%t:%r:%u@%d:[%p]:"
PERMISSIONS = "rds:DescribeDBLogFiles and rds:DownloadDBLogFilePortion"


def _denied(code: str) -> bool:
    return code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")


def _files(aws: Any, instance: str, since: float) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for page in aws.pages("rds", "describe_db_log_files", DBInstanceIdentifier=instance,
                          FileLastWritten=int(since * 1000)):
        found += page.get("DescribeDBLogFiles") or []
    errors = [f for f in found if str(f.get("LogFileName", "")).startswith("error/")]
    csv_files = [f for f in errors if f["LogFileName"].endswith(".csv")]
    chosen = csv_files or [f for f in errors if not f["LogFileName"].endswith(".csv")]
    return sorted(chosen, key=lambda f: (f.get("LastWritten") or 0, f["LogFileName"]))


def _portions(aws: Any, instance: str, name: str, budget: Budget) -> Iterator[str]:
    marker = "0"
    while not budget.exhausted:
        out = aws.call("rds", "download_db_log_file_portion", DBInstanceIdentifier=instance, LogFileName=name,
                       Marker=marker)
        yield out.get("LogFileData") or ""
        if not out.get("AdditionalDataPending") or not out.get("Marker") or out["Marker"] == marker:
            return
        marker = out["Marker"]


def read(aws: Any, instances: list[str], since: float, role: str) -> LogLines:
    from providers.aws import AwsError

    source = "RDS log files of " + ", ".join(instances)
    budget = Budget()
    records: list[LogRecord] = []
    text = False
    try:
        for instance in instances:
            for item in _files(aws, instance, since):
                name = item["LogFileName"]
                lines = lines_of(_portions(aws, instance, name, budget))
                if name.endswith(".csv"):
                    records += parse_csvlog(lines, role, budget=budget)
                else:
                    text = True
                    records += parse_text(lines, RDS_PREFIX, role, budget=budget)
    except AwsError as exc:
        if _denied(exc.code):
            return LogLines(source, problem=f"the AWS identity may not read the log files ({exc.code})",
                            fix=f"allow {PERMISSIONS} on the DB instance(s)")
        raise
    return LogLines(source, tuple(records), partial=budget.exhausted, text=text, by_message=text)
