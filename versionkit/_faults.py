"""Pause points for crash tests: ``VERSIONKIT_TEST_PAUSE_AT=allocate:after-counter``.

A backend calls :func:`pause_point` at the steps a crash could land between. When the
environment variable names that point, the process writes ``paused NAME PID`` to
stderr and blocks, so that a test can SIGKILL it exactly there instead of guessing a
moment by sleeping. Unset (always, outside tests), a call is one string comparison.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["ENV_VAR", "pause_point"]

#: The environment variable naming the one point to pause at.
ENV_VAR = "VERSIONKIT_TEST_PAUSE_AT"
_AT = os.environ.get(ENV_VAR) or None


def pause_point(name: str) -> None:
    """Block forever (until killed) when ``$VERSIONKIT_TEST_PAUSE_AT`` is ``name``."""
    if _AT is None or name != _AT:
        return
    sys.stderr.write(f"paused {name} {os.getpid()}\n")
    sys.stderr.flush()
    while True:  # pragma: no cover - ends by SIGKILL
        time.sleep(3600)
