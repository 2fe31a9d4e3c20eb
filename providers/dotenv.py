"""`platform: dotenv` — the app reads its config from a dotenv file; restart is a shell command.

The file is the app's, not ours, and whoever can write beside it (the app user) may have planted
something there. So: it is opened without following a symlink and without blocking (a FIFO), and
anything but a plain regular file is refused; the directories under the project are walked the
same way. A rewrite is atomic (temp file + rename in the same directory), keeps the file's owner,
group and mode (refused when they cannot be kept), touches only the tool's own variables —
every occurrence of them — and keeps every other byte as it was. Values are checked and quoted
so that python-dotenv and POSIX `sh` (`set -a; . file`) read back exactly what was written.
Concurrent writers are serialised with an flock beside the file.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
import secrets
import shlex
import stat
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Iterator, Literal, Mapping

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from providers.base import AppBase, Credential, OpenContext
from runbook import shell
from runbook.durations import parse_timeout
from runbook.errors import ConfigError, ProviderError
from runbook.secret import Secret, redact, reveal

MAX_BYTES = 4 << 20     # a dotenv larger than this is not an app's config


class DotenvAppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="dotenv app")
    platform: Literal["dotenv"] = "dotenv"
    dotenv: str | None = Field(default=None, description="path of the app's dotenv file (default .runbook/<env>.env)", examples=['.runbook/staging.env'])
    restart: str | None = Field(default=None, description="shell command that restarts the app (optional)", examples=['systemctl restart raptor'])
    restart_timeout: timedelta = Field(default=timedelta(minutes=2), description="how long the restart command may run")
    pass_env: Annotated[list[str], BeforeValidator(shell.pass_env_names)] = Field(
        default_factory=list, description="variables the restart command gets beyond the minimal set",
        examples=[["KUBECONFIG", "AWS_PROFILE"]])

    @field_validator("restart_timeout", mode="before")
    @classmethod
    def _dur(cls, v: object) -> timedelta:
        return parse_timeout(v)

    @field_validator("dotenv")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and (not v.strip() or "\x00" in v):
            raise ValueError("dotenv must be a file path")
        return v

    def open(self, ctx: OpenContext) -> "DotenvApp":
        return DotenvApp(self, ctx)


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE = re.compile(r"[A-Za-z0-9_./:@%+,=-]*")          # nothing sh or python-dotenv treats specially
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LEAD = re.compile(r"\s*(?:export[^\S\r\n]+)?")
_EOL = re.compile(r"(?:\r\n|\n|\r)\Z")


def quote(key: str, value: str) -> str:
    """`value` written so that python-dotenv (with or without interpolation) and `sh` both read
    back exactly `value`; refused when no such spelling exists."""
    if _CONTROL.search(value):
        raise ConfigError(f"the value for {key} holds a control character (a newline?); refused, nothing was written")
    if "${" in value:
        # python-dotenv expands ${NAME} in every kind of value and has no escape for it
        raise ConfigError(f"the value for {key} holds `${{`, which python-dotenv would expand; refused, nothing was written")
    if _BARE.fullmatch(value):
        return value
    if "'" not in value and "\\" not in value:
        return f"'{value}'"         # literal for sh; python-dotenv only decodes \\ and \' in single quotes
    if "$" not in value and "`" not in value:
        # in double quotes both readers turn \\ into \ and \" into ", and nothing else is special here
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ConfigError(f"the value for {key} mixes ' or \\ with $ or `, which no quoting reads back the same in "
                      "python-dotenv and sh; refused, nothing was written")


def rewritten(text: str, set_values: Mapping[str, str], drop: set[str]) -> str:
    """`text` with every binding of `set_values` replaced (values already quoted), every binding
    of `drop` removed, new keys appended; every other byte as it was."""
    from dotenv.parser import parse_stream

    bindings = list(parse_stream(io.StringIO(text)))
    ours = set(set_values) | drop
    for b in bindings:
        if b.error:
            m = re.match(r"\s*(?:export\s+)?['\"]?([A-Za-z_][A-Za-z0-9_]*)", b.original.string)
            if m and m.group(1) in ours:
                raise ConfigError(f"line {b.original.line} (for {m.group(1)}) cannot be parsed as dotenv; "
                                  "fix it by hand, nothing was written")
    keyed = [b for b in bindings if b.key is not None]
    export = "export " if keyed and all(_LEAD.match(b.original.string).group(0).lstrip(" \t\r\n") for b in keyed) else ""
    out: list[str] = []
    seen: set[str] = set()
    for b in bindings:
        original = b.original.string
        if b.key not in ours:
            out.append(original)
            continue
        lead = _LEAD.match(original).group(0)
        eol = _EOL.search(original)
        if b.key in drop:
            # keep the blank lines before it, lose the binding
            out.append(lead[: len(lead) - len(lead.lstrip(" \t\r\n"))].rstrip(" \t"))
            continue
        seen.add(b.key)
        out.append(f"{lead}{b.key}={set_values[b.key]}{eol.group(0) if eol else ''}")
    nl = "\r\n" if "\r\n" in text and text.count("\n") == text.count("\r\n") else "\n"   # a CRLF file stays CRLF
    new = [f"{export}{k}={v}{nl}" for k, v in set_values.items() if k not in seen]
    if new and out and not _EOL.search(out[-1]) and "".join(out):
        out.append(nl)
    return "".join(out + new)


class DotenvApp(AppBase):
    key = "dotenv"
    config_change_restarts = False

    def __init__(self, config: DotenvAppConfig, ctx: OpenContext) -> None:
        self.config = config
        self.ctx = ctx
        self.base = Path(os.path.abspath(str(ctx.base_dir)))
        relative = Path(config.dotenv or f".runbook/{ctx.env_name}.env")
        # not resolve(): a symlink must be seen (and refused), not followed
        self.path = Path(os.path.abspath(self.base / relative))
        self._walk = None if relative.is_absolute() or ".." in relative.parts else relative.parent.parts

    def describe(self) -> dict[str, str]:
        out = {"dotenv": str(self.path)}
        if self.config.restart:
            out["restart"] = self.config.restart
        return out

    # --- the file, opened without trusting it ---------------------------------------------
    @contextmanager
    def _directory(self, *, create: bool) -> Iterator[int | None]:
        """An fd of the file's directory; below the project walked with O_NOFOLLOW, so a
        symlinked `.runbook` cannot point the write elsewhere. None: it does not exist."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            if self._walk is None:
                if create:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path.parent, flags)
            else:
                fd = os.open(self.base, flags)
                for part in self._walk:
                    try:
                        nxt = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
                    except FileNotFoundError:
                        if not create:
                            os.close(fd)
                            yield None
                            return
                        os.mkdir(part, 0o777, dir_fd=fd)     # the umask applies, as for any mkdir
                        nxt = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
                    except OSError as exc:
                        os.close(fd)
                        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                            raise ConfigError(f"{self.path}: the directory {part!r} on its way is a symlink or not a "
                                              "directory; refused, nothing was changed") from None
                        raise
                    os.close(fd)
                    fd = nxt
        except ConfigError:
            raise
        except OSError as exc:
            raise ProviderError(f"cannot open the directory of {self.path}: {exc.strerror}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _open(self, dir_fd: int, name: str, flags: int, mode: int = 0o600) -> int:
        """Open `name` in `dir_fd` as a plain regular file of its own, or refuse."""
        try:
            # look before opening: opening a device or a FIFO can itself have effects
            before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
        else:
            if stat.S_ISLNK(before.st_mode):
                raise ConfigError(f"{self.path.parent / name} is a symlink; refused, nothing was changed")
            if not stat.S_ISREG(before.st_mode):
                raise ConfigError(f"{self.path.parent / name} is not a regular file; refused, nothing was changed")
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(f"{self.path.parent / name} is a symlink; refused, nothing was changed") from None
            if exc.errno == errno.ENXIO:    # a FIFO with no reader, opened for writing
                raise ConfigError(f"{self.path.parent / name} is not a regular file; refused, nothing was changed") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "hard-linked elsewhere"
            raise ConfigError(f"{self.path.parent / name} is {what}; refused, nothing was changed")
        return fd

    def _load(self, dir_fd: int | None) -> tuple[os.stat_result | None, str]:
        if dir_fd is None:
            return None, ""
        try:
            fd = self._open(dir_fd, self.path.name, os.O_RDONLY)
        except FileNotFoundError:
            return None, ""
        except OSError as exc:
            raise ProviderError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_size > MAX_BYTES:
                raise ConfigError(f"{self.path} is larger than {MAX_BYTES >> 20} MiB; refused, nothing was changed")
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(fd)
        # surrogateescape: bytes that are not UTF-8 come back out exactly as they went in
        return st, b"".join(chunks).decode("utf-8", "surrogateescape")

    def _read(self) -> dict[str, str | None]:
        from dotenv import dotenv_values

        with self._directory(create=False) as dir_fd:
            _, text = self._load(dir_fd)
        return dict(dotenv_values(stream=io.StringIO(text), interpolate=False))

    def get_config(self, keys: list[str]) -> dict[str, str | None]:
        values = self._read()
        return {k: values.get(k) for k in keys}

    @contextmanager
    def _locked(self, dir_fd: int) -> Iterator[None]:
        try:
            fd = self._open(dir_fd, self.path.name + ".lock", os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise ProviderError(f"cannot open the lock beside {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _rewrite(self, set_values: Mapping[str, str | Secret], drop: set[str]) -> None:
        for key in [*set_values, *drop]:
            if not _KEY.match(key):
                raise ConfigError(f"{key!r} is not a valid variable name")
        quoted = {k: quote(k, reveal(v)) for k, v in set_values.items()}    # refused before anything is opened
        with self._directory(create=True) as dir_fd, self._locked(dir_fd):
            st, text = self._load(dir_fd)
            new = rewritten(text, quoted, drop)
            if st is not None and new == text:
                return
            self._replace(dir_fd, st, new.encode("utf-8", "surrogateescape"))

    def _replace(self, dir_fd: int, st: os.stat_result | None, data: bytes) -> None:
        tmp = f".{self.path.name}.runbook-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            try:
                if st is not None:
                    # the app user must still read it: same owner, group and mode as before
                    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                        try:
                            os.fchown(fd, st.st_uid, st.st_gid)
                        except PermissionError:
                            raise ConfigError(
                                f"{self.path} belongs to uid {st.st_uid} gid {st.st_gid}, which this user cannot give "
                                "a rewritten file; run as that user (or root); nothing was changed") from None
                    os.fchmod(fd, stat.S_IMODE(st.st_mode))
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        os.fsync(dir_fd)

    def set_config(self, changes: Mapping[str, str | Secret]) -> None:
        self._rewrite(changes, set())

    def unset_config(self, keys: list[str]) -> None:
        self._rewrite({}, set(keys))

    def restart(self) -> None:
        if not self.config.restart:
            return
        env = shell.child_env(self.ctx.environ, self.config.pass_env)
        try:
            res = shell.run(self.config.restart, timeout=self.config.restart_timeout.total_seconds(),
                            cwd=str(self.ctx.base_dir), env=env)
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
