"""Tests of fractalgen.model: shapes, losses, parameter counts, sampling, caches, errors."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fractalgen.model import FACTORIES, FractalGen, ModelError, build_model
from fractalgen.model.ar import ARLevel
from fractalgen.model.blocks import apply_rope, rope_2d_table, swiglu_hidden_dim
from fractalgen.model.common import patchify, unpatchify
from fractalgen.model.mar import MARLevel, neighbour_index, truncated_normal_mask_counts
from fractalgen.model.pixel import PixelHead
from versionkit.errors import ConfigError

LN256 = math.log(256)


# Tiny models and images: one intra-op thread (the conftest fixture) is faster.
pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).resolve().parent.parent

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny(gen: str = "mar", channels: int = 3, classes: int = 10, **kw: Any) -> FractalGen:
    """The spec's tiny16 configuration (or a variant)."""
    args: dict[str, Any] = {
        "img_size_list": (16, 4, 1),
        "embed_dim_list": (64, 32, 16),
        "num_blocks_list": (2, 1, 1),
        "num_heads_list": (4, 2, 2),
        "generator_type_list": (gen, gen),
        "in_channels": channels,
        "num_classes": classes,
    }
    args.update(kw)
    return FractalGen(**args)


def small(gen: str = "mar", channels: int = 3, classes: int = 10, **kw: Any) -> FractalGen:
    """A cheaper variant for sampling tests: 2x2 patches of 4x4 pixels."""
    return tiny(gen, channels, classes, img_size_list=(8, 4, 1), **kw)


def images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g).float() / 255


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("gen", ["ar", "mar"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("classes", [0, 10])
def test_loss_at_init_is_near_ln256_and_backprops(gen: str, channels: int, classes: int) -> None:
    torch.manual_seed(0)
    model = tiny(gen, channels, classes)
    x = images(4, channels, 16)
    labels = torch.tensor([0, 3, 5, 9]) if classes else None
    loss = model(x, labels)
    assert loss.shape == ()
    assert abs(loss.item() - LN256) < 0.1
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert abs(model(x, labels).item() - LN256) < 0.1
        bpd = model.nll_bpd(x)
    assert abs(bpd.item() - 8.0) < 0.15


def test_guiding_pixel_adds_its_own_pixel_loss() -> None:
    torch.manual_seed(0)
    model = tiny("mar", 3, 10, guiding_pixel=True)
    assert model.levels[0].guiding_head is None
    assert model.levels[1].guiding_head is not None
    loss = model(images(2, 3, 16), torch.tensor([1, 2]))
    assert abs(loss.item() - 2 * LN256) < 0.2
    out = model.sample(2, torch.tensor([1, 2]), num_iter_list=(2, 4), cfg=2.0)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.uint8


def test_pixel_head_weights_first_channel_in_training_only() -> None:
    torch.manual_seed(0)
    head = PixelHead(cond_dim=8, width=16, depth=1, num_heads=2, in_channels=3, r_weight=5.0)
    cond = torch.randn(6, 1, 8)
    target = torch.randint(0, 256, (6, 3)).float() / 255
    values = (target * 255).round().long()
    with torch.no_grad():
        logits = head.logits(cond[:, 0], values[:, :2])
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), values, reduction="none")
        per_channel = ce.mean(0)
        head.train()
        gen = torch.Generator().manual_seed(0)
        train_loss = head(target, cond, gen)
        head.eval()
        eval_loss = head(target, cond, torch.Generator().manual_seed(0))
    expected_train = (5 * per_channel[0] + per_channel[1] + per_channel[2]) / 7
    torch.testing.assert_close(train_loss, expected_train)
    torch.testing.assert_close(eval_loss, per_channel.mean())


