"""Unit tests of the core's smaller pieces (no process started): the command line of
``grace-plugins``, the state file, the log format, re-running the program, the re-exec
variable, errors and the channel's inherited end."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from grace_plugins import __main__ as cli
from grace_plugins import cmdline, log, process, reexec, state
from grace_plugins.channel import Channel
from grace_plugins.errors import ExitCode, GraceError, require_posix
from grace_plugins.options import Options

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR, so state files are this test's own."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


# -- the state file -------------------------------------------------------------------------------
def test_state_file_round_trip_private_and_removed(runtime):
    saved = state.StateFile(pid=424242)
    saved.update(generation=1, generation_pid=5)
    saved.record_upgrade("ok", "generation 2 (pid 6)", generation=2)
    data = state.read_state(424242)
    assert data is not None
    assert data["upgrades"] == 1 and data["generation"] == 1
    assert data["last_upgrade"]["generation"] == 2
    assert data["last_upgrade"]["outcome"] == "ok" and not data["in_progress"]
    assert oct(os.stat(saved.path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(state.state_dir()).st_mode & 0o777) == "0o700"
    saved.remove()
    assert state.read_state(424242) is None
    saved.remove()  # twice is fine


def test_state_resume_keeps_start_and_count(runtime):
    first = state.StateFile()
    first.update(upgrades=3, started=123.0)
    resumed = state.StateFile.resume()
    assert resumed.data["upgrades"] == 3 and resumed.data["started"] == 123.0
    first.remove()


def test_merge_state_for_several_writers(runtime):
    state.merge_state(31337, in_progress=True)
    state.merge_upgrade(31337, "rolled_back", "broken", generation=1)
    data = state.read_state(31337)
    assert data is not None and data["upgrades"] == 1 and data["in_progress"] is False
    assert data["last_upgrade"]["detail"] == "broken"
    os.unlink(state.state_path(31337))


def test_state_read_ignores_garbage(runtime):
    with open(state.state_path(99), "w") as handle:
        handle.write("[1, 2]")
    assert state.read_state(99) is None
    with open(state.state_path(99), "w") as handle:
        handle.write("{not json")
    assert state.read_state(99) is None


@pytest.mark.parametrize("kind", ["open", "symlink", "file"])
def test_state_dir_refused(runtime, kind):
    path = runtime / f"grace_plugins-{os.getuid()}"
    if kind == "open":
        path.mkdir()
        path.chmod(0o755)
        problem = "accessible by other users: chmod 700 it"
    elif kind == "symlink":
        (runtime / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(runtime / "elsewhere")
        problem = "not a directory owned by you: remove it"
    else:
        path.write_text("")
        problem = "not a directory owned by you: remove it"
    with pytest.raises(GraceError, match=problem):
        state.state_dir()
    state.merge_state(5, x=1)  # several writers: a refused directory is silently skipped
    state.StateFile.__init__  # noqa: B018 (the supervisor reports the refusal itself)


def test_state_write_failure_never_raises(runtime, monkeypatch):
    saved = state.StateFile(pid=77)
    monkeypatch.setattr(os, "replace", _raise_oserror)
    saved.update(generation=1)  # informative only: no exception
    assert state.read_state(77) is None
    assert not [n for n in os.listdir(state.state_dir()) if n.endswith(".tmp")]


def _raise_oserror(*args, **kwargs):
    raise OSError("disk full")


# -- grace-plugins reload / status ----------------------------------------------------------------
def _write_state(pid: int, **fields) -> None:
    data = {"pid": pid, "started": 0.0, "upgrades": 0, **fields}
    with open(state.state_path(pid), "w") as handle:
        json.dump(data, handle)


def test_status_prints_what_the_supervisor_recorded(runtime, capsys):
    me = os.getpid()
    last = {"outcome": "ok", "detail": "generation 2 (pid 9)", "finished": 0.0}
    _write_state(
        me, listeners=["tcp:127.0.0.1:80"], generation=2, generation_pid=9, last_upgrade=last
    )
    assert cli.main(["status", "--pid", str(me)]) == 0
    out = capsys.readouterr().out
    assert f"supervisor pid {me}" in out and "listening: tcp:127.0.0.1:80" in out
    assert "serving: generation 2 (pid 9)" in out and "upgrades finished: 0" in out
    assert "last upgrade: ok" in out


def test_status_names_a_gunicorn_master_as_such(runtime, capsys):
    me = os.getpid()
    _write_state(me, role="gunicorn master", listeners=["http://127.0.0.1:8000"])
    assert cli.main(["status", "--pid", str(me)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"gunicorn master pid {me}, up") and "supervisor" not in out
    assert "listening: http://127.0.0.1:8000" in out


def test_status_of_a_pidfile_target(runtime, tmp_path, capsys):
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    _write_state(os.getpid(), in_progress=True)
    assert cli.main(["status", "--pidfile", str(pidfile)]) == 0
    assert "(one in progress)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["status", "--pidfile", "/nonexistent/x.pid"], cli.NOT_RUNNING, "Cannot read a pid"),
        (["status", "--pid", "999999999"], cli.NOT_RUNNING, "the server is not running"),
        (["reload", "--pid", "SELF"], ExitCode.USAGE, "is not a grace_plugins supervisor"),
    ],
)
def test_cli_errors_are_one_line(runtime, capsys, args, status, message):
    args = [str(os.getpid()) if a == "SELF" else a for a in args]
    assert cli.main(args) == status
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("Error: ")


def test_cli_needs_a_target(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["reload"])
    assert info.value.code == 2


class _FakeSupervisor:
    """Stands in for the signalled supervisor: records the outcome it is asked for."""

    def __init__(self, pid: int, outcome: str | None, upgrades: int = 1, vanish=False) -> None:
        self.pid, self.outcome, self.upgrades, self.vanish = pid, outcome, upgrades, vanish
        self.signals: list[int] = []

    def kill(self, pid: int, sig: int) -> None:
        assert pid == self.pid
        self.signals.append(sig)
        if sig == 0:
            if self.vanish and len(self.signals) > 1:
                raise ProcessLookupError
            return
        if self.vanish:
            os.unlink(state.state_path(pid))
        elif self.outcome:
            last = {"outcome": self.outcome, "detail": "generation 2 (pid 8)", "finished": 0}
            _write_state(pid, upgrades=self.upgrades, last_upgrade=last)


@pytest.mark.parametrize(
    ("outcome", "vanish", "status", "stream", "text"),
    [
        ("ok", False, 0, "out", "upgraded: generation 2 (pid 8)"),
        ("rolled_back", False, cli.ROLLED_BACK, "err", "rolled back: generation 2"),
        (None, False, cli.TIMED_OUT, "err", "no outcome within 0.2 s"),
        (None, True, cli.NOT_RUNNING, "err", "exited during the upgrade"),
    ],
)
def test_reload_waits_for_the_outcome(
    runtime, monkeypatch, capsys, outcome, vanish, status, stream, text
):
    pid = 4242424
    _write_state(pid)
    fake = _FakeSupervisor(pid, outcome, vanish=vanish)
    monkeypatch.setattr(cli.os, "kill", fake.kill)
    monkeypatch.setattr(cli, "pid_alive", lambda p: not (vanish and signal.SIGHUP in fake.signals))
    assert cli.main(["reload", "--pid", str(pid), "--timeout", "0.2"]) == status
    assert signal.SIGHUP in fake.signals
    captured = capsys.readouterr()
    assert text in (captured.out if stream == "out" else captured.err)


def test_reload_during_an_upgrade_waits_for_the_follow_up(runtime, monkeypatch):
    pid = 4242425
    _write_state(pid, in_progress=True)
    fake = _FakeSupervisor(pid, "ok", upgrades=1)  # only the upgrade under way finished
    monkeypatch.setattr(cli.os, "kill", fake.kill)
    monkeypatch.setattr(cli, "pid_alive", lambda p: True)
    assert cli.main(["reload", "--pid", str(pid), "--timeout", "0.2"]) == cli.TIMED_OUT


# -- the log --------------------------------------------------------------------------------------
def test_log_lines_say_who_speaks_and_configure_is_idempotent(capsys):
    logger = log.configure("supervisor")
    again = log.configure("gen 3")
    assert logger is again is log.get_logger()
    assert len([h for h in logger.handlers if getattr(h, "_grace", False)]) == 1
    handler = next(h for h in logger.handlers if getattr(h, "_grace", False))
    record = logging.LogRecord("grace_plugins", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    assert handler.format(record) == f"[grace_plugins] [gen 3 {os.getpid()}] hello x"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in handler.format(record)


# -- re-running the program -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("orig", "argv", "expected"),
    [
        (
            ["py", "-X", "utf8", "prog.py", "-v"],
            ["prog.py", "-v"],
            ["-X", "utf8", "{dir}/prog.py", "-v"],
        ),
        (["py", "-m", "pkg", "a"], ["/abs/pkg/__main__.py", "a"], ["-m", "pkg", "a"]),
        (["py", "-c", "code", "b"], ["-c", "b"], ["-c", "code", "b"]),
        (["py", "missing.py"], ["missing.py"], ["missing.py"]),
    ],
    ids=["script", "module", "command", "missing-script"],
)
def test_program_argv(tmp_path, monkeypatch, orig, argv, expected):
    (tmp_path / "prog.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "orig_argv", orig, raising=False)
    monkeypatch.setattr(sys, "argv", argv)
    got = cmdline.program_argv()
    assert got == [sys.executable, *(part.format(dir=tmp_path) for part in expected)]
    assert cmdline.interpreter_flags() == (["-X", "utf8"] if orig[1] == "-X" else [])


def release_behind_a_symlink(tmp_path, monkeypatch):
    """``current`` -> ``releases/r1`` (holding ``manage.py``), entered through the link."""
    release = tmp_path / "releases" / "r1"
    release.mkdir(parents=True)
    (release / "manage.py").write_text("")
    current = tmp_path / "current"
    current.symlink_to(release)
    monkeypatch.chdir(current)
    return current


def test_the_working_dir_and_a_script_keep_the_symlink_the_user_went_through(tmp_path, monkeypatch):
    current = release_behind_a_symlink(tmp_path, monkeypatch)
    monkeypatch.setenv("PWD", str(current))
    monkeypatch.setattr(sys, "orig_argv", ["py", "manage.py", "runhot"], raising=False)
    monkeypatch.setattr(sys, "argv", ["manage.py", "runhot"])
    assert cmdline.working_dir() == str(current)
    assert cmdline.program_argv() == [sys.executable, str(current / "manage.py"), "runhot"]


@pytest.mark.parametrize("pwd", ["another directory", "relative", "missing", "unset"])
def test_the_working_dir_is_the_physical_one_unless_pwd_names_it(tmp_path, monkeypatch, pwd):
    release_behind_a_symlink(tmp_path, monkeypatch)
    (tmp_path / "other").mkdir()
    named = {
        "another directory": str(tmp_path / "other"),
        "relative": "current",
        "missing": str(tmp_path / "gone"),
    }
    if pwd == "unset":
        monkeypatch.delenv("PWD", raising=False)
    else:
        monkeypatch.setenv("PWD", named[pwd])
    assert cmdline.working_dir() == os.getcwd() == os.path.realpath(tmp_path / "releases" / "r1")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/srv/releases/r1/.venv/bin/python", "/srv/current/.venv/bin/python"),
        ("/usr/bin/python3", "/usr/bin/python3"),  # not inside: as it is
        ("/srv/releases/r10/.venv/bin/python", "/srv/releases/r10/.venv/bin/python"),
        # ../../shared/venv/bin/python run in releases/r1: through current, it would climb
        # from /srv/current to /
        ("/srv/releases/r1/../../shared/bin/python", "/srv/releases/r1/../../shared/bin/python"),
        ("/srv/releases/r1", "/srv/current"),  # the directory itself (a sys.path entry)
    ],
    ids=["inside", "outside", "a sibling with the same prefix", "climbing out", "itself"],
)
def test_an_interpreter_inside_the_release_is_spelt_through_current(path, expected):
    assert cmdline.respelt(path, "/srv/releases/r1", "/srv/current") == expected
    assert cmdline.respelt(path, "/srv/releases/r1", "/srv/releases/r1") == path


def test_a_process_is_pinned_to_the_release_current_leads_to(tmp_path):
    tmp_path = pathlib.Path(os.path.realpath(tmp_path))  # where the kernel says it is
    for release in ("r1", "r2"):
        (tmp_path / "releases" / release).mkdir(parents=True)
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "releases" / "r1")
    argv = [f"{current}/.venv/bin/python", "manage.py"]
    assert cmdline.pinned(argv, str(current)) == (
        [f"{tmp_path}/releases/r1/.venv/bin/python", "manage.py"],
        str(tmp_path / "releases" / "r1"),
    )
    current.unlink()
    current.symlink_to(tmp_path / "releases" / "r2")
    assert cmdline.pinned(argv, str(current))[0][0] == f"{tmp_path}/releases/r2/.venv/bin/python"
    assert cmdline.pinned(["/usr/bin/python3"], str(current))[0] == ["/usr/bin/python3"]


def test_a_script_path_with_dotdot_is_left_for_the_kernel(tmp_path, monkeypatch):
    # proj/app -> src/app: from proj/app, ../tools/serve.py is src/tools/serve.py
    (tmp_path / "src" / "app").mkdir(parents=True)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "app").symlink_to(tmp_path / "src" / "app")
    monkeypatch.chdir(tmp_path / "proj" / "app")
    monkeypatch.setenv("PWD", str(tmp_path / "proj" / "app"))
    assert cmdline.absolute("../tools/serve.py") == f"{tmp_path}/proj/app/../tools/serve.py"
    assert cmdline.absolute("./serve.py") == f"{tmp_path}/proj/app/serve.py"
    monkeypatch.setenv("PWD", f"{tmp_path}/proj/app/")  # a trailing slash names it too
    assert cmdline.working_dir() == str(tmp_path / "proj" / "app")


@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "O_PATH"), reason="needs root, Linux")
def test_a_directory_we_may_enter_but_not_read_does_not_stop_a_re_exec(tmp_path):
    # a service user started in a 0711 directory: the lean re-exec opens where it is
    shut = tmp_path / "shut"
    shut.mkdir(mode=0o711)
    code = (
        f"import os; from grace_plugins.reexec import _where_we_are; os.chdir({str(shut)!r});"
        "os.setgid(65534); os.setuid(65534); fd = _where_we_are();"
        "os.chdir('/'); os.fchdir(fd); print(os.getcwd())"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(cmdline.__file__))}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(shut)


def test_pid_alive_and_reaping_outside_pid1():
    assert process.pid_alive(os.getpid())
    assert not process.pid_alive(2**22 + 12345)
    assert process.reap_orphans(set()) == 0  # not PID 1: nothing to do


_ORPHAN_THEN_HANDLE = """
import os
from grace_plugins import process
assert process.become_subreaper()
r, w = os.pipe()
middle = os.fork()
if middle == 0:  # as the template does: a double fork, the generation re-parented to us
    generation = os.fork()
    if generation == 0:
        os._exit(3)
    os.write(w, str(generation).encode())
    os._exit(0)
