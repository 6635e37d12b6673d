"""Masked autoregressive (MAR) FractalGen level: a bidirectional ViT over patches.

Training masks a random subset of the patches (ratio from a truncated normal, mean 1,
std 0.25, cut to [0, 1]; evaluation masks a uniformly drawn count, as the reference's NLL
does) and only the masked patches go down to the next level, each with five conditions:
its own output token and those of its top, right, bottom and left neighbours (zeros at the
borders). Sampling unmasks patches in a random order on a cosine schedule.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fractalgen.model.blocks import ViTBlock, init_weights
from fractalgen.model.common import NextLevel, host_uniform, patchify, unpatchify
from fractalgen.model.pixel import PixelHead, channel_stats, normalize_channels

__all__ = ["MARLevel", "neighbour_index", "truncated_normal_mask_counts"]

_NUM_OUT_CONDS = 5
# Truncated normal of the masking ratio: mean 1, std 0.25, support [1 - 4 * 0.25, 1].
_PHI_LO = 0.5 * math.erfc(4 / math.sqrt(2))
_PHI_HI = 0.5


def truncated_normal_mask_counts(
    batch: int, seq_len: int, generator: torch.Generator | None
) -> list[int]:
    """Number of masked patches per image for training: ``ceil(seq_len * ratio)``.

    The ratio follows a normal(1, 0.25) truncated to [0, 1] (the reference's
    ``truncnorm(-4, 0, loc=1, scale=0.25)``), drawn by inverse CDF on the host. A count of
    zero (probability ~0) is raised to one so that a step never has nothing to learn from.
    """
    u = host_uniform(batch, generator)
    z = torch.special.ndtri(_PHI_LO + u * (_PHI_HI - _PHI_LO))
    ratio = (1.0 + 0.25 * z).clamp(0.0, 1.0)
    counts = torch.ceil(ratio * seq_len).clamp(1, seq_len)
    return [int(c) for c in counts.tolist()]


def neighbour_index(grid: int) -> Tensor:
    """For each patch of a ``grid`` x ``grid`` raster: its own index, then top, right, bottom
    and left neighbours; ``grid * grid`` (a zero row) where a neighbour is off the grid."""
    seq = grid * grid
    r = torch.arange(grid).repeat_interleave(grid)
    c = torch.arange(grid).repeat(grid)
    own = r * grid + c
    top = torch.where(r > 0, own - grid, seq)
    right = torch.where(c < grid - 1, own + 1, seq)
    bottom = torch.where(r < grid - 1, own + grid, seq)
    left = torch.where(c > 0, own - 1, seq)
    return torch.stack([own, top, right, bottom, left], dim=1)


class MARLevel(nn.Module):
    """One masked-autoregressive level over a square grid of ``seq_len`` patches."""

    nbr: Tensor
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
        attn_dropout: float = 0.1,
        proj_dropout: float = 0.1,
        num_conds: int = 5,
        guiding_pixel: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        """Create the level.

        Args:
            seq_len: Number of patches (a square).
            patch_size: Side of a patch in pixels.
            in_channels: Image channels.
            cond_dim: Width of the incoming conditions.
            embed_dim: Transformer width.
            num_blocks: Transformer depth.
            num_heads: Attention heads.
            attn_dropout: Dropout on attention probabilities.
            proj_dropout: Dropout after attention projections and in the MLPs.
            num_conds: Condition tokens prepended (missing incoming ones are zeros).
            guiding_pixel: Predict the patch's mean colour first and feed it in.
            grad_checkpointing: Recompute block activations in backward to save memory.
        """
        super().__init__()
        self.seq_len = seq_len
        self.grid = round(seq_len**0.5)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.num_conds = num_conds
        self.guiding_pixel = guiding_pixel
        self.grad_checkpointing = grad_checkpointing
        self.num_prefix = num_conds + int(guiding_pixel)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_emb = nn.Linear(in_channels * patch_size**2, embed_dim)
        self.patch_emb_ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.cond_emb = nn.Linear(cond_dim, embed_dim)
        self.pix_proj = nn.Linear(in_channels, embed_dim) if guiding_pixel else None
        self.pos_embed = nn.Parameter(torch.zeros(1, seq_len + self.num_prefix, embed_dim))
        self.blocks = nn.ModuleList(
            [
                ViTBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio=4.0,
                    attn_dropout=attn_dropout,
                    proj_dropout=proj_dropout,
                )
                for _ in range(num_blocks)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.apply(init_weights)
        # Created after the init above; the head initialises itself the same way.
        self.guiding_head = (
            PixelHead(
                cond_dim=cond_dim,
                width=128,
                depth=3,
                num_heads=4,
                in_channels=in_channels,
                r_weight=5.0,
            )
            if guiding_pixel
            else None
        )
        self.register_buffer("nbr", neighbour_index(self.grid), persistent=False)
        mean, std = channel_stats(in_channels)
        self.register_buffer("pix_mean", mean, persistent=False)
        self.register_buffer("pix_std", std, persistent=False)

    def predict(
        self,
        patches: Tensor,
        mask: Tensor,
        cond: Tensor,
        pix: Tensor | None,
        query: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Run the transformer; masked patches are replaced by the mask token.

        Args:
            patches: Patches (N, L, C p p) in [0, 1].
            mask: Bool (N, L), True where a patch is masked (unknown).
            cond: Conditions (N, k, cond_dim).
            pix: Guiding pixels (N, C) in [0, 1] when this level uses them.
            query: Optional patch indices (N, q): return only their output tokens. The last
                block then runs its queries, projection and MLP on those tokens alone (its
                keys and values still come from every token): the same outputs, less work.
                Inference only (training would draw differently shaped dropout masks).
            rows: Optional flat patch indices (M,) into the N x L patches: return only
                their output tokens (M, d). The last block runs its projection and MLP on
                those tokens alone, drawing its dropout masks for all tokens (see
                ``ViTBlock.forward_rows``): the same outputs and RNG use, in training too.

        Returns:
            Output tokens of the patches (N, L, d), of the ``query`` patches (N, q, d), or
            of the ``rows`` patches (M, d).
        """
        x = self.patch_emb(normalize_channels(patches, self.pix_mean, self.pix_std))
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        k = cond.shape[1]
        if k >= self.num_conds:
            c = cond[:, : self.num_conds]
        else:
            c = F.pad(cond, (0, 0, 0, self.num_conds - k))
        # The reference prepends the conditions one by one, so the first ends up last.
        prefix = [self.cond_emb(c).flip(1)]
        if self.pix_proj is not None:
            assert pix is not None
            gp = self.pix_proj(normalize_channels(pix, self.pix_mean, self.pix_std))
            prefix.insert(0, gp.unsqueeze(1))
        x = torch.cat([*[p.to(x.dtype) for p in prefix], x], dim=1)
        x = self.patch_emb_ln(x + self.pos_embed)
        if query is not None and len(self.blocks) > 0 and not self.training:
            for block in self.blocks[:-1]:
                x = block(x)
            last = cast("ViTBlock", self.blocks[-1])
            picked: Tensor = self.norm(last.forward_queries(x, query + self.num_prefix))
            return picked
        blocks = list(self.blocks)
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if blocks and (rows is not None or (self.training and query is None)):
            # The last block works on the wanted patches only (all of them, or ``rows``):
            # the condition tokens' outputs are never used.
            last = cast("ViTBlock", blocks.pop())
            for block in blocks:
                x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
            first = self.num_prefix
            if ckpt:
                x = checkpoint(last.forward_rows, x, rows, first, use_reentrant=False)
            else:
                x = last.forward_rows(x, rows, first)
            chosen: Tensor = self.norm(x)
            return chosen if rows is not None else chosen.view(-1, self.seq_len, x.shape[-1])
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        x = self.norm(x)
        out: Tensor = x[:, self.num_prefix :]
        if query is not None:
            return out.gather(1, query.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        if rows is not None:
            return out.reshape(-1, out.shape[-1])[rows]
        return out

    def gather_conds(self, out: Tensor, rows: Tensor, pos: Tensor, count: int = 5) -> Tensor:
        """Conditions (M, count, d) of patches ``pos`` of batch rows ``rows`` (both (M,)):
        own, top, right, bottom, left, the first ``count`` of them (1 to 5)."""
        n, seq, d = out.shape
        if count == 1:  # only the patch's own token: no zero row needed
            return out.reshape(n * seq, d)[rows * seq + pos].unsqueeze(1)
        padded = F.pad(out, (0, 0, 0, 1)).reshape(n * (seq + 1), d)
        index = rows.unsqueeze(1) * (seq + 1) + self.nbr[pos, :count]
        return padded[index]

    def forward(
        self,
        imgs: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
        *,
        out_conds: int = _NUM_OUT_CONDS,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Training/evaluation pass: only masked patches go down to the next level.

        Training mode draws a truncated-normal ratio per image; evaluation mode draws one
        count uniformly from 1..L for the whole batch (the reference's NLL procedure).

        Args:
            imgs: Images (N, C, H, W) in [0, 1].
            cond: Conditions (N, k, cond_dim).
            generator: Optional RNG for the random order and counts (model's device).
            out_conds: How many of the five conditions the next level reads (1 to 5);
                only those are gathered.

        Returns:
            Masked patches (M, C, p, p), their conditions (M, out_conds, d), and the
            guiding-pixel loss (None without a guiding pixel).
        """
        n = imgs.shape[0]
        dev = imgs.device
        seq = self.seq_len
        patches = patchify(imgs, self.patch_size)
        orders = torch.argsort(torch.rand(n, seq, device=dev, generator=generator), dim=1)
        if self.training:
            counts = truncated_normal_mask_counts(n, seq, generator)
            rows_cpu = torch.repeat_interleave(torch.arange(n), torch.tensor(counts))
            starts = torch.tensor([0, *counts[:-1]]).cumsum(0)
            cols_cpu = torch.arange(rows_cpu.shape[0]) - starts[rows_cpu]
            idx = torch.stack([rows_cpu, cols_cpu]).to(dev, non_blocking=True)
            rows, cols = idx[0], idx[1]
        else:
            k = 1 + min(int(host_uniform(1, generator).item() * seq), seq - 1)
            rows = torch.arange(n, device=dev).repeat_interleave(k)
            cols = torch.arange(k, device=dev).repeat(n)
        pos = orders[rows, cols]
        mask = torch.zeros(n, seq, dtype=torch.bool, device=dev)
        mask[rows, pos] = True
        aux: Tensor | None = None
        pix: Tensor | None = None
        if self.guiding_head is not None:
            pix = imgs.mean(dim=(-2, -1))
            aux = self.guiding_head(pix, cond, generator)
        p = self.patch_size
        child = patches[rows, pos].reshape(-1, self.in_channels, p, p)
        if out_conds == 1:
            # Only the masked patches' own tokens go down: the last block computes just those.
            own = self.predict(patches, mask, cond, pix, rows=rows * seq + pos)
            return child, own.unsqueeze(1), aux
        out = self.predict(patches, mask, cond, pix)
        return child, self.gather_conds(out, rows, pos, out_conds), aux

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
        out_conds: int = _NUM_OUT_CONDS,
        opening_steps: int = 0,
        opening_temperature: float = 1.0,
    ) -> Tensor:
        """Generate by iterative unmasking on a cosine schedule (at least one patch a step).

        Args:
            cond: Conditions (N2, k, cond_dim); doubled [class; null] when ``guided``.
            num_iter: Unmasking steps (capped at ``seq_len``).
            cfg: Guidance scale at this level.
            cfg_schedule: ``"linear"`` ramps guidance with the fraction of patches
                generated; ``"constant"`` uses ``cfg`` throughout.
            guided: Whether the batch is doubled for classifier-free guidance.
            temperature: Divides the pixel logits (also of the guiding pixel).
            generator: Optional RNG on the model's device.
            next_level: Samples the patches of the next level.
            filter_threshold: Guidance filter of the guiding pixel (see ``guide_logits``).
            out_conds: How many of the five conditions the next level reads.
            opening_steps: The first this many unmasking steps (and the guiding pixel,
                drawn before them) are sampled at ``opening_temperature`` instead of
                ``temperature``.
            opening_temperature: See ``opening_steps``.

        Returns:
            Images (N, C, H, W) in [0, 1].
        """
        n2 = cond.shape[0]
        n = n2 // 2 if guided else n2
        dev = cond.device
        seq = self.seq_len
        dim = self.in_channels * self.patch_size**2
        pix: Tensor | None = None
        if self.guiding_head is not None:
            pix = self.guiding_head.sample(
                cond,
                cfg=cfg,
                guided=guided,
                temperature=opening_temperature if opening_steps > 0 else temperature,
                filter_threshold=filter_threshold,
                generator=generator,
            )
            if guided:
                pix = torch.cat([pix, pix], dim=0)
        # In the weights' dtype: fp32 patches would not multiply bf16 / fp64 weights.
        patches = torch.zeros(n, seq, dim, device=dev, dtype=self.patch_emb.weight.dtype)
        mask = torch.ones(n, seq, dtype=torch.bool, device=dev)
        orders = torch.argsort(torch.rand(n, seq, device=dev, generator=generator), dim=1)
        num_iter = min(seq, num_iter)
        masked = seq
        for step in range(num_iter):
            ratio = math.cos(math.pi / 2.0 * (step + 1) / num_iter)
            mask_len = max(1, min(masked - 1, math.floor(seq * ratio)))
            keep_masked = 0 if step == num_iter - 1 else mask_len
            # The masked patches are orders[:, :masked]; this step fills the tail of them.
            pred = orders[:, keep_masked:masked]
            pred2 = torch.cat([pred, pred]) if guided else pred
            inputs = (
                (torch.cat([patches, patches]), torch.cat([mask, mask]))
                if guided
                else (patches, mask)
            )
            if out_conds == 1:
                # Only the predicted patches' own tokens go down: compute just those.
                out = self.predict(*inputs, cond, pix, query=pred2)
                conds = out.reshape(-1, 1, out.shape[-1])
            else:
                out = self.predict(*inputs, cond, pix)
                rows = torch.arange(n2, device=dev).repeat_interleave(pred.shape[1])
                conds = self.gather_conds(out, rows, pred2.reshape(-1), out_conds)
            cfg_iter = 1 + (cfg - 1) * (seq - mask_len) / seq if cfg_schedule == "linear" else cfg
            temp = opening_temperature if step < opening_steps else temperature
            sampled = next_level(conds, cfg_iter, temp).reshape(n, -1, dim).to(patches.dtype)
            patches.scatter_(1, pred.unsqueeze(-1).expand(-1, -1, dim), sampled)
            mask.scatter_(1, pred, False)
            masked = keep_masked
        return unpatchify(patches, self.patch_size, self.in_channels)
