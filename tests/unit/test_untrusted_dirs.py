"""Root's pidfile and state files are never written where another user could replace them
(issue 26, item 3): a directory another user owns or may write to is one clear error."""

from __future__ import annotations

import os

import pytest

from grace_plugins import state
from grace_plugins.atomic import untrusted
from grace_plugins.errors import GraceError
from grace_plugins.pidfile import write_pidfile

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root's files are checked")
NOBODY = 65534


def test_a_directory_another_user_owns_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    assert untrusted(str(theirs)) == f"it is owned by uid {NOBODY}"
    with pytest.raises(GraceError, match=r"running as root, its directory is unsafe") as info:
        write_pidfile(str(theirs / "app.pid"))
    assert "/run/<name>" in str(info.value) and not (theirs / "app.pid").exists()


def test_a_directory_others_may_write_to_is_refused_unless_sticky(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert untrusted(str(shared)) == "other users may write to it"
    shared.chmod(0o1777)  # as /tmp: nobody replaces another's file
    assert untrusted(str(shared)) is None
    write_pidfile(str(shared / "app.pid"))
    assert (shared / "app.pid").read_text() == f"{os.getpid()}\n"
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    assert untrusted(str(ours)) is None


def test_root_keeps_no_state_where_another_user_could_replace_it(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    os.chown(runtime, 1000, 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.raises(GraceError, match=r"cannot hold root's state files: it is owned by uid"):
        state.state_dir()
