"""Which fds a mold may not hand to the workers it forks: what ``shared_fds`` lists."""

from __future__ import annotations

import os
import socket
import sqlite3

import pytest

from grace_plugins.gunicorn.mold_startup import shared_fds

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc")


def test_a_socket_is_listed():
    with socket.socket() as sock:
        assert shared_fds()[sock.fileno()].startswith("socket:[")


def test_an_sqlite_database_kept_open_is_listed(tmp_path):
    path = tmp_path / "site.sqlite"
    before = set(shared_fds().values())
    db = sqlite3.connect(path)
    try:
        db.execute("create table hits (n)")
        assert str(path) in set(shared_fds().values()) - before
    finally:
        db.close()
    assert str(path) not in shared_fds().values()


@pytest.mark.parametrize("mode", ["r+b", "w+b"])
def test_a_file_open_for_reading_and_writing_is_listed(tmp_path, mode):
    path = tmp_path / "cache.bin"
    path.write_bytes(b"")
    with open(path, mode) as handle:
        assert shared_fds()[handle.fileno()] == str(path)


@pytest.mark.parametrize("mode", ["rb", "ab", "a+b", "wb"])
def test_a_log_or_a_file_only_read_is_shared_safely(tmp_path, mode):
    path = tmp_path / "app.log"
    path.write_bytes(b"")
    with open(path, mode) as handle:
        assert handle.fileno() not in shared_fds()


def test_memory_meant_to_be_shared_is_not_listed():
    """``multiprocessing.Value`` at import: a counter the workers share on purpose (its
    arena is an unlinked file, mapped)."""
    import multiprocessing

    before = set(shared_fds().values())
    counter = multiprocessing.Value("i", 0)
    assert set(shared_fds().values()) == before
    assert counter.value == 0


def test_a_directory_or_a_pipe_is_not_listed(tmp_path):
    reading, writing = os.pipe()
    directory = os.open(tmp_path, os.O_RDONLY)
    try:
        assert not {reading, writing, directory} & set(shared_fds())
    finally:
        for fd in (reading, writing, directory):
            os.close(fd)
