"""The docs stay true: example systemd units are valid and every documented flag exists.

* The units in ``docs/systemd/`` are checked by a small parser (required sections and keys,
  ``ExecReload=`` with the *blocking* ``grace-plugins reload``, ``KillMode=mixed``, stop and
  start timeouts above the drain and reload timeouts) and, where ``systemd-analyze`` is
  installed, by ``systemd-analyze verify`` too (commands under ``/srv`` do not exist here: that
  message alone is expected).
* Every ``grace-plugins`` command line in the docs' code blocks and units uses a subcommand and
  flags that ``python -m grace_plugins ... --help`` lists; the same for ``flask ... hotrun``
  and ``gunicorn`` when those are installed.
* ``docs/upgrade.svg`` is well-formed and ``docs/benchmarks.md`` says how to regenerate both.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.harness import ROOT

DOCS = os.path.join(ROOT, "docs")
UNITS = os.path.join(DOCS, "systemd")
SERVICES = sorted(f for f in os.listdir(UNITS) if f.endswith(".service"))
SOCKETS = sorted(f for f in os.listdir(UNITS) if f.endswith(".socket"))
KILL_GRACE = 5.0  # the supervisor's grace after the drain deadline (supervisor.KILL_GRACE)


# -- a unit file parser (systemd's syntax: sections, KEY=VALUE, repeated keys, \ continuation) ----
def parse_unit(path: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    with open(path) as handle:
        for number, raw in enumerate(handle, 1):
            line = pending + raw.strip()
            pending = ""
            if not line or line[0] in "#;":
                continue
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if line.startswith("["):
                assert line.endswith("]"), f"{path}:{number}: bad section header {line!r}"
                current = sections.setdefault(line[1:-1], [])
                continue
            assert current is not None, f"{path}:{number}: key outside a section"
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), (
                f"{path}:{number}: not KEY=VALUE: {line!r}"
            )
            current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= should appear once, found {found}"
    return found[0]


def flag_value(argv: list[str], flag: str) -> float | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return float(argv[i + 1])
        if arg.startswith(flag + "="):
            return float(arg.split("=", 1)[1])
    return None


def seconds(text: str) -> float:
    """systemd time span: "45", "45s", "2min", "1min 30s"."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text):
        assert unit in units, f"unknown time unit in {text!r}"
        total += float(number) * units[unit]
    return total


@pytest.mark.parametrize("name", SOCKETS)
def test_socket_unit_is_complete(name: str) -> None:
    unit = parse_unit(os.path.join(UNITS, name))
    assert one(unit, "Unit", "Description")
    listens = values(unit, "Socket", "ListenStream")
    assert listens, "a socket unit for an HTTP server needs ListenStream= (a stream socket)"
    assert not values(unit, "Socket", "ListenDatagram"), "grace_plugins refuses UDP sockets"
    assert values(unit, "Install", "WantedBy") == ["sockets.target"]


