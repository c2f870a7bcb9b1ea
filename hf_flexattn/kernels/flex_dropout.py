"""Attention-probability dropout on compiled flex: CUDA's path for training with dropout past ``DENSE_MAX_ENTRIES``.

FlexAttention has no dropout, and a ``score_mod`` cannot drop a probability (it acts before the softmax normalises).
Dropout's output is still exactly two flex calls away. With P the softmax over the allowed entries and ``keep`` the
dropout mask,

    out = (P ⊙ keep) V / (1 − p) = out_kept · exp(lse_kept − lse) / (1 − p)

where ``out_kept, lse_kept`` are flex over the allowed entries that are kept (the keep mask joins the ``mask_mod``) and
``lse`` is the log-sum-exp over every allowed entry (flex on the pattern's own BlockMask). Both calls have static
shapes, skip the pattern's empty blocks, keep (B, H, N) statistics for backward, not N×N ones, and their gradients
(through the log-sum-exps too) are flex's own backward: no host sync, no Python loop, memory O(N·window).

The keep mask is a counter-based hash (lowbias32, in int32 arithmetic) of (seed, b, h, q, kv): an entry is kept where
the hash's top 24 bits are at least round(p·2²⁴), and kept entries are scaled by 1/(1 − that p), so each entry is
kept independently with probability 1 − p (p rounded to 2⁻²⁴) and the expectation is exactly preserved. The seed is
a tensor drawn from torch's generator on the device: deterministic under ``torch.manual_seed``, never read on the
host, and backward re-evaluates the same ``mask_mod`` on the same seed, so it sees the forward's mask. The draws are
not torch's Philox stream (SDPA's dropout, the dense path's, draws other masks from the same seed).

Why not the alternatives: the block-sparse path (CPU's) with fixed chunks and widths bounded by the BlockMask's static
shape gathers every key block (the lists' capacity is all of them), so it computes the whole matrix in a Python loop;
SDPA with its own dropout over fixed row chunks computes the whole matrix too and keeps every chunk's (rows × N) mask
for backward, O(N²) memory again.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from ..masks.core import _block_lists
from .flex import run_flex

KEEP_BITS = 24  # the hash bits compared with the threshold: p is applied in steps of 2⁻²⁴


def drop_threshold(dropout_p: float) -> int:
    """The hash value (of ``KEEP_BITS`` bits) below which an entry is dropped."""
    return round(dropout_p * 2**KEEP_BITS)


def keep_scale(dropout_p: float) -> float:
    """1 / (1 − the p the threshold applies): kept entries' scale, which preserves the expectation exactly."""
    threshold = drop_threshold(dropout_p)
    return 2**KEEP_BITS / (2**KEEP_BITS - threshold) if threshold < 2**KEEP_BITS else 0.0


def draw_seed(device) -> Tensor:
    """A 0-dim int32 seed drawn from torch's generator on ``device`` (stays there: no host sync)."""
    return torch.randint(0, 2**31 - 1, (), dtype=torch.int32, device=device)


def _mix(x: Tensor) -> Tensor:
    """lowbias32 (a 32-bit integer hash) on int32: right shifts made logical by masking the sign's copies; the
    multiplications wrap around as unsigned ones do."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -0x7B935975  # 0x846CA68B as a signed int32
    return x ^ ((x >> 16) & 0xFFFF)


def keep_mask(seed: Tensor, heads: int, dropout_p: float, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """Whether dropout keeps entry (b, h, q, kv): a function of the indices and the seed only (any index shapes that
    broadcast; computed in int32 whatever the indices' dtype)."""
    return _kept_above(seed, heads, drop_threshold(dropout_p), b, h, q, kv)


def _kept_above(seed: Tensor, heads: int, threshold: int, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    b, h, q, kv = (i.to(torch.int32) for i in (b, h, q, kv))
    x = _mix(seed + b * heads + h)
    x = _mix(x ^ q)
    x = _mix(x ^ kv)
    return ((x >> (32 - KEEP_BITS)) & (2**KEEP_BITS - 1)) >= threshold


def kept_block_mask(block_mask: BlockMask, seed: Tensor, heads: int, dropout_p: float) -> BlockMask:
    """``block_mask`` with the keep mask joined to its ``mask_mod``: the same blocks, every one partial (the keep mask
    is evaluated everywhere, full blocks included)."""
    pattern = block_mask.mask_mod
    threshold = drop_threshold(dropout_p)  # an int: flex refuses a float among a mask_mod's captures (torch 2.15)

    def kept(b, h, q, kv):
        return pattern(b, h, q, kv) & _kept_above(seed, heads, threshold, b, h, q, kv)

    counts, indices = _block_lists(block_mask.to_dense().bool())
    return BlockMask.from_kv_blocks(
        counts, indices, BLOCK_SIZE=block_mask.BLOCK_SIZE, mask_mod=kept, seq_lengths=block_mask.seq_lengths
    )


def flex_dropout_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    block_mask: BlockMask,
    score_mod,
    scale: float,
    dropout_p: float,
    dynamic: bool,
    pad_small_heads: bool = False,
    seed: Tensor | None = None,
) -> Tensor:
    """Attention of (B, H, N, D) tensors over ``block_mask`` with attention-probability dropout ``dropout_p``, as two
    compiled flex calls (module docstring). ``seed``: the keep mask's (default: drawn from torch's generator)."""
    seed = draw_seed(query.device) if seed is None else seed
    kept = kept_block_mask(block_mask, seed, query.shape[1], dropout_p)
    _, lse = run_flex(query, key, value, block_mask, score_mod, scale, dynamic, pad_small_heads, return_lse=True)
    out_kept, lse_kept = run_flex(query, key, value, kept, score_mod, scale, dynamic, pad_small_heads, return_lse=True)
    # rows that see no key have lse = -inf, and then lse_kept = -inf too: their weight is exp(-inf - 0) = 0
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    weight = torch.exp(lse_kept.float() - lse.float()) * keep_scale(dropout_p)
    return (out_kept.float() * weight[..., None]).to(query.dtype)
