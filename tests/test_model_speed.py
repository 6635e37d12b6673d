"""The model stays the same model while it gets faster, and the reference's CFG filter.

``test_fixed_seed_model_keeps_its_losses_and_samples`` pins the loss, gradients, NLL and
samples of three fixed-seed models to the values the code gave before any speed work
(captured from main): fusing, caching and reordering must not change what is computed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
import torch

import fractalgen.model.pixel as pixel_mod
from fractalgen.model import FractalGen, ModelError
from fractalgen.model.pixel import guide_logits

pytestmark = pytest.mark.usefixtures("one_thread")

_CASES: dict[str, dict[str, Any]] = {
    "mar3": {
        "img_size_list": (16, 4, 1),
        "embed_dim_list": (64, 32, 16),
        "num_blocks_list": (2, 1, 1),
        "num_heads_list": (4, 2, 2),
        "generator_type_list": ("mar", "mar"),
        "in_channels": 3,
        "num_classes": 10,
    },
    "ar3": {
        "img_size_list": (16, 4, 1),
        "embed_dim_list": (64, 32, 16),
        "num_blocks_list": (2, 1, 1),
        "num_heads_list": (4, 2, 2),
        "generator_type_list": ("ar", "ar"),
        "in_channels": 3,
        "num_classes": 10,
    },
    # Three levels, mixed types, one channel, guiding pixel on the level below the top.
    "gp1": {
        "img_size_list": (8, 4, 2, 1),
        "embed_dim_list": (32, 32, 16, 16),
        "num_blocks_list": (1, 1, 1, 1),
        "num_heads_list": (2, 2, 2, 2),
        "generator_type_list": ("mar", "ar", "mar"),
        "in_channels": 1,
        "num_classes": 10,
        "guiding_pixel": True,
    },
}

# Captured from main (commit 3f6d7f6) before the speed work; samples as sha256 prefixes.
_PINNED: dict[str, dict[str, Any]] = {
    "mar3": {
        "loss": 5.545775890350342,
        "grad_abs_sum": 13.002686181201842,
        "nll": 8.002978324890137,
        "cond": "1d2ffe1f30252425",
        "cfg": "43b00de545c39ab4",
        "uncond": "55d88d7e0d72c89f",
    },
    "ar3": {
        "loss": 5.5497355461120605,
        "grad_abs_sum": 11.052611536680946,
        "nll": 8.003994941711426,
        "cond": "a909747ec5d5ac46",
        "cfg": "880c1d6d6c9de1d6",
        "uncond": "45f0fee8bb2e255a",
    },
    "gp1": {
        "loss": 11.12392807006836,
        "grad_abs_sum": 506.48569548316215,
        "nll": 16.038936614990234,
        "cond": "07acb1263eec2e39",
        "cfg": "d2b0512fce8fd5fc",
        "uncond": "147be537a3297716",
    },
}


def _model(name: str) -> FractalGen:
    torch.manual_seed(0)
    return FractalGen(**_CASES[name])


def _figures(name: str) -> dict[str, Any]:
    model = _model(name)
    size, channels = model.img_size_list[0], model.in_channels
    imgs = (torch.rand(4, channels, size, size) * 255).round() / 255
    labels = torch.tensor([0, 3, 7, 9])
    model.train()
    torch.manual_seed(1)  # dropout, label drop, masks
    loss = model(imgs, labels)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    out: dict[str, Any] = {
        "loss": loss.item(),
        "grad_abs_sum": sum(float(g.double().abs().sum()) for g in grads),
        "nll": model.nll_bpd(imgs, generator=torch.Generator().manual_seed(2)).item(),
    }
    iters = [3] * len(model.levels)
    runs: dict[str, dict[str, Any]] = {
        "cond": {"labels": labels},
        # filter_threshold 0: main had no filter; the filter is tested on its own below.
        "cfg": {"labels": labels, "cfg": 3.0, "filter_threshold": 0.0},
        "uncond": {"labels": None, "temperature": 0.9},
    }
    for key, kwargs in runs.items():
        gen = torch.Generator().manual_seed(3)
        imgs_out = model.sample(4, num_iter_list=iters, generator=gen, **kwargs)
        out[key] = hashlib.sha256(imgs_out.numpy().tobytes()).hexdigest()[:16]
    return out


@pytest.mark.parametrize("name", sorted(_CASES))
def test_fixed_seed_model_keeps_its_losses_and_samples(name: str) -> None:
    got = _figures(name)
    want = _PINNED[name]
    for key in ("loss", "nll"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert got["grad_abs_sum"] == pytest.approx(want["grad_abs_sum"], rel=1e-4)
    for key in ("cond", "cfg", "uncond"):
        assert got[key] == want[key], f"{key} samples changed"


# ---------------------------------------------------------------- CFG filter_threshold


def _reference_filter(
    cond: torch.Tensor, uncond: torch.Tensor, cfg: float, thr: float
) -> torch.Tensor:
    """The reference's definition, written out as it does it: boolean-mask assignment."""
    uncond = uncond.clone()
    mask = torch.softmax(cond, dim=-1) < thr
    raised = torch.max(
        uncond,
        cond
        - torch.max(cond, dim=-1, keepdim=True)[0]
        + torch.max(uncond, dim=-1, keepdim=True)[0],
    )
    uncond[mask] = raised[mask]
    return uncond + cfg * (cond - uncond)


