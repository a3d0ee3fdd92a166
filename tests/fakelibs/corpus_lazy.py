"""Imports the project lazily: ``corpus_lazy.VERSION`` reads the project's ``corpusver`` module
on first access (PEP 562), never at import."""

import importlib
import os

LOADED_IN = os.getpid()


def __getattr__(name: str):
    if name == "VERSION":
        return importlib.import_module(os.environ.get("CORPUS_LAZY_TARGET", "corpusver")).VERSION
    raise AttributeError(name)
