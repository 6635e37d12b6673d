"""Where and how a version was made: time, host, user, git commit, package versions.

Standard library only: the versions of torch and Lightning come from package metadata,
so recording them imports neither.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import getpass
import os
import platform
import socket
import subprocess
import time

__all__ = ["git_info", "host", "now", "package_versions", "pid_alive", "user"]


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


# cwd -> (time.monotonic() when read, (commit, dirty)). A short time-to-live: repeated
# allocations in one process (a sweep, a benchmark) skip two git processes each, while a
# notebook that edits code between runs still records the new commit and dirty flag.
_GIT_TTL_S = 10.0
_git_cache: dict[str, tuple[float, tuple[str | None, bool | None]]] = {}


def git_info(cwd: str) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree at ``cwd``; (None, None) without git."""
    now = time.monotonic()
    hit = _git_cache.get(cwd)
    if hit is not None and now - hit[0] < _GIT_TTL_S:
        return hit[1]
    result = _read_git(cwd)
    _git_cache[cwd] = (now, result)
    return result


def _read_git(cwd: str) -> tuple[str | None, bool | None]:
    """Ask git (two short-lived processes, 3 s timeout each); tolerate no git at all."""

    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=3, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = run("status", "--porcelain", "--untracked-files=no")
    return commit.strip() or None, (bool(status.strip()) if status is not None else None)


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """Python, torch, Lightning and versionkit versions (``None`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    def find(*names: str) -> str | None:
        for name in names:
            with contextlib.suppress(PackageNotFoundError):
                return version(name)
        return None

    from versionkit import __version__

    return {
        "python": platform.python_version(),
        "torch": find("torch"),
        "lightning": find("pytorch-lightning", "lightning"),
        "versionkit": __version__,
    }


def user() -> str | None:
    """The login name, or ``None`` where there is none (a container without passwd)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, no $USER in a container
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none, or a pid no process can have
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


@functools.lru_cache(maxsize=1)
def host() -> str:
    """This machine's host name."""
    return socket.gethostname()
