"""Autoregressive (AR) FractalGen level: a causal LlamaGen-style transformer over patches.

The sequence is ``[condition, patch_0, ..., patch_{L-2}]``; the output at position ``i``
is the condition handed to the next level for patch ``i``. Patches go in raster order, as
in the reference, or centre first (``order="center"``, see :func:`patch_order`). Positions
carry a learned embedding plus a 2D rotary embedding of the patch's place on the grid; the
condition token's entry is all zeros, as in the reference (see ``rope_2d_table``).

Sampling embeds each new token once and extends a per-block key/value cache, instead of
re-embedding and re-attending the whole prefix at every step as the reference does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fractalgen.model.blocks import KVCache, LlamaBlock, init_weights, rope_2d_table
from fractalgen.model.common import NextLevel, patchify, unpatchify
from fractalgen.model.pixel import channel_stats, normalize_channels

__all__ = ["AR_ORDERS", "ARLevel", "patch_order"]


AR_ORDERS = ("raster", "center")


def patch_order(grid: int, order: str) -> Tensor:
    """Raster indices of a ``grid`` x ``grid`` level's patches, in generation order.

    ``"raster"``: row by row, as the reference. ``"center"``: by distance from the grid's
    centre, nearest first, ties in raster order (a 4 x 4 grid starts with its four middle
    patches). On a 2 x 2 grid every patch is as near as the others, so both are raster.
    """
    cells = list(range(grid * grid))
    if order == "center":
        mid = (grid - 1) / 2
        cells.sort(key=lambda k: ((k // grid - mid) ** 2 + (k % grid - mid) ** 2, k))
    elif order != "raster":
        raise ValueError(f"order must be one of {AR_ORDERS}, got {order!r}")
    return torch.tensor(cells, dtype=torch.long)


class ARLevel(nn.Module):
    """One causal level over a square grid of ``seq_len`` patches."""

    rope: Tensor
    order_index: Tensor
    pix_mean: Tensor
    pix_std: Tensor

    def __init__(
        self,
        *,
        seq_len: int,
        patch_size: int,
        in_channels: int,
        cond_dim: int,
        embed_dim: int,
        num_blocks: int,
        num_heads: int,
        dropout: float = 0.1,
        grad_checkpointing: bool = False,
        order: str = "raster",
    ) -> None:
        """Create the level.

        Args:
            seq_len: Number of patches (a square).
            patch_size: Side of a patch in pixels.
            in_channels: Image channels.
            cond_dim: Width of the incoming condition.
            embed_dim: Transformer width.
            num_blocks: Transformer depth.
            num_heads: Attention heads (head width a multiple of 4).
            dropout: Residual and feed-forward dropout (the reference's 0.1; no dropout on
                attention probabilities, as in the reference).
            grad_checkpointing: Recompute block activations in backward to save memory.
            order: ``"raster"`` (the reference's) or ``"center"``: the order in which
                patches are generated (see :func:`patch_order`).
        """
        super().__init__()
        self.seq_len = seq_len
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grad_checkpointing = grad_checkpointing
        self.use_kv_cache = True  # sampling switch; tests compare both paths
        self.patch_emb = nn.Linear(in_channels * patch_size**2, embed_dim)
        self.patch_emb_ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pos_embed = nn.Parameter(torch.zeros(1, seq_len + 1, embed_dim))
        self.cond_emb = nn.Linear(cond_dim, embed_dim)
        self.blocks = nn.ModuleList(
            [LlamaBlock(embed_dim, num_heads, dropout=dropout) for _ in range(num_blocks)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        grid = round(seq_len**0.5)
        self.order = order
        order_index = patch_order(grid, order)
        # Sequence position i + 1 holds the i-th patch generated: its RoPE entry is that
        # patch's place on the grid (entry 0, the condition token's, stays first).
        rope = rope_2d_table(grid, embed_dim // num_heads, num_prefix=1)
        rope = rope[torch.cat([torch.zeros(1, dtype=torch.long), order_index + 1])]
        self.register_buffer("rope", rope, persistent=False)
        self.register_buffer("order_index", order_index, persistent=False)
        self._raster = order == "raster"
        mean, std = channel_stats(in_channels)
        self.register_buffer("pix_mean", mean, persistent=False)
        self.register_buffer("pix_std", std, persistent=False)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.apply(init_weights)

    def _embed(self, cond: Tensor, patches: Tensor) -> Tensor:
        """Embed ``[cond, patches...]``: cond (N, cd), patches (N, n, D) -> (N, 1 + n, d)."""
        tokens = [self.cond_emb(cond).unsqueeze(1)]
        if patches.shape[1] > 0:
            norm = normalize_channels(patches, self.pix_mean, self.pix_std)
            tokens.append(self.patch_emb(norm))
        x = torch.cat(tokens, dim=1)
        out: Tensor = self.patch_emb_ln(x + self.pos_embed[:, : x.shape[1]])
        return out

    def _run(self, x: Tensor) -> Tensor:
        rope = self.rope[: x.shape[1]]
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        out: Tensor = self.norm(x)
        return out

    def forward(
        self,
        imgs: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
        *,
        out_conds: int = 1,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Training/evaluation pass: every patch goes down to the next level.

        Args:
            imgs: Images (N, C, H, W) in [0, 1].
            cond: Conditions (N, k, cond_dim); the first is used.
            generator: Unused (the AR level draws nothing); kept for the level contract.
            out_conds: Unused: an AR level hands down one condition per patch.

        Returns:
            Patches (N L, C, p, p), their conditions (N L, 1, d), and no auxiliary loss.
        """
        del generator, out_conds
        patches = patchify(imgs, self.patch_size)
        if not self._raster:
            patches = patches[:, self.order_index]  # children in generation order
        n = patches.shape[0]
        # The last patch's token would only feed a position past the end: skip it.
        x = self._run(self._embed(cond[:, 0], patches[:, :-1]))
        p = self.patch_size
        child = patches.reshape(n * self.seq_len, self.in_channels, p, p)
        return child, x.reshape(n * self.seq_len, 1, -1), None

    def sample(
        self,
        cond: Tensor,
        *,
        num_iter: int,
        cfg: float,
        cfg_schedule: str,
        guided: bool,
        temperature: float,
        generator: torch.Generator | None,
        next_level: NextLevel,
        filter_threshold: float = 0.0,
        out_conds: int = 1,
        opening_steps: int = 0,
        opening_temperature: float = 1.0,
    ) -> Tensor:
        """Generate patches in the level's order, one per step (``num_iter`` is ignored).

        Args:
            cond: Conditions (N2, k, cond_dim); doubled [class; null] when ``guided``.
            num_iter: Ignored: an AR level always takes ``seq_len`` steps.
            cfg: Guidance scale at this level.
            cfg_schedule: ``"linear"`` ramps guidance as ``1 + (cfg - 1)(i + 1) / L``;
                ``"constant"`` uses ``cfg`` throughout.
            guided: Whether the batch is doubled for classifier-free guidance.
            temperature: Passed down (divides the pixel logits), from step
                ``opening_steps`` on.
            generator: Passed down.
            next_level: Samples the patches of the next level.
            filter_threshold: Unused here (an AR level has no guiding pixel).
            out_conds: Unused: an AR level hands down one condition per patch.
            opening_steps: The first this many patches are sampled at
                ``opening_temperature`` instead.
            opening_temperature: See ``opening_steps``.

        Returns:
            Images (N, C, H, W) in [0, 1].
        """
        del num_iter, generator, filter_threshold, out_conds
        n2 = cond.shape[0]
        n = n2 // 2 if guided else n2
        dim = self.in_channels * self.patch_size**2
        # In the weights' dtype: fp32 patches would not multiply bf16 / fp64 weights.
        patches = cond.new_zeros(n, self.seq_len, dim, dtype=self.patch_emb.weight.dtype)
        caches = [KVCache() for _ in self.blocks]
        c0 = cond[:, 0]
        pos_embed = self.pos_embed[0]
        for step in range(self.seq_len):
            if self.use_kv_cache:
                # One new token per step, as 2-D rows: the same arithmetic as ``_embed`` and
                # the blocks' ``forward`` at this position, without re-running the prefix.
                if step == 0:
                    tok = self.cond_emb(c0)
                else:
                    prev = patches[:, step - 1]
                    if guided:
                        prev = torch.cat([prev, prev], dim=0)
                    tok = self.patch_emb(normalize_channels(prev, self.pix_mean, self.pix_std))
                x = self.patch_emb_ln(tok + pos_embed[step])
                angles = self.rope[step]
                cos, sin = angles[:, 0], angles[:, 1]
                for block, cache in zip(self.blocks, caches, strict=True):
                    x = block.step(x, cos, sin, cache, step, self.seq_len)
                h = self.norm(x)
            else:
                prefix = patches[:, :step]
                if guided:
                    prefix = torch.cat([prefix, prefix], dim=0)
                h = self._run(self._embed(c0, prefix))[:, -1]
            if cfg_schedule == "linear":
                cfg_iter = 1 + (cfg - 1) * (step + 1) / self.seq_len
            else:
                cfg_iter = cfg
            temp = opening_temperature if step < opening_steps else temperature
            sampled = next_level(h.unsqueeze(1), cfg_iter, temp)
            patches[:, step] = sampled.reshape(n, dim).to(patches.dtype)
        if not self._raster:
            placed = torch.empty_like(patches)
            placed[:, self.order_index] = patches
            patches = placed
        return unpatchify(patches, self.patch_size, self.in_channels)
