"""The pixel head ("PixelLoss" in the reference): a tiny causal transformer over channels.

For one pixel with ``C`` channels the head runs a causal transformer over the tokens
``[condition, v_0, ..., v_{C-2}]`` (the reference's ``[cond, R, G, B]`` generalised; the
last channel's token is dropped because, under causal attention, no logit depends on it).
Position ``i`` predicts channel ``i`` as a 256-way categorical whose logits are the dot
product with that channel's codebook (weight-tied to the token embedding) plus a bias.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from fractalgen.model.blocks import ViTBlock, init_weights

__all__ = [
    "PixelHead",
    "channel_stats",
    "codebook_cross_entropy",
    "guide_logits",
    "normalize_channels",
    "sample_categorical",
]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(channels: int) -> tuple[Tensor, Tensor]:
    """Per-channel (mean, std) used to normalise pixel inputs of the embeddings.

    Three channels use the ImageNet statistics, as the reference does; any other channel
    count uses the average of the three for every channel.

    Args:
        channels: Number of image channels.

    Returns:
        Two float tensors of shape (channels,).
    """
    if channels == 3:
        return torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
    mean = sum(_IMAGENET_MEAN) / 3
    std = sum(_IMAGENET_STD) / 3
    return torch.full((channels,), mean), torch.full((channels,), std)


def normalize_channels(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Normalise ``x`` (..., C * k) laid out channel-major, with per-channel ``mean``/``std``."""
    c = mean.shape[0]
    xv = x.reshape(*x.shape[:-1], c, -1)
    out: Tensor = (xv - mean[:, None].to(x.dtype)) / std[:, None].to(x.dtype)
    return out.flatten(-2)


