"""The molds' rules (pure, no process started): which mold forks a worker, which molds are
retired, what makes forking unsafe, the collector after the import, and the ``GRACE_MOLDS``
switch."""

from __future__ import annotations

import pytest

pytest.importorskip("gunicorn")  # the package grace_plugins.gunicorn loads the worker class

from grace_plugins.gunicorn.mold_rules import (  # noqa: E402
    molds_wanted,
    pick,
    threshold_after_import,
    to_retire,
    unsafe,
)
from grace_plugins.gunicorn.verdicts import PROMOTED, ROLLED_BACK  # noqa: E402

MEMBERS = range(11, 13)  # generation 3's workers: ages 11 and 12

# (case, age, newest, serving, molds, verdicts) -> the generation whose mold forks it
PICKS = [
    ("a member of the newest generation: its mold",
     11, 3, 2, {2, 3}, {2: PROMOTED, 3: None}, 3),
    ("a member whose mold is not there (gone, unsafe): it imports for itself",
     12, 3, 2, {2}, {2: PROMOTED, 3: None}, None),
    ("a respawn while the newest starts: the serving generation's mold",
     13, 3, 2, {2, 3}, {2: PROMOTED, 3: None}, 2),
    ("a respawn once the newest is promoted: the newest's mold",
     13, 3, 3, {2, 3}, {2: PROMOTED, 3: PROMOTED}, 3),
    ("a respawn after a rollback: the promoted generation's, never the rolled-back one's",
     13, 3, 2, {2, 3}, {2: PROMOTED, 3: ROLLED_BACK}, 2),
    ("the first generation, before its verdict: its mold",
     5, 1, 0, {1}, {1: None}, 1),
    ("no mold at all: it imports for itself",
     13, 3, 2, set(), {}, None),
    ("the serving generation has no mold (each worker imported): it imports for itself,"
     " never from an older generation's mold",
     13, 3, 3, {2}, {2: PROMOTED}, None),
    ("the serving generation has no mold and a newer one starts: never the new code",
     13, 3, 2, {3}, {3: None}, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("age", "newest", "serving", "molds", "verdicts", "expected"),
    [case[1:] for case in PICKS],
    ids=[case[0] for case in PICKS],
)
def test_pick(age, newest, serving, molds, verdicts, expected):
    assert pick(age, MEMBERS, newest, serving, molds, verdicts) == expected


# (case, molds, verdicts, serving) -> the generations whose molds are retired
RETIRES = [
    ("one generation serving: kept", {1: 10}, {1: PROMOTED}, 1, []),
    ("a new one starting: both kept (the old one serves the respawns)",
     {1: 10, 2: 20}, {1: PROMOTED, 2: None}, 1, []),
    ("the new one promoted: the old one retired",
     {1: 10, 2: 20}, {1: PROMOTED, 2: PROMOTED}, 2, [1]),
    ("the new one rolled back: it is retired",
     {1: 10, 2: 20}, {1: PROMOTED, 2: ROLLED_BACK}, 1, [2]),
    ("two behind the promoted one: both retired",
     {1: 10, 2: 20, 3: 30}, {1: PROMOTED, 2: ROLLED_BACK, 3: PROMOTED}, 3, [1, 2]),
    ("a newer generation promoted without a mold (each worker imported, or no --preload):"
     " the old mold retired", {1: 10}, {1: PROMOTED}, 2, [1]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("molds", "verdicts", "serving", "expected"),
    [case[1:] for case in RETIRES],
    ids=[case[0] for case in RETIRES],
)
def test_to_retire(molds, verdicts, serving, expected):
    assert to_retire(molds, verdicts, serving) == expected


def test_unsafe_names_the_cause():
    def why(threads=(), native=0, sockets=(), files=(), ran="the import"):
        return unsafe(list(threads), native, list(sockets), list(files), ran)

    assert why() == ""
    assert why(["apm"]) == "the import started a thread ('apm')"
    assert why(["a", "b", "c", "d"]) == "the import started a thread ('a', 'b' and 2 more)"
    assert "from C" in why(native=1)
    assert "opened a socket" in why(sockets=["fd 7: socket:[1234]"])
    assert "thread" in why(["apm"], 1, ["fd 7: socket:[1234]"])  # the first cause only
    database = why(files=["fd 6: /srv/site/db.sqlite"])
    assert "for reading and writing and kept it open (fd 6: /srv/site/db.sqlite" in database
    checked = why(["sentry.monitor"], ran="the ready check (GET /healthz)")
    assert checked.startswith("the ready check (GET /healthz) started a thread ('sentry.monitor')")


@pytest.mark.parametrize("value", [None, "", "on", "1", "ON", " yes "])
def test_molds_on_by_default(value):
    assert molds_wanted(value) is True


@pytest.mark.parametrize("value", ["off", "0", "no", "False"])
def test_molds_off(value):
    assert molds_wanted(value) is False


def test_a_bad_value_is_one_line_naming_the_fix():
    with pytest.raises(ValueError, match=r"^GRACE_MOLDS='maybe' is neither on nor off\. .*unset"):
        molds_wanted("maybe")


DURING = (700, 10**9, 10)


def test_the_collector_gets_its_thresholds_back_after_the_import():
    assert threshold_after_import((700, 10, 10), DURING, DURING) == (700, 10, 10)


@pytest.mark.parametrize(
    "now, after",
    [
        ((50_000, 10**9, 10), (50_000, 10, 10)),  # gc.set_threshold(50_000): its first only
        ((50_000, 20, 20), (50_000, 20, 20)),
        ((0, 10**9, 10), (0, 10, 10)),  # collection off by a threshold of 0: off it stays
    ],
)
def test_a_threshold_the_app_set_at_import_stays_the_apps(now, after):
    assert threshold_after_import((700, 10, 10), DURING, now) == after
