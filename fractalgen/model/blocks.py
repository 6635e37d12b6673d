"""Transformer building blocks shared by the FractalGen levels.

Two block families, as in the reference implementation:

* ``ViTBlock`` (here): pre-norm bidirectional (or causal) ViT block with LayerNorm
  (eps 1e-6), qkv bias, GELU MLP with ratio 4; used by the MAR levels and the pixel head.
* ``LlamaBlock`` (in :mod:`fractalgen.model.llama`, re-exported here): pre-norm causal
  block with RMSNorm, 2D rotary position embedding and SwiGLU; used by the AR levels.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention``, except on CPU
for attention with dropout in training and for the pixel head's few-token causal
attention, which are written out (see :class:`Attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalgen.model.dropout import Dropout, keep_mask
from fractalgen.model.llama import (
    KVCache,
    LlamaBlock,
    RMSNorm,
    SwiGLU,
    apply_rope,
    rope_2d_table,
    rotate_pairs,
    swiglu_hidden_dim,
)

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
    "keep_mask",
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