@pytest.mark.parametrize("thr", [0.0, 1e-4, 1e-2, 0.5, 1.0])
@pytest.mark.parametrize("cfg", [1.0, 3.0, 10.0])
def test_guide_logits_matches_the_reference_filter(thr: float, cfg: float) -> None:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(64, 256, generator=g) * 4
    uncond = torch.randn(64, 256, generator=g) * 4
    got = guide_logits(cond, uncond, cfg, thr)
    torch.testing.assert_close(got, _reference_filter(cond, uncond, cfg, thr), rtol=0, atol=0)
    if thr == 0.0:  # plain guidance
        torch.testing.assert_close(got, uncond + cfg * (cond - uncond), rtol=0, atol=0)


def test_filter_only_touches_values_the_conditional_model_finds_unlikely() -> None:
    cond = torch.tensor([[10.0, 0.0, -20.0, -25.0]])
    uncond = torch.tensor([[0.0, 0.0, -40.0, -60.0]])
    plain = guide_logits(cond, uncond, 5.0, 0.0)
    filtered = guide_logits(cond, uncond, 5.0, 1e-4)
    low = torch.softmax(cond, dim=-1) < 1e-4
    assert low.tolist() == [[False, True, True, True]]
    assert filtered[0, 0] == plain[0, 0]
    # Without the filter guidance boosts value 3 (cond - uncond = 35) above value 1;
    # with it, no unlikely value gains more than max(cond) - max(uncond) = 10.
    assert plain[0, 3] > plain[0, 1]
    # guided = cond + (cfg - 1)(cond - uncond') with cond - uncond' <= 10 where filtered.
    gain = filtered - cond
    assert torch.all(gain[low] <= (5.0 - 1.0) * (cond.max() - uncond.max()) + 1e-5)
    assert filtered[0, 3] < filtered[0, 0]


def test_filter_threshold_reaches_every_guided_pixel_head(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def spy(cond: torch.Tensor, uncond: torch.Tensor, cfg: float, thr: float = 0.0) -> torch.Tensor:
        seen.append(thr)
        return _reference_filter(cond, uncond, cfg, thr)

    monkeypatch.setattr(pixel_mod, "guide_logits", spy)
    model = _model("gp1").eval()
    labels = torch.tensor([1, 2])
    model.sample(2, labels, num_iter_list=[2, 1, 2], cfg=2.0)
    # Default: the reference's 1e-4, in the pixel head and in the guiding pixel's head.
    assert seen and set(seen) == {1e-4}
    guiding = model.levels[2].guiding_head
    calls: list[int] = []
    orig = guiding.sample
    monkeypatch.setattr(guiding, "sample", lambda *a, **k: calls.append(1) or orig(*a, **k))
    seen.clear()
    model.sample(2, labels, num_iter_list=[2, 1, 2], cfg=2.0, filter_threshold=0.25)
    assert calls and set(seen) == {0.25}
    seen.clear()
    model.sample(2, labels, num_iter_list=[2, 1, 2], cfg=1.0)  # no guidance, no filter
    assert seen == []


def test_filter_threshold_changes_guided_samples_and_is_reproducible() -> None:
    model = _model("mar3").eval()
    labels = torch.arange(4)

    def draw(thr: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(5)
        return model.sample(
            4, labels, num_iter_list=[2, 4], cfg=8.0, filter_threshold=thr, generator=gen
        )

    assert torch.equal(draw(1e-4), draw(1e-4))
    assert not torch.equal(draw(0.0), draw(0.5))


@pytest.mark.parametrize("bad", [-1e-4, 1.5, math.nan])
def test_bad_filter_threshold_is_a_clear_error(bad: float) -> None:
    model = _model("mar3")
    with pytest.raises(ModelError, match="filter_threshold must be in"):
        model.sample(1, torch.tensor([0]), num_iter_list=[1, 1], cfg=2.0, filter_threshold=bad)
