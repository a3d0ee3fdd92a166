"""The record directory a gunicorn master shares with its workers: a verdict is recorded once
and read whole, the directory is private, and under ``--user`` it is the workers' own."""

from __future__ import annotations

import os
import threading
import time

import pytest

pytest.importorskip("gunicorn")  # the package grace_plugins.gunicorn loads the worker class

from grace_plugins.gunicorn.records import RecordStore  # noqa: E402
from grace_plugins.gunicorn.verdicts import (  # noqa: E402
    PROMOTED,
    ROLLED_BACK,
    Announcement,
    Member,
    Verdict,
)

INFO = Announcement(expected=1, first_age=3, started=100.0, ready_timeout=5.0)


def test_a_generation_from_its_records(tmp_path):
    store = RecordStore(str(tmp_path))
    assert store.announce(2, INFO)
    store.record(Member(2, 3, 30), "boot")
    store.record(Member(2, 3, 30), "ready")
    store.record(Member(2, 4, 40), "failed", "boom")  # a respawn: not a member
    found = store.generation(2)
    assert found.announcement == INFO
    assert found.workers == {
        Member(2, 3, 30): {"boot": "", "ready": ""},
        Member(2, 4, 40): {"failed": "boom"},
    }
    assert (found.recorded, found.master_stopping) == (None, False)
    assert store.members(2) == [Member(2, 3, 30)]
    assert store.ever_ready() and store.newest_generation() == 2


def test_what_a_worker_at_max_requests_reads(tmp_path):
    """Who is loading the code on disk now, and how many respawns in a row failed to."""
    store = RecordStore(str(tmp_path))
    store.record(Member(1, 1, 10), "boot")
    store.record(Member(1, 1, 10), "ready")
    store.record(Member(1, 2, 20), "boot")  # loading
    store.record(Member(1, 3, 30), "boot")
    store.record(Member(1, 3, 30), "failed", "boom")
    store.record(Member(2, 4, 40), "boot")  # a newer generation's, loading
    store.record(Member(2, 5, 50), "boot")  # killed as it loaded, long ago: not loading
    old = time.time() - 120
    os.utime(tmp_path / "w-2-5-50.boot", (old, old))
    assert sorted(store.loading(within=60)) == [20, 40]
    assert store.failed_respawns() == 0
    assert store.bump_backoff() == 1 and store.bump_backoff() == 2
    assert store.failed_respawns() == 2
    store.record(Member(1, 2, 20), "ready")  # the code loads again: the count starts over
    assert store.failed_respawns() == 0 and store.loading(within=60) == [40]


def test_one_replacement_at_a_time(tmp_path):
    """The worker whose max_requests starts a replacement holds it until a worker is ready;
    a claim whose replacement never became ready is taken over once stale."""
    store = RecordStore(str(tmp_path))
    assert store.claim_replacement(10, stale_after=60) == 0
    assert store.claim_replacement(10, stale_after=60) == 0  # its own: asked again
    assert store.claim_replacement(20, stale_after=60) == 10
    store.record(Member(1, 3, 30), "ready")  # the replacement is ready
    assert store.claim_replacement(20, stale_after=60) == 0
    old = time.time() - 120
    os.utime(tmp_path / "replacing", (old, old))
    assert store.claim_replacement(40, stale_after=60) == 0  # 20's replacement never came
    # no claim can be written (a full or unwritable directory): max_requests as without it
    gone = RecordStore(str(tmp_path / "missing"))
    assert gone.claim_replacement(10, stale_after=60) == 0


def test_a_verdict_is_recorded_once(tmp_path):
    store = RecordStore(str(tmp_path))
    assert store.record_verdict(2, Verdict(PROMOTED, new=True))
    assert not store.record_verdict(2, Verdict(ROLLED_BACK, "late", new=True))
    assert store.recorded_verdict(2) == PROMOTED and store.generation(2).recorded == PROMOTED
    assert store.verdict_time(2) is not None and store.verdict_time(3) is None
    assert store.claim("logged", 2) and not store.claim("logged", 2)


