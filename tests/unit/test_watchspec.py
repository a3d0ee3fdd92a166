"""The watcher's decisions as pure functions: what a spec says and how it travels, what counts
as a change, what a catch-up reports, and when a burst of changes is one batch (fake clock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from grace_plugins.debounce import LONGEST, QUIET, Batch, Debounce
from grace_plugins.watchspec import (
    SINCE_SLACK,
    SPEC_VERSION,
    DirGlob,
    Matcher,
    SpecError,
    WatchSpec,
    catch_up,
    glob_regex,
    split_glob,
)

pytestmark = pytest.mark.timeout(10)

SPEC = WatchSpec.build(
    files=["/proj/app.py", "/proj/views.py", "/venv/site-packages/flask/app.py", "/proj/./x/y.py"],
    dirs=[("/proj/templates", "**/*"), ("/proj/locale", "**/*.mo"), ("/proj/assets", "*.css")],
    exclude=["*/site-packages/*"],
    since=1000.5,
)


# -- the spec and its codec ----------------------------------------------------------------------
def test_build_normalises_paths_and_leaves_excluded_files_out():
    assert SPEC.files == {"/proj/app.py", "/proj/views.py", "/proj/x/y.py"}
    assert DirGlob("/proj/templates", "**/*") in SPEC.dirs
    assert SPEC.exclude == ("*/site-packages/*",)


def test_spec_round_trips_as_one_ascii_line():
    odd = WatchSpec.build(
        files=["/proj/été.py", "/proj/" + os.fsdecode(b"\xff.py"), "/other/a.py"],
        dirs=[("/proj/templates", "**/*")],
        exclude=["*/.venv/*"],
        since=1234.25,
    )
    for spec in (SPEC, odd, WatchSpec()):
        line = spec.encode()
        assert line.isascii() and "\n" not in line
        assert WatchSpec.decode(line) == spec


def test_spec_groups_files_by_directory():
    files = [f"/project/package/module_{n}.py" for n in range(1000)]
    line = WatchSpec.build(files).encode()
    assert line.count("/project/package") == 1
    assert len(line) < 20 * 1000


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "no version"),
        ('{"files": {}}', "no version"),
        (f'{{"v": {SPEC_VERSION + 1}}}', "restart the server after upgrading grace_plugins"),
        ('{"v": 1, "files": {"/a": [3]}}', "malformed"),
        ('{"v": 1, "files": ["/a.py"]}', "malformed"),
        ('{"v": 1, "dirs": [["/a"]]}', "malformed"),
        ('{"v": 1, "since": "yesterday"}', "malformed"),
    ],
)
def test_a_bad_spec_is_one_clear_line(text, says):
    with pytest.raises(SpecError) as caught:
        WatchSpec.decode(text)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_merged_keeps_both_sets_and_the_newer_since():
    failed = WatchSpec.build(["/proj/broken.py"], [("/proj", "*.py")], ["*/.venv/*"], 2000.0)
    both = SPEC.merged(failed)
    assert both.files == SPEC.files | {"/proj/broken.py"}
    assert both.dirs == SPEC.dirs | {DirGlob("/proj", "*.py")}
    assert (both.since, both.exclude) == (2000.0, ("*/.venv/*",))


def test_directories_are_the_files_parents_and_the_globs_roots():
    spec = WatchSpec.build(
        ["/proj/app.py", "/proj/templates/base.html"],
        [("/proj/templates", "**/*"), ("/proj", "*.py")],
    )
    assert spec.directories() == {"/proj": False, "/proj/templates": True}


# -- what counts ---------------------------------------------------------------------------------
def _tree(root: Path) -> list[str]:
    names = [
        "a.py",
        "b.html",
        "sub/c.html",
        "sub/deep/d.mo",
        "sub/deep/e.po",
        "x.mo",
        ".hidden.html",
        "k[1].txt",
    ]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "glob", ["**/*", "**/*.mo", "*.py", "*.html", "sub/*.html", "sub/**/*.mo", "?.py", "k[[]1].txt"]
)
def test_glob_matches_what_pathlib_globs(tmp_path, glob):
    """Django's reloader watches ``Path(directory).glob(glob)``: the same paths must count."""
    every = _tree(tmp_path)
    expected = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob(glob))
    assert [rel for rel in every if glob_regex(glob).match(rel)] == expected


