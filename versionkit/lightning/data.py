"""``ResumableLoader``: a DataLoader whose place in the epoch survives a resume.

Lightning restarts a plain DataLoader's epoch from its first batch when it resumes a
checkpoint taken mid-epoch, with a fresh shuffle: the resumed run sees other batches
than an uninterrupted one. This loader shuffles as a function of ``(seed, epoch)`` and
implements ``state_dict`` / ``load_state_dict``, which Lightning saves in every
checkpoint and restores before the first batch, so a resume continues with exactly the
batch the interrupted run would have trained on next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["EpochShuffle", "ResumableLoader"]


class EpochShuffle(Sampler[int]):
    """Indices ``0..n-1`` in a random order that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` at every epoch start.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())


class ResumableLoader(DataLoader[Any]):
    """A ``DataLoader`` over ``dataset`` that resumes mid-epoch exactly.

    Args:
        dataset: a map-style data set.
        batch_size: samples per batch.
        shuffle: draw each epoch's order from ``(seed, epoch)``.
        seed: the shuffle's seed.
        **kwargs: other ``DataLoader`` arguments (not ``sampler`` / ``batch_sampler``).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        *,
        shuffle: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        size = len(dataset) if isinstance(dataset, Sized) else 0
        super().__init__(
            dataset, batch_size=batch_size, sampler=EpochShuffle(size, seed, shuffle), **kwargs
        )
        self._yielded = 0
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip, self._skip = self._skip, 0
        self._yielded = 0
        batches = super().__iter__()
        for _ in range(skip):
            next(batches, None)
            self._yielded += 1
        return self._count(batches)

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch and the batches of it that training has taken.

        (Lightning fetches ahead only from loaders without a length; this one has one.)
        """
        taken = self._yielded
        sampler = self.sampler
        epoch = sampler.epoch if isinstance(sampler, EpochShuffle) else 0
        return {"epoch": int(epoch), "taken": int(taken)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue epoch ``state["epoch"]`` after its first ``state["taken"]`` batches."""
        if isinstance(self.sampler, EpochShuffle):
            self.sampler.set_epoch(int(state.get("epoch", 0)))
        self._skip = int(state.get("taken", 0))