os.waitpid(middle, 0)
generation = int(os.read(r, 32))
os.waitid(os.P_PID, generation, os.WEXITED | os.WNOWAIT)  # gone, its pid not yet ours
assert process.reap_orphans({middle}) == 1
print(process.ChildProcess(generation).poll())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a child subreaper: Linux")
def test_a_generation_reaped_as_an_orphan_keeps_its_exit_status():
    done = subprocess.run(
        [sys.executable, "-c", _ORPHAN_THEN_HANDLE], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"  # not 0: a failed generation must not pass for a clean exit


def test_signal_group_leaves_finished_processes_alone():
    class Finished:
        returncode = 0
        pid = -1

        def send_signal(self, signum):  # pragma: no cover - must not be called
            raise AssertionError("signalled a finished process")

    process.Spawner().signal_group(Finished(), signal.SIGTERM)  # type: ignore[arg-type]


def test_signal_group_falls_back_to_the_process():
    sent = []

    class Gone:
        returncode = None
        pid = 2**22 + 4321  # no such group

        def send_signal(self, signum):
            sent.append(signum)

    process.Spawner().signal_group(Gone(), signal.SIGTERM)  # type: ignore[arg-type]
    assert sent == [signal.SIGTERM]


# -- the re-exec variable -------------------------------------------------------------------------
def test_supervisor_handoff_carries_the_lean_images_program_options_and_banner():
    original = reexec.SupervisorHandoff(
        [("tcp:127.0.0.1:1", 3)],
        program=["/usr/bin/python3", "-X", "dev", "/srv/manage.py", "runhot"],
        argv_len=2,
        options=Options(drain_timeout=5.0, ready_path="/healthz"),
        banner=" * Running on http://127.0.0.1:1",
    )
    env = {reexec.SUPERVISOR_VAR: original.encode()}
    assert reexec.take_supervisor_handoff(env) == original
    assert original.fds() == [3]  # no generation adopted: no channel


def test_supervisor_handoff_round_trip_and_removed():
    original = reexec.SupervisorHandoff([("tcp:127.0.0.1:1", 3)], 4, 1234, 5, 9)
    env = {reexec.SUPERVISOR_VAR: original.encode(), "KEEP": "1"}
    assert reexec.take_supervisor_handoff(env) == original
    assert env == {"KEEP": "1"}
    assert reexec.take_supervisor_handoff({}) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"v": 3}, "format version 3"),
        ({"pid": 1}, "written by pid 1"),
        ({"generation": "x"}, "is malformed"),
        ({"listeners": [5]}, "is malformed"),
    ],
)
def test_supervisor_handoff_malformed(change, problem):
    value = json.loads(reexec.SupervisorHandoff([("tcp:x", 3)], 1, 2, 4, 0).encode())
    value.update(change)
    with pytest.raises(GraceError, match=problem) as info:
        reexec.take_supervisor_handoff({reexec.SUPERVISOR_VAR: json.dumps(value)})
    assert "\n" not in str(info.value)
    with pytest.raises(GraceError, match="is not valid JSON"):
        reexec.take_supervisor_handoff({reexec.SUPERVISOR_VAR: "garbage"})


# -- errors, the channel's inherited end ----------------------------------------------------------
def test_require_posix(monkeypatch):
    require_posix()
    monkeypatch.setattr(os, "name", "nt")
    with pytest.raises(GraceError, match="needs POSIX signals"):
        require_posix()


def test_channel_from_inherited_fd_and_peer_gone():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.set_inheritable(True)
    theirs = Channel.from_fd(b.detach())
    ours = Channel(a)
    with a:
        assert theirs.sock.get_inheritable() is False
        assert theirs.fileno() >= 0
        theirs.close()
        assert ours.send("x" * 10) is False  # the peer is gone: no exception, no SIGPIPE
        a.settimeout(2)
        assert ours.receive() is None
        assert ours.send("drain") is False
