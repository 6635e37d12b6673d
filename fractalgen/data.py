"""Data sets for FractalGen: bundled digits, an image folder, and synthetic images.

Every item is ``(image, label)``: a float tensor (C, H, W) with values in [0, 1] and an int.
The model turns each value ``x`` into the 8-bit level ``round(255 * x)``.

* ``digits``: scikit-learn's 1,797 8x8 grayscale digits (shipped inside scikit-learn, no
  download). Their values ``v`` in 0..16 map to the 8-bit levels ``floor(255 v / 16 + 0.5)``
  (0, 16, 32, ..., 128, ..., 255), stored exactly as ``level / 255``. Rounding here, not in
  the model, matters: ``v = 8`` would be exactly 127.5, where the model's tiny rounding noise
  turns the target into a coin flip worth a spurious bit. Sizes that are a multiple of 8
  are reached by nearest-neighbour upsampling, which keeps the 17 discrete levels intact.
* ``folder``: ``path/<class>/<image>`` with one subfolder per class (sorted names are the
  labels 0, 1, ...); each image is center-cropped to a square and resized (bicubic) to the
  configured size, as RGB (3 channels) or grayscale ``L`` (1 channel).
* ``synthetic``: deterministic, class-dependent gradient patterns with seeded noise, for
  tests and benchmarks.

The train/validation split is a fixed permutation drawn from ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from versionkit.errors import ConfigError

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "DataInfo",
    "FolderDataset",
    "TensorImageDataset",
    "build_datasets",
    "rank_share",
]

DATASETS = ("digits", "folder", "synthetic")
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
SYNTHETIC_SIZE = 512


#: An item's key: its index, or ``(index, mirrored)`` from a flipping batch sampler.
Key = int | tuple[int, bool]


def _unpack(key: Key) -> tuple[int, bool]:
    if isinstance(key, tuple):
        return int(key[0]), bool(key[1])
    return int(key), False


class DataError(ConfigError):
    """A data set could not be built from the config (a ``ValueError``; CLIs exit 2)."""


@dataclass(frozen=True)
class DataInfo:
    """What the model needs to know about the data."""

    channels: int
    num_classes: int
    img_size: int
    train_size: int
    val_size: int


class TensorImageDataset(Dataset[tuple[Tensor, int]]):
    """In-memory images (N, C, H, W) float in [0, 1] with int labels."""

    def __init__(self, images: Tensor, labels: Sequence[int], indices: Sequence[int] = ()) -> None:
        """Wrap ``images`` and ``labels`` (same length).

        Args:
            images: Float images (N, C, H, W) in [0, 1].
            labels: N int labels.
            indices: Positions of the items in the full data set (for reproducibility).
        """
        self.images = images
        self.labels = [int(v) for v in labels]
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        """Number of items."""
        return len(self.labels)

    def __getitem__(self, key: Key) -> tuple[Tensor, int]:
        """Image ``key`` and its label; a key ``(index, True)`` mirrors it left-right."""
        index, mirrored = _unpack(key)
        image = self.images[index]
        return (image.flip(-1) if mirrored else image), self.labels[index]


class FolderDataset(Dataset[tuple[Tensor, int]]):
    """Images decoded lazily from files: center crop, resize, RGB or grayscale."""

    def __init__(
        self,
        files: Sequence[tuple[Path, int]],
        img_size: int,
        channels: int,
        indices: Sequence[int] = (),
    ) -> None:
        """Wrap (path, label) pairs; images are decoded on access.

        Args:
            files: (image path, label) pairs.
            img_size: Output side in pixels.
            channels: 3 (RGB) or 1 (grayscale ``L``).
            indices: Positions of the items in the full, sorted file list.
        """
        self.files = list(files)
        self.indices = [int(i) for i in indices]
        self.img_size = img_size
        self.channels = channels

    def __len__(self) -> int:
        """Number of items."""
        return len(self.files)

    def __getitem__(self, key: Key) -> tuple[Tensor, int]:
        """Decode, crop, resize and scale image ``key`` to [0, 1] (``(index, True)``: mirrored)."""
        index, mirrored = _unpack(key)
        path, label = self.files[index]
        image = load_image(path, self.img_size, self.channels)
        return (image.flip(-1) if mirrored else image), label


def load_image(path: Path, img_size: int, channels: int) -> Tensor:
    """Load one image file as a float tensor (channels, img_size, img_size) in [0, 1].

    Raises:
        DataError: If the file cannot be read as an image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as src:
            im = src.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side))
            if side != img_size:
                im = im.resize((img_size, img_size), Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"data.path: cannot read image {path}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _field(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = round(n * val_fraction)
    if val_fraction > 0:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _digits(channels: int, num_classes: int, img_size: int) -> tuple[Tensor, list[int]]:
    from sklearn.datasets import load_digits

    if channels not in (1, 3):
        raise DataError(
            f"data.channels: digits are grayscale; use 1 (or 3 to repeat), got {channels}"
        )
    if num_classes not in (0, 10):
        raise DataError(
            f"data.num_classes: digits have 10 classes; set 10 (or 0 for unconditional), "
            f"got {num_classes}"
        )
    if img_size % 8 != 0:
        raise DataError(
            f"image size {img_size} does not fit the 8x8 digits: use a multiple of 8 "
            "(model.img_size_list[0])"
        )
    bunch = load_digits()
    levels = np.floor(np.asarray(bunch.images, dtype=np.float64) * 255.0 / 16.0 + 0.5)
    imgs = torch.from_numpy((levels / 255.0).astype(np.float32)).unsqueeze(1)
    factor = img_size // 8
    if factor > 1:
        imgs = imgs.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    if channels == 3:
        imgs = imgs.expand(-1, 3, -1, -1)
    return imgs.contiguous(), [int(t) for t in bunch.target]


def _synthetic(
    channels: int, num_classes: int, img_size: int, seed: int
) -> tuple[Tensor, list[int]]:
    if channels < 1:
        raise DataError(f"data.channels must be >= 1, got {channels}")
    gen = torch.Generator().manual_seed(seed)
    k = max(num_classes, 1)
    labels = [i % k for i in range(SYNTHETIC_SIZE)]
    coords = torch.linspace(0.0, 1.0, img_size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    imgs = torch.empty(SYNTHETIC_SIZE, channels, img_size, img_size)
    for i, lab in enumerate(labels):
        angle = 2 * np.pi * lab / k
        base = 0.5 + 0.5 * torch.sin(4 * (np.cos(angle) * xx + np.sin(angle) * yy) + lab)
        for c in range(channels):
            noise = 0.1 * torch.randn(img_size, img_size, generator=gen)
            imgs[i, c] = (base * (1 - 0.2 * c) + noise).clamp(0, 1)
    # Exactly representable 8-bit levels, like real image data.
    return (imgs * 255).round() / 255, labels


def _folder(path: Any, channels: int, num_classes: int) -> list[tuple[Path, int]]:
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise DataError(f"data.channels: folder images load as RGB (3) or L (1), got {channels}")
    if path is None or str(path) == "":
        raise DataError(
            "data.path: the folder data set needs data.path (a folder of class folders)"
        )
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data.path: folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"data.path: {root} has no class subfolders; expected {root}/<class>/<image> "
            "(one subfolder per class)"
        )
    if num_classes not in (0, len(classes)):
        raise DataError(
            f"data.num_classes is {num_classes} but {root} has {len(classes)} class folders "
            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); set "
            f"data.num_classes to {len(classes)} (or 0 for unconditional)"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((f, label))
    if not files:
        raise DataError(
            f"data.path: {root} has class folders but no images "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise DataError(f"data.path: cannot read image {f}: {exc}") from None
    return files


def build_datasets(
    data_cfg: Any, img_size: int, *, seed: int = 0
) -> tuple[Dataset[tuple[Tensor, int]], Dataset[tuple[Tensor, int]], DataInfo]:
    """Build the train and validation data sets described by ``data_cfg``.

    Args:
        data_cfg: The ``data`` config section (attributes or keys ``dataset``, ``path``,
            ``channels``, ``num_classes``, ``val_fraction``).
        img_size: Image side the model expects (``model.img_size_list[0]``).
        seed: Seed of the fixed train/validation split (and of the synthetic images).

    Returns:
        ``(train, val, info)``; items are ``(float tensor (C, H, W) in [0, 1], int label)``.

    Raises:
        DataError: On a bad config or unreadable data, with a message naming the field,
            the file or folder, and what was expected.
    """
    dataset = str(_field(data_cfg, "dataset", "digits"))
    channels = int(_field(data_cfg, "channels", 1))
    num_classes = int(_field(data_cfg, "num_classes", 0))
    val_fraction = float(_field(data_cfg, "val_fraction", 0.1))
    if dataset not in DATASETS:
        raise DataError(f"data.dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if not isinstance(img_size, int) or img_size < 1:
        raise DataError(f"image size must be a positive integer, got {img_size!r}")
    if channels < 1:
        raise DataError(f"data.channels must be >= 1, got {channels}")
    if num_classes < 0:
        raise DataError(f"data.num_classes must be >= 0 (0 = unconditional), got {num_classes}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")

    train: Dataset[tuple[Tensor, int]]
    val: Dataset[tuple[Tensor, int]]
    if dataset == "folder":
        files = _folder(_field(data_cfg, "path"), channels, num_classes)
        if len(files) < 2 and val_fraction > 0:
            raise DataError(
                f"data.path: only {len(files)} image(s); need at least 2 to split off "
                "validation (or set data.val_fraction to 0)"
            )
        tr, va = _split(len(files), val_fraction, seed)
        train = FolderDataset([files[i] for i in tr], img_size, channels, tr.tolist())
        val = FolderDataset([files[i] for i in va], img_size, channels, va.tolist())
        return train, val, DataInfo(channels, num_classes, img_size, len(tr), len(va))

    if dataset == "digits":
        imgs, labels = _digits(channels, num_classes, img_size)
    else:
        imgs, labels = _synthetic(channels, num_classes, img_size, seed)
    tr, va = _split(len(labels), val_fraction, seed)
    tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
    train = TensorImageDataset(imgs[tr_t], [labels[i] for i in tr], tr.tolist())
    val = TensorImageDataset(imgs[va_t], [labels[i] for i in va], va.tolist())
    return train, val, DataInfo(channels, num_classes, img_size, len(tr), len(va))


def rank_share(dataset: Dataset[Any], rank: int, world_size: int) -> Dataset[Any]:
    """This rank's share of a validation set: items ``rank, rank + W, rank + 2W, ...``.

    The shares are disjoint and cover the set once (no padding, unlike
    ``DistributedSampler``), so the mean over ranks of each rank's mean is the mean over
    the whole set whenever the shares are equal in size, and within one item's weight
    otherwise. A rank that would get nothing (fewer items than ranks) gets item 0, so
    that every rank takes part in the final reduction.

    Args:
        dataset: The full validation set (sized).
        rank: This process's global rank.
        world_size: Number of ranks; 1 returns ``dataset`` itself.
    """
    if world_size <= 1:
        return dataset
    size = len(dataset)  # type: ignore[arg-type]
    indices = list(range(rank, size, world_size)) or [0]
    return Subset(dataset, indices)