def test_verdicts_are_read_whole(tmp_path):
    """A verdict read while it was being written once looked empty, and an empty verdict passed
    for a rollback: readers must see no verdict or the whole one."""
    store = RecordStore(str(tmp_path))
    reason = "worker 4 failed: " + "x" * 4000
    seen_partial: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            for gen in range(1, 301):
                text = store.recorded_verdict(gen)
                if text is not None and text not in (reason, PROMOTED):
                    seen_partial.append(text[:20])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for gen in range(1, 301):
            kind = Verdict(ROLLED_BACK, reason, True) if gen % 2 else Verdict(PROMOTED, new=True)
            assert store.record_verdict(gen, kind)
    finally:
        done.set()
        thread.join(10)
    assert not thread.is_alive()
    assert seen_partial == []
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_old_generations_are_pruned(tmp_path):
    store = RecordStore(str(tmp_path))
    store.announce(1, INFO)
    store.record(Member(1, 1, 10), "ready")
    store.record_verdict(1, Verdict(PROMOTED, new=True))
    store.claim("logged", 1)
    store.announce(7, INFO)
    assert sorted(os.listdir(tmp_path)) == ["ever-ready", "gen-7.json"]


def test_the_newest_promoted_generation_is_what_is_served(tmp_path):
    store = RecordStore(str(tmp_path))
    assert store.newest_promoted() == 0, "before any verdict"
    for gen, verdict in [(1, PROMOTED), (2, PROMOTED), (3, "x"), (4, None)]:
        store.announce(gen, INFO)
        if verdict is not None:
            kind = PROMOTED if verdict == PROMOTED else ROLLED_BACK
            store.record_verdict(gen, Verdict(kind, reason=verdict, new=True))
    assert store.newest_promoted() == 2, "not the rolled-back one, nor the one starting"


def test_the_master_stopping_is_seen_by_every_generation(tmp_path):
    store = RecordStore(str(tmp_path))
    assert not store.master_stopping()
    store.mark_master_stopping()
    assert store.master_stopping() and store.generation(5).master_stopping


def test_the_directory_is_private(tmp_path):
    store = RecordStore.create()
    try:
        assert oct(os.stat(store.path).st_mode & 0o777) == "0o700"
    finally:
        store.remove()
    assert not os.path.exists(store.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another user needs root")
def test_under_another_user_the_workers_own_the_directory_and_the_announcements():
    """gunicorn --user: the master (root) hands the directory, and the files it writes for the
    workers, to their user, as gunicorn does with their heartbeat files; 0700 and 0600 still."""
    owner = (65534, 65534)
    store = RecordStore.create(owner)
    try:
        info = os.stat(store.path)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (*owner, 0o700)
        store.announce(1, INFO)
        info = os.stat(os.path.join(store.path, "gen-1.json"))
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (*owner, 0o600)
        assert store.announcement(1) == INFO
        assert sorted(os.listdir(store.path)) == ["gen-1.json"]  # nothing left staged
    finally:
        store.remove()


class QuietLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, text: str, *args: object) -> None:
        self.lines.append(text % args)

    error = warning = info


def test_a_member_forked_after_its_generation_failed_does_not_load_it(tmp_path):
    """gunicorn forks a reload's workers one after another: the second may start after the
    first already failed. It must not import the code (it would fail again, or serve code
    that was rolled back); a respawn, or a member of an undecided generation, imports."""
    from grace_plugins.gunicorn.watch import Watch

    store = RecordStore(str(tmp_path))
    now = time.monotonic()
    store.announce(2, Announcement(expected=2, first_age=3, started=now, ready_timeout=30.0))
    log = QuietLog()
    second = Watch(store, Member(2, 4, 40), log)
    assert second.stillborn() == ""  # the first still imports: undecided
    store.record(Member(2, 3, 30), "boot")
    store.record(Member(2, 3, 30), "failed", "RuntimeError: boom")
    assert second.stillborn() == "generation 2 was rolled back"
    assert store.recorded_verdict(2) == "worker 30 failed: RuntimeError: boom"
    assert log.lines == [
        "grace_plugins: generation 2 rolled back (worker 30 failed: RuntimeError: boom);"
        " the previous workers keep serving"
    ]  # recorded and logged once, by whoever saw it first
    assert Watch(store, Member(2, 5, 50), log).stillborn() == ""  # a respawn: not a member
    assert Watch(store, Member(1, 1, 10), log).stillborn() == ""  # the first generation


