"""What a user meets with ``gunicorn -k grace_plugins.Worker -w 2 --user nobody --group nogroup``
started as root, on the Flask example app, against the same command without ``--user``: a HUP
with good code, a HUP with a syntax error, then a HUP with the fix, under load (fresh and
keep-alive clients, slow requests). One row per step; each wait is bounded and a step that
never happens is reported, not fatal.

Needs root (the master switches the workers to nobody). Usage (from the repository root):
python bench/gunicorn_user.py
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness import Load, http_get  # noqa: E402
from tests.harness.gunicorn import Gunicorn, answers  # noqa: E402
from tests.harness.nobody import build, user_and_group  # noqa: E402

EXAMPLE = os.path.join(ROOT, "example_flask", "app.py")
STEP_SECONDS = 20.0


def set_code(app_dir: str, version: str, broken: bool = False) -> None:
    with open(EXAMPLE) as handle:
        text = handle.read().replace('VERSION = "v1"', f"VERSION = {version!r}")
    if broken:
        text += "\nVERSION = (\n"
    path = os.path.join(app_dir, "app.py")
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def served(port: int) -> str:
    try:
        return http_get(port, timeout=3).version or "?"
    except OSError as exc:
        return type(exc).__name__


def until(predicate, seconds: float = STEP_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def scenario(python, app_dir: str, user: list[str]) -> list[str]:
    """The three HUPs; one cell of text per step. Blocks at most a few minutes."""
    set_code(app_dir, "v1")
    argv = [
        python.executable, "-m", "gunicorn", "-k", "grace_plugins.Worker", "-w", "2", *user,
        "--chdir", app_dir, "--bind", "127.0.0.1:0",
        "--control-socket", os.path.join(app_dir, "ctl.sock"), "app:app",
    ]  # fmt: skip
    env = {"PYTHONDONTWRITEBYTECODE": "1", **python.env()}
    cells = []
    with Gunicorn(argv, cwd=app_dir, env=env) as server:
        port = int(server.wait_for(r"Listening at: http://127\.0\.0\.1:(\d+)", 30).group(1))
        server.port = port
        if not until(lambda: answers(port), 30):
            return ["never served"] * 3
        gen1 = until(lambda: "generation 1 ready" in server.output(), 5)
        with Load(port, fresh=2, keepalive=2, slow=1, slow_seconds=1.0) as load:
            mark = server.mark()
            set_code(app_dir, "v2")
            os.kill(server.pid, signal.SIGHUP)
            until(lambda: served(port) == "v2")
            ready = until(lambda: "generation 2 ready" in server.output(mark), 5)
            until(lambda: len(re.findall(r"\(generation 1\) drained", server.output(mark))) == 2)
            reasons = re.findall(r"\(generation 1\) drained [^(]*\(([^;]*);", server.output(mark))
            cells.append(
                f"gate saw generation 1 ready: {'yes' if gen1 else 'no'}, generation 2: "
                f"{'yes' if ready else 'no'}; serving {served(port)}; old workers drained on:"
                f" {', '.join(sorted(set(reasons))) or '-'}"
            )
            mark = server.mark()
            set_code(app_dir, "v3", broken=True)
            os.kill(server.pid, signal.SIGHUP)
            until(lambda: "rolled back" in server.output(mark) or server.proc.poll() is not None)
            if "rolled back" not in server.output(mark):
                until(lambda: server.proc.poll() is not None, 5)
            halted = server.proc.poll() is not None
            cells.append(
                ("**the master halted**" if halted else "master up")
                + ("; rolled back" if "generation 3 rolled back" in server.output(mark) else "")
                + f"; serving {served(port)}"
            )
            set_code(app_dir, "v4")
            if not halted:
                os.kill(server.pid, signal.SIGHUP)
            until(lambda: served(port) == "v4", 5 if halted else STEP_SECONDS)
            cells.append(f"serving {served(port)}")
            report = load.stop()
        kinds: dict[str, int] = {}
        for kind, _ in report.failures:
            kinds[kind] = kinds.get(kind, 0) + 1
        cells.append(f"{len(report.failures)} of {report.requests} {kinds or ''}".strip())
    return cells


def main() -> None:
    found = user_and_group()
    if os.geteuid() != 0 or found is None:
        sys.exit("run as root, on a system with user nobody")
    _, _, name, group = found
    python = build(extra=("flask",))
    try:
        columns = {
            f"`--user {name} --group {group}`": ["--user", name, "--group", group],
            "without": [],
        }
        results = {}
        for label, user in columns.items():
            app_dir = python.app_dir(re.sub(r"\W+", "-", label).strip("-"))
            results[label] = scenario(python, app_dir, user)
        steps = ["HUP, good code", "HUP, syntax error", "HUP, the fix", "failed requests"]
        print(f"| step | {' | '.join(columns)} |")
        print(f"|---|{'---|' * len(columns)}")
        for number, step in enumerate(steps):
            print(f"| {step} | {' | '.join(results[c][number] for c in columns)} |")
    finally:
        python.remove()


if __name__ == "__main__":
    main()
