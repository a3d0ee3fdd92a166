import os

VALUE = "leaf"
LOADED_IN = os.getpid()
