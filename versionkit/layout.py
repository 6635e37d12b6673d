"""The experiment folder's layout: the one place that spells its folder and file names.

::

    <root>/checkpoints/version_N/config.yaml          the resolved, complete config
    <root>/checkpoints/version_N/config.source.yaml   the --config file, verbatim
    <root>/checkpoints/version_N/step_XXXXXXXX-val_loss_X.XXXX.ckpt, last.ckpt
    <root>/logs/version_N/                            TensorBoard (hparams.yaml, samples/)
    <root>/.versionkit/                               registry state (file backend), leases

Everything else (registry, run lifecycle, CLIs, sampling) asks this module for paths.
It imports nothing beyond the standard library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_FILENAME",
    "CHECKPOINT_SUFFIX",
    "CONFIG_FILE",
    "LAST_CHECKPOINT",
    "LIST_CACHE",
    "LOGS",
    "RENDEZVOUS",
    "SOURCE_CONFIG_FILE",
    "STATE_DIR",
    "SWEEP_JOURNAL",
    "VERSION_PREFIX",
    "Layout",
    "parse_version_dir",
    "version_dir_name",
]

CHECKPOINTS = "checkpoints"
LOGS = "logs"
STATE_DIR = ".versionkit"
#: Inside the state folder: the Optuna journal that holds the experiment's sweeps.
SWEEP_JOURNAL = "sweeps.journal"
VERSION_PREFIX = "version_"
CONFIG_FILE = "config.yaml"
SOURCE_CONFIG_FILE = "config.source.yaml"
LAST_CHECKPOINT = "last.ckpt"
CHECKPOINT_SUFFIX = ".ckpt"
#: Inside the state folder: the file backend's list cache (each record's list summary,
#: checked against a stat of the record; deleting it only costs the next listing time).
LIST_CACHE = "list.cache"
#: Inside the state folder: the file backend's list journal (each record's list summary
#: as its writer made it, checked against a digest of the record; a cache too).
LIST_JOURNAL = "list.journal"
#: Inside the state folder: rank 0's hand-over files for the other ranks of a run.
RENDEZVOUS = "rendezvous"
#: ModelCheckpoint's file name pattern (``auto_insert_metric_name=False``), as the seed shows.
CHECKPOINT_FILENAME = "step_{step:08d}-val_loss_{val_loss:.4f}"


def version_dir_name(n: int) -> str:
    """``version_N``."""
    return f"{VERSION_PREFIX}{n}"


def parse_version_dir(name: str) -> int | None:
    """N of a ``version_N`` name (ASCII digits only), else ``None``."""
    if not name.startswith(VERSION_PREFIX):
        return None
    digits = name[len(VERSION_PREFIX) :]
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)


@dataclass(frozen=True)
class Layout:
    """The paths of one experiment root (as given: relative paths stay relative)."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        """``<root>/checkpoints``."""
        return self.root / CHECKPOINTS

    @property
    def logs(self) -> Path:
        """``<root>/logs``."""
        return self.root / LOGS

    @property
    def state(self) -> Path:
        """``<root>/.versionkit``."""
        return self.root / STATE_DIR

    @property
    def rendezvous_dir(self) -> Path:
        """``<root>/.versionkit/rendezvous`` (rank hand-over files)."""
        return self.state / RENDEZVOUS

    def checkpoint_dir(self, n: int) -> Path:
        """``<root>/checkpoints/version_N``."""
        return self.checkpoints / version_dir_name(n)

    def log_dir(self, n: int) -> Path:
        """``<root>/logs/version_N``."""
        return self.logs / version_dir_name(n)

    def config_path(self, n: int) -> Path:
        """``<root>/checkpoints/version_N/config.yaml``."""
        return self.checkpoint_dir(n) / CONFIG_FILE

    def source_config_path(self, n: int) -> Path:
        """``<root>/checkpoints/version_N/config.source.yaml``."""
        return self.checkpoint_dir(n) / SOURCE_CONFIG_FILE

    def last_checkpoint(self, n: int) -> Path:
        """``<root>/checkpoints/version_N/last.ckpt``."""
        return self.checkpoint_dir(n) / LAST_CHECKPOINT

    def display(self, path: Path, shown_root: str | None = None) -> str:
        """``path`` (under the root) spelt from the root as the user gave it."""
        base = str(self.root) if shown_root is None else shown_root
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root))
        except ValueError:
            return str(path)
        return os.path.join(base, *rel.parts)

    @property
    def sweep_journal(self) -> Path:
        """``<root>/.versionkit/sweeps.journal`` (the default study storage of sweeps)."""
        return self.state / SWEEP_JOURNAL

    @staticmethod
    def locate(path: str | Path) -> tuple[Path, int | None] | None:
        """``(root, N)`` when ``path`` is ``<root>/{checkpoints,logs}/version_N`` or a file
        inside one; ``(root, None)`` for ``<root>/checkpoints`` or ``<root>/logs``; else
        ``None``. Lexical only: it reads nothing from disk."""
        p = Path(os.path.normpath(path))
        for candidate in (p, p.parent):
            n = parse_version_dir(candidate.name)
            if n is not None and candidate.parent.name in (CHECKPOINTS, LOGS):
                return candidate.parent.parent, n
        if p.name in (CHECKPOINTS, LOGS):
            return p.parent, None
        return None
