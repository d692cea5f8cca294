"""Crash points for the crash-safety tests, in the spirit of etcd's gofail.

``SERVICEKEY_CRASH_AFTER=<point>`` makes the process die at once (no cleanup, like SIGKILL) right
after that step of a pass; unset, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os

CRASH_ENV = "SERVICEKEY_CRASH_AFTER"
CRASH_EXIT_CODE = 86


def crash_point(name: str) -> None:
    """Die here if the environment asks for a crash after step ``name``."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT_CODE)
