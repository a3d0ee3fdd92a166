"""Imports a submodule, then reads a setting: refused in a template, ``sub.leaf`` is already in
``sys.modules`` (the shape of a CMS's swappable-model helpers)."""

import importlib
import os

from . import leaf

if os.environ.get("DJANGO_SETTINGS_MODULE"):
    from django.conf import settings

    MODE = "debug" if settings.DEBUG else "live"
else:
    MODE = importlib.import_module(os.environ.get("CORPUS_SETTINGS", "corpusconf")).MODE

LOADED_IN = os.getpid()
assert leaf.VALUE == "leaf"
