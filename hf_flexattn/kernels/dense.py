"""The dense path: a variant's exact mask (and bias) materialised and handed to PyTorch's fused SDPA.

Where the mask covers most of the matrix or the input is short, this computes the same function as flex faster
(measured crossovers in ``kernels/__init__.py``); it also runs what flex cannot: dtypes its templates do not
compile (float64), attention-probability dropout, and deterministic gradients of a bias table.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import BatchMask


def materialise_bias(score_mod, batch: int, heads: int, q_len: int, kv_len: int, device, dtype) -> Tensor:
    """``score_mod`` evaluated on zero scores: the additive bias it applies, (B or 1, H or 1, q_len, kv_len).
    Differentiable with respect to the tensors the ``score_mod`` reads (a bias table)."""
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=device).view(1, -1, 1, 1)
    q = torch.arange(q_len, device=device).view(1, 1, -1, 1)
    kv = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
    return score_mod(torch.zeros((), dtype=dtype, device=device), b, h, q, kv)


def dense_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: BatchMask | None,
    score_mod=None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Attention of (B, H, N, D) tensors with ``mask`` materialised; rows with no allowed key give zeros (as flex)."""
    q_len, kv_len = query.shape[-2], key.shape[-2]
    allowed = None if mask is None else mask.dense()
    if score_mod is None and allowed is None:
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, scale=scale)
    has_key = None
    if allowed is not None:
        has_key = allowed.any(-1, keepdim=True)
        allowed = allowed | ~has_key  # SDPA would give NaN for empty rows: let them attend, zero them after
    attn_mask = allowed
    if score_mod is not None:
        bias = materialise_bias(score_mod, query.shape[0], query.shape[1], q_len, kv_len, query.device, query.dtype)
        attn_mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
    )
    return out if has_key is None else out * has_key.to(out.dtype)


def attention_probabilities(
    query: Tensor, key: Tensor, mask: BatchMask | None, score_mod=None, scale: float | None = None
) -> Tensor:
    """The (B, H, q_len, kv_len) attention probabilities a variant computes (``output_attentions=True``)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = (query @ key.transpose(-1, -2)) * scale
    if score_mod is not None:
        scores = scores + materialise_bias(
            score_mod, query.shape[0], query.shape[1], query.shape[-2], key.shape[-2], query.device, scores.dtype
        )
    if mask is not None:
        scores = scores.masked_fill(~mask.dense(), float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)
