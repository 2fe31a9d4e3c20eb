"""The adapter contract is the whole contract: nothing in runbook/ probes an adapter with
getattr/hasattr to find out what it can do (every capability is on the Protocols in
providers/base.py, with its default in DatabaseBase / AppBase), and every provider's adapters
subclass those bases and satisfy the Protocols."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import providers
from providers.base import AppBase, AppPlatform, DatabaseBase, DatabaseProvider

ROOT = Path(__file__).resolve().parents[2]
# how runbook/ names an adapter object: ctx.db / ctx.app (or self.db, self._db, …) and bare names
ADAPTER_ATTRS = {"db", "app", "_db", "_app"}
ADAPTER_NAMES = {"db", "app", "adapter", "provider", "platform", "database"}
PROBES = {"getattr", "hasattr"}


def _adapter_probes(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PROBES
                and node.args):
            continue
        target = node.args[0]
        if (isinstance(target, ast.Attribute) and target.attr in ADAPTER_ATTRS) or (
                isinstance(target, ast.Name) and target.id in ADAPTER_NAMES):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_getattr_on_an_adapter_in_runbook():
    found = []
    for path in sorted((ROOT / "runbook").rglob("*.py")):
        found += _adapter_probes(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == []


@pytest.mark.parametrize("line", [
    "getattr(ctx.db, 'login_route', None)",
    "getattr(self._app, 'close', None)",
    "hasattr(ctx.app, 'url_problem')",
    "getattr(adapter, 'close', None)",
    "getattr(db, '_cluster')",
])
def test_the_probe_finder_sees_each_form(line):
    # so the test above cannot pass vacuously
    assert len(_adapter_probes(line, "probe.py")) == 1


def test_the_probe_finder_leaves_other_getattrs_alone():
    assert _adapter_probes("getattr(exc, 'sqlstate', None)\ngetattr(commands, verb)\n", "probe.py") == []


def _opened_classes() -> list[tuple[str, type, type]]:
    """(registry key, adapter class, base) for every provider, from the annotation of its config's open()."""
    import typing

    out = []
    for registry, base in ((providers.DATABASES, DatabaseBase), (providers.PLATFORMS, AppBase)):
        for key, ref in registry.items():
            module, _, name = ref.partition(":")
            config = getattr(__import__(module, fromlist=[name]), name)
            adapter = typing.get_type_hints(config.open, vars(inspect.getmodule(config)))["return"]
            out.append((key, adapter, base))
    return out


@pytest.mark.parametrize("key, adapter, base", _opened_classes(), ids=lambda v: getattr(v, "__name__", v))
def test_every_adapter_subclasses_its_base_and_has_the_whole_protocol(key, adapter, base):
    assert issubclass(adapter, base)
    protocol = DatabaseProvider if base is DatabaseBase else AppPlatform
    members = {n for n in dir(protocol) if not n.startswith("_")} | set(protocol.__annotations__)
    missing = sorted(n for n in members if not hasattr(adapter, n))
    assert missing == [], f"{key}: {adapter.__name__} lacks {missing}"


def test_both_sides_of_an_environment_share_one_mapping(tmp_path):
    # what lets a platform hand its database and app sides one API object (Heroku)
    from runbook.context import Context
    from tests.projects import load, spec_dict, write_project

    project = load(write_project(tmp_path, spec_dict("raptor_app")))
    ctx = Context(project, project.environments["staging"], "plan")
    assert ctx.open_context().shared is ctx.open_context().shared
    other = Context(project, project.environments["staging"], "plan")
    assert other.open_context().shared is not ctx.open_context().shared
