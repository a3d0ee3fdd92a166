"""The generation side's handover calls, in this process: messages on the channel, stopping
to accept without ``shutdown()``, stop callbacks, drain orders, the ready check's bound."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time

import pytest

from grace_plugins import generation as gen
from grace_plugins.channel import Channel
from grace_plugins.handoff import Handoff
from grace_plugins.options import Options
from grace_plugins.readycheck import NotReady


@pytest.fixture
def setup():
    """A context over one real listener and a socketpair channel; yields (context, the
    supervisor's end of the channel, the listener)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    handoff = Handoff(
        supervisor_pid=os.getppid(),
        generation=7,
        listeners=[(f"tcp:127.0.0.1:{listener.getsockname()[1]}", listener.fileno())],
        channel_fd=theirs.fileno(),
        options=Options(ready_timeout=2.0, drain_timeout=1.0, keepalive_timeout=0.5),
    )
    context = gen.GenerationContext(handoff, [listener], Channel(theirs))
    yield context, ours, listener
    for sock in (listener, ours, theirs):
        sock.close()
    if context._plug is not None:
        for fd in context._plug:
            os.close(fd)


def test_settings_come_from_the_handoff(setup):
    context, _, _ = setup
    assert context.generation == 7
    assert (context.options.drain_timeout, context.options.ready_timeout) == (1.0, 2.0)
    assert context.tracker.keepalive_timeout == 0.5
    assert not context.stopping


def test_the_ready_clock_starts_with_the_process(setup):
    context, _, _ = setup
    # the supervisor's ready deadline runs from the spawn: this process (pytest) started well
    # before the context was made, and the ready check's bound counts from then
    assert time.monotonic() - context.started > 0.2


def test_ready_once_and_upgrade_requests_are_lines(setup):
    context, peer, listener = setup
    os.set_blocking(listener.fileno(), True)  # as an SSL wrapper may leave it
    context.ready()
    context.ready()  # idempotent
    context.request_upgrade("a file changed")
    assert peer.recv(100) == b"ready\nupgrade\n"
    assert not os.get_blocking(listener.fileno())  # made non-blocking again at ready


def test_stop_accepting_plugs_the_fd_without_shutting_the_socket(setup):
    context, _, listener = setup
    port = listener.getsockname()[1]
    other = socket.socket(fileno=os.dup(listener.fileno()))  # the next generation's copy
    with other:
        context.stop_accepting()
        context.stop_accepting()  # once
        with pytest.raises(OSError):
            listener.getsockname()  # our fd number now holds a pipe
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            other.settimeout(5)
            conn, _ = other.accept()  # the shared socket still accepts for the other copy
            conn.close()


def test_a_stop_before_ready_leaves_ready_harmless(setup):
    context, _, _ = setup
    context._stop("the supervisor is gone")  # its channel closed while the app imported
    context.ready()  # the listener fds are a pipe's now: nothing to make non-blocking


def test_stop_runs_callbacks_on_their_own_threads_and_late_ones_at_once(setup):
    context, _, _ = setup
    ran: queue.SimpleQueue[str] = queue.SimpleQueue()
    context.on_stop(lambda: ran.put(threading.current_thread().name))
    context._stop("test")
    context._stop("again")  # once
    assert context.stopping and context.tracker.draining
    assert ran.get(timeout=5) == "grace-stop"
    context.on_stop(lambda: ran.put("late"))
    assert ran.get(timeout=5) == "late"


def test_a_failing_stop_callback_does_not_escape(setup, capsys, monkeypatch):
    context, _, _ = setup
    escaped: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    ran_on: queue.SimpleQueue[threading.Thread] = queue.SimpleQueue()

    def broken():
        ran_on.put(threading.current_thread())
        raise RuntimeError("stop hook broke")

    context.on_stop(broken)
    context._stop("test")
    stop_thread = ran_on.get(timeout=5)
    stop_thread.join(5)
    assert not stop_thread.is_alive()
    assert escaped == []  # caught on its own thread...
    assert "RuntimeError: stop hook broke" in capsys.readouterr().err  # ...and shown


def test_second_drain_order_cuts_the_drain_short(setup):
    context, peer, _ = setup
    events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
    reader = threading.Thread(target=gen._read_channel, args=(context._channel, events))
    reader.start()
    peer.sendall(b"drain\ndrain\n")
    first, second = events.get(timeout=5), events.get(timeout=5)
    assert first == (gen._STOP, "asked by the supervisor")
    assert second[0] == gen._CUT
    peer.shutdown(socket.SHUT_WR)  # the supervisor is gone: EOF
    assert events.get(timeout=5) == (gen._STOP, "the supervisor is gone")
    reader.join(5)
    context._cut_short()
    assert context.stopping and context.tracker._cut


class _EndThread(Exception):
    pass


def _until_ended(loop, *args) -> None:
    with contextlib.suppress(_EndThread):
        loop(*args)


def test_control_thread_turns_events_into_calls(setup):
    context, peer, _ = setup
    events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
    events.put((gen._UPGRADE, "SIGHUP reached the generation"))
    events.put((gen._STOP, "SIGTERM"))
    events.put((gen._UPGRADE, "ignored while stopping"))
    cuts: list[bool] = []

    def cut_then_end_the_thread() -> None:
        cuts.append(context.stopping)
        raise _EndThread  # the test leaves no thread behind

    context._cut_short = cut_then_end_the_thread  # type: ignore[method-assign]
    events.put((gen._CUT, ""))
    control = threading.Thread(target=_until_ended, args=(gen._control, context, events))
    control.start()
    control.join(5)
    assert cuts == [True]  # the stop came first, in order
    # the upgrade asked for, then the stop's word that it no longer accepts; nothing after
    assert peer.recv(100) == b"upgrade\nstopped\n"


def test_ready_check_is_bounded_by_what_is_left_of_the_ready_timeout(setup):
    context, _, _ = setup
    release = threading.Event()

    def hangs(environ, start_response):
        release.wait(10)
        start_response("200 OK", [])
        return [b""]

    context.started = time.monotonic() - 1.2  # 0.8 s left, less the margin: 0.3 s
    began = time.monotonic()
    try:
        with pytest.raises(NotReady, match=r"did not answer within 0\.[23]\d* s"):
            context.check_ready(hangs, "/h", host="localhost", port=80)
    finally:
        release.set()
    assert time.monotonic() - began < 1.0
