"""An exclusive lease on a running version, kept in its registry record.

The lease is the record's ``lease`` key: ``{"host", "pid", "pid_start", "token",
"heartbeat", "since"}``. It is taken, refreshed and released through the backend's
atomic ``modify`` (under the file lock, or in one transaction), so it works the same for
the file, SQLite and PostgreSQL backends and two processes can never both hold it.

A holder is alive when it runs on this host and its pid still exists (and, where the OS
tells, started at the same time: a reused pid is not the holder), or when it runs on
another host and refreshed its heartbeat within ``timeout`` seconds. A dead holder's
lease is taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from versionkit.errors import RegistryError
from versionkit.registry.provenance import pid_alive

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_TIMEOUT_S",
    "Lease",
    "LeaseLost",
    "RunBusyError",
    "acquire_patch",
    "holder_alive",
    "process_start",
]

#: A holder on another host is dead when its heartbeat is older than this.
DEFAULT_TIMEOUT_S = 600.0
#: How often a holder refreshes its heartbeat (at most).
DEFAULT_HEARTBEAT_S = 30.0

Record = dict[str, Any]


class RunBusyError(RegistryError):
    """The version is running in a live process; the message names its host and pid."""


class LeaseLost(RegistryError):
    """This process's lease was taken over by another process (it was thought dead)."""


def process_start(pid: int) -> str | None:
    """An opaque start time of process ``pid`` (Linux ``/proc``), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def holder_alive(lease: Mapping[str, Any], *, now: float, timeout: float) -> bool:
    """Whether the process that holds ``lease`` may still be running."""
    host, pid = lease.get("host"), lease.get("pid")
    if host == socket.gethostname():
        if not isinstance(pid, int) or pid <= 0 or not pid_alive(pid):
            return False
        started = lease.get("pid_start")
        return not (isinstance(started, str) and process_start(pid) not in (None, started))
    beat = lease.get("heartbeat")
    return isinstance(beat, (int, float)) and now - float(beat) < timeout


def _legacy_lease(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """A record written before leases: a ``running`` status stands for one (no heartbeat)."""
    if record.get("status") != "running":
        return None
    return {"host": record.get("host"), "pid": record.get("pid"), "heartbeat": None}


@dataclass
class Lease:
    """This process's claim; ``token`` tells it from any other claim on the version."""

    token: str
    host: str
    pid: int
    timeout: float = DEFAULT_TIMEOUT_S
    interval: float = DEFAULT_HEARTBEAT_S
    last_beat: float = 0.0

    @classmethod
    def new(cls, *, timeout: float = DEFAULT_TIMEOUT_S,
            interval: float = DEFAULT_HEARTBEAT_S) -> Lease:
        """A fresh claim for this process."""
        return cls(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
                   timeout=timeout, interval=interval)

    def body(self, now: float) -> dict[str, Any]:
        """The record's ``lease`` value."""
        return {
            "host": self.host,
            "pid": self.pid,
            "pid_start": process_start(self.pid),
            "token": self.token,
            "heartbeat": now,
            "since": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        }

    def owns(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record``'s lease is this claim."""
        held = record.get("lease")
        return isinstance(held, dict) and held.get("token") == self.token

    def beat_change(self, version: int) -> Callable[[Record], Mapping[str, Any]]:
        """A ``modify`` change that refreshes the heartbeat, or raises ``LeaseLost``."""
        def change(record: Record) -> Mapping[str, Any]:
            if not self.owns(record):
                raise LeaseLost(_lost_message(version, record.get("lease")))
            now = time.time()
            return {"lease": {**record["lease"], "heartbeat": now}}

        return change

    def release_change(self) -> Callable[[Record], Mapping[str, Any]]:
        """A ``modify`` change that drops the lease if it is still this claim's."""
        return lambda record: {"lease": None} if self.owns(record) else {}


def _lost_message(version: int, held: Any) -> str:
    who = _who(held) if isinstance(held, dict) else "nobody"
    return (f"version {version}: this process's lease was taken over ({who} holds it now, "
            "having judged this process dead); stopping so that one process writes it")


def _who(lease: Mapping[str, Any]) -> str:
    return f"pid {lease.get('pid')} on host {lease.get('host')}"


def acquire_patch(
    lease: Lease, version: int, record: Record, patch: Mapping[str, Any], *, now: float
) -> dict[str, Any]:
    """The ``modify`` patch that takes the lease (plus ``patch``), or ``RunBusyError``.

    Meant to be called inside a backend's atomic ``modify`` change function.
    """
    held = record.get("lease")
    holder = held if isinstance(held, dict) else _legacy_lease(record)
    if holder is not None and holder.get("token") != lease.token and holder_alive(
        holder, now=now, timeout=lease.timeout
    ):
        since = holder.get("since")
        raise RunBusyError(
            f"version {version} is already running ({_who(holder)}"
            f"{f', since {since}' if since else ''}); stop that run first, or wait for it"
        )
    return {**patch, "lease": lease.body(now)}


def release_quietly(release: Callable[[], object]) -> None:
    """Run ``release``; a registry that became unreachable keeps the lease, which then
    expires with its holder."""
    with contextlib.suppress(RegistryError, OSError):
        release()
