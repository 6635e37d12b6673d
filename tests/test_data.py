"""Tests of fractalgen.data: digits, folder and synthetic data sets and their errors."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from fractalgen.data import DataError, DataInfo, build_datasets
from versionkit.errors import ConfigError

# Tiny models and images: one intra-op thread (the conftest fixture) is faster.
pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "dataset": "digits",
        "path": None,
        "channels": 1,
        "num_classes": 10,
        "val_fraction": 0.1,
    }
    base.update(kw)
    return SimpleNamespace(**base)


def all_items(ds: Any) -> tuple[torch.Tensor, list[int]]:
    imgs, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(imgs), list(labels)


# ---------------------------------------------------------------------------- digits


def test_digits_split_values_and_labels() -> None:
    train, val, info = build_datasets(cfg(), 8, seed=0)
    assert info == DataInfo(channels=1, num_classes=10, img_size=8, train_size=1617, val_size=180)
    assert len(train) == 1617 and len(val) == 180
    imgs, labels = all_items(train)
    assert imgs.shape == (1617, 1, 8, 8) and imgs.dtype == torch.float32
    assert imgs.min() >= 0 and imgs.max() <= 1
    # 0..16 map to exact 8-bit levels floor(255 v / 16 + 0.5) / 255: 17 of them.
    levels = imgs * 255
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    expected = {int(np.floor(255 * v / 16 + 0.5)) for v in range(17)}
    assert set(levels.round().long().unique().tolist()) <= expected
    assert {0, 128, 255} <= set(levels.round().long().unique().tolist())
    assert set(labels) == set(range(10))


def test_digits_split_is_fixed_by_the_seed_and_disjoint() -> None:
    a_train, a_val, _ = build_datasets(cfg(), 8, seed=0)
    b_train, b_val, _ = build_datasets(cfg(), 8, seed=0)
    c_train, _, _ = build_datasets(cfg(), 8, seed=1)
    assert a_train.indices == b_train.indices and a_val.indices == b_val.indices
    assert a_train.indices != c_train.indices
    assert not set(a_train.indices) & set(a_val.indices)
    assert sorted(a_train.indices + a_val.indices) == list(range(1797))


def test_digits_upsample_by_nearest_neighbour_and_repeat_channels() -> None:
    small, _, _ = build_datasets(cfg(), 8)
    big, _, info = build_datasets(cfg(channels=3), 16)
    assert info.channels == 3 and info.img_size == 16
    x8, _ = small[0]
    x16, label = big[0]
    assert x16.shape == (3, 16, 16)
    torch.testing.assert_close(x16[0, ::2, ::2], x8[0])
    torch.testing.assert_close(x16[0, 1::2, 1::2], x8[0])
    torch.testing.assert_close(x16[1], x16[0])
    assert label == small[0][1]


def test_digits_bad_settings() -> None:
    with pytest.raises(DataError, match="multiple of 8"):
        build_datasets(cfg(), 12)
    with pytest.raises(DataError, match="digits have 10 classes"):
        build_datasets(cfg(num_classes=5), 8)
    with pytest.raises(DataError, match=r"data.channels"):
        build_datasets(cfg(channels=2), 8)
    train, _, info = build_datasets(cfg(num_classes=0), 8)
    assert info.num_classes == 0 and len(train) > 0


@settings(max_examples=15, deadline=None)
@given(fraction=st.floats(0.0, 0.95), seed=st.integers(0, 2**32 - 1))
def test_split_sizes_follow_val_fraction(fraction: float, seed: int) -> None:
    train, val, info = build_datasets(cfg(dataset="synthetic", val_fraction=fraction), 4, seed=seed)
    assert info.train_size + info.val_size == 512
    expected = round(512 * fraction)
    if fraction > 0:
        expected = max(expected, 1)
    assert info.val_size == expected == len(val)
    assert len(train) >= 1


# ------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_quantised() -> None:
    a, _, info = build_datasets(cfg(dataset="synthetic", channels=3, num_classes=4), 16, seed=3)
    b, _, _ = build_datasets(cfg(dataset="synthetic", channels=3, num_classes=4), 16, seed=3)
    c, _, _ = build_datasets(cfg(dataset="synthetic", channels=3, num_classes=4), 16, seed=4)
    xa, la = all_items(a)
    xb, lb = all_items(b)
    xc, _ = all_items(c)
    assert torch.equal(xa, xb) and la == lb
    assert not torch.equal(xa, xc)
    assert xa.shape[1:] == (3, 16, 16) and info.num_classes == 4
    torch.testing.assert_close(xa * 255, (xa * 255).round())
    assert set(la) == {0, 1, 2, 3}


def test_items_collate_into_batches() -> None:
    train, _, _ = build_datasets(cfg(dataset="synthetic", channels=1, num_classes=2), 8)
    x, y = next(iter(DataLoader(train, batch_size=5)))
    assert x.shape == (5, 1, 8, 8) and y.dtype == torch.long and y.shape == (5,)


# ---------------------------------------------------------------------------- folder


def make_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (30, 20)) -> Path:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"img{i}.png")
    return root


def test_folder_labels_crop_and_resize(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 3, "ant": 4})
    train, val, info = build_datasets(
        cfg(dataset="folder", path=str(root), channels=3, num_classes=2, val_fraction=0.25), 8
    )
    assert info == DataInfo(3, 2, 8, 5, 2)
    x, y = all_items(train)
    _, yv = all_items(val)
    assert x.shape == (5, 3, 8, 8) and x.min() >= 0 and x.max() <= 1
    # Sorted class names are the labels: ant -> 0, cat -> 1.
    assert sorted(y + yv) == [0, 0, 0, 0, 1, 1, 1]
    gray, _, ginfo = build_datasets(
        cfg(dataset="folder", path=root, channels=1, num_classes=0, val_fraction=0.0), 20
    )
    g, _ = gray[0]
    assert g.shape == (1, 20, 20) and ginfo.num_classes == 0 and ginfo.val_size == 0


def test_folder_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    arr = np.zeros((10, 30, 3), dtype=np.uint8)  # 30 wide, 10 high
    arr[:, 10:20] = 255  # the central 10x10 square is white
    Image.fromarray(arr).save(root / "a" / "x.png")
    train, _, _ = build_datasets(
        cfg(dataset="folder", path=root, channels=3, num_classes=1, val_fraction=0.0), 10
    )
    x, _ = train[0]
    assert torch.equal(x, torch.ones(3, 10, 10))


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no class subfolders"),
        ("no_images", "no images"),
        ("file", "is not a folder"),
    ],
)
def test_folder_errors(tmp_path: Path, setup: str, message: str) -> None:
    root = tmp_path / "data"
    if setup == "empty":
        root.mkdir()
    elif setup == "no_images":
        (root / "a").mkdir(parents=True)
        (root / "a" / "notes.txt").write_text("hi")
    elif setup == "file":
        root.write_text("x")
    with pytest.raises(DataError, match=message) as info:
        build_datasets(cfg(dataset="folder", path=root, channels=3, num_classes=1), 8)
    assert str(root) in str(info.value)


def test_folder_unreadable_image_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": 2})
    bad = root / "a" / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot read image .*broken.png"):
        build_datasets(cfg(dataset="folder", path=root, channels=3, num_classes=1), 8)


def test_folder_image_broken_after_the_check_is_named_on_load(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": 2})
    train, _, _ = build_datasets(
        cfg(dataset="folder", path=root, channels=3, num_classes=1, val_fraction=0.0), 8
    )
    path, _ = train.files[0]
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=re.escape(f"cannot read image {path}")):
        train[0]


def test_folder_class_count_must_match(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(DataError, match=r"num_classes is 5 but .* has 3 class folders"):
        build_datasets(cfg(dataset="folder", path=root, channels=3, num_classes=5), 8)
    with pytest.raises(DataError, match=r"needs data.path"):
        build_datasets(cfg(dataset="folder", path=None, channels=3, num_classes=3), 8)


def test_common_bad_settings_and_error_type() -> None:
    with pytest.raises(DataError, match=r"data.dataset must be one of digits, folder, synthetic"):
        build_datasets(cfg(dataset="cifar"), 8)
    with pytest.raises(DataError, match="val_fraction"):
        build_datasets(cfg(val_fraction=1.0), 8)
    with pytest.raises(DataError, match="image size"):
        build_datasets(cfg(), 0)
    err = DataError("x")
    assert isinstance(err, ValueError) and isinstance(err, ConfigError) and err.exit_code == 2


def test_mapping_config_also_works() -> None:
    _, _, info = build_datasets(
        {"dataset": "synthetic", "channels": 2, "num_classes": 3, "val_fraction": 0.5}, 4
    )
    assert info == DataInfo(2, 3, 4, 256, 256)


# ------------------------------------------------------------------ random flip


def test_flip_keys_mirror_tensor_and_folder_items(tmp_path: Path) -> None:
    train, _, _ = build_datasets(cfg(), 8, seed=0)
    image, label = train[3]
    mirrored, same_label = train[(3, True)]
    assert same_label == label and torch.equal(mirrored, image.flip(-1))
    assert not torch.equal(mirrored, image)
    assert torch.equal(train[(3, False)][0], image)
    (tmp_path / "a").mkdir()
    ramp = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))  # dark left, light right
    Image.fromarray(ramp, mode="L").save(tmp_path / "a" / "x.png")
    Image.fromarray(ramp, mode="L").save(tmp_path / "a" / "y.png")
    folder, _, _ = build_datasets(cfg(dataset="folder", path=tmp_path, num_classes=0), 8)
    plain, flipped = folder[0][0], folder[(0, True)][0]
    assert plain[0, 0, 0] < plain[0, 0, -1] and torch.equal(flipped, plain.flip(-1))


def test_flipping_sampler_mirrors_half_the_items_as_a_function_of_the_step() -> None:
    from fractalgen.module import StepBatchSampler

    plain = iter(StepBatchSampler(100, 10, seed=3))
    flipping = iter(StepBatchSampler(100, 10, seed=3, flip=True))
    batches = [next(flipping) for _ in range(30)]  # three epochs
    for batch in batches:
        assert [i for i, _ in batch] == next(plain)  # the same images in the same order
    bits = [bit for batch in batches for _, bit in batch]
    assert 0.4 < sum(bits) / len(bits) < 0.6
    # Each epoch draws its own bits: an image is not always mirrored or always not.
    per_image: dict[int, set[bool]] = {}
    for batch in batches:
        for i, bit in batch:
            per_image.setdefault(i, set()).add(bit)
    assert sum(len(v) == 2 for v in per_image.values()) > 50
    # A resumed run (start step 17) and another rank see the same keys as the full stream.
    resumed = iter(StepBatchSampler(100, 10, seed=3, flip=True, start_step=lambda: 17))
    assert next(resumed) == batches[17]
    rank1 = iter(StepBatchSampler(100, 5, seed=3, flip=True, rank=1, world_size=2))
    assert next(rank1) == batches[0][5:]
    # Through a DataLoader the keys reach the data set.
    train, _, _ = build_datasets(cfg(), 8, seed=0)
    sampler = StepBatchSampler(len(train), 4, seed=0, flip=True)
    images, _ = next(iter(DataLoader(train, batch_sampler=sampler)))
    keys = next(iter(StepBatchSampler(len(train), 4, seed=0, flip=True)))
    expected = torch.stack([train[key][0] for key in keys])
    assert torch.equal(images, expected)


# ------------------------------------------------------------ validation shares


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 50), world=st.integers(1, 5))
def test_rank_shares_are_disjoint_and_cover_the_set_once(size: int, world: int) -> None:
    from fractalgen.data import TensorImageDataset, rank_share

    data = TensorImageDataset(torch.zeros(size, 1, 2, 2), list(range(size)))
    shares = [[item[1] for item in rank_share(data, r, world)] for r in range(world)]  # type: ignore[attr-defined]
    if world == 1:
        assert rank_share(data, 0, 1) is data
    if size >= world:
        assert sorted(i for share in shares for i in share) == list(range(size))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    else:  # more ranks than items: every rank still gets something to reduce
        assert all(shares)
