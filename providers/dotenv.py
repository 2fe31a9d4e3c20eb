"""`platform: dotenv` — the app reads its config from a dotenv file; restart is a shell command.

Writes are atomic (temp file + rename), the file is mode 0600 from its first byte, and
concurrent writers are serialised with an flock beside the file.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from providers.base import Credential, OpenContext
from runbook import shell
from runbook.durations import parse_duration
from runbook.errors import ConfigError, ProviderError
from runbook.secret import Secret, redact, reveal


class DotenvAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="dotenv app")
    platform: Literal["dotenv"] = "dotenv"
    dotenv: str | None = Field(default=None, description="path of the app's dotenv file (default .runbook/<env>.env)", examples=['.runbook/staging.env'])
    restart: str | None = Field(default=None, description="shell command that restarts the app (optional)", examples=['systemctl restart raptor'])
    restart_timeout: timedelta = Field(default=timedelta(minutes=2), description="how long the restart command may run")

    @field_validator("restart_timeout", mode="before")
    @classmethod
    def _dur(cls, v: object) -> timedelta:
        return parse_duration(v)

    @field_validator("dotenv")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and (not v.strip() or "\x00" in v):
            raise ValueError("dotenv must be a file path")
        return v

    def open(self, ctx: OpenContext) -> "DotenvApp":
        return DotenvApp(self, ctx)


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./:@%+,=?&-]*", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class DotenvApp:
    key = "dotenv"
    config_change_restarts = False

    def __init__(self, config: DotenvAppConfig, ctx: OpenContext) -> None:
        self.config = config
        self.ctx = ctx
        base = Path(str(ctx.base_dir))
        self.path = (base / (config.dotenv or f".runbook/{ctx.env_name}.env")).resolve()

    def describe(self) -> dict[str, str]:
        out = {"dotenv": str(self.path)}
        if self.config.restart:
            out["restart"] = self.config.restart
        return out

    def _read(self) -> dict[str, str | None]:
        from dotenv import dotenv_values

        if not self.path.exists():
            return {}
        try:
            return dict(dotenv_values(self.path, interpolate=False))
        except (OSError, UnicodeDecodeError) as exc:
            raise ProviderError(f"cannot read {self.path}: {exc}") from None

    def get_config(self, keys: list[str]) -> dict[str, str | None]:
        values = self._read()
        return {k: values.get(k) for k in keys}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProviderError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _rewrite(self, set_values: Mapping[str, str | Secret], drop: set[str]) -> None:
        for key in [*set_values, *drop]:
            if not _KEY.match(key):
                raise ConfigError(f"{key!r} is not a valid variable name")
        with self._locked():
            try:
                lines = self.path.read_text().splitlines() if self.path.exists() else []
            except (OSError, UnicodeDecodeError) as exc:
                raise ProviderError(f"cannot read {self.path}: {exc}") from None
            pending = dict(set_values)
            out: list[str] = []
            for line in lines:
                m = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
                key = m.group(1) if m else None
                if key in drop:
                    continue
                if key in pending:
                    out.append(f"{key}={_quote(reveal(pending.pop(key)))}")
                    continue
                out.append(line)
            for key, value in pending.items():
                out.append(f"{key}={_quote(reveal(value))}")
            fd, tmp = tempfile.mkstemp(prefix=".runbook-", dir=self.path.parent)   # mkstemp: mode 0600
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write("\n".join(out) + ("\n" if out else ""))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise

    def set_config(self, changes: Mapping[str, str | Secret]) -> None:
        self._rewrite(changes, set())

    def unset_config(self, keys: list[str]) -> None:
        self._rewrite({}, set(keys))

    def restart(self) -> None:
        if not self.config.restart:
            return
        try:
            res = shell.run(self.config.restart, timeout=self.config.restart_timeout.total_seconds(),
                            cwd=str(self.ctx.base_dir))
        except shell.CommandTimeout:
            raise ProviderError(f"restart command timed out after {self.config.restart_timeout}; it was stopped") from None
        if res.returncode != 0:
            tail = redact(res.tail())
            raise ProviderError(f"restart command `{shlex.split(self.config.restart)[0]}` exited {res.returncode}: {tail}")

    @property
    def can_restart(self) -> bool:
        return bool(self.config.restart)

    def attach_url(self, credential: Credential, var: str) -> bool:
        return False

    def detach_url(self, credential_name: str, var: str) -> bool:
        return False
