"""One version's life: start or resume it, hold its lease, record into it, finish it.

::

    registry = Registry("outputs/exp")
    run = start_run(registry, loaded)                # rank 0: allocates version N
    ...                                              # train; the logger calls run.log_metrics
    run.finish("completed")

Global rank 0 owns the version and is the only process that writes to the registry; the
other ranks of a distributed run get a view with the same number (see ``handover``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from versionkit._atomic import write_atomic
from versionkit.config import LoadedConfig, dump_config
from versionkit.errors import ConfigError
from versionkit.layout import Layout
from versionkit.registry import Registry
from versionkit.run import handover
from versionkit.run.lease import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_TIMEOUT_S,
    Lease,
    acquire_patch,
    release_quietly,
)
from versionkit.run.resume import ResumeConfig, change_lines, load_saved_config, resume_config
from versionkit.run.target import Target, checkpoint_required

__all__ = ["FINISH_STATUSES", "Run", "RunPruned", "plan_resume", "start_run"]

#: How a run may end.
FINISH_STATUSES = ("completed", "failed", "interrupted", "pruned")


class RunPruned(Exception):
    """Raised by a callback to stop the run now: ``last.ckpt`` is kept, the status is
    ``pruned`` (a sweep's pruner judged the trial hopeless)."""


@dataclass(eq=False)
class Run:
    """One version of an experiment, as this process sees it.

    Attributes:
        registry: the experiment's registry.
        version: the version number N.
        rank: this process's global rank; only rank 0 writes.
        display_root: the experiment root as the user spelt it (for console lines).
        config: the config this run trains with (on resume: the saved one plus the
            allowed changes).
        resume_from: the checkpoint to continue from (``None``: a new run).
        changes: on resume, dotted key -> (saved, this run's value).
        printer: where console lines go.
    """

    registry: Registry
    version: int
    rank: int
    display_root: str
    config: Any = None
    resume_from: Path | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    printer: Callable[[str], None] = print
    _lease: Lease | None = field(default=None, repr=False)
    _env_set: bool = field(default=False, repr=False)
    _rendezvous: Path | None = field(default=None, repr=False)
    _status: str | None = field(default=None, repr=False)

    @property
    def layout(self) -> Layout:
        """The experiment root's layout."""
        return Layout(self.registry.root)

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is global rank 0 (the one that writes)."""
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path:
        """``<root>/checkpoints/version_N``."""
        return self.layout.checkpoint_dir(self.version)

    @property
    def log_dir(self) -> Path:
        """``<root>/logs/version_N``."""
        return self.layout.log_dir(self.version)

    @property
    def config_path(self) -> Path:
        """``<root>/checkpoints/version_N/config.yaml``."""
        return self.layout.config_path(self.version)

    @property
    def status(self) -> str | None:
        """The status ``finish`` recorded, ``None`` while running."""
        return self._status

    def display(self, path: Path) -> str:
        """``path`` (under the experiment root) spelt from the root as the user gave it."""
        return self.layout.display(path, self.display_root)

    # -- recording (rank 0; no-ops elsewhere) ------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Merge the latest values of ``metrics`` into the version's record."""
        if self.is_global_zero and metrics:
            self.registry.log_metrics(self.version, metrics, step=step)
            self.heartbeat()

    def record_checkpoint(self, path: Path, *, step: int, metrics: Mapping[str, float]) -> None:
        """Record a kept checkpoint file with its step and metrics."""
        if self.is_global_zero:
            self.registry.add_checkpoint(self.version, path, step=step, metrics=metrics)

    def forget_checkpoint(self, path: Path) -> None:
        """Forget a checkpoint file that was deleted (it fell out of the top k)."""
        if self.is_global_zero:
            self.registry.remove_checkpoint(self.version, path)

    def heartbeat(self) -> None:
        """Refresh the lease (at most every ``interval`` seconds; cheap otherwise).

        Raises:
            LeaseLost: another process took the version over, judging this one dead.
        """
        lease = self._lease
        if lease is None or self._status is not None:
            return
        now = time.monotonic()
        if now - lease.last_beat < lease.interval:
            return
        lease.last_beat = now
        self.registry.backend.modify(self.version, lease.beat_change(self.version))

    def finish(self, status: str, *, error: str | None = None) -> None:
        """Record how the run ended and release the lease; the first call wins.

        Args:
            status: ``completed``, ``failed``, ``interrupted`` or ``pruned``.
            error: what went wrong (``failed`` / ``interrupted``).
        """
        if status not in FINISH_STATUSES:
            raise ValueError(f"status must be one of {FINISH_STATUSES}, got {status!r}")
        if self._status is not None:
            return
        self._status = status
        try:
            if self.is_global_zero:
                self.registry.set_status(self.version, status, error=error)
        finally:
            lease, self._lease = self._lease, None
            if lease is not None:
                release_quietly(lambda: self.registry.backend.modify(
                    self.version, lease.release_change()))
            self.close()

    def close(self) -> None:
        """Forget the rank hand-over (environment variable, rendezvous file)."""
        if self._env_set:
            os.environ.pop(handover.RUN_ENV, None)
            self._env_set = False
        if self._rendezvous is not None:
            release_quietly(self._rendezvous.unlink)
            self._rendezvous = None


def plan_resume(
    registry: Registry,
    loaded: LoadedConfig[Any],
    target: Target,
    *,
    mutable_on_resume: Sequence[str] = (),
) -> ResumeConfig:
    """The config a resume of ``target`` would train with; reads only.

    Raises:
        ConfigError: a change that a resume may not make; the saved config is missing.
        VersionNotFoundError: the registry does not know the version.
    """
    record = registry.get(target.version).record
    saved, source = load_saved_config(
        type(loaded.config), target.root, target.version, record.get("config")
    )
    return resume_config(loaded, saved, mutable=mutable_on_resume, source=source)


def start_run(
    registry: Registry,
    loaded: LoadedConfig[Any],
    *,
    display_root: str | os.PathLike[str] | None = None,
    resume: Target | None = None,
    command: Sequence[str] | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
    printer: Callable[[str], None] = print,
    devices_per_node: int = 1,
    num_nodes: int = 1,
    mutable_on_resume: Sequence[str] = (),
    check_resume: Callable[[Target, Any], None] | None = None,
    lease_timeout: float = DEFAULT_TIMEOUT_S,
    heartbeat_interval: float = DEFAULT_HEARTBEAT_S,
    rendezvous_timeout: float = 600.0,
    env: Mapping[str, str] | None = None,
) -> Run:
    """Start a new version, or resume one, once for all ranks of the run.

    New run (global rank 0): allocate N with this process's lease, save
    ``config.yaml`` (and the ``--config`` file verbatim as ``config.source.yaml``),
    record ``extra`` in the version's record, and print the four console lines.

    Resume (rank 0): first validate everything (the version exists, only
    ``mutable_on_resume`` fields differ from the saved config, ``check_resume(target,
    config)`` accepts the checkpoint); then, in one atomic registry write, take the lease
    (refused when a live process holds it; a dead one's is taken over), set the status
    ``running`` and append to the record's ``resumes`` history. ``config.yaml`` and the
    record's config are never rewritten.

    Other ranks get the version from rank 0 (environment or rendezvous file) and write
    nothing.

    Args:
        registry: the experiment's registry.
        loaded: this invocation's parsed config.
        display_root: the experiment root as the user spelt it, for console lines.
        resume: the version (and checkpoint) to continue.
        command: the command line to record (default ``sys.argv``).
        seed: the run's seed, recorded.
        extra: more JSON-able keys for a new version's record.
        printer: where the console lines go.
        devices_per_node: devices per node, to tell a node's launcher process's rank.
        num_nodes: nodes of the run; above 1, rank 0 always publishes its number.
        mutable_on_resume: dotted keys or prefixes a resume may change.
        check_resume: called with the target and the resumed config before anything is
            written; raises (e.g. ``ConfigError``) to refuse.
        lease_timeout: a holder on another host is dead after this long without a beat.
        heartbeat_interval: the least time between two heartbeats.
        rendezvous_timeout: how long a rank waits for rank 0's number.
        env: the environment to read (default ``os.environ``).

    Raises:
        ConfigError: a refused resume (nothing was changed).
        RunBusyError: the version is running in a live process (nothing was changed).
    """
    environ = os.environ if env is None else env
    layout = Layout(registry.root)
    root_key = str(registry.root.resolve())
    shown = os.fspath(display_root) if display_root is not None else str(registry.root)
    argv = list(command if command is not None else sys.argv)

    handed = handover.handed_over(environ, root_key)
    rank = handover.global_rank_from_env(environ, devices_per_node=devices_per_node)
    distributed = handover.world_is_distributed(environ) or num_nodes > 1
    key = handover.rendezvous_key(environ)
    if handed is None and rank != 0:
        handed = handover.await_rendezvous(layout, key, rank, rendezvous_timeout)
        if env is None:
            # This node's launcher process: pass the number on to the processes it starts.
            os.environ[handover.RUN_ENV] = handover.HandOver(
                handed.root, handed.version, handed.resume, os.getpid()
            ).to_json()
    if handed is not None:
        config = loaded.config
        if resume is not None:
            config = plan_resume(registry, loaded, resume,
                                 mutable_on_resume=mutable_on_resume).config
        return Run(registry=registry, version=handed.version, rank=rank or 1,
                   display_root=shown, config=config, printer=printer,
                   resume_from=Path(handed.resume) if handed.resume else None,
                   _env_set=env is None and rank != 0)

    if distributed:
        # A relaunch with the same key (torchrun's default run id, a fixed port) must not
        # let the other ranks read a killed launch's number while we allocate.
        handover.clear_rendezvous(layout, key)
    lease = Lease.new(timeout=lease_timeout, interval=heartbeat_interval)
    if resume is None:
        run = _start_new(registry, loaded, lease, shown, argv, seed, extra, printer)
    else:
        run = _resume(registry, loaded, lease, resume, shown, argv, printer,
                      mutable_on_resume, check_resume)
    hand = handover.HandOver(root_key, run.version,
                             str(run.resume_from) if run.resume_from else None, os.getpid())
    if env is None:
        os.environ[handover.RUN_ENV] = hand.to_json()
        run._env_set = True
    if distributed:
        run._rendezvous = handover.publish_rendezvous(layout, key, hand)
    return run


_NUMBER_SLOT = "@@N@@"


def _dump_and_hash(config: Any, loaded: LoadedConfig[Any]) -> tuple[str, str]:
    """``config.yaml``'s text (with a slot for the version number) and the config's hash.

    The config is dumped once; the hash covers the body after the header comments, which
    is what ``versionkit.config.config_hash`` hashes.
    """
    flags = " ".join(loaded.flags) if loaded.flags else "(none)"
    lines = [
        f"Resolved config of experiment version {_NUMBER_SLOT} (every field, defaults "
        "included)."
    ]
    if loaded.config_file is not None:
        lines.append(f"Config file: {loaded.config_file} (verbatim copy: config.source.yaml)")
    else:
        lines.append("Config generated from command-line flags (no config file)")
    lines.append(f"Flags: {flags}")
    text = dump_config(config, header=lines)
    kept = text.split("\n")
    first = next(i for i, line in enumerate(kept) if not line.startswith("#"))
    body = "\n".join(kept[first:])
    return text, hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def _start_new(
    registry: Registry,
    loaded: LoadedConfig[Any],
    lease: Lease,
    shown: str,
    argv: list[str],
    seed: int | None,
    extra: Mapping[str, Any] | None,
    printer: Callable[[str], None],
) -> Run:
    config = loaded.config
    source = str(loaded.config_file) if loaded.config_file is not None else None
    fields: dict[str, Any] = {
        **dict(extra or {}),
        "config_file": source,
        "flags": list(loaded.flags),
        "lease": lease.body(time.time()),
        "resumes": [],
    }
    # Dumped (and hashed) once, before the number is known: the header's first line has a
    # slot for it.
    text, digest = _dump_and_hash(config, loaded)
    info = registry.allocate(config=config.model_dump(mode="json"), config_hash=digest,
                             command=argv, seed=seed, extra=fields)
    run = Run(registry=registry, version=info.version, rank=0, display_root=shown,
              config=config, printer=printer, _lease=lease)
    try:
        layout = run.layout
        text = text.replace(_NUMBER_SLOT, str(run.version), 1)
        write_atomic(run.config_path, text.encode("utf-8", "surrogatepass"))
        if loaded.config_text is not None:
            write_atomic(layout.source_config_path(run.version),
                         loaded.config_text.encode("utf-8", "surrogatepass"), sync_dir=True)
    except BaseException as exc:
        run.finish("failed", error=f"saving the config failed: {exc}")
        raise
    printer(f"✓ Experiment version: {run.version}")
    printer(f"✓ Checkpoint dir: {run.display(run.checkpoint_dir)}")
    if source is not None:
        printer(f"✓ Saved config from: {source}")
    else:
        printer("✓ Config generated from command-line flags")
    printer(f"✓ Config saved to: {run.display(run.config_path)}")
    return run


def _resume(
    registry: Registry,
    loaded: LoadedConfig[Any],
    lease: Lease,
    target: Target,
    shown: str,
    argv: list[str],
    printer: Callable[[str], None],
    mutable: Sequence[str],
    check_resume: Callable[[Target, Any], None] | None,
) -> Run:
    if Path(os.path.abspath(target.root)) != Path(os.path.abspath(registry.root)):
        raise ConfigError(
            f"--resume: the target belongs to experiment {target.root}, but the registry "
            f"is {registry.root}"
        )
    checkpoint = checkpoint_required(target, str(target.root))
    plan = plan_resume(registry, loaded, target, mutable_on_resume=mutable)
    if check_resume is not None:
        check_resume(target, plan.config)
    entry = {
        "checkpoint": str(checkpoint),
        "flags": list(loaded.flags),
        "config_file": str(loaded.config_file) if loaded.config_file is not None else None,
        "changes": {k: [old, new] for k, (old, new) in plan.changes.items()},
        "at": time.time(),
        "command": argv,
    }
    now = time.time()

    def claim(record: dict[str, Any]) -> Mapping[str, Any]:
        history = record.get("resumes")
        patch = {
            "status": "running",
            "ended_at": None,
            "error": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "resumes": [*(history if isinstance(history, list) else []), entry],
        }
        return acquire_patch(lease, target.version, record, patch, now=now)

    registry.backend.modify(target.version, claim)
    run = Run(registry=registry, version=target.version, rank=0, display_root=shown,
              config=plan.config, resume_from=checkpoint, changes=dict(plan.changes),
              printer=printer, _lease=lease)
    printer(f"✓ Resuming experiment version: {run.version}")
    printer(f"✓ Checkpoint dir: {run.display(run.checkpoint_dir)}")
    printer(f"✓ Resuming from: {checkpoint}")
    printer(f"✓ Saved config (unchanged): {run.display(run.config_path)}")
    for line in change_lines(plan.changes):
        printer(f"✓ Changed for this resume: {line}")
    return run
