"""`rotation: alternating` on Heroku is refused in one line before any change: its logins are
platform credentials, with no group role to hold the grants (README "Rotation")."""

from __future__ import annotations

import pytest
import yaml

from runbook import commands
from runbook import project as projects
from runbook.errors import ConfigError
from tests.providers.heroku.test_engine_e2e import _mutations, project  # noqa: F401


@pytest.mark.parametrize("verb", ["provision", "rotate"])
def test_alternating_is_refused_on_heroku_changing_nothing(fake, pg, tmp_path, project, verb):
    role, path = project
    data = yaml.safe_load(path.read_text())
    data["role"]["rotation"] = "alternating"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    fake.clear()
    with pytest.raises(ConfigError) as err:
        getattr(commands, verb)(projects.load(path), "staging", yes=True, environ={**fake.environ(), "HOME": str(tmp_path)})
    assert err.value.exit_code == 2 and "\n" not in err.value.message
    assert "rotation: alternating is not supported on heroku" in err.value.message
    assert _mutations(fake) == []
    assert pg.execute("SELECT count(*) FROM pg_roles WHERE rolname IN (%s, %s, %s)", (role, f"{role}_a", f"{role}_b")) == [(0,)]
