"""Reading checkpoints safely: ``torch.load(..., weights_only=True)`` and nothing else."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["UnreadableCheckpoint", "UnsafeCheckpoint", "load_checkpoint"]


class UnsafeCheckpoint(Exception):
    """The file needs arbitrary unpickling (which could run code); ``str()`` says why."""


class UnreadableCheckpoint(Exception):
    """The file is truncated, corrupt or not a checkpoint; ``str()`` says why."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> Any:
    """Load ``path`` on the CPU with ``weights_only=True``.

    Raises:
        UnsafeCheckpoint: it holds objects other than tensors and plain containers.
        UnreadableCheckpoint: it cannot be read at all.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(_first_line(exc)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UnreadableCheckpoint(_first_line(exc)) from None