@pytest.mark.parametrize("name", SERVICES)
def test_service_unit_is_complete(name: str) -> None:
    unit = parse_unit(os.path.join(UNITS, name))
    assert one(unit, "Unit", "Description")
    assert one(unit, "Service", "Type") in ("notify", "notify-reload")
    start = shlex.split(one(unit, "Service", "ExecStart"))
    assert os.path.isabs(start[0]), "ExecStart= needs an absolute path"
    reload = shlex.split(one(unit, "Service", "ExecReload"))
    assert os.path.basename(reload[0]) == "grace-plugins" and reload[1] == "reload", (
        "ExecReload= must use the blocking `grace-plugins reload`, not kill -HUP"
    )
    assert "--pidfile" in reload or "--pid" in reload
    assert one(unit, "Service", "KillMode") == "mixed"
    drain = flag_value(start, "--drain-timeout") or flag_value(start, "--graceful-timeout")
    assert drain is not None, "say the drain timeout explicitly, next to TimeoutStopSec="
    stop = seconds(one(unit, "Service", "TimeoutStopSec"))
    assert stop > drain + KILL_GRACE, f"TimeoutStopSec={stop:g} must exceed the drain {drain:g} s"
    reload_timeout = flag_value(reload, "--timeout") or 90.0
    assert seconds(one(unit, "Service", "TimeoutStartSec")) > reload_timeout, (
        "systemd bounds ExecReload= by TimeoutStartSec=: keep it above reload --timeout"
    )
    pidfile = flag_value_text(start, ("--pidfile", "--pid", "-p"))
    if "--pidfile" in reload:
        assert pidfile == reload[reload.index("--pidfile") + 1], (
            "ExecReload= must read the pidfile ExecStart= writes"
        )
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def flag_value_text(argv: list[str], flags: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg in flags:
            return argv[i + 1]
    return None


def _analyze() -> str | None:
    return shutil.which("systemd-analyze")


#: What systemd-analyze prints, and only then, where it cannot create its manager (a container
#: without systemd's runtime): the one condition in which the units cannot be checked here.
NO_MANAGER = re.compile(r"Failed to initialize manager: [^\n]+")


def no_manager(status: int, output: list[str]) -> bool:
    """True only when verify failed because it had no manager: that line, nothing about our
    units; any other "Failed to ..." line is a finding, not a reason to skip."""
    return (
        status != 0
        and any(NO_MANAGER.fullmatch(line.strip()) for line in output)
        and not any("myapp." in line for line in output)
    )


@pytest.mark.parametrize(
    ("status", "output", "skip"),
    [
        (1, ["Failed to initialize manager: Permission denied"], True),
        (1, ["Failed to initialize manager: No such file or directory"], True),
        (0, ["Failed to initialize manager: Permission denied"], False),
        (1, ["myapp.service: Failed to load manager's configuration"], False),
        (1, ["Failed to initialize manager: x", "myapp.service: Unknown key Foo"], False),
        (1, ["Failed to start the manager for myapp.socket"], False),
        (1, ["Failed to put manager in place"], False),
    ],
)
def test_only_a_missing_manager_skips_the_systemd_check(status, output, skip):
    assert no_manager(status, output) is skip


@pytest.mark.skipif(_analyze() is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", SERVICES)
@pytest.mark.timeout(60)
def test_systemd_analyze_verify(name: str, tmp_path) -> None:
    shutil.copy(os.path.join(UNITS, "myapp.socket"), tmp_path / "myapp.socket")
    shutil.copy(os.path.join(UNITS, name), tmp_path / "myapp.service")
    proc = subprocess.run(
        [_analyze(), "verify", "--man=no", "myapp.socket", "myapp.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
    )
    output = (proc.stdout + proc.stderr).splitlines()
    if no_manager(proc.returncode, output):
        pytest.skip(f"systemd-analyze cannot run here: {output[:2]}")
    expected = re.compile(r"Command /srv/\S+ is not executable")
    # Lines about our units are problems; others are the host's noise (its own units).
    problems = [line for line in output if "myapp." in line and not expected.search(line)]
    assert not problems, "\n".join(problems)


# -- documented command lines ------------------------------------------------------------------
def doc_files() -> list[str]:
    found = []
    for base, _, files in os.walk(DOCS):
        found += [os.path.join(base, f) for f in files if f.endswith((".md", ".service"))]
    return sorted(found)


def code_lines(path: str) -> list[str]:
    """Lines of fenced code blocks (Markdown) or Exec lines (units), continuations joined."""
    with open(path) as handle:
        text = handle.read()
    if path.endswith(".md"):
        blocks = re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", text, re.S | re.M)
        text = "\n".join(blocks)
    lines = text.replace("\\\n", " ").splitlines()
    # JSON-style argv lists (Dockerfile CMD, Kubernetes args) become plain words.
    return [re.sub(r'[\[\]",]', " ", ln) if '", "' in ln else ln for ln in lines if ln.strip()]


def invocations(program: re.Pattern[str]) -> list[tuple[str, list[str]]]:
    """(where, argv after the program) for every mention of *program* in code."""
    found = []
    for path in doc_files():
        for line in code_lines(path):
            match = program.search(line)
            if not match:
                continue
            rest = re.split(r"\s(?:#|\|\||&&|\||;)", line[match.end() :])[0]
            try:
                argv = shlex.split(rest)
            except ValueError:
                argv = rest.split()
            found.append((f"{os.path.relpath(path, ROOT)}: {line.strip()}", argv))
    return found


def help_text(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, f"{argv} failed: {proc.stderr[-500:]}"
    return proc.stdout


def flags_of(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


GRACE = re.compile(r"(?:grace-plugins|-m grace_plugins)(?=\s)")


def test_grace_plugins_commands_in_docs_exist() -> None:
    uses = invocations(GRACE)
    assert uses, "the docs should show grace-plugins reload/status"
    top = help_text([sys.executable, "-m", "grace_plugins", "--help"])
    helps: dict[str, str] = {}
    for where, argv in uses:
        assert argv and argv[0] in top, f"{where}: unknown subcommand {argv[:1]}"
        sub = argv[0]
        if sub not in helps:
            helps[sub] = help_text([sys.executable, "-m", "grace_plugins", sub, "--help"])
        for flag in flags_of(argv[1:]):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[sub]), (
                f"{where}: `grace-plugins {sub}` has no {flag}"
            )


def _flask_hotrun_help() -> str | None:
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    if not os.path.exists(flask):
        return None
    proc = subprocess.run(
        [flask, "hotrun", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    return proc.stdout if proc.returncode == 0 else None


def test_flask_hotrun_flags_in_docs_exist() -> None:
    text = _flask_hotrun_help()
    if text is None:
        pytest.skip("flask hotrun is not installed")
    for where, argv in invocations(re.compile(r"\bhotrun(?=\s)")):
        for flag in flags_of(argv):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"{where}: flask hotrun has no {flag}"
            )


def test_gunicorn_flags_in_docs_exist() -> None:
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    if not os.path.exists(gunicorn):
        pytest.skip("gunicorn is not installed")
    text = help_text([gunicorn, "--help"])
    for where, argv in invocations(re.compile(r"bin/gunicorn|^\s*gunicorn(?=\s)")):
        for flag in flags_of(argv):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"{where}: gunicorn has no {flag}"
            )


# -- the benchmark's outputs ----------------------------------------------------------------------
def test_benchmarks_doc_says_how_to_regenerate() -> None:
    path = os.path.join(DOCS, "benchmarks.md")
    if not os.path.exists(path):
        pytest.skip("docs/benchmarks.md not generated yet (python bench/run.py)")
    with open(path) as handle:
        text = handle.read()
    assert "python bench/run.py" in text
    assert "python bench/picture.py" in text
    assert "| server |" in text


def test_upgrade_picture_is_well_formed_svg() -> None:
    path = os.path.join(DOCS, "upgrade.svg")
    if not os.path.exists(path):
        pytest.skip("docs/upgrade.svg not generated yet (python bench/picture.py)")
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    texts = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    assert "flask hotrun" in texts and "gthread" in texts, "both panels, titled"
    assert "time (s)" in texts and "latency" in texts, "axis labels"
    assert "pid " in texts, "a legend naming the pids"
