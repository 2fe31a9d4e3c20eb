"""YAML loading that remembers where every value came from.

PyYAML's composer gives each node a start mark; we keep a map from the path of keys/indices to
its line so that pydantic's error locations can be reported as file:line. Duplicate keys are
errors here (PyYAML silently keeps the last one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runbook.errors import ConfigError

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 100_000      # aliases can expand a small file exponentially ("billion laughs")

Loc = tuple[Any, ...]


@dataclass
class Located:
    data: Any
    path: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        """The line of the deepest known prefix of `loc` (pydantic locations may go deeper)."""
        loc = tuple(loc)
        while True:
            if loc in self.lines:
                return self.lines[loc]
            if not loc:
                return None
            loc = loc[:-1]

    def where(self, loc: Loc) -> str:
        line = self.line_of(loc)
        return f"{self.path}:{line}" if line else self.path


_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Loader(yaml.SafeLoader):
    pass


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: str, loader: _Loader) -> Any:
    if len(lines) > MAX_NODES:
        raise ConfigError(f"{path}: too many values (aliases expand to more than {MAX_NODES}); is it the right file?")
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: invalid YAML: unsupported tag {node.tag}")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: mapping keys must be plain names")
            if key in out:
                raise ConfigError(
                    f"{path}:{key_node.start_mark.line + 1}: duplicate key {key!r} "
                    f"(first at line {lines.get(loc + (key,), '?')})"
                )
            lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, loc + (key,), lines, path, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(child, loc + (i,), lines, path, loader) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _compose(text: str) -> yaml.Node | None:
    """The document's node tree: libyaml's parser where PyYAML was built with it (about ten times
    faster than the pure-Python one, same nodes and marks); a document it refuses is parsed again
    by the pure-Python one, so that the error, and what we print of it, is the same either way."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        loader = fast(text)
        try:
            return loader.get_single_node()  # type: ignore[no-any-return]
        except yaml.YAMLError:
            pass
        finally:
            loader.dispose()
    loader = _Loader(text)
    try:
        return loader.get_single_node()  # type: ignore[no-any-return]
    finally:
        loader.dispose()


def load_text(text: str, path: str) -> Located:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: file is larger than {MAX_FILE_BYTES // 1000} kB; is it the right file?")
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if node is None:
        raise ConfigError(f"{path}:1: the file is empty")
    lines: dict[Loc, int] = {}
    try:
        data = _walk(node, (), lines, path, _Loader(""))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nests too deeply") from None
    return Located(data=data, path=path, lines=lines)


def load_file(path: Path) -> Located:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run `runbook init` to write a starter)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: file is larger than {MAX_FILE_BYTES // 1000} kB; is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return load_text(text, str(path))
