"""A package whose subpackage reads the project's settings while it initialises."""

import os

LOADED_IN = os.getpid()