def test_a_held_sigterm_knows_which_verdict_to_wait_for(tmp_path):
    """An old worker holding the reload's SIGTERM learns of the new generation's verdict from
    one file's existence between full looks (so it stops accepting soon after a promotion)."""
    from grace_plugins.gunicorn.held_term import DRAIN, WAIT
    from grace_plugins.gunicorn.watch import Watch

    store = RecordStore(str(tmp_path))
    now = time.monotonic()
    store.announce(1, Announcement(expected=1, first_age=1, started=now, ready_timeout=30.0))
    store.announce(2, Announcement(expected=1, first_age=2, started=now, ready_timeout=30.0))
    old = Watch(store, Member(1, 1, os.getpid()), QuietLog())
    assert not old.awaited_decided()  # no SIGTERM held yet: nothing awaited
    new = Member(2, 2, os.getpid())
    store.record(new, "boot")
    assert old.held_term(time.time()) == (WAIT, "")
    assert old.awaited == 2 and not old.awaited_decided()
    store.record(new, "ready")
    assert not old.awaited_decided()  # ready, but no worker has recorded the verdict yet
    Watch(store, new, QuietLog()).own_generation()  # the new worker's look after its ready
    assert old.awaited_decided()
    assert old.held_term(time.time()) == (DRAIN, "generation 2 is ready")
    assert old.awaited is None and not old.awaited_decided()


class _Queue:
    """gthread's method queue, as far as a SIGTERM handler uses it (it wakes the loop)."""

    def __init__(self) -> None:
        self.wakeups = 0

    def defer(self, callback, *args) -> None:
        self.wakeups += 1


def _reloading(tmp_path):
    """Generation 2 starting, and an old worker of generation 1 as its loop sees it (without
    gunicorn's process around it)."""
    from grace_plugins.gunicorn.watch import Watch
    from grace_plugins.gunicorn.worker import Worker

    store = RecordStore(str(tmp_path))
    now = time.monotonic()
    store.announce(1, Announcement(expected=1, first_age=1, started=now, ready_timeout=30.0))
    store.announce(2, Announcement(expected=1, first_age=2, started=now, ready_timeout=30.0))
    worker = Worker.__new__(Worker)  # __init__ belongs to the master's side of the fork
    worker.alive, worker.log, worker.store, worker.generation = True, QuietLog(), store, 1
    worker._term_pending, worker._last_term, worker._term_at = False, 0.0, 0.0
    worker._next_look = time.monotonic() + 60.0  # a full look is far off
    worker.method_queue = _Queue()
    worker.watch = Watch(store, Member(1, 1, os.getpid()), worker.log)
    worker.tmp = None  # gunicorn's heartbeat file (a worker forked by the master)
    return store, worker


def test_an_old_worker_looks_at_once_on_sigterm_then_as_soon_as_the_verdict_is_there(tmp_path):
    import signal

    from grace_plugins.gunicorn.watch import Watch

    store, worker = _reloading(tmp_path)
    assert not worker._look_due()
    worker.handle_exit(signal.SIGTERM, None)
    assert worker._look_due() and worker.method_queue.wakeups == 1  # the look comes at once
    held_since = worker._term_at
    worker._look_at_verdicts()  # waits for generation 2
    worker._next_look = time.monotonic() + 60.0  # the next full look is far off, whatever the pace
    assert worker._term_pending and worker.alive and not worker._look_due()
    worker.handle_exit(signal.SIGTERM, None)  # gunicorn re-sends it to surplus workers
    assert worker._term_at == held_since  # the first one counts for the 10 ms window
    worker._look_at_verdicts()
    worker._next_look = time.monotonic() + 60.0
    new = Member(2, 2, os.getpid())
    store.record(new, "ready")
    Watch(store, new, QuietLog()).own_generation()  # generation 2 is promoted
    assert worker._look_due()  # before the full look is due: one stat saw the verdict


def test_a_sigterm_that_comes_during_a_look_that_forgets_the_last_one_is_not_lost(tmp_path):
    import signal

    store, worker = _reloading(tmp_path)
    worker.handle_exit(signal.SIGTERM, None)
    store.record(Member(2, 2, 20), "failed", "RuntimeError: boom")  # generation 2 rolled back
    look = worker.watch.held_term

    def look_while_a_sigterm_comes(last_term):
        found = look(last_term)
        worker.handle_exit(signal.SIGTERM, None)  # a stop sent to this worker, mid-look
        return found

    worker.watch.held_term = look_while_a_sigterm_comes
    worker._look_at_verdicts()
    assert any("keeps serving: generation 2 was rolled back" in line for line in worker.log.lines)
    assert worker._term_pending  # judged at the next look, not dropped


