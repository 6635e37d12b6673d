"""The model stays the same model while it gets faster, and the reference's CFG filter.

``test_fixed_seed_model_keeps_its_losses_and_samples`` pins the loss, gradients, NLL and
samples of three fixed-seed models to the values the code gave before any speed work
(captured from main): fusing, caching and reordering must not change what is computed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import fractalgen.model.pixel as pixel_mod
from fractalgen.model import FractalGen
from fractalgen.model.blocks import (
    Attention,
    Dropout,
    ViTBlock,
    apply_rope,
    rope_2d_table,
    rotate_pairs,
)
from fractalgen.model.mar import MARLevel
from fractalgen.model.pixel import PixelHead

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


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_cached_pixel_sampler_equals_the_full_causal_pass(
    channels: int, guided: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached channel-by-channel sampler sees the logits of a full causal pass."""
    torch.manual_seed(0)
    head = PixelHead(cond_dim=8, width=16, depth=2, num_heads=2, in_channels=channels).eval()
    for p in head.parameters():  # trained-looking weights, not the near-zero init
        p.data.normal_(0, 0.5)
    cond = torch.randn(12 if guided else 6, 5, 8)
    seen: list[torch.Tensor] = []
    real = pixel_mod.sample_categorical

    def spy(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        seen.append(logits)
        return real(logits, generator)

    monkeypatch.setattr(pixel_mod, "sample_categorical", spy)
    with torch.no_grad():
        out = head.sample(cond, cfg=2.5, guided=guided, temperature=0.7)
        values = (out * 255).round().long()
        known = torch.cat([values, values]) if guided else values
        full = head.logits(cond[:, 0], known[:, :-1]) / 0.7
    if guided:
        full = pixel_mod.guide_logits(full[:6], full[6:], 2.5)
    torch.testing.assert_close(torch.stack(seen, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_codebook_cross_entropy_matches_torch_in_value_and_gradient(scale: float) -> None:
    """The fused logits + cross-entropy equal F.cross_entropy of the explicit logits, also
    where the target's probability underflows (scale 60: logits hundreds apart)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 8, generator=g).mul(scale).requires_grad_()
    codebook = torch.randn(3, 256, 8, generator=g).requires_grad_()
    bias = torch.randn(3, 256, generator=g).requires_grad_()
    target = torch.randint(0, 256, (3, 50), generator=g)
    weight = torch.rand(3, 50, generator=g)
    ours = pixel_mod.codebook_cross_entropy(x, codebook, bias, target)
    got = torch.autograd.grad((ours * weight).sum(), (x, codebook, bias))
    logits = torch.baddbmm(bias.unsqueeze(1), x, codebook.transpose(1, 2))
    want = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(3, 50)
    wanted = torch.autograd.grad((want * weight).sum(), (x, codebook, bias))
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, want, atol=1e-5 * scale, rtol=1e-5)
    for a, b in zip(got, wanted, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("shape", [(37, 21, 48), (3, 301, 100)])  # one and two mask chunks
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.3])
def test_fast_dropout_draws_the_same_mask_as_torch(
    dtype: torch.dtype, p: float, shape: tuple[int, ...]
) -> None:
    x = torch.randn(*shape).to(dtype).requires_grad_()
    torch.manual_seed(3)
    want = F.dropout(x, p, training=True)
    after_want = torch.rand(4)
    torch.manual_seed(3)
    got = Dropout(p)(x)
    after_got = torch.rand(4)
    assert torch.equal(got, want)
    assert torch.equal(after_got, after_want), "the RNG must end in the same state"
    (gx,) = torch.autograd.grad(got.sum(), x)
    (wx,) = torch.autograd.grad(want.sum(), x)
    assert torch.equal(gx, wx)
    assert torch.equal(Dropout(p).eval()(x), x)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_dropout_draws_what_sdpa_draws(causal: bool) -> None:
    """Training-mode attention with dropout gives SDPA's result from the same RNG state
    and leaves the RNG where SDPA leaves it."""
    torch.manual_seed(0)
    attn = Attention(32, 2, attn_dropout=0.3).train()
    x = torch.randn(5, 11, 32)
    q, k, v = attn.qkv(x).view(5, 11, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
    torch.manual_seed(7)
    want = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, is_causal=causal)
    after_want = torch.rand(4)
    torch.manual_seed(7)
    got = attn._attend_with_dropout(q, k, v, causal)
    after_got = torch.rand(4)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert torch.equal(after_got, after_want)


@pytest.mark.parametrize("tokens", [1, 2, 3, 4])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_short_causal_attention_equals_sdpa(tokens: int, heads: int) -> None:
    """The pixel head's few-token causal attention: SDPA's values and gradients."""
    torch.manual_seed(0)
    attn = Attention(16, heads).eval()
    for p in attn.parameters():
        p.data.normal_(0, 0.5)
    x = torch.randn(7, tokens, 16, requires_grad=True)
    got = attn.attend(x, causal=True)
    (got_grad,) = torch.autograd.grad((got * got).sum(), x)
    q, k, v = attn.qkv(x).view(7, tokens, 3, heads, 16 // heads).permute(2, 0, 3, 1, 4).unbind(0)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = want.transpose(1, 2).reshape(7, tokens, 16)
    (want_grad,) = torch.autograd.grad((want * want).sum(), x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-4, rtol=1e-4)


def test_complex_rope_equals_the_pairwise_rotation() -> None:
    """apply_rope (complex products) gives rotate_pairs' values, also on strided views."""
    table = rope_2d_table(4, 16, num_prefix=1)
    views = (
        torch.randn(2, 3, 17, 16),
        torch.randn(2, 17, 3, 16).transpose(1, 2),  # strided
        torch.randn(2, 3, 17, 18)[..., 1:17],  # odd storage offset
        torch.randn(2, 3, 17, 17)[..., :16],  # odd row stride
    )
    for x in views:
        want = rotate_pairs(x, table[..., 0], table[..., 1])
        torch.testing.assert_close(apply_rope(x, table), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_block_rows_equal_the_full_block_and_draw_the_same_masks(training: bool) -> None:
    """The last MAR block run on some tokens only: the same outputs (dropout included) and
    the RNG left where the full block leaves it."""
    torch.manual_seed(0)
    block = ViTBlock(32, 2, attn_dropout=0.2, proj_dropout=0.3).train(training)
    x = torch.randn(4, 9, 32, requires_grad=True)
    cases = [(torch.tensor([0, 5, 8, 9, 17, 30, 35, 12]), 0), (torch.tensor([1, 4, 20, 7]), 3)]
    for index, first in [*cases, (None, 0), (None, 2)]:
        torch.manual_seed(11)
        want = block(x)[:, first:].reshape(-1, 32)
        want = want if index is None else want[index]
        after_want = torch.rand(4)
        (want_grad,) = torch.autograd.grad((want * want).sum(), x)
        torch.manual_seed(11)
        got = block.forward_rows(x, index, first)
        after_got = torch.rand(4)
        (got_grad,) = torch.autograd.grad((got * got).sum(), x)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-5)
        assert torch.equal(after_got, after_want)


@pytest.mark.parametrize("guiding", [False, True])
def test_mar_predict_for_some_patches_equals_the_full_pass(guiding: bool) -> None:
    torch.manual_seed(0)
    level = MARLevel(
        seq_len=16,
        patch_size=2,
        in_channels=3,
        cond_dim=8,
        embed_dim=32,
        num_blocks=2,
        num_heads=4,
        guiding_pixel=guiding,
    ).eval()
    patches = torch.rand(5, 16, 12)
    mask = torch.rand(5, 16) < 0.5
    cond = torch.randn(5, 5, 8)
    pix = torch.rand(5, 3) if guiding else None
    query = torch.argsort(torch.rand(5, 16), dim=1)[:, :3]
    with torch.no_grad():
        full = level.predict(patches, mask, cond, pix)
        some = level.predict(patches, mask, cond, pix, query=query)
    want = full.gather(1, query.unsqueeze(-1).expand(-1, -1, 32))
    torch.testing.assert_close(some, want, atol=1e-5, rtol=1e-5)


def test_samples_are_ordinary_tensors_the_caller_may_change() -> None:
    model = _model("mar3")
    imgs = model.sample(2, torch.tensor([1, 2]), num_iter_list=[1, 1])
    assert not imgs.is_inference()
    imgs.add_(1)  # raises for an inference-mode tensor
