"""``AtomicCheckpointIO``: a checkpoint is never half written under its final name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from versionkit._atomic import write_atomic

__all__ = ["CheckpointIOMixin"]


class CheckpointIOMixin:
    """The atomic half of ``AtomicCheckpointIO`` (the other is Lightning's ``TorchCheckpointIO``).

    Lightning's own save goes through an fsspec transaction, which on a local disk stages
    the bytes in the system temp folder and moves them: across filesystems that is a plain
    copy into the final name, and nothing is fsynced. Here the checkpoint is written to a
    temporary file in the destination folder, fsynced and renamed onto its name, so readers
    see the old file or the whole new one, also after a crash or power loss. Loading
    defaults to ``weights_only=True`` (no arbitrary unpickling).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local paths; others as Lightning does)."""
        import torch

        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, "
                f"got {storage_options!r}"
            )
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path)  # type: ignore[misc]
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, lambda f: torch.save(checkpoint, f), sync_dir=True)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable[..., Any] | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint; plain tensors and containers only unless told otherwise."""
        result: dict[str, Any] = super().load_checkpoint(  # type: ignore[misc]
            path,
            map_location=map_location,
            weights_only=True if weights_only is None else weights_only,
        )
        return result
