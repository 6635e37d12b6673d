"""The AR levels' LlamaGen-style block: RMSNorm, 2D rotary embedding, SwiGLU, KV cache.

``LlamaBlock`` is a pre-norm causal block with RMSNorm, bias-free projections, 2D rotary
position embedding and a SwiGLU feed-forward, as in the reference. It supports a
key/value cache so that autoregressive sampling embeds each new token exactly once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalgen.model.dropout import Dropout

__all__ = [
    "KVCache",
    "LlamaBlock",
    "RMSNorm",
    "SwiGLU",
    "apply_rope",
    "rope_2d_table",
    "rotate_pairs",
    "swiglu_hidden_dim",
]


class RMSNorm(nn.Module):
    """Root-mean-square normalisation, computed in fp32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        """Create the norm.

        Args:
            dim: Size of the last dimension.
            eps: Added to the mean square before the reciprocal square root.
        """
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` over its last dimension."""
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def swiglu_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """Hidden size of the reference SwiGLU: ``int(8 * dim / 3)`` rounded up to ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    return hidden if hidden % multiple_of == 0 else hidden + multiple_of - hidden % multiple_of


class SwiGLU(nn.Module):
    """SwiGLU feed-forward ``w2(silu(w1 x) * w3 x)`` without biases, then dropout."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        """Create the feed-forward.

        Args:
            dim: Model width.
            dropout: Dropout on the output.
        """
        super().__init__()
        hidden = swiglu_hidden_dim(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the feed-forward."""
        out: Tensor = self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))
        return out


def rope_2d_table(
    grid: int, head_dim: int, *, base: float = 10000.0, num_prefix: int = 1
) -> Tensor:
    """Cosine/sine table of the reference's 2D rotary embedding.

    The first half of each head's rotated pairs encodes the row, the second half the column.
    The ``num_prefix`` leading (condition) tokens get an all-zero (cos, sin) entry, exactly
    as the reference (after LlamaGen) builds its table: their rotated queries and keys are
    zero, so every query scores the condition token with a constant logit of 0 while its
    value still flows through attention. (The spec calls this "zero frequency"; a true
    zero-frequency rotation would be the identity, which the reference does not do.) We keep
    the reference's entry on purpose: a level with the reference's weights then computes
    the reference's function, which the identity would change (tests/test_model_reference.py).

    Args:
        grid: Side of the square token grid.
        head_dim: Per-head width (a multiple of 4).
        base: RoPE base.
        num_prefix: Number of leading condition tokens.

    Returns:
        Float tensor (num_prefix + grid², head_dim // 2, 2) of (cos, sin).
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(grid, dtype=torch.float32)
    f = torch.outer(t, freqs)
    angles = torch.cat(
        [f[:, None, :].expand(-1, grid, -1), f[None, :, :].expand(grid, -1, -1)], dim=-1
    ).flatten(0, 1)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([torch.zeros(num_prefix, head_dim // 2, 2), table], dim=0)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate adjacent pairs of ``x`` (B, H, N, hd) by ``table`` (N, hd // 2, 2), in fp32.

    The pairs as complex numbers times ``cos + i sin``: the products and sums of
    :func:`rotate_pairs` in one vectorised kernel (and one in backward) instead of a dozen
    elementwise ops, about ten times faster on CPU for the AR levels' training pass.
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    odd = pairs.storage_offset() % 2 or any(st % 2 for st in pairs.stride()[:-1])
    if pairs.stride(-1) != 1 or odd:
        pairs = pairs.contiguous()  # view_as_complex needs (re, im) side by side
    turn = torch.view_as_complex(table.float().contiguous())
    return torch.view_as_real(torch.view_as_complex(pairs) * turn).flatten(-2).type_as(x)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs of ``x`` (..., hd) by angles given as ``cos``/``sin`` tensors that
    broadcast against (..., hd // 2); computed in fp32 and cast back to ``x``'s dtype."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).type_as(x)


class KVCache:
    """Per-block key/value buffers for incremental causal decoding (one slot per position)."""

    def __init__(self) -> None:
        """Create an empty cache; :meth:`LlamaBlock.forward` fills it position by position."""
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, pos: int, k: Tensor, v: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
        """Write ``k``/``v`` (B, H, n, hd) at ``pos`` and return every cached position so far."""
        if self.k is None or self.v is None:
            b, h, _, hd = k.shape
            self.k = k.new_zeros(b, h, max_len, hd)
            self.v = v.new_zeros(b, h, max_len, hd)
        n = k.shape[2]
        self.k[:, :, pos : pos + n] = k
        self.v[:, :, pos : pos + n] = v
        return self.k[:, :, : pos + n], self.v[:, :, : pos + n]


class LlamaBlock(nn.Module):
    """Causal LlamaGen-style block: RMSNorm, bias-free qkv + RoPE attention, SwiGLU.

    As in the reference, attention probabilities get no dropout; the attention output
    and the feed-forward output get ``dropout``.
    """

    def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0) -> None:
        """Create the block.

        Args:
            dim: Model width.
            num_heads: Attention heads (``dim / num_heads`` a multiple of 4 for 2D RoPE).
            dropout: Residual dropout after attention and feed-forward.
        """
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention_norm = RMSNorm(dim)
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.resid_dropout = Dropout(dropout)
        self.ffn_norm = RMSNorm(dim)
        self.feed_forward = SwiGLU(dim, dropout)

    def forward(self, x: Tensor, rope: Tensor) -> Tensor:
        """Apply the block to a whole causal sequence.

        Args:
            x: Tokens (B, n, D).
            rope: RoPE table rows of those positions (n, hd // 2, 2).

        Returns:
            Tokens (B, n, D).
        """
        b, n, d = x.shape
        qkv = self.wqkv(self.attention_norm(x))
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Queries and keys rotated in one go (the same elementwise arithmetic as one by one).
        q, k = apply_rope(qkv[:2], rope).unbind(0)
        out = F.scaled_dot_product_attention(q, k, qkv[2], is_causal=True)
        h = x + self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, n, d)))
        y: Tensor = h + self.feed_forward(self.ffn_norm(h))
        return y

    def step(
        self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache, pos: int, max_len: int
    ) -> Tensor:
        """Inference (no dropout) on one new token per row at position ``pos``.

        Equals :meth:`forward` on the whole sequence at that position: the token attends to
        the keys and values of positions ``0 .. pos`` kept in ``cache``, which it extends.

        Args:
            x: The new tokens (B, D).
            cos: Cosines of the position's RoPE angles (hd // 2,).
            sin: Sines of the position's RoPE angles (hd // 2,).
            cache: This block's key/value cache.
            pos: Position of the new token.
            max_len: Sequence length the cache must hold.

        Returns:
            Tokens (B, D).
        """
        b, d = x.shape
        h, hd = self.num_heads, self.head_dim
        qkv = self.wqkv(self.attention_norm(x))
        qk = rotate_pairs(qkv[:, : 2 * d].view(b, 2, h, hd), cos, sin)
        keys, values = cache.update(
            pos, qk[:, 1].unsqueeze(2), qkv[:, 2 * d :].view(b, h, 1, hd), max_len
        )
        out = F.scaled_dot_product_attention(qk[:, 0].unsqueeze(2), keys, values)
        x = x + self.wo(out.view(b, d))
        ff, normed = self.feed_forward, self.ffn_norm(x)
        y: Tensor = x + ff.w2(F.silu(ff.w1(normed)) * ff.w3(normed))
        return y
