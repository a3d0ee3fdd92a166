"""What the template checks before each fork, in this process (no process started): the
project's modules are found however often it is asked, though only new modules are looked at
again; and ``importlib.metadata``'s caches are filled for the generations."""

from __future__ import annotations

import socket
import sys
import types

import pytest

from grace_plugins.preload import warm_metadata
from grace_plugins.template import Template


@pytest.fixture
def template(tmp_path, monkeypatch):
    ours, theirs = socket.socketpair()
    made = Template(theirs)
    made.roots = [str(tmp_path)]
    yield made
    ours.close()
    theirs.close()


def module(name: str, path: str) -> types.ModuleType:
    made = types.ModuleType(name)
    made.__file__ = path
    return made


def test_a_project_module_is_found_at_every_fork(template, tmp_path, monkeypatch):
    assert template.project_modules() == []
    monkeypatch.setitem(sys.modules, "settings_x", module("settings_x", str(tmp_path / "s.py")))
    assert template.project_modules() == ["settings_x"]
    assert template.project_modules() == ["settings_x"]  # never cleared: asked again, found


def test_a_cleared_name_bound_to_a_project_module_later_is_found(template, tmp_path, monkeypatch):
    library = module("shared_name", "/usr/lib/python3/dist-packages/shared_name.py")
    monkeypatch.setitem(sys.modules, "shared_name", library)
    assert template.project_modules() == []
    assert template.cleared["shared_name"] is library
    monkeypatch.setitem(sys.modules, "shared_name", module("shared_name", str(tmp_path / "x.py")))
    assert template.project_modules() == ["shared_name"]


def test_warm_metadata_fills_the_caches_a_generation_reads():
    import importlib.metadata

    fast_path = importlib.metadata.FastPath  # type: ignore[attr-defined]
    fast_path.__new__.cache_clear()  # as in a fresh process: pytest's plugins filled them
    warm_metadata()
    path = next(p for p in sys.path if p)
    assert fast_path(path).lookup.cache_info().currsize == 1
