"""The dotenv writer against a file the app user (the owner's side) may have prepared: every
refusal is one line, and the file — its bytes, mode and owner — and whatever it points at are
exactly as they were. What the writer does write, python-dotenv and POSIX sh read back alike."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from providers.base import OpenContext
from providers.dotenv import DotenvAppConfig
from runbook import commands
from runbook.errors import ConfigError, RunbookError
from tests.conftest import CANARY

FLAG = "FLAG_RAPTOR_APP_ROLE_SEPARATION"
URL = "RAPTOR_APP_DATABASE_URL"


def open_app(base: Path, dotenv: str = ".runbook/staging.env"):
    config = DotenvAppConfig(dotenv=dotenv)
    return config.open(OpenContext(env_name="staging", app_name="raptor", base_dir=base, environ={"PATH": "/usr/bin:/bin"}))


def fingerprint(path: Path) -> tuple[bytes, int, int, int]:
    st = os.lstat(path)
    data = os.readlink(path).encode() if stat.S_ISLNK(st.st_mode) else path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
    return data, st.st_mode, st.st_uid, st.st_gid


def sh_value(path: Path, key: str) -> str:
    """What a shell that sources the file (`set -a; . file`) sees."""
    out = subprocess.run(["sh", "-c", f'set -a; . "$1"; printf %s "${key}"', "sh", str(path)],
                         capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"})
    return out.stdout.decode()


def every_writer(app):
    return [lambda: app.set_config({FLAG: "1"}), lambda: app.unset_config([FLAG]), lambda: app.get_config([FLAG])]


# --- files that are not what they seem ------------------------------------------------------

def test_a_symlinked_dotenv_is_refused_and_its_target_untouched(tmp_path):
    outside = tmp_path / "outside" / "victim.conf"
    outside.parent.mkdir()
    outside.write_text("root_setting=keep\n")
    outside.chmod(0o644)
    (tmp_path / "project" / ".runbook").mkdir(parents=True)
    link = tmp_path / "project" / ".runbook" / "staging.env"
    link.symlink_to(outside)
    before = fingerprint(outside), fingerprint(link)
    app = open_app(tmp_path / "project")
    for write in every_writer(app):
        with pytest.raises(ConfigError) as caught:
            write()
        assert "symlink" in caught.value.message and "nothing was changed" in caught.value.message
        assert "\n" not in caught.value.message
    assert (fingerprint(outside), fingerprint(link)) == before


def test_a_symlinked_directory_on_the_way_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    (project / ".runbook").symlink_to(outside)
    app = open_app(project)
    with pytest.raises(ConfigError) as caught:
        app.set_config({URL: "postgresql://u:" + CANARY + "@h/db"})
    assert "symlink" in caught.value.message
    assert list(outside.iterdir()) == []


def test_a_fifo_is_refused_without_hanging(tmp_path):
    (tmp_path / ".runbook").mkdir()
    fifo = tmp_path / ".runbook" / "staging.env"
    os.mkfifo(fifo, 0o600)
    app = open_app(tmp_path)
    outcomes: list[str] = []

    def attempt():
        for write in every_writer(app):
            try:
                write()
                outcomes.append("wrote")
            except ConfigError as exc:
                outcomes.append(exc.message)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(120)    # a guard against the old hang, not a timing assertion
    assert not worker.is_alive(), "opening the FIFO blocked"
    assert len(outcomes) == 3 and all("not a regular file" in o for o in outcomes), outcomes
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_as_the_lock_file_is_refused(tmp_path):
    (tmp_path / ".runbook").mkdir()
    (tmp_path / ".runbook" / "staging.env").write_text(f"{FLAG}=0\n")
    os.mkfifo(tmp_path / ".runbook" / "staging.env.lock", 0o600)
    before = fingerprint(tmp_path / ".runbook" / "staging.env")
    with pytest.raises(ConfigError, match="not a regular file"):
        open_app(tmp_path).set_config({FLAG: "1"})
    assert fingerprint(tmp_path / ".runbook" / "staging.env") == before


def test_a_device_is_refused(tmp_path):
    (tmp_path / ".runbook").mkdir()
    node = tmp_path / ".runbook" / "staging.env"
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))     # /dev/null's numbers
    except PermissionError:
        pytest.skip("no CAP_MKNOD here")
    with pytest.raises(ConfigError, match="not a regular file"):
        open_app(tmp_path).set_config({FLAG: "1"})
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_a_hard_link_is_refused(tmp_path):
    (tmp_path / ".runbook").mkdir()
    other = tmp_path / "other.env"
    other.write_text(f"{FLAG}=0\n")
    os.link(other, tmp_path / ".runbook" / "staging.env")
    before = fingerprint(other)
    with pytest.raises(ConfigError, match="hard-linked"):
        open_app(tmp_path).set_config({FLAG: "1"})
    assert fingerprint(other) == before and os.stat(other).st_nlink == 2


# --- what a rewrite keeps --------------------------------------------------------------------

OTHER = (
    "# the app's own config, written by hand\r\n"
    "export SECRET_KEY='form\x0cfeed'\n"
    "GREETING=\"line one\nline two\"\n"
    "NOTE=par\u2028sep and\x85nel\n"
    "\n"
    "LATIN1=caf\xe9\n"
    "   weird line without equals\n"
)


def test_every_other_byte_is_kept_and_every_duplicate_rewritten(tmp_path):
    (tmp_path / ".runbook").mkdir()
    path = tmp_path / ".runbook" / "staging.env"
    raw = OTHER.replace("LATIN1=caf\xe9", "LATIN1=caf").encode() + b"\xe9 not utf-8\n"
    raw += f"{FLAG}=0\nexport {FLAG}=0 # second\n".encode()
    path.write_bytes(raw)
    app = open_app(tmp_path)
    app.set_config({FLAG: "1"})
    assert path.read_bytes() == raw.replace(f"{FLAG}=0\nexport {FLAG}=0 # second\n".encode(),
                                            f"{FLAG}=1\nexport {FLAG}=1\n".encode())
    assert app.get_config([FLAG]) == {FLAG: "1"} and sh_value(path, FLAG) == "1"
    # rollback converges: no half-rewritten duplicate keeps the old value alive
    app.set_config({FLAG: "0"})
    app.unset_config([FLAG])
    assert FLAG.encode() not in path.read_bytes()
    assert path.read_bytes().startswith(raw[: raw.index(FLAG.encode())])


def test_export_prefixes_are_kept_and_new_keys_follow_them(tmp_path):
    (tmp_path / ".runbook").mkdir()
    path = tmp_path / ".runbook" / "staging.env"
    path.write_text(f"export A=1\nexport {FLAG}=0")     # no final newline
    open_app(tmp_path).set_config({FLAG: "1", URL: "postgresql://h/db"})
    assert path.read_text() == f"export A=1\nexport {FLAG}=1\nexport {URL}=postgresql://h/db\n"
    out = subprocess.run(["sh", "-c", f'. "$1"; sh -c \'printf %s "${URL}"\'', "sh", str(path)],
                         capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout.decode()
    assert out == "postgresql://h/db"


def test_a_crlf_file_stays_crlf(tmp_path):
    (tmp_path / ".runbook").mkdir()
    path = tmp_path / ".runbook" / "staging.env"
    path.write_bytes(f"A=1\r\n{FLAG}=0\r\nB=2".encode())
    open_app(tmp_path).set_config({FLAG: "1", URL: "postgresql://h/db"})
    assert path.read_bytes() == f"A=1\r\n{FLAG}=1\r\nB=2\r\n{URL}=postgresql://h/db\r\n".encode()


def test_owner_group_and_mode_are_kept(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another uid needs root")
    (tmp_path / ".runbook").mkdir()
    path = tmp_path / ".runbook" / "staging.env"
    path.write_text(f"{FLAG}=0\n")
    os.chown(path, 12345, 23456)
    path.chmod(0o640)
    open_app(tmp_path).set_config({FLAG: "1"})
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 23456, 0o640)
    assert path.read_text() == f"{FLAG}=1\n"


def test_an_owner_this_user_cannot_keep_is_refused(request):
    """As `nobody`, over a file of another uid in a directory nobody may write: the rename
    would hand the app's config to nobody; refused instead, and the file untouched."""
    if os.geteuid() != 0:
        pytest.skip("needs root to set the scene")
    # not under tmp_path: pytest's base is root's alone, and nobody must reach the project
    scene = Path(tempfile.mkdtemp(prefix="rb-nobody-"))
    request.addfinalizer(lambda: shutil.rmtree(scene, ignore_errors=True))
    project = scene / "project"
    (project / ".runbook").mkdir(parents=True)
    scene.chmod(0o755)
    for d in (project, project / ".runbook"):
        d.chmod(0o777)
    path = project / ".runbook" / "staging.env"
    path.write_text(f"{FLAG}=0\n")
    os.chown(path, 12345, 12345)
    path.chmod(0o644)
    before = fingerprint(path)
    app = open_app(project)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child becomes nobody and tries; only its message and exit code come back
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                app.set_config({FLAG: "1"})
                code = 0
            except ConfigError as exc:
                os.write(write, exc.message.encode())
                code = 2
            except BaseException as exc:    # noqa: BLE001 — reported to the parent
                os.write(write, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write)
    message = b""
    while chunk := os.read(read, 4096):
        message += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2, message
    assert b"uid 12345" in message and b"nothing was changed" in message
    assert fingerprint(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["staging.env", "staging.env.lock"]


# --- values ----------------------------------------------------------------------------------

READABLE = ["1", "on", "", "a b", "$HOME", "`id`", "back\\slash", "it's", 'say "hi"', "#not a comment",
            "x # y", "ünïcødé ☃", "semi;colon&amp|pipe>out", "~/tilde", "a=b", "it's \\ \"all\"", "%s%n"]
REFUSED = ["a\nB=evil", "a\rb", "tab\there", "nul\x00", "esc\x1b[2J", "c1\x85", "${HOME}", "it's $HOME", "\\`id`"]


@pytest.mark.parametrize("value", READABLE)
def test_a_value_reads_back_exactly_in_python_dotenv_and_sh(tmp_path, value):
    (tmp_path / ".runbook").mkdir()
    path = tmp_path / ".runbook" / "staging.env"
    path.write_text("BEFORE=1\n")
    open_app(tmp_path).set_config({FLAG: value})
    assert dotenv_values(path, interpolate=False)[FLAG] == value
    assert dotenv_values(path)[FLAG] == value            # load_dotenv's default interpolates
    assert sh_value(path, FLAG) == value
    assert sh_value(path, "BEFORE") == "1"


@pytest.mark.parametrize("value", REFUSED)
def test_a_value_no_reader_would_read_back_is_refused(tmp_path, value):
    (tmp_path / ".runbook").mkdir()
    path = tmp_path / ".runbook" / "staging.env"
    path.write_text(f"{FLAG}=0\n{URL}=postgresql://h/db\n")
    path.chmod(0o640)
    before = fingerprint(path)
    with pytest.raises(ConfigError) as caught:
        open_app(tmp_path).set_config({FLAG: value})
    assert "nothing was written" in caught.value.message and "\n" not in caught.value.message
    assert fingerprint(path) == before


def test_an_unparseable_line_for_our_key_is_refused(tmp_path):
    (tmp_path / ".runbook").mkdir()
    path = tmp_path / ".runbook" / "staging.env"
    path.write_text(f"A=1\n{FLAG}='unterminated\n")
    before = fingerprint(path)
    with pytest.raises(ConfigError, match="line 2"):
        open_app(tmp_path).set_config({FLAG: "1"})
    assert fingerprint(path) == before


# --- from the attacker's side, through the whole run ----------------------------------------

def test_provision_with_a_planted_symlink_exits_2_and_the_target_keeps_its_bytes(env, tmp_path):
    """The app user points the dotenv at a file of its choosing to collect the URL."""
    target = tmp_path.parent / f"{tmp_path.name}-collect.txt"
    target.write_text("mine\n")
    target.chmod(0o644)
    (env.dir / ".runbook").mkdir(exist_ok=True)
    (env.dir / ".runbook" / "staging.env").symlink_to(target)
    before = fingerprint(target)
    with pytest.raises(RunbookError) as caught:
        commands.provision(env.project(), "staging", yes=True, environ=env.environ)
    assert caught.value.exit_code == 2 and "symlink" in caught.value.message
    assert fingerprint(target) == before
    assert os.path.islink(env.dir / ".runbook" / "staging.env")


def test_rollback_with_a_fifo_dotenv_exits_2_and_returns(su_env):
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    path = su_env.dir / ".runbook" / "staging.env"
    kept = path.read_bytes()
    path.unlink()
    os.mkfifo(path, 0o600)
    outcome: list[BaseException | object] = []

    def attempt():
        try:
            outcome.append(commands.rollback(su_env.project(), "staging", yes=True, environ=su_env.environ))
        except BaseException as exc:    # noqa: BLE001 — handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(120)    # a guard against the old hang, not a timing assertion
    assert not worker.is_alive(), "rollback blocked on the FIFO"
    (result,) = outcome
    assert isinstance(result, RunbookError) and result.exit_code == 2, result
    assert "not a regular file" in result.message
    assert stat.S_ISFIFO(os.lstat(path).st_mode) and CANARY not in repr(kept)


@pytest.mark.parametrize("value", ["1\nRAPTOR_APP_DATABASE_URL=postgresql://evil/db", "on\x1b[2J", "1\t"])
def test_a_flag_value_with_a_control_character_is_exit_2_with_file_and_line(tmp_path, capsys, value):
    from runbook.cli import main
    from tests.projects import spec_dict, write_project

    data = spec_dict("raptor_app")
    data["flag"]["on_value"] = value
    project = write_project(tmp_path, data)
    with pytest.raises(SystemExit) as info:
        main(["-f", str(project), "validate"])
    err = capsys.readouterr().err.strip()
    line = next(i for i, text in enumerate(project.read_text().splitlines(), 1) if text.strip().startswith("on_value:"))
    assert info.value.code == 2 and err.startswith(f"error: {project}:{line}:") and "control characters" in err, err
    assert len(err.splitlines()) == 1 and "\x1b" not in err


def test_a_flag_value_sh_and_python_dotenv_cannot_agree_on_is_refused_at_write(su_env):
    """`it's $HOME` is a fine Heroku config value, but no dotenv spelling reads back the same in
    both readers: refused before the dotenv is touched."""
    data = yaml.safe_load(su_env.path.read_text())
    data["flag"]["on_value"] = "it's $HOME"
    su_env.path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RunbookError) as caught:
        commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    assert caught.value.exit_code == 2 and "no quoting reads back the same" in caught.value.message
    values = dotenv_values(su_env.dir / ".runbook" / "staging.env")
    assert FLAG not in values       # the URL step wrote its line; the flag was never half-written


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_a_planted_local_journal_makes_rollback_refuse_not_hang(su_env, tmp_path, plant):
    """rollback writes `.runbook/journal.jsonl` first: a symlink there would have it append to
    a file of the planter's choosing, a FIFO would block it for ever. Refused in one line; the
    flag and the dotenv are as they were."""
    commands.provision(su_env.project(), "staging", yes=True, environ=su_env.environ)
    dotenv_file = su_env.dir / ".runbook" / "staging.env"
    journal = su_env.dir / ".runbook" / "journal.jsonl"
    journal.unlink(missing_ok=True)
    target = tmp_path.parent / f"{tmp_path.name}-journal-target"
    target.write_text("untouched\n")
    if plant == "symlink":
        journal.symlink_to(target)
    else:
        os.mkfifo(journal, 0o600)
    before = fingerprint(dotenv_file), fingerprint(target)
    outcome: list[object] = []

    def attempt():
        try:
            outcome.append(commands.rollback(su_env.project(), "staging", yes=True, environ=su_env.environ))
        except BaseException as exc:    # noqa: BLE001 — handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(120)    # a guard against a hang, not a timing assertion
    assert not worker.is_alive(), "rollback blocked on the planted journal"
    (result,) = outcome
    assert isinstance(result, RunbookError) and result.exit_code == 2, result
    assert ("symlink" if plant == "symlink" else "not a regular file") in result.message
    assert (fingerprint(dotenv_file), fingerprint(target)) == before