def test_a_worker_the_master_gave_up_on_stops_serving_at_its_next_look(tmp_path):
    """The mold died (or was too slow) while forking it: the master never recorded it, so it
    marks its heartbeat file, and the worker, which it would never stop, drains by itself."""
    from grace_plugins.gunicorn.mold_worker import PassedTmp, disown

    _, worker = _reloading(tmp_path)
    fd = os.open(tmp_path / "heartbeat", os.O_RDWR | os.O_CREAT, 0o600)
    worker.tmp = PassedTmp(os.dup(fd))
    worker._look_at_verdicts()
    assert worker.alive, "a worker the master knows serves on"
    disown(fd)
    os.close(fd)
    worker.tmp.notify()  # the heartbeat goes on: only the mode says it
    worker._look_at_verdicts()
    worker.tmp.close()
    assert not worker.alive
    assert "never took this worker in" in worker._stop_reason


def test_the_age_the_master_sees(tmp_path):
    """Old workers count as younger than a rolled-back reload (kept), as just younger than a
    promoted one (drained, and the reload waits for nothing), and, once the master stops, as
    younger than a reload still starting (it will fork nothing more: nothing to wait for)."""
    from grace_plugins.gunicorn.master import ROLLED_BACK_AGE_BONUS, MasterBook

    store = RecordStore(str(tmp_path))
    store.announce(1, Announcement(expected=2, first_age=1, started=1.0, ready_timeout=5.0))
    assert MasterBook.age_of(2, 1, store) == 2, "the newest generation: its own age"
    store.announce(2, Announcement(expected=2, first_age=3, started=2.0, ready_timeout=5.0))
    assert MasterBook.age_of(2, 1, store) == 2, "while the reload starts"
    store.mark_master_stopping()
    assert MasterBook.age_of(2, 1, store) == 2 + ROLLED_BACK_AGE_BONUS
    (tmp_path / "promoted").mkdir()
    promoted = RecordStore(str(tmp_path / "promoted"))
    for gen, first in ((1, 1), (2, 3)):
        info = Announcement(expected=2, first_age=first, started=1.0, ready_timeout=5.0)
        promoted.announce(gen, info)
    promoted.record_verdict(2, Verdict(PROMOTED, new=True))
    assert MasterBook.age_of(2, 1, promoted) == 2.5
    promoted.announce(3, Announcement(expected=2, first_age=5, started=3.0, ready_timeout=5.0))
    promoted.record_verdict(3, Verdict(ROLLED_BACK, reason="boom", new=True))
    assert MasterBook.age_of(4, 2, promoted) == 4 + ROLLED_BACK_AGE_BONUS


def test_a_promotion_is_reported_once_the_older_workers_stopped_accepting(tmp_path):
    """``grace-plugins reload`` returns on the reported verdict: a smoke test right after must
    not meet an old worker still accepting (it stops at its next look), for a second at most."""
    from grace_plugins.gunicorn.master import held_promotion
    from grace_plugins.gunicorn.records import READY, STOPPED
    from grace_plugins.outcome_hold import STOPPED_WAIT

    store = RecordStore(str(tmp_path))
    old = Member(1, 1, os.getpid())  # alive
    gone = Member(1, 2, 2**22 + 1)  # above pid_max: never alive
    store.announce(1, Announcement(expected=2, first_age=1, started=1.0, ready_timeout=5.0))
    for member in (old, gone):
        store.record(member, READY)
    store.announce(2, Announcement(expected=2, first_age=3, started=2.0, ready_timeout=5.0))
    assert held_promotion(store, 2, set(), time.time()) is None, "no verdict yet"
    store.record_verdict(2, Verdict(PROMOTED, new=True))
    since = store.verdict_time(2)
    assert since is not None
    assert held_promotion(store, 2, set(), since) == 2, "an old worker still accepts"
    assert held_promotion(store, 2, {2}, since) is None, "reported already"
    assert held_promotion(store, 2, set(), since + STOPPED_WAIT) is None, "waited long enough"
    store.record(old, STOPPED)
    assert held_promotion(store, 2, set(), since) is None, "every live old worker stopped"


def test_a_mold_is_gone_only_once_its_end_is_closed():
    """Not while an answer waits unread (a stop signal's handler can ask in the middle of a
    fork request)."""
    import socket

    from grace_plugins.gunicorn.mold_handle import MoldHandle
    from grace_plugins.wire import Wire

    ours, theirs = socket.socketpair()
    handle = MoldHandle(1, os.getpid(), Wire(ours), 0.0)
    assert not handle.gone()
    Wire(theirs).send({"pid": 7})
    assert not handle.gone(), "an answer waits"
    assert handle.wire.receive(1)[0] == {"pid": 7}
    theirs.close()
    assert handle.gone()
    ours.close()
    assert handle.gone(), "a closed socket too"