def test_nll_bpd_is_reproducible_with_a_generator_and_keeps_the_mode() -> None:
    torch.manual_seed(0)
    model = tiny("mar", 1, 10)
    x = images(4, 1, 16)
    a = model.nll_bpd(x, generator=torch.Generator().manual_seed(3))
    b = model.nll_bpd(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert model.training  # restored


def test_label_drop_uses_the_null_class() -> None:
    model = tiny("mar", 1, 10, label_drop_prob=1.0)
    labels = torch.tensor([1, 2, 3])
    dropped = model._class_cond(labels, 3, drop=True, generator=None)
    torch.testing.assert_close(dropped, model.fake_latent.expand(3, -1))
    kept = model._class_cond(labels, 3, drop=False, generator=None)
    assert model.class_emb is not None
    torch.testing.assert_close(kept, model.class_emb(labels))


# ----------------------------------------------------------------------- structure


def _lin(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _vit_block(d: int) -> int:
    return 2 * d + _lin(d, 3 * d) + _lin(d, d) + 2 * d + _lin(d, 4 * d) + _lin(4 * d, d)


def _llama_block(d: int) -> int:
    hidden = int(2 * 4 * d / 3)
    hidden = hidden if hidden % 256 == 0 else hidden + 256 - hidden % 256
    return d + 3 * d * d + d * d + 3 * d * hidden + d


def _pixelloss(c: int, w: int, depth: int) -> int:
    return _lin(c, w) + 3 * 256 * w + 2 * w + depth * _vit_block(w) + 2 * w + 3 * 256


def reference_count(
    sizes: tuple[int, ...],
    dims: tuple[int, ...],
    blocks: tuple[int, ...],
    types: tuple[str, ...],
    num_conds: int,
    guiding: bool,
) -> int:
    """Parameter count of the reference's modules, written from its source."""
    total = 1000 * dims[0] + dims[0]  # class embedding + fake latent
    for i, t in enumerate(types):
        seq, p = (sizes[i] // sizes[i + 1]) ** 2, sizes[i + 1]
        cd, d = (dims[i - 1] if i > 0 else dims[0]), dims[i]
        if t == "mar":
            gp = guiding and i > 0
            total += d + _lin(3 * p * p, d) + 2 * d + _lin(cd, d) + (_lin(3, d) if gp else 0)
            total += (seq + num_conds + gp) * d + blocks[i] * _vit_block(d) + 2 * d
            total += _pixelloss(cd, 128, 3) if gp else 0
        else:
            total += _lin(3 * p * p, d) + 2 * d + (seq + 1) * d + _lin(cd, d)
            total += blocks[i] * _llama_block(d) + 2 * d
    return total + _pixelloss(dims[-2], dims[-1], blocks[-1])


FACTORY_SPECS = {
    "fractalar_in64": ((64, 4, 1), (1024, 512, 128), (32, 8, 3), ("ar", "ar"), 1, False),
    "fractalmar_in64": ((64, 4, 1), (1024, 512, 128), (32, 8, 3), ("mar", "mar"), 5, False),
    "fractalmar_base_in256": (
        (256, 16, 4, 1),
        (768, 384, 192, 64),
        (24, 6, 3, 1),
        ("mar",) * 3,
        5,
        True,
    ),
    "fractalmar_large_in256": (
        (256, 16, 4, 1),
        (1024, 512, 256, 64),
        (32, 8, 4, 1),
        ("mar",) * 3,
        5,
        True,
    ),
    "fractalmar_huge_in256": (
        (256, 16, 4, 1),
        (1280, 640, 320, 64),
        (40, 10, 5, 1),
        ("mar",) * 3,
        5,
        True,
    ),
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(FACTORY_SPECS))
def test_factory_parameter_counts_match_the_reference_structure(name: str) -> None:
    with torch.device("meta"):
        model = FACTORIES[name]()
    assert count(model) == reference_count(*FACTORY_SPECS[name])


def test_factory_parameter_counts_match_the_spec() -> None:
    with torch.device("meta"):
        assert f"{count(FACTORIES['fractalmar_in64']()) / 1e6:.2f}M" == "432.00M"
        assert f"{count(FACTORIES['fractalmar_base_in256']()) / 1e6:.2f}M" == "186.30M"


def test_digits_fidelity_config_matches_the_reference_count() -> None:
    def build(channels: int) -> FractalGen:
        with torch.device("meta"):
            return FractalGen(
                img_size_list=(8, 2, 1),
                embed_dim_list=(64, 32, 16),
                num_blocks_list=(2, 1, 1),
                num_heads_list=(4, 2, 2),
                generator_type_list=("mar", "mar"),
                in_channels=channels,
                num_classes=10,
                num_conds=5,
            )

    assert count(build(3)) == 139_616  # the spec's figure for the reference on 3 channels
    assert count(build(1)) == 130_336


@pytest.mark.parametrize("types", [("ar", "mar"), ("mar", "ar")])
@pytest.mark.parametrize("num_conds", [None, 1])
def test_mixed_levels_and_condition_counts(types: tuple[str, str], num_conds: int | None) -> None:
    torch.manual_seed(0)
    model = small(types[0], 1, 3, generator_type_list=types, num_conds=num_conds)
    x = images(3, 1, 8)
    loss = model(x, torch.tensor([0, 1, 2]))
    assert abs(loss.item() - LN256) < 0.1
    loss.backward()
    out = model.sample(2, torch.tensor([0, 2]), num_iter_list=(2, 4), cfg=1.5)
    assert out.shape == (2, 1, 8, 8)


def test_factory_defaults() -> None:
    with torch.device("meta"):
        ar = FACTORIES["fractalar_in64"]()
        mar = FACTORIES["fractalmar_in64"]()
        base = FACTORIES["fractalmar_base_in256"](num_classes=0, in_channels=1)
    assert ar.in_channels == 3 and ar.num_classes == 1000
    assert all(isinstance(lv, ARLevel) for lv in ar.levels)
    assert [lv.num_conds for lv in mar.levels] == [5, 5]
    assert [lv.guiding_pixel for lv in base.levels] == [False, True, True]
    assert base.class_emb is None and base.in_channels == 1


def test_initialisation_follows_the_reference() -> None:
    torch.manual_seed(0)
    model = tiny("mar", 3, 1000, embed_dim_list=(256, 128, 64))
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert p.abs().sum() == 0, name
    for t in (model.class_emb.weight, model.levels[0].pos_embed, model.pixel_head.codebook):
        assert abs(t.std().item() - 0.02) < 0.002
    w = model.levels[0].blocks[0].mlp.fc1.weight  # xavier-uniform: U(-a, a), a = sqrt(6/(in+out))
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert torch.equal(model.levels[0].norm.weight, torch.ones(256))


def test_swiglu_hidden_sizes_are_rounded_to_256() -> None:
    assert swiglu_hidden_dim(1024) == 2816
    assert swiglu_hidden_dim(512) == 1536
    assert swiglu_hidden_dim(64) == 256


def test_rope_matches_the_reference_table() -> None:
    table = rope_2d_table(4, 16, num_prefix=1)
    assert table.shape == (17, 8, 2)
    # The condition token's entry is all zeros, as in the reference: its q and k vanish.
    assert table[0].abs().sum() == 0
    x = torch.randn(2, 3, 17, 16)
    y = apply_rope(x, table)
    assert y[:, :, 0].abs().sum() == 0
    # Patches are rotated (norm-preserving): rows in the first 4 pairs, columns in the last 4.
    torch.testing.assert_close(y[:, :, 1:].norm(dim=-1), x[:, :, 1:].norm(dim=-1))
    torch.testing.assert_close(y[:, :, 1], x[:, :, 1])  # grid cell (0, 0): angle 0
    cell = 1 + 1 * 4 + 2  # grid cell (row 1, column 2)
    freqs = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    angles = torch.cat([1 * freqs, 2 * freqs])
    torch.testing.assert_close(table[cell, :, 0], torch.cos(angles))
    torch.testing.assert_close(table[cell, :, 1], torch.sin(angles))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    grid=st.integers(1, 4),
    p=st.integers(1, 4),
)
def test_patchify_round_trips(n: int, c: int, grid: int, p: int) -> None:
    x = torch.randn(n, c, grid * p, grid * p)
    patches = patchify(x, p)
    assert patches.shape == (n, grid * grid, c * p * p)
    torch.testing.assert_close(unpatchify(patches, p, c), x)
    # Patch 1 (row 0, column 1) is the block right of patch 0.
    if grid > 1:
        torch.testing.assert_close(patches[:, 1].reshape(n, c, p, p), x[:, :, :p, p : 2 * p])


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 64), seq=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_training_mask_counts_lie_in_one_to_seq_len(batch: int, seq: int, seed: int) -> None:
    counts = truncated_normal_mask_counts(batch, seq, torch.Generator().manual_seed(seed))
    assert len(counts) == batch
    assert all(1 <= c <= seq for c in counts)


def test_training_mask_ratio_follows_the_truncated_normal() -> None:
    counts = truncated_normal_mask_counts(20000, 1000, torch.Generator().manual_seed(0))
    ratios = torch.tensor(counts, dtype=torch.float64) / 1000
    # Mean of N(1, 0.25) cut to [0, 1]: 1 - 0.25 * phi(0) / (Phi(0) - Phi(-4)) = 0.80052
    assert abs(ratios.mean().item() - 0.80052) < 0.005
    assert ratios.min().item() > 0.0 and ratios.max().item() <= 1.0


def test_neighbour_index_is_top_right_bottom_left_with_borders() -> None:
    idx = neighbour_index(3)
    # Centre patch 4 of a 3x3 grid: itself, top 1, right 5, bottom 7, left 3.
    assert idx[4].tolist() == [4, 1, 5, 7, 3]
    # Corner 0: no top, no left (9 = the zero row).
    assert idx[0].tolist() == [0, 9, 1, 3, 9]
    assert idx[8].tolist() == [8, 5, 9, 9, 7]


def test_mar_sends_only_masked_patches_down_with_five_conditions() -> None:
    torch.manual_seed(0)
    level = MARLevel(
        seq_len=16,
        patch_size=2,
        in_channels=1,
        cond_dim=8,
        embed_dim=16,
        num_blocks=1,
        num_heads=2,
    ).eval()
    x = images(3, 1, 8)
    cond = torch.randn(3, 5, 8)
    child, conds, aux = level(x, cond, torch.Generator().manual_seed(0))
    assert aux is None
    m = child.shape[0]
    assert m % 3 == 0 and 3 <= m <= 48  # one uniform count for the whole batch
    assert conds.shape == (m, 5, 16)
    all_patches = patchify(x, 2).reshape(-1, 4)
    for patch in child.reshape(m, 4):
        assert (all_patches == patch).all(dim=1).any()
    level.train()
    child, conds, _ = level(x, cond, torch.Generator().manual_seed(1))
    assert conds.shape == (child.shape[0], 5, 16)


def test_mar_evaluation_masks_a_uniform_count_from_one_to_seq_len() -> None:
    torch.manual_seed(0)
    level = MARLevel(
        seq_len=4,
        patch_size=2,
        in_channels=1,
        cond_dim=8,
        embed_dim=16,
        num_blocks=1,
        num_heads=2,
    ).eval()
    x, cond = images(2, 1, 4), torch.randn(2, 5, 8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ks = [level(x, cond, gen)[0].shape[0] // 2 for _ in range(200)]
    assert set(ks) == {1, 2, 3, 4}
    assert all(25 <= ks.count(k) <= 75 for k in range(1, 5))


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_mar_sampling_follows_the_cosine_schedule(schedule: str) -> None:
    torch.manual_seed(0)
    level = MARLevel(
        seq_len=16,
        patch_size=1,
        in_channels=1,
        cond_dim=8,
        embed_dim=16,
        num_blocks=1,
        num_heads=2,
    ).eval()
    calls: list[tuple[int, float]] = []

    def next_level(c: torch.Tensor, cfg: float, temperature: float) -> torch.Tensor:
        calls.append((c.shape[0], cfg))
        return torch.full((c.shape[0] // 2, 1, 1, 1), len(calls) / 255)

    cond = torch.randn(6, 5, 8)  # 3 images, doubled for guidance
    with torch.no_grad():
        out = level.sample(
            cond,
            num_iter=4,
            cfg=3.0,
            cfg_schedule=schedule,
            guided=True,
            temperature=1.0,
            generator=None,
            next_level=next_level,
        )
    # Masked counts after each step: floor(16 cos(pi/2 (i+1)/4)) = 14, 11, 6, then 0.
    assert [n // 6 for n, _ in calls] == [2, 3, 5, 6]
    expected = [1 + 2 * (16 - m) / 16 for m in (14, 11, 6, 1)]
    assert [c for _, c in calls] == (expected if schedule == "linear" else [3.0] * 4)
    # Every patch was written exactly once, by one of the four steps.
    counts = torch.bincount((out.flatten() * 255).round().long(), minlength=5)
    assert counts.tolist() == [0, 6, 9, 15, 18]


def test_ar_sampling_ramps_guidance_linearly_one_patch_per_step() -> None:
    torch.manual_seed(0)
    level = ARLevel(
        seq_len=4,
        patch_size=1,
        in_channels=1,
        cond_dim=8,
        embed_dim=16,
        num_blocks=1,
        num_heads=2,
    ).eval()
    calls: list[tuple[int, float]] = []

    def next_level(c: torch.Tensor, cfg: float, temperature: float) -> torch.Tensor:
        calls.append((c.shape[0], cfg))
        return torch.zeros(c.shape[0] // 2, 1, 1, 1)

    with torch.no_grad():
        level.sample(
            torch.randn(4, 1, 8),
            num_iter=99,
            cfg=5.0,
            cfg_schedule="linear",
            guided=True,
            temperature=1.0,
            generator=None,
            next_level=next_level,
        )
    assert calls == [(4, 1 + 4 * (i + 1) / 4) for i in range(4)]


@pytest.mark.parametrize("kind", ["ar", "mar"])
def test_opening_steps_hand_their_temperature_down_then_the_temperature(kind: str) -> None:
    torch.manual_seed(0)
    cls = ARLevel if kind == "ar" else MARLevel
    level = cls(
        seq_len=4, patch_size=1, in_channels=1, cond_dim=8, embed_dim=16, num_blocks=1, num_heads=2
    ).eval()
    temps: list[float] = []

    def next_level(c: torch.Tensor, cfg: float, temperature: float) -> torch.Tensor:
        temps.append(temperature)
        return torch.zeros(c.shape[0], 1, 1, 1)

    for opening in (0, 1, 3, 9):
        temps.clear()
        with torch.no_grad():
            level.sample(
                torch.randn(2, 5, 8),
                num_iter=4,
                cfg=1.0,
                cfg_schedule="constant",
                guided=False,
                temperature=0.5,
                generator=None,
                next_level=next_level,
                opening_steps=opening,
                opening_temperature=1.25,
            )
        # One call per step (4 patches; MAR: 4 unmasking steps): the first `opening` open.
        assert temps == [1.25 if step < opening else 0.5 for step in range(4)], opening


def test_opening_temperature_reaches_only_the_top_levels_first_patches() -> None:
    torch.manual_seed(0)
    model = small("ar", 1, 10)  # AR/AR: 4 top patches of 4x4 pixels, drawn pixel by pixel
    seen: list[float] = []
    head_sample = model.pixel_head.sample

    def spy(cond: torch.Tensor, **kw: Any) -> torch.Tensor:
        seen.append(kw["temperature"])
        return head_sample(cond, **kw)

    model.pixel_head.sample = spy  # type: ignore[method-assign]
    model.sample(2, None, num_iter_list=(4, 4), temperature=0.5, opening_steps=2,
                 opening_temperature=2.0)
    top = model.levels[0].seq_len
    per_patch = len(seen) // top
    assert per_patch > 1
    assert seen == [2.0] * (2 * per_patch) + [0.5] * ((top - 2) * per_patch)


@pytest.mark.parametrize("kind", ["ar", "mar"])
def test_opening_changes_nothing_when_off_or_at_the_same_temperature(kind: str) -> None:
    torch.manual_seed(0)
    model = small(kind, 1, 10)
    labels = torch.tensor([3, 7])

    def draw(**kw: Any) -> torch.Tensor:
        g = torch.Generator().manual_seed(5)
        return model.sample(2, labels, num_iter_list=(4, 4), cfg=2.0, temperature=0.8,
                            generator=g, **kw)

    plain = draw()
    assert torch.equal(draw(opening_steps=0, opening_temperature=3.0), plain)
    assert torch.equal(draw(opening_steps=99, opening_temperature=0.8), plain)
    assert not torch.equal(draw(opening_steps=2, opening_temperature=50.0), plain)


def test_mar_neighbour_conditions_are_zero_at_borders() -> None:
    torch.manual_seed(0)
    level = MARLevel(
        seq_len=4,
        patch_size=1,
        in_channels=1,
        cond_dim=8,
        embed_dim=16,
        num_blocks=1,
        num_heads=2,
    )
    out = torch.randn(1, 4, 16)
    conds = level.gather_conds(out, torch.zeros(4, dtype=torch.long), torch.arange(4))
    # Patch 0 (top-left of 2x2): own, top=0, right=patch 1, bottom=patch 2, left=0.
    torch.testing.assert_close(conds[0, 0], out[0, 0])
    assert conds[0, 1].abs().sum() == 0 and conds[0, 4].abs().sum() == 0
    torch.testing.assert_close(conds[0, 2], out[0, 1])
    torch.testing.assert_close(conds[0, 3], out[0, 2])


def test_ar_level_is_causal() -> None:
    torch.manual_seed(0)
    level = ARLevel(
        seq_len=16,
        patch_size=2,
        in_channels=3,
        cond_dim=8,
        embed_dim=16,
        num_blocks=2,
        num_heads=2,
    ).eval()
    x = images(2, 3, 8)
    cond = torch.randn(2, 1, 8)
    _, c1, _ = level(x, cond)
    y = x.clone()
    y[:, :, 2:4, 4:6] = 1 - y[:, :, 2:4, 4:6]  # patch 6 (row 1, column 2)
    _, c2, _ = level(y, cond)
    c1, c2 = c1.view(2, 16, -1), c2.view(2, 16, -1)
    torch.testing.assert_close(c1[:, :7], c2[:, :7])  # conditions of patches 0..6
    assert not torch.allclose(c1[:, 7:], c2[:, 7:])


def test_model_package_imports_no_lightning_and_never_calls_cuda() -> None:
    code = (
        "import sys, fractalgen.model, fractalgen.data; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for path in (ROOT / "fractalgen" / "model").glob("*.py"):
        assert ".cuda(" not in path.read_text(), path


# ------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("gen", ["ar", "mar"])
@pytest.mark.parametrize("channels", [1, 3])
def test_sampling_is_deterministic_under_a_seed(gen: str, channels: int) -> None:
    torch.manual_seed(0)
    model = small(gen, channels, 10)
    labels = torch.tensor([0, 1, 2])

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return model.sample(3, labels, num_iter_list=(4, 16), generator=g)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (3, channels, 8, 8) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # An untrained model's pixels are spread over the whole 8-bit range.
    assert a.float().std() > 30


@pytest.mark.parametrize(("cfg", "order"), [(1.0, "raster"), (3.0, "raster"), (3.0, "center")])
def test_ar_sampling_with_kv_cache_equals_sampling_without(cfg: float, order: str) -> None:
    torch.manual_seed(0)
    # small(): a 2x2 top grid, where both orders are raster; tiny(): 4x4.
    model = small("ar", 3, 10) if order == "raster" else tiny("ar", 3, 10, ar_order=order)
    labels = torch.tensor([4, 7])

    def run(cache: bool) -> torch.Tensor:
        for level in model.levels:
            assert isinstance(level, ARLevel)
            level.use_kv_cache = cache
        g = torch.Generator().manual_seed(5)
        return model.sample(2, labels, num_iter_list=(4, 16), cfg=cfg, generator=g)

    assert torch.equal(run(True), run(False))


def test_unconditional_sampling_and_cfg_and_temperature_paths() -> None:
    torch.manual_seed(0)
    model = small("mar", 3, 10)
    g = torch.Generator().manual_seed(0)
    uncond = model.sample(2, None, num_iter_list=(4, 16), generator=g)
    assert uncond.shape == (2, 3, 8, 8)
    labels = torch.tensor([1, 2])
    out = {}
    for cfg in (1.0, 4.0):
        for temp in (0.5, 1.5):
            g = torch.Generator().manual_seed(0)
            out[cfg, temp] = model.sample(
                2,
                labels,
                num_iter_list=(4, 16),
                cfg=cfg,
                temperature=temp,
                cfg_schedule="linear",
                generator=g,
            )
    assert not torch.equal(out[1.0, 0.5], out[4.0, 0.5])
    assert not torch.equal(out[1.0, 0.5], out[1.0, 1.5])
    g = torch.Generator().manual_seed(0)
    constant = model.sample(
        2, labels, num_iter_list=(4, 16), cfg=4.0, cfg_schedule="constant", generator=g
    )
    assert constant.shape == (2, 3, 8, 8)


def test_temperature_divides_the_logits_of_every_sampled_pixel() -> None:
    """Pixel logits fixed to a Gaussian bump (centre 128, sd 16 levels): dividing them by
    T gives values with sd 16·sqrt(T) around 128 (multiplying would give 16/sqrt(T))."""
    torch.manual_seed(0)
    model = small("mar", 3, 10)
    with torch.no_grad():
        model.pixel_head.codebook.zero_()
        levels = torch.arange(256, dtype=torch.float32)
        model.pixel_head.logit_bias.copy_(-0.5 * ((levels - 128) / 16) ** 2)
    for temperature in (0.25, 1.0, 4.0):
        g = torch.Generator().manual_seed(0)
        values = model.sample(
            16, None, num_iter_list=(2, 4), temperature=temperature, generator=g
        ).float()
        expected = 16 * temperature**0.5
        assert abs(float(values.mean()) - 128) < 0.1 * expected
        assert abs(float(values.std()) - expected) < 0.1 * expected, temperature


def test_pixel_head_temperature_divides_logits_and_cfg_one_is_conditional() -> None:
    torch.manual_seed(0)
    head = PixelHead(cond_dim=8, width=16, depth=1, num_heads=2, in_channels=3).eval()
    with torch.no_grad():
        head.logit_bias.normal_(std=3.0)  # a peaked distribution
        cond = torch.randn(5, 1, 8)
        cold = head.sample(
            cond,
            cfg=1.0,
            guided=False,
            temperature=1e-4,
            generator=torch.Generator().manual_seed(0),
        )
        # Near-zero temperature = greedy decoding, channel by channel.
        values = torch.zeros(5, 0, dtype=torch.long)
        for i in range(3):
            nxt = head.logits(cond[:, 0], values)[:, i].argmax(-1, keepdim=True)
            values = torch.cat([values, nxt], dim=1)
        assert torch.equal((cold * 255).round().long(), values)
        both = torch.cat([cond, torch.randn(5, 1, 8)])
        guided = head.sample(
            both, cfg=1.0, guided=True, temperature=1.0, generator=torch.Generator().manual_seed(2)
        )
        plain = head.sample(
            cond, cfg=1.0, guided=False, temperature=1.0, generator=torch.Generator().manual_seed(2)
        )
        assert torch.equal(guided, plain)


def test_sample_restores_training_mode() -> None:
    model = tiny("mar", 1, 0)
    model.train()
    model.sample(1, num_iter_list=(2, 2))
    assert model.training


# ------------------------------------------------------------------------ training


@pytest.mark.slow
def test_tiny_model_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = FractalGen(
        img_size_list=(8, 2, 1),
        embed_dim_list=(32, 32, 16),
        num_blocks_list=(1, 1, 1),
        num_heads_list=(2, 2, 2),
        generator_type_list=("mar", "mar"),
        in_channels=1,
        num_classes=2,
        attn_dropout=0.0,
        proj_dropout=0.0,
        label_drop_prob=0.0,
    )
    x = images(4, 1, 8)
    x[:, :, :4] = 0.0  # structure to learn
    labels = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        start = model(x, labels).item()
    model.train()
    for _ in range(150):
        loss = model(x, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        end = sum(model(x, labels).item() for _ in range(4)) / 4
    assert end < 0.6 * start, (start, end)


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    def grads(ckpt: bool, gen: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = tiny(gen, 3, 10, grad_checkpointing=ckpt, attn_dropout=0.0, proj_dropout=0.0)
        torch.manual_seed(1)
        loss = model(images(2, 3, 16), torch.tensor([1, 2]))
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for gen in ("ar", "mar"):
        for a, b in zip(grads(False, gen), grads(True, gen), strict=True):
            torch.testing.assert_close(a, b)


# -------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"img_size_list": (16, 5, 1)}, "must be smaller than and divide"),
        ({"img_size_list": (16, 4, 2)}, "must end with 1"),
        ({"generator_type_list": ("mar", "xyz")}, "'ar' or 'mar'"),
        (
            {"generator_type_list": ("mar", "mar", "ar")},
            "generator_type_list needs one entry per level",
        ),
        ({"embed_dim_list": (64, 32)}, "embed_dim_list needs one entry per level"),
        ({"num_heads_list": (5, 2, 2)}, r"num_heads_list\[0\]=5 must divide"),
        ({"generator_type_list": ("ar", "ar"), "num_heads_list": (32, 2, 2)}, "multiple of 4"),
        ({"num_classes": -1}, "num_classes"),
        ({"proj_dropout": 1.0}, "proj_dropout: Input should be less than 1"),
        ({"r_weight": 0.0}, "r_weight: Input should be greater than 0"),
        ({"num_conds": 0}, "num_conds: Input should be greater than 0"),
    ],
)
def test_bad_configs_raise_clear_value_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny(**change)


def test_bad_inputs_raise_clear_value_errors() -> None:
    model = tiny("mar", 3, 0)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(ModelError, match=r"labels must have shape \(2,\)"):
        tiny("mar", 3, 10)(torch.rand(2, 3, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_iter_list needs 2"):
        model.sample(1, num_iter_list=(4,))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, num_iter_list=(4, 4), temperature=0)
    with pytest.raises(ValueError, match="opening_temperature must be > 0"):
        model.sample(1, num_iter_list=(4, 4), opening_steps=1, opening_temperature=0)
    for steps in (-1, True, 1.5):
        with pytest.raises(ValueError, match="opening_steps must be an integer >= 0"):
            model.sample(1, num_iter_list=(4, 4), opening_steps=steps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cfg_schedule"):
        model.sample(1, num_iter_list=(4, 4), cfg_schedule="cosine")
    conditional = tiny("mar", 3, 10)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.9"):
        conditional.sample(2, torch.tensor([0, 10]), num_iter_list=(4, 4))
    with pytest.raises(ValueError, match="shape"):
        conditional.sample(2, torch.tensor([0]), num_iter_list=(4, 4))


def test_build_model_from_the_config_section() -> None:
    cfg = {
        "img_size_list": [8, 2, 1],
        "embed_dim_list": [64, 32, 16],
        "num_blocks_list": [2, 1, 1],
        "num_heads_list": [4, 2, 2],
        "generator_type_list": ["mar", "mar"],
        "num_conds": None,
        "guiding_pixel": False,
        "label_drop_prob": 0.1,
        "attn_dropout": 0.1,
        "proj_dropout": 0.1,
        "r_weight": 5.0,
        "grad_checkpointing": False,
    }
    model = build_model(cfg, in_channels=1, num_classes=10)
    assert model.img_size_list == (8, 2, 1) and model.in_channels == 1
    assert model.config["num_classes"] == 10
    with pytest.raises(ValueError, match=r"unknown model config keys.*'depth'"):
        build_model({**cfg, "depth": 3}, in_channels=1, num_classes=10)
    with pytest.raises(ValueError, match="invalid model config: img_size_list"):
        build_model({**cfg, "img_size_list": [8, 3, 1]}, in_channels=1, num_classes=10)
    err = ModelError("x")
    assert isinstance(err, ValueError) and isinstance(err, ConfigError) and err.exit_code == 2


# -------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gen", ["ar", "mar"])
def test_runs_on_every_device_with_autocast(device: str, gen: str) -> None:
    torch.manual_seed(0)
    dev = torch.device(device)
    model = tiny(gen, 3, 10, guiding_pixel=True).to(dev)
    x = images(2, 3, 16).to(dev)
    labels = torch.tensor([1, 2], device=dev)
    # bf16 autocast works on CPU too: exercise it on every device.
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
        loss = model(x, labels)
        assert torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads)
        g = torch.Generator(device=dev).manual_seed(0)
        out = model.sample(2, labels, num_iter_list=(2, 4), cfg=2.0, generator=g)
        bpd = model.nll_bpd(x, generator=torch.Generator(device=dev).manual_seed(0))
    assert torch.isfinite(loss) and torch.isfinite(bpd)
    assert out.device.type == dev.type and out.dtype == torch.uint8


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("gen", ["ar", "mar"])
def test_sampling_works_with_non_fp32_weights(gen: str, dtype: torch.dtype) -> None:
    """Patches and guiding pixels are made in the weights' dtype, not always fp32."""
    torch.manual_seed(0)
    model = tiny(gen, 3, 10, img_size_list=(8, 2, 1), guiding_pixel=True).to(dtype)
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 2])
    out = model.sample(2, labels, num_iter_list=(2, 2), cfg=2.0, generator=g)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 8, 8)
    uncond = model.sample(2, None, num_iter_list=(2, 2), generator=g)
    assert uncond.dtype == torch.uint8 and uncond.shape == (2, 3, 8, 8)
    # The same draws as the fp32 model: the weights' dtype changes the logits by its
    # rounding only, so almost every sampled value is the same (an unconverted patch or
    # a pixel decoded from the wrong dtype would change most of them).
    torch.manual_seed(0)
    reference = tiny(gen, 3, 10, img_size_list=(8, 2, 1), guiding_pixel=True)
    expected = reference.sample(
        2, labels, num_iter_list=(2, 2), cfg=2.0, generator=torch.Generator().manual_seed(0)
    )
    same = (out == expected).float().mean().item()
    assert same > (0.95 if dtype == torch.float64 else 0.2), same