@pytest.mark.parametrize(
    ("path", "counts_as"),
    [
        ("/proj/app.py", "/proj/app.py"),
        ("/proj//views.py", "/proj/views.py"),
        ("/proj/x/y.py", "/proj/x/y.py"),
        ("/proj/other.py", None),  # nothing loaded it
        ("/proj/app.py.tmp", None),  # an editor's temporary file
        ("/venv/site-packages/flask/app.py", None),  # excluded
        ("/proj/templates/base.html", "/proj/templates/base.html"),
        ("/proj/templates/shop/item.html", "/proj/templates/shop/item.html"),
        ("/proj/templates/shop/.item.html.swp", None),  # vim's swap file
        ("/proj/templates/base.html~", None),  # a backup
        ("/proj/templates/4913", None),  # vim's probe
        ("/proj/templates/.#base.html", None),  # Emacs' lock
        ("/proj/templates/base.html___jb_tmp___", None),  # JetBrains' safe write
        ("/proj/templates/base.html.tmp", None),  # an atomic save's temporary file
        ("/proj/templates/__pycache__/x.html", None),
        ("/proj/templates/.git/index", None),
        ("/proj/locale/fr/LC_MESSAGES/django.mo", "/proj/locale/fr/LC_MESSAGES/django.mo"),
        ("/proj/locale/fr/LC_MESSAGES/django.po", None),
        ("/proj/assets/site.css", "/proj/assets/site.css"),
        ("/proj/assets/dark/site.css", None),  # "*.css": not below
        ("/proj/templatesX/base.html", None),
        ("/real/app.py", "/proj/app.py"),  # a symlinked module's target
    ],
)
def test_what_counts(path, counts_as):
    assert Matcher(SPEC, {"/real/app.py": "/proj/app.py"}).match(path) == counts_as


@pytest.mark.parametrize(
    ("pattern", "split"),
    [
        ("/app/templates/**/*.html", ("/app/templates", "**/*.html")),
        ("/app/conf/*.toml", ("/app/conf", "*.toml")),
        ("/app/v?/x.py", ("/app", "v?/x.py")),
        ("/*.cfg", ("/", "*.cfg")),
        ("/app/settings.py", ("/app", "settings.py")),
    ],
)
def test_a_file_pattern_is_a_directory_and_a_glob(pattern, split):
    assert split_glob(pattern) == split


def test_werkzeug_exclude_patterns_span_directories():
    spec = WatchSpec.build(dirs=[("/proj", "**/*.py")], exclude=["*/migrations/*"])
    matcher = Matcher(spec)
    assert matcher.match("/proj/shop/models.py") == "/proj/shop/models.py"
    assert matcher.match("/proj/shop/migrations/0001_initial.py") is None


def test_changed_names_each_counted_path_once():
    paths = ["/proj/views.py", "/proj/app.py.tmp", "/proj/app.py", "/proj/views.py", "/x.py"]
    assert Matcher(SPEC).changed(paths) == ["/proj/app.py", "/proj/views.py"]


# -- the catch-up --------------------------------------------------------------------------------
def test_catch_up_reports_files_saved_since_the_load_began():
    since, now = 1000.5, 1010.0
    spec = WatchSpec.build(["/a.py", "/b.py", "/c.py", "/d.py", "/e.py", "/f.py"], since=since)
    mtimes = {
        "/a.py": since + 1,  # saved while the generation loaded
        "/b.py": since - 5,  # older: loaded as it is
        "/c.py": since - SINCE_SLACK / 2,  # a coarse mtime just before the load began
        "/d.py": now + 3600,  # dated in the future: never (it would upgrade at every load)
        "/e.py": None,  # gone
        "/f.py": since + 2,  # already reported at this very mtime
    }
    assert catch_up(spec, mtimes, {"/f.py": since + 2}, now) == ["/a.py", "/c.py"]
    assert catch_up(spec, mtimes, {"/f.py": since + 1}, now) == ["/a.py", "/c.py", "/f.py"]


