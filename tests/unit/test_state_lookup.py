"""Finding a server's state file when it runs with another environment than ours."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from grace_plugins.state import state_base
from grace_plugins.state_lookup import TEMP_DEFAULTS, bases_of, candidates, locate_state

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")


def test_the_runtime_directory_comes_first():
    got = bases_of({"XDG_RUNTIME_DIR": "/run/user/7", "TMPDIR": "/x"})
    assert got == ["/run/user/7", "/x", *TEMP_DEFAULTS]


def test_the_temporary_directory_is_the_first_named_then_pythons_defaults():
    assert bases_of({"TMP": "/c", "TEMP": "/b"}) == ["/b", *TEMP_DEFAULTS]
    assert bases_of({"TMPDIR": "/tmp"}) == list(TEMP_DEFAULTS)
    assert bases_of({"XDG_RUNTIME_DIR": ""}) == list(TEMP_DEFAULTS)


def test_candidates_are_seen_from_here_then_through_the_process_root():
    assert candidates(42, 7, {"XDG_RUNTIME_DIR": "/run/user/7", "TMPDIR": "rel"})[:3] == [
        "/run/user/7/grace_plugins-7/42.json",
        "/proc/42/root/run/user/7/grace_plugins-7/42.json",
        "/tmp/grace_plugins-7/42.json",
    ]
    assert "rel" not in " ".join(candidates(42, 7, {"TMPDIR": "rel"}))


@pytest.fixture
def other_shell(tmp_path):
    """A process started with another TMPDIR (and no XDG_RUNTIME_DIR), like a service."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmp_path)
    script = "import time; print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    # Popen returns once exec began; /proc/PID/environ reads empty until the new program runs.
    assert child.stdout is not None and child.stdout.readline() == b"up\n"
    yield child
    child.kill()
    child.wait()
    child.stdout.close()


def _write_state(base, pid, mode=0o700):
    directory = base / f"grace_plugins-{os.getuid()}"
    directory.mkdir(mode=mode)
    directory.chmod(mode)
    path = directory / f"{pid}.json"
    path.write_text("{}")
    return str(path)


@needs_proc
def test_a_state_written_under_the_servers_own_tmpdir_is_found(tmp_path, other_shell):
    path = _write_state(tmp_path, other_shell.pid)
    assert locate_state(other_shell.pid) == path


@needs_proc
def test_a_state_directory_open_to_others_is_not_trusted(tmp_path, other_shell):
    _write_state(tmp_path, other_shell.pid, mode=0o777)
    assert locate_state(other_shell.pid) is None


@needs_proc
def test_no_state_anywhere_is_none(other_shell):
    assert locate_state(other_shell.pid) is None


def test_a_runtime_directory_we_cannot_use_gives_way_to_the_temporary_one(tmp_path):
    assert state_base(str(tmp_path)) == str(tmp_path)
    assert state_base(str(tmp_path / "gone")) == tempfile.gettempdir()
    assert state_base(None) == state_base("") == tempfile.gettempdir()
