"""What the gunicorn master's file watcher watches with ``--reload`` (no process started): the
serving generation's files plus what the later ones tried, read from the record directory."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("gunicorn")  # the package grace_plugins.gunicorn loads the worker class

from grace_plugins.gunicorn.records import RecordStore  # noqa: E402
from grace_plugins.gunicorn.watched import SpecReader, to_watch  # noqa: E402
from grace_plugins.watchspec import WatchSpec  # noqa: E402


def spec(*names: str, since: float = 1.0) -> WatchSpec:
    return WatchSpec.build([f"/p/{n}.py" for n in names], since=since)


SPECS = {
    1: [spec("a")],
    2: [spec("a", "b", since=2.0), spec("c", since=2.0)],
    3: [spec("x", since=3.0)],
}

# (case, specs by generation, promoted generations) -> files watched, since, whose (None: nothing)
CASES = [
    ("nothing recorded", {}, [], None, None, ""),
    ("none promoted yet: every generation's", {1: [spec("a")]}, [], {"a"}, 1.0,
     "what generation 1 loaded"),
    ("the newest promoted, both its workers, and the one after it (tried)",
     SPECS, [1, 2], {"a", "b", "c", "x"}, 3.0, "what generation 2 loaded and generation 3 tried"),
    ("an older promoted generation's files are no longer watched",
     {1: [spec("old")], 2: [spec("new", since=2.0)]}, [1, 2], {"new"}, 2.0,
     "what generation 2 loaded"),
    ("the newest promoted has not reported yet: nothing new to watch",
     {1: [spec("a")]}, [1, 2], None, None, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("specs", "promoted", "files", "since", "whose"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_to_watch(specs, promoted, files, since, whose):
    found = to_watch(specs, promoted)
    if files is None:
        assert found is None
    else:
        assert found is not None
        assert {os.path.basename(f)[:-3] for f in found[0].files} == files
        assert (found[0].since, found[1]) == (since, whose)


def test_the_reader_reads_each_record_once_per_change_and_forgets_pruned_ones(tmp_path):
    store = RecordStore(str(tmp_path))
    reader = SpecReader(store)
    store.record_spec(2, 40, spec("a").encode())
    assert reader.specs() == {2: [spec("a")]}
    os.chmod(tmp_path / "watch-2-40", 0)  # unreadable: not read again while unchanged
    if os.geteuid() != 0:
        assert reader.specs() == {2: [spec("a")]}
    os.chmod(tmp_path / "watch-2-40", 0o600)
    store.record_spec(2, 40, spec("b").encode())
    os.utime(tmp_path / "watch-2-40", (5.0, 5.0))
    assert reader.specs() == {2: [spec("b")]}
    os.unlink(tmp_path / "watch-2-40")
    assert reader.specs() == {}


def test_an_unreadable_spec_is_said_once_and_skipped(tmp_path):
    store = RecordStore(str(tmp_path))
    reader = SpecReader(store)
    store.record_spec(3, 50, '{"v": 99}')
    assert reader.specs() == {}
    assert "newer than this grace_plugins reads" in reader.problem