def test_no_catch_up_without_since():
    assert catch_up(WatchSpec.build(["/a.py"]), {"/a.py": 5.0}, {}, 10.0) == []


# -- the debounce --------------------------------------------------------------------------------
def test_a_burst_is_one_batch_once_quiet():
    debounce = Debounce(quiet=0.02, longest=0.5)
    assert debounce.wait(0.0) is None
    debounce.add([], 0.0)  # nothing: nothing pending
    assert debounce.wait(0.0) is None
    for step, path in enumerate(["/a.py", "/a.py", "/b.py"]):
        debounce.add([path], 10.0 + step * 0.005)
        assert not debounce.due(10.0 + step * 0.005)
    assert debounce.wait(10.01) == pytest.approx(0.02)
    assert not debounce.due(10.029)
    batch = debounce.due(10.03)
    assert batch == Batch(("/a.py", "/b.py"), 10.0, 10.03)
    assert debounce.wait(10.03) is None and not debounce.due(20.0)


def test_changes_that_never_stop_still_give_a_batch_at_longest():
    debounce = Debounce(quiet=0.02, longest=0.5)
    now, batches = 0.0, []
    while now < 1.2:
        debounce.add(["/log.html"], now)
        if batch := debounce.due(now):
            batches.append(batch)
        now = round(now + 0.01, 3)
    assert [(b.first, b.ready) for b in batches] == [(0.0, 0.5), (0.51, 1.01)]


def test_a_file_still_open_for_writing_holds_the_batch_until_closed():
    debounce = Debounce(quiet=0.02, longest=0.5)
    debounce.add(["/a.py"], 1.0, writing=["/a.py"])
    debounce.add(["/b.py"], 1.001)  # over at once
    assert debounce.wait(1.1) == pytest.approx(0.4)  # the fsync takes its time
    assert not debounce.due(1.1)
    debounce.add(["/a.py"], 1.2, closed=["/a.py"])
    assert not debounce.due(1.21)
    assert debounce.due(1.22).paths == ("/a.py", "/b.py")


def test_a_writer_that_never_closes_holds_the_batch_until_longest_only():
    debounce = Debounce(quiet=0.02, longest=0.5)
    debounce.add(["/a.mmap"], 1.0, writing=["/a.mmap"])
    assert not debounce.due(1.49)
    assert debounce.due(1.5).paths == ("/a.mmap",)
    debounce.add(["/b.py"], 2.0)  # the next save is not held by the old writer
    assert debounce.due(2.02).paths == ("/b.py",)


def test_a_file_renamed_away_holds_the_batch_until_it_is_back():
    """vim: the file is renamed to a backup, then written anew; on a busy machine the two can
    be further apart than *quiet*: one batch all the same, due once the file is back."""
    debounce = Debounce(quiet=0.02, longest=0.5)
    debounce.add(["/a.py"], 1.0, missing=["/a.py"])
    assert not debounce.due(1.1)  # a generation started now would not find the module
    debounce.add(["/a.py"], 1.15, writing=["/a.py"])
    debounce.add(["/a.py"], 1.16, closed=["/a.py"])
    assert not debounce.due(1.17)
    assert debounce.due(1.18) == Batch(("/a.py",), 1.0, 1.18)
    debounce.add(["/gone.py"], 2.0, missing=["/gone.py"])  # really deleted: at longest
    assert not debounce.due(2.49) and debounce.due(2.5).paths == ("/gone.py",)


