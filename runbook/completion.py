"""Names for shell completion, read straight from the project file's YAML.

A tab press runs `runbook` once per key stroke, so this reads the file and nothing else: no
validation (pydantic), no provider module, no network. A file that is missing or does not parse
completes nothing rather than printing an error into the operator's prompt."""

from __future__ import annotations

from pathlib import Path


def _document(path: Path) -> dict:
    import yaml

    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def environment_names(path: Path) -> list[str]:
    envs = _document(path).get("environments")
    return [str(name) for name in envs] if isinstance(envs, dict) else []


def role_names(path: Path) -> list[str]:
    """The role(s) the file declares: `role.name`, and each key of `roles:` where that form is used."""
    doc = _document(path)
    names: list[str] = []
    role = doc.get("role")
    if isinstance(role, dict) and isinstance(role.get("name"), str):
        names.append(role["name"])
    roles = doc.get("roles")
    if isinstance(roles, dict):
        names.extend(str(n) for n in roles if str(n) not in names)
    elif isinstance(roles, list):
        names.extend(r["name"] for r in roles if isinstance(r, dict) and isinstance(r.get("name"), str))
    return names
