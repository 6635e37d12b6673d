"""``model.ar_order``: AR levels that generate their patches centre first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fractalgen.config import ModelConfig
from fractalgen.model import FractalGen, ModelError
from fractalgen.model.ar import ARLevel, patch_order
from fractalgen.model.common import patchify


def _level(order: str) -> ARLevel:
    torch.manual_seed(0)
    return ARLevel(
        seq_len=16,
        patch_size=1,
        in_channels=3,
        cond_dim=8,
        embed_dim=32,
        num_blocks=2,
        num_heads=2,
        order=order,
    ).eval()


def _digits_model(**kw: Any) -> FractalGen:
    torch.manual_seed(0)
    fields: dict[str, Any] = {
        "img_size_list": (8, 2, 1),
        "embed_dim_list": (32, 16, 8),
        "num_blocks_list": (1, 1, 1),
        "num_heads_list": (2, 1, 1),
        "generator_type_list": ("ar", "ar"),
    }
    fields.update(kw)
    return FractalGen(fields, in_channels=1, num_classes=10)


def test_a_4x4_grid_starts_with_its_four_middle_patches() -> None:
    assert patch_order(4, "center").tolist() == [5, 6, 9, 10, 1, 2, 4, 7, 8, 11, 13, 14, 0, 3,
                                                 12, 15]
    assert patch_order(4, "raster").tolist() == list(range(16))
    # On 2 x 2 every patch is equally near the centre: raster.
    assert patch_order(2, "center").tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="order must be one of"):
        patch_order(4, "spiral")


@given(grid=st.integers(1, 12))
def test_center_order_is_a_permutation_moving_outwards(grid: int) -> None:
    order = patch_order(grid, "center").tolist()
    assert sorted(order) == list(range(grid * grid))
    mid = (grid - 1) / 2
    dist = [(k // grid - mid) ** 2 + (k % grid - mid) ** 2 for k in order]
    assert dist == sorted(dist)


@pytest.mark.parametrize("order", ["raster", "center"])
def test_ar_cached_conditions_match_the_full_causal_pass(order: str) -> None:
    """Step i is handed the condition of the patch at ``patch_order[i]``; with each step given
    the real patch, the sample is the image and every condition is the training pass's,
    whose children come in the same order."""
    level = _level(order)
    cond = torch.randn(2, 1, 8)
    # 8-bit values, as images are.
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0)) / 255
    patches = patchify(x, 1)
    index = patch_order(4, order)
    seen: list[torch.Tensor] = []

    def next_level(c: torch.Tensor, cfg: float, temperature: float) -> torch.Tensor:
        seen.append(c[:, 0])
        return patches[:, index[len(seen) - 1]].reshape(2, 3, 1, 1)  # teacher forcing

    with torch.no_grad():
        out = level.sample(
            cond,
            num_iter=1,
            cfg=1.0,
            cfg_schedule="constant",
            guided=False,
            temperature=1.0,
            generator=None,
            next_level=next_level,
        )
        children, full, _ = level(x, cond)
    torch.testing.assert_close(out, x)
    torch.testing.assert_close(torch.stack(seen, 1), full.view(2, 16, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(children.view(2, 16, 3), patches[:, index])


def test_a_patch_conditions_only_the_patches_generated_after_it() -> None:
    level = _level("center")
    cond = torch.randn(1, 1, 8)
    x = torch.rand(1, 3, 4, 4)
    order = patch_order(4, "center").tolist()
    step = 4  # the fifth patch generated: grid cell 1, on the top row
    changed = x.clone()
    row, col = divmod(order[step], 4)
    changed[0, :, row, col] = 1.0 - changed[0, :, row, col]
    with torch.no_grad():
        _, before, _ = level(x, cond)
        _, after, _ = level(changed, cond)
    before, after = before.view(16, -1), after.view(16, -1)
    torch.testing.assert_close(after[: step + 1], before[: step + 1])
    assert not torch.allclose(after[step + 1], before[step + 1])
    # In raster order that cell would have been generated second, and so seen by step 2.
    raster = _level("raster")
    with torch.no_grad():
        _, r_before, _ = raster(x, cond)
        _, r_after, _ = raster(changed, cond)
    assert not torch.allclose(r_after.view(16, -1)[2], r_before.view(16, -1)[2])


def test_the_order_changes_the_model_not_its_weights() -> None:
    """Same weights, other function: checkpoints of either order have the same keys, and a
    config without the field (every checkpoint before it) builds the reference's raster."""
    raster, center = _digits_model(), _digits_model(ar_order="center")
    assert raster.settings.ar_order == "raster"
    assert center.levels[0].order == "center"
    assert raster.state_dict().keys() == center.state_dict().keys()
    center.load_state_dict(raster.state_dict())
    x = torch.rand(3, 1, 8, 8)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert not torch.allclose(raster.nll_bpd(x), center.nll_bpd(x))
        raster.eval(), center.eval()
        torch.manual_seed(1)
        a = raster(x, labels)
        torch.manual_seed(1)
        b = center(x, labels)
    assert torch.isfinite(a) and torch.isfinite(b) and not torch.equal(a, b)


def test_an_unknown_order_or_one_without_ar_levels_is_refused_naming_the_field() -> None:
    with pytest.raises(ModelError, match="ar_order"):
        _digits_model(ar_order="spiral")
    assert ModelConfig().ar_order == "raster"
    # MAR levels draw a random order: a centre order there would do nothing.
    with pytest.raises(ModelError, match="ar_order 'center' orders the patches of AR levels"):
        _digits_model(ar_order="center", generator_type_list=("mar", "mar"))
    mixed = _digits_model(ar_order="center", generator_type_list=("ar", "mar"))
    assert isinstance(mixed.levels[0], ARLevel) and mixed.levels[0].order == "center"


def test_the_training_command_refuses_it_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fractalgen.train import main

    code = main(["--ar_order", "center", "--output_root", str(tmp_path / "out"),
                 "--max_steps", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: model: ar_order 'center' orders the patches of AR levels" in err
    assert "generator_type_list has none: ['mar', 'mar']" in err
    assert not (tmp_path / "out").exists()


def test_each_token_keeps_the_rotary_position_of_its_place_on_the_grid() -> None:
    from fractalgen.model.blocks import rope_2d_table

    level, raster = _level("center"), _level("raster")
    table = rope_2d_table(4, 16, num_prefix=1)
    torch.testing.assert_close(raster.rope, table)
    order = patch_order(4, "center")
    torch.testing.assert_close(level.rope[0], table[0])  # the condition token's
    torch.testing.assert_close(level.rope[1:], table[1 + order])