class PixelHead(nn.Module):
    """Autoregressive 8-bit model of one pixel's channels given a condition vector."""

    def __init__(
        self,
        *,
        cond_dim: int,
        width: int,
        depth: int,
        num_heads: int,
        in_channels: int,
        r_weight: float = 5.0,
    ) -> None:
        """Create the head.

        Args:
            cond_dim: Width of the incoming condition (the level above's embed dim).
            width: Transformer width.
            depth: Number of causal blocks.
            num_heads: Attention heads.
            in_channels: Channels per pixel (1 grayscale, 3 RGB, any other count works).
            r_weight: Training weight of the first channel's loss; the loss is
                ``(r_weight * L_0 + L_1 + ... + L_{C-1}) / (r_weight + C - 1)``.
        """
        super().__init__()
        self.in_channels = in_channels
        self.r_weight = r_weight
        self.cond_proj = nn.Linear(cond_dim, width)
        # One 256-entry codebook per channel; also the output projection of that channel.
        self.codebook = nn.Parameter(torch.zeros(in_channels, 256, width))
        self.logit_bias = nn.Parameter(torch.zeros(in_channels, 256))
        self.ln = nn.LayerNorm(width, eps=1e-6)
        self.blocks = nn.ModuleList(
            [ViTBlock(width, num_heads, mlp_ratio=4.0, causal=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        nn.init.normal_(self.codebook, std=0.02)
        self.apply(init_weights)

    def logits(self, cond: Tensor, values: Tensor) -> Tensor:
        """Logits of channels ``0 .. j`` given the condition and the first ``j`` channel values.

        Args:
            cond: Condition vectors (N, cond_dim).
            values: Known 8-bit values (N, j) as long, ``0 <= j < C``.

        Returns:
            fp32 logits (N, j + 1, 256).
        """
        return self._channel_logits(cond, values).transpose(0, 1)

    def _channel_logits(self, cond: Tensor, values: Tensor) -> Tensor:
        """:meth:`logits` laid out channel-major, (j + 1, N, 256), contiguous."""
        j = values.shape[1]
        x = self._features(cond, values)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # One batched matmul per channel with the bias added in place: (j+1, N, 256).
            return torch.baddbmm(
                self.logit_bias[: j + 1].float().unsqueeze(1),
                x.float().transpose(0, 1),
                self.codebook[: j + 1].float().transpose(1, 2),
            )

    def _features(self, cond: Tensor, values: Tensor) -> Tensor:
        """The final normed tokens (N, j + 1, width) that give the logits of channels 0 .. j."""
        j = values.shape[1]
        x = self.cond_proj(cond).unsqueeze(1)
        if j > 0:
            chan = torch.arange(j, device=values.device)
            x = torch.cat([x, self.codebook[chan, values].to(x.dtype)], dim=1)
        x = self.ln(x)
        for block in self.blocks:
            x = block(x)
        out: Tensor = self.norm(x)
        return out

    def forward(
        self, target: Tensor, cond: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Mean cross-entropy (nats) of the pixels ``target`` given their conditions.

        The 8-bit target is ``round(255 * target + 0.01 * N(0, 1))`` as in the reference
        (the tiny noise breaks the ties of round-half-to-even). Training mode weights the
        first channel by ``r_weight``; evaluation mode is the plain channel mean.

        Args:
            target: Pixel values (N, C) in [0, 1].
            cond: Conditions (N, k, cond_dim); only the first (the patch's own) is used.
            generator: Optional RNG for the rounding noise (on the model's device).

        Returns:
            Scalar loss.
        """
        noise = torch.randn(
            target.shape, device=target.device, dtype=torch.float32, generator=generator
        )
        values = (target.float() * 255 + 0.01 * noise).round().clamp_(0, 255).long()
        x = self._features(cond[:, 0], values[:, :-1])
        with torch.autocast(device_type=x.device.type, enabled=False):
            ce = codebook_cross_entropy(  # (C, N)
                x.float().transpose(0, 1),
                self.codebook.float(),
                self.logit_bias.float(),
                values.t(),
            )
        if self.training and self.in_channels > 1:
            w = torch.ones(self.in_channels, 1, device=ce.device)
            w[0] = self.r_weight
            return (ce * w).sum(0).mean() / w.sum()
        return ce.mean()

    def sample(
        self,
        cond: Tensor,
        *,
        cfg: float,
        guided: bool,
        temperature: float,
        filter_threshold: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample one pixel per condition, channel by channel.

        Args:
            cond: Conditions (M, k, cond_dim); when ``guided`` the first half is the
                class-conditional batch and the second half the null-class batch.
            cfg: Guidance scale: logits are ``uncond + cfg * (cond - uncond)``.
            guided: Whether ``cond`` holds the doubled classifier-free-guidance batch.
            temperature: Logits are DIVIDED by it (the reference multiplies).
            filter_threshold: With guidance, values whose conditional probability is below
                it are not boosted by guidance (see :func:`guide_logits`); 0 disables it.
            generator: Optional RNG on the model's device.

        Returns:
            Pixel values (M or M / 2, C) in [0, 1], multiples of 1/255.
        """
        c = cond[:, 0]
        n = c.shape[0] // 2 if guided else c.shape[0]
        # Channel by channel, each token goes through the blocks once: the keys and values
        # of the tokens before it are cached (the same causal attention as ``logits``).
        caches: list[list[Tensor]] = [[] for _ in self.blocks]
        values = torch.zeros(n, self.in_channels, dtype=torch.long, device=c.device)
        x = self.cond_proj(c)
        for i in range(self.in_channels):
            x = self.ln(x)
            for block, cache in zip(self.blocks, caches, strict=True):
                x = block.step(x, cache)
            h = self.norm(x)
            with torch.autocast(device_type=h.device.type, enabled=False):
                logits = torch.addmm(
                    self.logit_bias[i].float(), h.float(), self.codebook[i].float().t()
                )
            if temperature != 1.0:
                logits = logits / temperature
            if guided:
                logits = guide_logits(logits[:n], logits[n:], cfg, filter_threshold)
            sampled = sample_categorical(logits, generator)
            values[:, i] = sampled
            if i + 1 < self.in_channels:
                if guided:
                    sampled = torch.cat([sampled, sampled])
                x = self.codebook[i, sampled].to(x.dtype)
        # In the conditions' dtype (the model's): the guiding pixel feeds a Linear layer.
        return (values.float() / 255).to(c.dtype)


class _CodebookCrossEntropy(torch.autograd.Function):
    """Cross-entropy of logits ``x @ codebook^T + bias`` per channel, with the logits fused in.

    The logits (C, N, 256) are the pixel head's largest tensor, so the passes over them are
    what counts. Forward: one batched matmul (the bias as an extra column of ones in ``x``)
    and one softmax, so one ``exp`` per logit. On CPU the loss is ``-log(softmax[target])``
    (rows whose target probability is below 1e-30 are recomputed exactly); elsewhere it is
    ``max - logit[target] + log(sum)``, where ``1 / sum`` is the softmax's largest entry
    (``exp(0) / sum``, never below 1/256, so it never underflows). The only saved big
    tensor is ``softmax - onehot``; the backward reads it in two batched matmuls and scales
    the small operands by the incoming gradient instead of the big one. Same value and
    gradients as ``F.cross_entropy`` of the explicit logits, up to float rounding.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, codebook: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        x1 = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)
        weight = torch.cat([codebook, bias.unsqueeze(-1)], dim=-1)
        logits = torch.bmm(x1, weight.transpose(1, 2))
        index = target.unsqueeze(-1)
        if logits.device.type == "cpu":
            # Overwrite the logits (the CPU kernel works row by row): one big buffer less
            # to allocate and pass over. The loss is -log(softmax[target]), exact while
            # that probability is a normal float; rows where it is tiny are redone exactly.
            grad = torch._softmax(logits, -1, False, out=logits)
            del logits
            prob = grad.gather(-1, index)
            ce = prob.log().neg_()
            tiny = prob < _TINY_PROB
            if bool(tiny.any()):
                _exact_rows(ce, tiny, x1, weight, index)
        else:
            top = logits.amax(dim=-1, keepdim=True)
            picked = logits.gather(-1, index)
            grad = torch.softmax(logits, dim=-1)
            del logits
            ce = (top - picked).add_(grad.amax(dim=-1, keepdim=True).log_().neg_())
        grad.scatter_add_(-1, index, torch.full_like(ce, -1.0))
        ctx.save_for_backward(x1, codebook, grad)
        return ce.squeeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        x1, codebook, grad = ctx.saved_tensors
        g = grad_out.unsqueeze(-1)
        dx = torch.bmm(grad, codebook).mul_(g)
        # d codebook = grad^T (g x) and d bias = grad^T g, in one matmul; as (g x1)^T grad,
        # transposed after, which reads the big operand in its own layout (faster on CPU).
        d_both = torch.bmm((x1 * g).transpose(1, 2), grad).transpose(1, 2)
        return dx, d_both[..., :-1], d_both[..., -1], None


# Below this probability -log(p) of a float32 softmax loses precision: recompute the row.
_TINY_PROB = 1e-30


def _exact_rows(ce: Tensor, tiny: Tensor, x1: Tensor, weight: Tensor, index: Tensor) -> None:
    """Write ``logsumexp - logit[target]`` into ``ce`` (C, N, 1) where ``tiny`` (C, N, 1),
    recomputing those rows' logits from ``x1`` (C, N, w + 1) and ``weight`` (C, K, w + 1)."""
    for c in range(ce.shape[0]):
        rows = tiny[c, :, 0].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        logits = x1[c, rows] @ weight[c].t()
        picked = logits.gather(-1, index[c, rows])
        ce[c, rows] = torch.logsumexp(logits, dim=-1, keepdim=True) - picked


def codebook_cross_entropy(x: Tensor, codebook: Tensor, bias: Tensor, target: Tensor) -> Tensor:
    """Per-row cross-entropy of the logits ``x @ codebook^T + bias`` against ``target``.

    Args:
        x: Features (C, N, w), one batch of rows per channel.
        codebook: Output embeddings (C, K, w).
        bias: Logit biases (C, K).
        target: Long targets (C, N) in ``0 .. K - 1``.

    Returns:
        Cross-entropy (C, N) in nats, as ``F.cross_entropy(..., reduction="none")`` would
        give on the explicit logits (which are never kept).
    """
    out: Tensor = _CodebookCrossEntropy.apply(x, codebook, bias, target)
    return out


def guide_logits(
    cond_logits: Tensor, uncond_logits: Tensor, cfg: float, filter_threshold: float = 0.0
) -> Tensor:
    """Classifier-free guidance of (N, K) logits, with the reference's low-probability filter.

    The guided logits are ``uncond + cfg * (cond - uncond)``. Before mixing, wherever the
    conditional probability ``softmax(cond)`` is below ``filter_threshold`` the
    unconditional logit is raised to ``max(uncond, cond - max(cond) + max(uncond))``:
    a value the class-conditional model finds very unlikely then gains at most
    ``max(cond) - max(uncond)`` from guidance, so a large ``cfg`` cannot promote it just
    because the null class finds it even less likely. ``filter_threshold = 0`` is plain
    guidance. (The reference applies it to the temperature-scaled logits; so does ours.)

    Args:
        cond_logits: Class-conditional logits (N, K).
        uncond_logits: Null-class logits (N, K).
        cfg: Guidance scale.
        filter_threshold: Conditional-probability threshold of the filter.

    Returns:
        Guided logits (N, K).
    """
    if filter_threshold > 0:
        low = torch.softmax(cond_logits, dim=-1) < filter_threshold
        floor = (
            cond_logits
            - cond_logits.amax(dim=-1, keepdim=True)
            + uncond_logits.amax(dim=-1, keepdim=True)
        )
        uncond_logits = torch.where(low, torch.maximum(uncond_logits, floor), uncond_logits)
    return uncond_logits + cfg * (cond_logits - uncond_logits)


def sample_categorical(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``softmax(logits)`` (N, K) by inverse CDF: long (N,).

    Equivalent in distribution to ``torch.multinomial(softmax(logits), 1)`` and several
    times faster on CPU for small rows; one uniform number per row.
    """
    weights = torch.exp(logits.float() - logits.float().amax(dim=-1, keepdim=True))
    cdf = weights.cumsum(dim=-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, generator=generator) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u, right=True)
    return index.clamp_(max=logits.shape[-1] - 1).squeeze(1)
