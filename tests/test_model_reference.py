"""The reference's definitions that ours keeps: the CFG low-probability filter
(``filter_threshold``) and the AR condition token's all-zero RoPE entry."""

from __future__ import annotations

import math

import pytest
import torch

import fractalgen.model.pixel as pixel_mod
from fractalgen.model import FractalGen, ModelError
from fractalgen.model.ar import ARLevel
from fractalgen.model.blocks import LlamaBlock, apply_rope, rope_2d_table
from fractalgen.model.pixel import guide_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(guiding: bool) -> FractalGen:
    torch.manual_seed(0)
    if guiding:
        return FractalGen(
            img_size_list=(8, 4, 2, 1),
            embed_dim_list=(32, 32, 16, 16),
            num_blocks_list=(1, 1, 1, 1),
            num_heads_list=(2, 2, 2, 2),
            generator_type_list=("mar", "ar", "mar"),
            in_channels=1,
            num_classes=10,
            guiding_pixel=True,
        )
    return FractalGen(
        img_size_list=(16, 4, 1),
        embed_dim_list=(64, 32, 16),
        num_blocks_list=(2, 1, 1),
        num_heads_list=(4, 2, 2),
        generator_type_list=("mar", "mar"),
        in_channels=3,
        num_classes=10,
    )


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
    model = _model(guiding=True).eval()
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
    model = _model(guiding=False).eval()
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
    model = _model(guiding=False)
    with pytest.raises(ModelError, match="filter_threshold must be in"):
        model.sample(1, torch.tensor([0]), num_iter_list=[1, 1], cfg=2.0, filter_threshold=bad)


# ---------------------------------------------------------------- AR condition RoPE entry
#
# Decision: keep the reference's all-zero (cos, sin) entry for the condition token rather
# than the identity (a true zero-frequency rotation). The reference trains and samples with
# the zero entry, so only with it does a level with the reference's weights compute the
# reference's function; the identity would change the output of every trained AR level
# (second test). What the zero entry means (first test): the condition's rotated query and
# key vanish, so every query scores the condition with a constant logit 0 whatever its
# content, while the condition's value still flows into every position.


def test_condition_token_gets_a_constant_zero_logit_and_keeps_its_value() -> None:
    torch.manual_seed(0)
    block = LlamaBlock(16, 2).eval()
    table = rope_2d_table(2, 8, num_prefix=1)  # condition + 2 x 2 grid
    assert table[0].abs().sum() == 0
    x = torch.randn(3, 5, 16)
    b, n, d, h, hd = 3, 5, 16, 2, 8
    qkv = block.wqkv(block.attention_norm(x)).view(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)
    q, k = apply_rope(qkv[0], table), apply_rope(qkv[1], table)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    assert torch.all(scores[..., 0] == 0), "the condition's logit is 0 for every query"
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    attn = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ qkv[2]
    mid = x + block.wo(attn.transpose(1, 2).reshape(b, n, d))
    want = mid + block.feed_forward(block.ffn_norm(mid))
    with torch.no_grad():
        torch.testing.assert_close(block(x, table), want, atol=1e-5, rtol=1e-5)


def test_an_identity_entry_would_change_a_trained_levels_output() -> None:
    torch.manual_seed(0)
    level = ARLevel(
        seq_len=4,
        patch_size=1,
        in_channels=3,
        cond_dim=8,
        embed_dim=16,
        num_blocks=2,
        num_heads=2,
    ).eval()
    for p in level.parameters():
        p.data.normal_(0, 0.3)
    imgs, cond = torch.rand(2, 3, 2, 2), torch.randn(2, 1, 8)
    with torch.no_grad():
        _, zero_entry, _ = level(imgs, cond)
        level.rope[0, :, 0] = 1.0  # identity: cos 1, sin 0
        _, identity, _ = level(imgs, cond)
    assert not torch.allclose(zero_entry, identity, atol=1e-3)
