"""The README's examples of the four role kinds are real project files."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from runbook import project

README = Path(__file__).resolve().parents[2] / "README.md"
ENV = "environments:\n  staging: {provider: local, database: {dsn_env: X}}\n"


def _examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Several roles", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


def test_the_four_kinds_parse_alone_and_together():
    blocks = _examples()
    assert len(blocks) == 4
    kinds = [b.splitlines()[0] for b in blocks]
    assert [k.split(":")[0] for k in kinds] == ["# app", "# readonly / analytics", "# migrator", "# ci"]
    merged: dict = {}
    for block in blocks:
        p = project.loads("version: 1\napp: raptor\n" + block + ENV)
        assert p.several and len(p.roles) == 1
        merged.update(yaml.safe_load(block)["roles"])
    together = project.loads(yaml.safe_dump({"version": 1, "app": "raptor", "roles": merged}, sort_keys=False) + ENV)
    assert list(together.roles) == ["raptor_app", "raptor_analytics", "raptor_migrator", "raptor_ci"]
    assert together.roles["raptor_migrator"].member_of == ("app_owner",)
    assert [m.name for m in together.roles.values() if m.flag] == ["raptor_app"]
    ci = together.roles["raptor_ci"].spec.schemas["public"]
    assert not (ci.tables or ci.sequences or ci.functions)
