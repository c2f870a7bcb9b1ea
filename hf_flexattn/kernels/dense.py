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
    read_values: bool = False,
) -> Tensor:
    """Attention of (B, H, N, D) tensors with ``mask`` materialised; rows with no allowed key give zeros (as flex).

    The additive mask is built once per :class:`BatchMask` and dtype (every layer of a forward shares it);
    ``read_values`` lets it look at its values to drop what is not needed (CPU, where that costs no sync).
    """
    attn_mask, has_key = (None, None) if mask is None else mask.sdpa_mask(query.dtype, read_values)
    if score_mod is not None:
        q_len, kv_len = query.shape[-2], key.shape[-2]
        bias = materialise_bias(score_mod, query.shape[0], query.shape[1], q_len, kv_len, query.device, query.dtype)
        attn_mask = bias if attn_mask is None else bias + attn_mask
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
    )
    return out if has_key is None else out * has_key


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