def test_two_saves_apart_are_two_batches():
    debounce = Debounce()
    debounce.add(["/a.py"], 0.0)
    first = debounce.due(QUIET)
    debounce.add(["/b.py"], QUIET + 0.5)
    second = debounce.due(QUIET * 2 + 0.5)
    assert (first.paths, second.paths) == (("/a.py",), ("/b.py",))
    assert QUIET < LONGEST


def test_a_metadata_change_just_after_a_save_is_part_of_it_a_later_touch_is_a_save():
    """``os.replace`` then ``os.utime`` (or a chmod): on a busy machine the two can be further
    apart than *quiet*, after the batch was due; that is still the same save."""
    debounce = Debounce(quiet=0.005, longest=0.5)
    debounce.add(["/a.py"], 1.0, closed=["/a.py"])
    assert debounce.due(1.005).paths == ("/a.py",)
    debounce.add(["/a.py"], 1.05, touched=["/a.py"])  # its utime, 45 ms late
    assert debounce.wait(1.05) is None and not debounce.due(1.1)
    debounce.add(["/b.py"], 1.06, touched=["/b.py"])  # another file: a touch is a save
    assert debounce.due(1.065).paths == ("/b.py",)
    debounce.add(["/a.py"], 1.2)  # new content for the same file: a save
    assert debounce.due(1.205).paths == ("/a.py",)
    debounce.add(["/a.py"], 1.8, touched=["/a.py"])  # ``touch a.py`` 0.6 s later: a save
    assert debounce.due(1.805).paths == ("/a.py",)


STATES = ("writing", "closed")
#: Events as the OS reports them for one save, (seconds after the first, path[, what inotify
#: says of the writer: one of STATES]): a file that is
#: not loaded (the editor's temporaries) changes nothing; the save is one batch.
SAVES: dict[str, list[tuple]] = {
    "os.replace": [(0, "/proj/app.py.tmp"), (0.0002, "/proj/app.py.tmp"), (0.0003, "/proj/app.py")],
    "vim": [
        (0, "/proj/4913"),
        (0.0001, "/proj/4913"),
        (0.0002, "/proj/app.py"),  # renamed to app.py~
        (0.0003, "/proj/app.py~"),
        (0.0004, "/proj/app.py", "writing"),  # written anew
        (0.015, "/proj/app.py", "closed"),  # after fsync: closed, chmod
        (0.016, "/proj/app.py~"),
    ],
    "jetbrains": [
        (0, "/proj/app.py___jb_tmp___"),
        (0.001, "/proj/app.py"),
        (0.001, "/proj/app.py___jb_old___"),
        (0.002, "/proj/app.py___jb_tmp___"),
        (0.002, "/proj/app.py"),
        (0.003, "/proj/app.py___jb_old___"),
    ],
    "git checkout": [(n * 0.0004, f"/proj/pkg/m{n}.py") for n in range(50)],
}


@pytest.mark.parametrize("kind", sorted(SAVES))
def test_an_editors_save_is_one_batch_of_the_loaded_files(kind):
    modules = [f"/proj/pkg/m{n}.py" for n in range(50)]
    matcher = Matcher(WatchSpec.build(["/proj/app.py", *modules]))
    debounce = Debounce()
    batches = []
    clock = 100.0
    for offset, path, *state in SAVES[kind]:
        clock = 100.0 + offset
        batches.append(debounce.due(clock))
        flags = {name: matcher.changed([path]) if state == [name] else [] for name in STATES}
        debounce.add(matcher.changed([path]), clock, **flags)
    batches.append(debounce.due(clock + QUIET))
    found = [b.paths for b in batches if b]
    expected = sorted({event[1] for event in SAVES[kind] if event[1] in matcher.spec.files})
    assert found == [tuple(expected)]


def test_batches_taken_together_merge():
    one, two = Batch(("/a.py",), 1.0, 1.02), Batch(("/a.py", "/b.py"), 1.5, 1.52)
    assert one + two == Batch(("/a.py", "/b.py"), 1.0, 1.52)
    assert Batch() + one == one and one + Batch() == one
    assert not Batch()
