"""Handing a run's version from global rank 0 to the other ranks of a distributed run.

Rank 0 allocates (or reopens) the version; the others must use the same number without
touching the registry. Two routes carry it:

* the ``VERSIONKIT_RUN`` environment variable, for the processes that Lightning's own
  launcher starts (they re-run the script from the top and inherit the environment);
* a rendezvous file under the experiment's state folder, for ranks that ``torchrun`` or
  ``srun`` started at the same time as rank 0 (each waits for rank 0 to publish it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from versionkit._atomic import write_atomic
from versionkit.errors import RegistryError
from versionkit.layout import Layout

__all__ = [
    "RUN_ENV",
    "HandOver",
    "await_rendezvous",
    "clear_rendezvous",
    "global_rank_from_env",
    "handed_over",
    "publish_rendezvous",
    "rendezvous_key",
    "world_is_distributed",
]

#: Environment variable through which a run hands its version to the processes that
#: Lightning's launcher starts.
RUN_ENV = "VERSIONKIT_RUN"

#: A rendezvous file older than this (before this process started) is a killed run's.
_MAX_AGE_S = 300.0
_PROCESS_START = time.time()


@dataclass(frozen=True)
class HandOver:
    """What rank 0 tells the other ranks: the root, the version, the checkpoint to load."""

    root: str
    version: int
    resume: str | None
    owner: int

    def to_json(self) -> str:
        """The JSON text carried by the variable or the file."""
        return json.dumps(
            {"root": self.root, "version": self.version, "resume": self.resume, "owner": self.owner}
        )

    @classmethod
    def from_mapping(cls, body: Mapping[str, Any]) -> HandOver | None:
        """Parse one; ``None`` when the fields are not all there."""
        version, root, resume, owner = (
            body.get("version"),
            body.get("root"),
            body.get("resume"),
            body.get("owner"),
        )
        if not isinstance(version, int) or isinstance(version, bool) or not isinstance(root, str):
            return None
        return cls(
            root=root,
            version=version,
            resume=resume if isinstance(resume, str) else None,
            owner=owner if isinstance(owner, int) else -1,
        )


def global_rank_from_env(env: Mapping[str, str] | None = None, *, devices_per_node: int = 1) -> int:
    """This process's global rank as the launcher's environment tells it (0 when alone).

    ``RANK`` (torchrun), ``SLURM_PROCID`` (srun), or for a process that Lightning's
    launcher will start children from, ``NODE_RANK * devices + LOCAL_RANK``.
    """
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if env.get(key, "").strip().isdigit():
            return int(env[key])
    node_rank = _int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    local_rank = _int(env.get("LOCAL_RANK", "0"))
    return node_rank * max(devices_per_node, 1) + local_rank


def _int(text: str | None) -> int:
    text = (text or "").strip()
    return int(text) if text.isdigit() else 0


def world_is_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Whether the launcher says there is more than one process (or node)."""
    env = os.environ if env is None else env
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if _int(env.get(key)) > 1:
            return True
    return _int(env.get("NODE_RANK")) > 0


def handed_over(env: Mapping[str, str], root_key: str) -> HandOver | None:
    """The version a parent process handed to this one through ``VERSIONKIT_RUN``.

    ``None`` when the variable is absent, malformed, for another root, or set by this
    very process (for the processes it launches, or left by a run that never reached
    fit: a second ``start_run`` here is a new run, not a rank).
    """
    raw = env.get(RUN_ENV)
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    handed = HandOver.from_mapping(body) if isinstance(body, dict) else None
    if handed is None or handed.root != root_key or handed.owner == os.getpid():
        return None
    return handed


def rendezvous_key(env: Mapping[str, str]) -> str:
    """What identifies one launch of a distributed job (the same on every rank)."""
    keys = (
        "TORCHELASTIC_RUN_ID",
        "TORCHELASTIC_RESTART_COUNT",
        "SLURM_JOB_ID",
        "SLURM_STEP_ID",
        "MASTER_ADDR",
        "MASTER_PORT",
    )
    return "|".join(env.get(k, "") for k in keys)


def _rendezvous_file(layout: Layout, key: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    return layout.rendezvous_dir / f"{digest}.json"


def clear_rendezvous(layout: Layout, key: str) -> None:
    """Remove a killed launch's file with the same key (before rank 0 allocates), so the
    other ranks never read its number."""
    with contextlib.suppress(FileNotFoundError):
        _rendezvous_file(layout, key).unlink()


def publish_rendezvous(layout: Layout, key: str, hand: HandOver) -> Path:
    """Write rank 0's hand-over for the ranks that wait for it; returns the file."""
    path = _rendezvous_file(layout, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = dict(json.loads(hand.to_json()), key=key, created=time.time())
    write_atomic(path, json.dumps(body).encode("utf-8"), sync_dir=True)
    return path


def await_rendezvous(layout: Layout, key: str, rank: int, timeout: float) -> HandOver:
    """Wait (up to ``timeout`` seconds) for rank 0's hand-over with this launch's key.

    Raises:
        RegistryError: rank 0 published nothing in time.
    """
    path = _rendezvous_file(layout, key)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        with contextlib.suppress(OSError, ValueError):
            body = json.loads(path.read_text(encoding="utf-8"))
            if (
                isinstance(body, dict)
                and body.get("key") == key
                and float(body.get("created", 0.0)) >= _PROCESS_START - _MAX_AGE_S
            ):
                hand = HandOver.from_mapping(body)
                if hand is not None:
                    return hand
        if time.monotonic() >= deadline:
            raise RegistryError(
                f"rank {rank} waited {timeout:.0f} s for global rank 0 to publish the run's "
                f"version in {path}; is rank 0 running, and is {layout.root} on a filesystem "
                "that every node shares?"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
