"""The supervisor's file watcher on a real temporary directory, with each event source: a
save is one batch of the files that were loaded, every save counts once (including one made
while a generation loaded), globbed directories and symlinked modules.

No process is started and nothing sleeps to synchronise (see ``tests/unit/watching.py``).
"""

from __future__ import annotations

import os
import select
import time

import pytest

from grace_plugins.watcher import Watcher
from grace_plugins.watchsources import Raw
from grace_plugins.watchspec import WatchSpec
from tests.unit.watching import (
    QUIET,
    SAVES,
    SOURCES,
    FakeSource,
    assert_nothing_else,
    make_source,
    next_batch,
    paths,
    replace_save,
    spec_of,
    text,
    watching,
    written,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def watchers():
    """watchers(kind, **options) -> a started Watcher, closed (and checked closed) after."""
    made: list[Watcher] = []

    def make(kind: str = "inotify", **options) -> Watcher:
        options.setdefault("quiet", QUIET)
        options.setdefault("log", lambda line: None)
        source = options.pop("source", None) or make_source(kind)
        watcher = Watcher(source=source, **options)
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        assert watcher.close(), "the watcher's thread did not stop"


# -- a save is one batch, of the files that were loaded ------------------------------------------
@pytest.mark.parametrize(
    ("kind", "save"),
    [(kind, save) for kind in ("inotify", "watchfiles") for save in sorted(SAVES)]
    + [("poll", "os.replace")],  # a poll sees the end state only, whatever the save
)
def test_a_save_is_one_batch(watchers, proj, kind, save):
    watcher = watchers(kind)
    watching(watcher, spec_of(proj, "app.py", "views.py", "sentinel.py"), proj)
    SAVES[save](proj / "app.py")
    assert paths(next_batch(watcher), proj) == ["app.py"]
    assert_nothing_else(watcher, proj)


def test_a_file_still_open_for_writing_is_not_a_finished_save(watchers, proj):
    """inotify says when a writer closes the file: an editor's fsync between its last write
    and its close (often longer than the quiet time) does not split a save in two."""
    watcher = watchers()
    watching(watcher, spec_of(proj, "app.py", "sentinel.py"), proj)
    with open(proj / "app.py", "w") as handle:
        handle.write(text())
        handle.flush()
        replace_save(proj / "sentinel.py")  # a change that is over
        ready, _, _ = select.select([watcher], [], [], QUIET * 2)  # < LONGEST
        assert not ready, f"a batch before the writer closed: {watcher.take()}"
    assert paths(next_batch(watcher), proj) == ["app.py", "sentinel.py"]
    assert_nothing_else(watcher, proj)


@pytest.mark.parametrize("kind", SOURCES)
def test_a_checkout_of_many_files_is_one_batch(watchers, proj, kind):
    package = proj / "pkg"
    package.mkdir()
    names = [f"pkg/m{n:02d}.py" for n in range(50)]
    for name in names:
        written(proj / name)
    watcher = watchers(kind)
    watching(watcher, spec_of(proj, "sentinel.py", *names), proj)
    for name in names:  # as git does: unlink, then write the file anew
        (proj / name).unlink()
        (proj / name).write_text(text())
    assert paths(next_batch(watcher), proj) == names
    assert_nothing_else(watcher, proj)


@pytest.mark.parametrize("kind", SOURCES)
def test_a_file_nothing_loaded_changes_nothing(watchers, proj, kind):
    watcher = watchers(kind)
    watching(watcher, spec_of(proj, "app.py", "sentinel.py"), proj)
    replace_save(proj / "views.py")  # in the same directory, never imported
    (proj / "notes.txt").write_text("x")
    (proj / "app.py.tmp").write_text("x")  # an editor's temporary file
    assert_nothing_else(watcher, proj)


# -- every save counts once ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", SOURCES)
def test_a_save_made_while_the_generation_loaded_is_reported_at_once(watchers, proj, kind):
    watcher = watchers(kind)
    since = time.time()  # the generation begins loading...
    replace_save(proj / "views.py")  # ...the developer saves...
    watcher.watch(spec_of(proj, "app.py", "views.py", "sentinel.py", since=since))  # ...ready
    assert paths(next_batch(watcher), proj) == ["views.py"]
    assert_nothing_else(watcher, proj)


def test_a_file_saved_before_the_load_began_is_not_reported(watchers, proj):
    watcher = watchers()
    since = time.time()
    os.utime(proj / "views.py", (since - 60, since - 60))
    watcher.watch(spec_of(proj, "app.py", "views.py", "sentinel.py", since=since))
    assert_nothing_else(watcher, proj)


def test_a_save_already_reported_is_not_reported_again_by_the_next_spec(watchers, proj):
    watcher = watchers()
    spec = spec_of(proj, "app.py", "views.py", "sentinel.py")
    watching(watcher, spec, proj)
    since = time.time()  # a new generation begins loading; the save is heard at once
    replace_save(proj / "views.py")
    assert paths(next_batch(watcher), proj) == ["views.py"]
    watcher.watch(WatchSpec(spec.files, since=since))  # it reports what it loaded
    assert_nothing_else(watcher, proj)


def test_a_save_heard_and_caught_up_on_is_one_change(watchers, proj):
    """The watches of a new spec are set, the file is saved, then the files are looked at: the
    save is caught up on, and its event comes too. One batch, not two."""
    source = FakeSource()
    watcher = watchers(source=source)
    replace_save(proj / "app.py")  # saved after the load began: caught up on
    watcher.watch(spec_of(proj, "app.py", "sentinel.py", since=time.time() - 5))
    assert paths(next_batch(watcher), proj) == ["app.py"]
    source.push(Raw([str(proj / "app.py")]))  # the same save, heard late
    source.push(Raw([str(proj / "sentinel.py")]))
    replace_save(proj / "sentinel.py")
    assert paths(next_batch(watcher), proj) == ["sentinel.py"]


@pytest.mark.parametrize("kind", SOURCES)
def test_watch_replaces_what_is_watched(watchers, proj, kind):
    watcher = watchers(kind)
    watching(watcher, spec_of(proj, "app.py", "sentinel.py"), proj)
    watching(watcher, spec_of(proj, "views.py", "sentinel.py"), proj)
    replace_save(proj / "app.py")
    replace_save(proj / "views.py")
    assert paths(next_batch(watcher), proj) == ["views.py"]


# -- directories with globs, symlinks ------------------------------------------------------------
@pytest.mark.parametrize("kind", SOURCES)
def test_a_template_below_a_glob_directory_counts(watchers, proj, kind):
    shop = proj / "templates" / "shop"
    shop.mkdir(parents=True)
    written(shop / "item.html", "<p>")
    watcher = watchers(kind)
    spec = spec_of(proj, "sentinel.py", dirs=[(str(proj / "templates"), "**/*")])
    watching(watcher, spec, proj)
    (shop / ".item.html.swp").write_text("vim's swap file")
    replace_save(shop / "item.html")
    (shop / "new.html").write_text("<p>")
    (proj / "templates" / "cart").mkdir()  # a directory changes nothing
    found = paths(next_batch(watcher), proj)
    assert found == ["templates/shop/item.html", "templates/shop/new.html"]
    assert_nothing_else(watcher, proj)


@pytest.mark.parametrize("kind", SOURCES)
def test_a_symlinked_module_is_heard_through_its_target(watchers, proj, tmp_path_factory, kind):
    elsewhere = tmp_path_factory.mktemp("shared")
    written(elsewhere / "target.py")
    (proj / "linked.py").symlink_to(elsewhere / "target.py")
    watcher = watchers(kind)
    watching(watcher, spec_of(proj, "linked.py", "sentinel.py"), proj)
    replace_save(elsewhere / "target.py")
    assert paths(next_batch(watcher), proj) == ["linked.py"]


def inotify_watches(source) -> int:
    """How many watches the kernel holds for the inotify descriptor of *source*."""
    with open(f"/proc/self/fdinfo/{source._inotify.fileno()}") as info:
        return sum(1 for line in info if line.startswith("inotify wd:"))


def test_inotify_holds_one_watch_per_watched_directory(tmp_path):
    source = make_source("inotify")
    try:
        dirs = [tmp_path / name for name in ("a", "b", "c")]
        for directory in dirs:
            directory.mkdir()
        source.watch([str(d) for d in dirs] + [str(tmp_path / "missing")], dict)
        assert inotify_watches(source) == 3
        source.watch([str(dirs[2])], dict)  # the next generation loaded less
        assert inotify_watches(source) == 1
        source.watch([], dict)
        assert inotify_watches(source) == 0
    finally:
        source.close()
