"""The fake checked by Heroku's own client: the real `heroku` CLI (npm `heroku` 11.x) run against
it, so every route, header, auth scheme and body shape the CLI depends on is the CLI's, not ours.

Offline only: HEROKU_HOST points at the loopback fake (both APIs on one port, as the CLI reaches
the Data API on HEROKU_HOST's port), telemetry and the update check are off, and any other HTTP
the CLI might try goes to a dead loopback proxy. Skipped when the CLI is not installed (it is not
part of .ci/run: `npm install heroku@11.10.0` pulls ~700 packages from the network); point
HEROKU_CLI at its `bin/run.js` or put `heroku` on PATH to run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.providers.conftest import serving
from tests.providers.heroku.conftest import ADDON, APP
from tests.providers.heroku.fake_heroku import FakeHeroku

HOST = "ec2-1-2-3-4.compute-1.amazonaws.com"
POOLER = (HOST, 5433)


def _cli() -> Path:
    found = os.environ.get("HEROKU_CLI") or shutil.which("heroku")
    if not found:
        pytest.skip("the Heroku CLI is not installed (npm install heroku@11.10.0; HEROKU_CLI=…/bin/run.js)")
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    path = Path(found).resolve()
    package = next((p / "package.json" for p in path.parents if (p / "package.json").exists()), None)
    version = json.loads(package.read_text()).get("version", "") if package else ""
    if not version.startswith("11."):
        pytest.skip(f"the Heroku CLI at {path} is {version or 'of unknown version'}, not 11.x")
    return path


@pytest.fixture(scope="module")
def cli() -> Path:
    return _cli()


@pytest.fixture
def shared_fake():
    f = FakeHeroku(admin_dsn=None, database="d1abc", port=5432, advertised_host=HOST, pooler=POOLER,
                   provision_polls=0, rotation_polls=0, shared_port=True).start()
    f.add_addon(APP, owner="u1owner", name=ADDON)
    yield from serving(f)


def _run(cli: Path, fake: FakeHeroku, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"), "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data"),
        **fake.cli_environ(),
        "DISABLE_TELEMETRY": "true", "HEROKU_SKIP_NEW_VERSION_CHECK": "true",
        "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1",
        "NO_COLOR": "1", "FORCE_COLOR": "0",
    }
    return subprocess.run([str(cli), *args, "-a", APP], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=180)


def test_the_heroku_cli_drives_the_fake(cli, shared_fake, tmp_path):
    fake = shared_fake

    # pg:credentials:create: the resolver (POST /actions/addon-attachments/resolve), then a Bearer POST
    done = _run(cli, fake, tmp_path, "pg:credentials:create", "DATABASE", "--name", "cli_role")
    assert done.returncode == 0, done.stderr
    assert f"heroku addons:attach {ADDON} --credential cli_role -a {APP}" in done.stdout

    # pg:credentials:url: Basic auth, and the active user of the credential
    done = _run(cli, fake, tmp_path, "pg:credentials:url", "DATABASE", "--name", "cli_role")
    assert done.returncode == 0, done.stderr
    password = fake.credential_password(ADDON, "cli_role")
    assert f"postgres://cli_role:{password}@{HOST}:5432/d1abc" in done.stdout

    # addons:attach --credential: the add-on's credential config, the attachment, the latest release
    done = _run(cli, fake, tmp_path, "addons:attach", ADDON, "--credential", "cli_role", "--as", "CLI_ROLE")
    assert done.returncode == 0, done.stderr
    assert f"Setting CLI_ROLE config vars and restarting {APP}... done, v{fake.releases[APP]}" in done.stderr
    assert fake.config_vars(APP)["CLI_ROLE_URL"] == f"postgres://cli_role:{password}@{HOST}:5432/d1abc"

    # a taken name: the CLI reads our 423 as confirmation_required (lib/addons/util.js) and prompts
    # with its message; stdin is closed, so it never confirms (it then exits, with 0, at EOF)
    fake.set_config_var(APP, "TAKEN_URL", "postgres://someone:else@elsewhere/db")
    seen = len(fake.requests)
    done = _run(cli, fake, tmp_path, "addons:attach", ADDON, "--credential", "cli_role", "--as", "TAKEN")
    assert f"Adding TAKEN to app {APP} would overwrite existing vars TAKEN_URL." in " ".join(
        line.strip(" ›") for line in done.stderr.split("\n")).replace("  ", " ")
    assert [(r.status, "confirm" in r.body) for r in fake.requests[seen:] if r.method == "POST"] == [(423, False)]
    assert fake.config_vars(APP)["TAKEN_URL"] == "postgres://someone:else@elsewhere/db"
    # with --confirm the CLI sends confirm and the fake replaces the variable
    done = _run(cli, fake, tmp_path, "addons:attach", ADDON, "--credential", "cli_role", "--as", "TAKEN",
                "--confirm", APP)
    assert done.returncode == 0, done.stderr
    assert fake.config_vars(APP)["TAKEN_URL"].startswith("postgres://cli_role:")

    # pg:credentials:rotate: Basic auth on the rotation; Heroku keeps the attached URL current
    done = _run(cli, fake, tmp_path, "pg:credentials:rotate", "DATABASE", "--name", "cli_role", "--confirm", APP)
    assert done.returncode == 0, done.stderr
    rotated = fake.credential_password(ADDON, "cli_role")
    assert rotated != password and fake.config_vars(APP)["CLI_ROLE_URL"] == f"postgres://cli_role:{rotated}@{HOST}:5432/d1abc"

    # pg:connection-pooling:attach: the Data API call the tool makes for its own credential
    done = _run(cli, fake, tmp_path, "pg:connection-pooling:attach", "DATABASE", "--as", "POOL")
    assert done.returncode == 0, done.stderr
    assert f"Setting POOL config vars and restarting {APP}... done, v{fake.releases[APP]}" in done.stderr
    assert fake.config_vars(APP)["POOL_URL"].endswith(f"@{POOLER[0]}:{POOLER[1]}/d1abc")

    # everything the CLI sent was understood: no auth scheme refused, no unknown route, no fake bug
    assert fake.auth_rejections == [] and fake.errors == []
    assert not [(r.method, r.path, r.status) for r in fake.requests
                if r.status == 404 or r.status is None or r.status >= 500]
    assert {r.api for r in fake.requests} == {"platform", "data"}
