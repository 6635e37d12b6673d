"""Transformer building blocks shared by the FractalGen levels.

Two block families, as in the reference implementation:

* ``ViTBlock``: pre-norm bidirectional (or causal) ViT block with LayerNorm (eps 1e-6),
  qkv bias, GELU MLP with ratio 4; used by the MAR levels and the pixel head.
* ``LlamaBlock``: pre-norm causal block with RMSNorm, bias-free projections, 2D rotary
  position embedding and a SwiGLU feed-forward; used by the AR levels. It supports a
  key/value cache so that autoregressive sampling embeds each new token exactly once.

Every attention goes through ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Attention",
    "Dropout",
    "KVCache",
    "LlamaBlock",
    "Mlp",
    "RMSNorm",
    "SwiGLU",
    "ViTBlock",
    "apply_rope",
    "init_weights",
    "rope_2d_table",
    "rotate_pairs",
    "swiglu_hidden_dim",
]


def init_weights(module: nn.Module) -> None:
    """Reference initialisation for one module (use with ``nn.Module.apply``).

    Linear layers get xavier-uniform weights and zero bias, LayerNorms weight 1 and bias 0.
    Embedding tables, position embeddings and mask tokens are set by their owners.
    """
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# Elements of the random integers drawn at once for a dropout mask (512 KiB of int64).
_MASK_CHUNK = 1 << 16


def keep_mask(shape: tuple[int, ...], keep: float) -> Tensor:
    """The CPU dropout mask of ``F.dropout(x, 1 - keep)`` for ``x`` of ``shape``, as bools.

    ``F.dropout`` keeps an element where ``bernoulli_(keep)`` draws 1, and on CPU that draw
    is a float64 uniform ``m / 2**53`` (``m`` the low 53 bits of a 64-bit draw) compared with
    ``keep``. ``randint(0, 2**53)`` draws the same ``m`` (its range needs 64-bit draws) and
    ``m < ceil(keep * 2**53)`` is the same comparison, exactly, in integers. Drawing in
    chunks, in memory order, keeps the same stream with a small buffer; a large fresh
    buffer costs page faults on every call. The generator ends in the same state.
    """
    threshold = math.ceil(keep * 2.0**53)
    mask = torch.empty(shape, dtype=torch.bool)
    flat = mask.view(-1)
    for start in range(0, flat.numel(), _MASK_CHUNK):
        part = flat[start : start + _MASK_CHUNK]
        torch.lt(torch.randint(0, 1 << 53, part.shape), threshold, out=part)
    return mask


class Dropout(nn.Dropout):
    """``nn.Dropout`` that draws the very same mask from the same RNG state, faster on CPU.

    On CPU the mask comes from :func:`keep_mask`: the identical mask (and generator state)
    to ``F.dropout``'s in about half the time. Elsewhere ``F.dropout`` runs as usual.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Zero each element with probability ``p`` in training mode, scale the rest."""
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or self.inplace:
            out: Tensor = super().forward(x)
            return out
        keep = 1.0 - self.p
        if keep == 0.0:
            return x * 0.0
        noise = keep_mask(tuple(x.shape), keep).to(x.dtype).div_(keep)
        return x * noise

    def forward_part(
        self, x: Tensor, shape: tuple[int, ...], pick: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """Dropout of a part of a tensor whose other elements are not computed.

        ``x`` is ``pick(full)`` for a full tensor of ``shape``. The mask is drawn for the
        whole ``shape``, as :meth:`forward` on the full tensor would draw it, and ``pick``
        takes its part: the same result and the same RNG use as ``pick(forward(full))``.
        """
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.inplace:
            return x * pick(F.dropout(x.new_ones(shape), self.p, training=True))
        keep = 1.0 - self.p
        if keep == 0.0:
            return x * 0.0
        return x * pick(keep_mask(shape, keep)).to(x.dtype).div_(keep)


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


class Mlp(nn.Module):
    """ViT MLP: ``fc2(drop(gelu(fc1 x)))`` then dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        """Create the MLP.

        Args:
            dim: Input and output width.
            hidden: Hidden width.
            dropout: Dropout after the activation and after ``fc2``.
        """
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP."""
        out: Tensor = self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
        return out


# Causal sequences up to this long use Attention._attend_short_causal on CPU.
_SHORT = 4


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (ViT style, fused SDPA kernel)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ) -> None:
        """Create the attention.

        Args:
            dim: Model width (divisible by ``num_heads``).
            num_heads: Number of heads.
            qkv_bias: Whether the qkv projection has a bias.
            attn_dropout: Dropout on attention probabilities (training only).
            proj_dropout: Dropout after the output projection.
        """
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_dropout = attn_dropout
        self.attn_drop = Dropout(attn_dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_dropout)

    def forward(self, x: Tensor, *, causal: bool = False) -> Tensor:
        """Attend over the sequence ``x`` of shape (B, N, D)."""
        y: Tensor = self.proj_drop(self.proj(self.attend(x, causal=causal)))
        return y

    def attend(self, x: Tensor, *, causal: bool = False, first: int = 0) -> Tensor:
        """The attention's output before its projection, for the tokens from ``first`` on:
        (B, N - first, D) from ``x`` (B, N, D). Every token is a key and a value; only the
        wanted ones are queries (dropout masks are still drawn for all of them)."""
        b, n, d = x.shape
        dropout = self.training and self.attn_dropout > 0
        cpu = x.device.type == "cpu"
        if causal and n <= _SHORT and not dropout and cpu and first == 0:
            return self._attend_short_causal(self.qkv(x))
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if dropout and cpu:
            out = self._attend_with_dropout(q[:, :, first:], k, v, causal)
        else:
            # SDPA's causal mask and its dropout draws assume every token is a query.
            sliced = first > 0 and not causal and not dropout
            out = F.scaled_dot_product_attention(
                q[:, :, first:] if sliced else q,
                k,
                v,
                dropout_p=self.attn_dropout if self.training else 0.0,
                is_causal=causal,
            )
            if not sliced:
                out = out[:, :, first:]
        return out.transpose(1, 2).reshape(b, n - first, d)

    def _attend_short_causal(self, qkv: Tensor) -> Tensor:
        """Causal attention over a few tokens (the pixel head's channels), (B, n, 3D) -> (B, n, D).

        With n tokens of a few heads, SDPA's kernels spend their time on per-(row, head)
        bookkeeping. Here all n x n query-key products are elementwise over the width, and
        one matmul with a 0/1 (D, H) matrix sums them within each head; the same matrix,
        transposed, spreads the probabilities back over each head's values. Wide tensors,
        no per-row loops: a few times faster on CPU, forward and backward. The first token
        attends to itself alone (weight exactly 1): its output is its value.
        """
        d = qkv.shape[-1] // 3
        n = qkv.shape[1]
        q, k, v = qkv.split(d, dim=-1)
        heads = torch.eye(self.num_heads, dtype=qkv.dtype, device=qkv.device)
        heads = heads.repeat_interleave(self.head_dim, dim=0)  # (D, H)
        # Queries 1 .. n-1 against keys 0 .. n-1: (B, n - 1, n, D).
        products = (q[:, 1:] * self.head_dim**-0.5).unsqueeze(2) * k.unsqueeze(1)
        future = torch.ones(n, n, dtype=torch.bool, device=qkv.device).triu_(1)[1:]
        scores = torch.matmul(products, heads).masked_fill(future.unsqueeze(-1), float("-inf"))
        probs = torch.softmax(scores, dim=2)  # over the keys: (B, n - 1, n, H)
        rest = (torch.matmul(probs, heads.t()) * v.unsqueeze(1)).sum(2)
        return torch.cat([v[:, :1], rest], dim=1)

    def _attend_with_dropout(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """Attention with dropout on the probabilities, as SDPA computes it on CPU (its math
        path: softmax, then ``F.dropout``), the mask drawn the same way by :class:`Dropout`:
        the same result from the same RNG state, without SDPA's all-masked-row checks.
        ``q`` may hold the last queries only (B, H, Nq <= N, hd); the mask is drawn for all
        N queries and its last Nq rows are used."""
        nq, n = q.shape[-2], k.shape[-2]
        first = n - nq
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
        if causal:
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1)
            scores = scores.masked_fill(future[first:], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if first == 0:
            probs = self.attn_drop(probs)
        else:
            shape = (*probs.shape[:-2], n, n)
            probs = self.attn_drop.forward_part(probs, shape, lambda m: m[..., first:, :])
        out: Tensor = torch.matmul(probs, v)
        return out

    def step(self, x: Tensor, cache: list[Tensor]) -> Tensor:
        """Inference for one new token per row: ``x`` (B, D) attends to the keys and values
        in ``cache`` (empty, or ``[keys, values]`` of shape (B, H, t, hd)) and to itself;
        its own key and value are appended to ``cache``. Equals the causal ``forward`` on
        the whole sequence, one position at a time.
        """
        b, d = x.shape
        qkv = self.qkv(x)
        k = qkv[:, d : 2 * d].view(b, self.num_heads, 1, self.head_dim)
        v = qkv[:, 2 * d :].view(b, self.num_heads, 1, self.head_dim)
        if not cache:
            # The first token attends to itself alone: weight exactly 1, output = its value.
            cache.extend((k, v))
            out = qkv[:, 2 * d :]
        else:
            cache[0] = keys = torch.cat([cache[0], k], dim=2)
            cache[1] = values = torch.cat([cache[1], v], dim=2)
            q = qkv[:, :d].view(b, self.num_heads, 1, self.head_dim)
            out = F.scaled_dot_product_attention(q, keys, values).view(b, d)
        y: Tensor = self.proj(out)
        return y


class ViTBlock(nn.Module):
    """Pre-norm transformer block: LayerNorm(eps 1e-6), attention, LayerNorm, GELU MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        """Create the block.

        Args:
            dim: Model width.
            num_heads: Attention heads.
            mlp_ratio: MLP hidden width over ``dim``.
            attn_dropout: Dropout on attention probabilities.
            proj_dropout: Dropout after the attention projection and in the MLP.
            causal: Causal (pixel head) instead of bidirectional (MAR) attention.
        """
        super().__init__()
        self.causal = causal
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim, num_heads, qkv_bias=True, attn_dropout=attn_dropout, proj_dropout=proj_dropout
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to (B, N, D)."""
        x = x + self.attn(self.norm1(x), causal=self.causal)
        y: Tensor = x + self.mlp(self.norm2(x))
        return y

    def forward_rows(self, x: Tensor, index: Tensor | None, first: int = 0) -> Tensor:
        """The block's outputs at some tokens only, in training or evaluation mode.

        Every token still goes through the attention as a key and a value; the queries,
        the projection, the MLP and their dropouts run on the wanted tokens alone. Each
        dropout mask is drawn for all tokens and its part picked
        (:meth:`Dropout.forward_part`), so the outputs and the RNG use are those of
        :meth:`forward`.

        Args:
            x: All tokens (B, N, D).
            index: Flat indices (M,) into the B x (N - first) tokens from ``first`` on, or
                None for all of those.
            first: Tokens before it (the MAR conditions) are never wanted.

        Returns:
            ``forward(x)[:, first:].reshape(-1, D)[index]``, shape (M, D).
        """
        b, n, d = x.shape
        m = n - first
        attn, mlp = self.attn, self.mlp

        def pick(full: Tensor) -> Tensor:
            part = full.view(b, n, -1)[:, first:].reshape(b * m, -1)
            return part if index is None else part[index]

        out = attn.attend(self.norm1(x), causal=self.causal, first=first).reshape(b * m, d)
        if index is not None:
            out = out[index]
        h = pick(x) + attn.proj_drop.forward_part(attn.proj(out), (b * n, d), pick)
        y = mlp.act(mlp.fc1(self.norm2(h)))
        y = mlp.drop1.forward_part(y, (b * n, y.shape[-1]), pick)
        out = h + mlp.drop2.forward_part(mlp.fc2(y), (b * n, d), pick)
        return out

    def forward_queries(self, x: Tensor, query: Tensor) -> Tensor:
        """Inference (no dropout) of a bidirectional block for some tokens only.

        Args:
            x: All tokens (B, N, D): the keys and values.
            query: Token indices (B, q) whose outputs are wanted.

        Returns:
            The block's outputs at ``query`` (B, q, D): those of :meth:`forward`.
        """
        if self.causal:
            raise ValueError("forward_queries is for bidirectional blocks")
        b, n, d = x.shape
        attn = self.attn
        index = query.unsqueeze(-1)
        qkv = attn.qkv(self.norm1(x)).view(b, n, 3, attn.num_heads, attn.head_dim)
        q = qkv[:, :, 0].gather(1, index.unsqueeze(-1).expand(-1, -1, *qkv.shape[-2:]))
        q, k, v = q.transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        h = x.gather(1, index.expand(-1, -1, d))
        h = h + attn.proj(out.transpose(1, 2).reshape(b, -1, d))
        mlp = self.mlp
        y: Tensor = h + mlp.fc2(mlp.act(mlp.fc1(self.norm2(h))))
        return y

    def step(self, x: Tensor, cache: list[Tensor]) -> Tensor:
        """Inference (no dropout) of a causal block on one new token per row ``x`` (B, D),
        given and extending the key/value ``cache`` of the tokens before it
        (see ``Attention.step``).
        """
        x = x + self.attn.step(self.norm1(x), cache)
        mlp = self.mlp
        y: Tensor = x + mlp.fc2(mlp.act(mlp.fc1(self.norm2(x))))
        return y


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
