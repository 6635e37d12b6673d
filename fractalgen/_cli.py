"""What every fractalgen command line does with a user's mistake and with Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["run_cli"]


def run_cli(body: Callable[[], int], *handled: type[Exception]) -> int:
    """Run a command's ``body`` and return its exit code.

    A ``handled`` error is one ``error: ...`` line on stderr and its ``exit_code`` (1 when
    it has none), never a traceback; Ctrl-C is one ``interrupted`` line and 130.
    """
    try:
        return body()
    except handled as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
