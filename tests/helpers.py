"""Kept for imports written before the harness: everything lives in :mod:`tests.harness`."""

from tests.harness import *  # noqa: F403
from tests.harness import __all__  # noqa: F401
