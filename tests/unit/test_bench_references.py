"""The benchmark scripts still fit together: every name one of them takes from another exists.

No test runs the benchmarks (they take minutes); a helper moved from one bench module to another
once left ``bench/gunicorn_saves.py`` failing with AttributeError until someone ran it. This reads
each script's own imports of its siblings (``import saves`` then ``saves.X``, ``from saves import
X``) and checks each name on the imported module: seconds, not minutes.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys
from collections.abc import Iterator

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(path.stem for path in BENCH.glob("*.py"))


def sibling_references(tree: ast.Module) -> Iterator[tuple[str, str, int]]:
    """(sibling module, name, line) for every name this module takes from a bench sibling."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in SCRIPTS:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in SCRIPTS and not node.level:
            for alias in node.names:
                yield node.module, alias.name, node.lineno
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            yield aliases[node.value.id], node.attr, node.lineno


def test_the_reader_finds_both_kinds_of_reference() -> None:
    tree = ast.parse("import saves\nfrom common import Server\nsaves.Plan(saves.App)\n")
    found = sorted(sibling_references(tree))
    assert found == [("common", "Server", 2), ("saves", "App", 3), ("saves", "Plan", 3)]


@pytest.fixture
def bench_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """bench/ on the path while the test runs; its modules (``common``, ``warm``, ...) gone
    from ``sys.modules`` after it."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.usefixtures("bench_importable")
def test_every_name_a_bench_script_takes_from_a_sibling_exists(script: str) -> None:
    tree = ast.parse((BENCH / f"{script}.py").read_text())
    missing = []
    for module, name, line in sibling_references(tree):
        if not hasattr(importlib.import_module(module), name):
            missing.append(f"bench/{script}.py:{line}: {module}.{name}")
    assert not missing, "names that moved or went away: " + ", ".join(missing)
