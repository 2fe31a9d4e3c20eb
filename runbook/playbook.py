"""Playbooks: ordered step lists in YAML. The shipped ones live in playbooks/; a project may
name its own (`playbooks: {name: path}` in runbook.yaml), which may use sql, command and
http_check steps as well as the shipped kinds."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from runbook.engine import Step
from runbook.errors import ConfigError
from runbook.steps import KINDS, step_class
from runbook.yamlfile import load_file, load_text

SHIPPED = ("provision", "rollback", "retire", "rotate", "promote")


@dataclass
class Playbook:
    name: str
    description: str
    steps: list[Step]
    source: str


def _shipped_text(name: str) -> tuple[str, str]:
    # a source checkout keeps them at the top level; an installed wheel under runbook/playbooks
    local = Path(__file__).resolve().parent.parent / "playbooks" / f"{name}.yaml"
    if local.exists():
        return local.read_text(), str(local)
    ref = resources.files("runbook.playbooks").joinpath(f"{name}.yaml")
    return ref.read_text(), f"runbook/playbooks/{name}.yaml"


@functools.lru_cache(maxsize=None)
def _shipped_located(name: str):
    # parsed once per process: a fleet loads the same playbook for every environment, and the
    # YAML parse with line marks was a sixth of each environment's CPU. Steps are built anew by
    # parse() each time (cheap, and no two runs share a step object).
    text, source = _shipped_text(name)
    return load_text(text, source)


def parse(located) -> Playbook:
    data = located.data
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ConfigError(f"{located.where(())}: a playbook is a mapping with name: and a non-empty steps: list")
    unknown = set(data) - {"name", "description", "steps"}
    if unknown:
        raise ConfigError(f"{located.where((sorted(unknown)[0],))}: unknown key {sorted(unknown)[0]!r} in playbook")
    steps: list[Step] = []
    for i, item in enumerate(data["steps"]):
        if isinstance(item, str):
            kind, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (kind, params), = item.items()
            params = params or {}
            if not isinstance(params, dict):
                raise ConfigError(f"{located.where(('steps', i))}: parameters of {kind!r} must be a mapping")
        else:
            raise ConfigError(f"{located.where(('steps', i))}: a step is a name or a one-key mapping")
        if kind not in KINDS:
            hint = difflib.get_close_matches(str(kind), list(KINDS), n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else f" (known: {', '.join(KINDS)})"
            raise ConfigError(f"{located.where(('steps', i))}: unknown step {kind!r}{more}")
        steps.append(step_class(kind)(params))
    return Playbook(str(data.get("name") or "playbook"), str(data.get("description") or ""), steps, located.path)


def load(name: str, project=None) -> Playbook:
    if project is not None and name in project.spec.playbooks:
        path = Path(project.spec.playbooks[name])
        if not path.is_absolute():
            path = project.base_dir / path
        return _for(parse(load_file(path)), project)
    if name not in SHIPPED:
        raise ConfigError(f"no playbook {name!r} (shipped: {', '.join(SHIPPED)}; add your own under playbooks: in runbook.yaml)")
    return _for(parse(_shipped_located(name)), project)


def _for(book: Playbook, project) -> Playbook:
    """Leave out the steps that say they do not apply to this project (the drain step of a
    `rotation: single` role), so a project that does not use them reports the same steps as before."""
    if project is None:
        return book
    kept = [s for s in book.steps if getattr(s, "applies", lambda _project: True)(project)]
    return book if len(kept) == len(book.steps) else replace(book, steps=kept)
