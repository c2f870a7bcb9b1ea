"""Masks every family uses: full attention, key padding, sliding window and global tokens (Longformer's pieces, and
which tokens are global: :func:`global_token_flags`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .core import Mask


def generate_full() -> Mask:
    """Every query sees every key."""

    def full(b, h, q, kv):
        return (q >= 0) & (kv >= 0)

    def summary(grid):
        ones = torch.ones(1, 1, grid.num_q_blocks, grid.num_kv_blocks, dtype=torch.bool, device=grid.device)
        return ones, ones

    return Mask(full, summary, "full", dynamic_cpu_compile=True, sees_everything=True)


def _token_lookup(flags: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``lookup(b, i) = flags[b, i]``, also when ``flags`` has batch 1 and is shared by every sample."""
    flags = flags.bool()
    if flags.shape[0] == 1:
        shared = flags[0]
        return lambda b, i: shared[i]
    return lambda b, i: flags[b, i]


def generate_key_padding(key_is_real: Tensor) -> Mask:
    """Keys that are padding (``key_is_real[b, kv] == False``) are hidden from every query.

    Padded *queries* still attend (as HF's eager attention does), so no row is fully masked unless a
    sample has no real token at all.
    """
    is_real = _token_lookup(key_is_real)

    def padding(b, h, q, kv):
        return is_real(b, kv)

    return Mask(padding, lambda grid: grid.per_block(key_is_real.bool(), "kv"), "padding", reads_token_tables=True)


def generate_global_keys(is_global: Tensor) -> Mask:
    """Every query sees the global keys (``is_global[b, kv]``)."""
    lookup = _token_lookup(is_global)

    def global_keys(b, h, q, kv):
        return lookup(b, kv)

    return Mask(
        global_keys, lambda grid: grid.per_block(is_global.bool(), "kv"), "global_keys", reads_token_tables=True
    )


def generate_global_queries(is_global: Tensor) -> Mask:
    """Global queries (``is_global[b, q]``) see every key."""
    lookup = _token_lookup(is_global)

    def global_queries(b, h, q, kv):
        return lookup(b, q)

    summary = lambda grid: grid.per_block(is_global.bool(), "q")
    return Mask(global_queries, summary, "global_queries", reads_token_tables=True)


def generate_global(is_global: Tensor) -> Mask:
    """Global tokens see every key and are seen by every query (HF Longformer's global attention)."""
    return (generate_global_queries(is_global) | generate_global_keys(is_global)).renamed("global")


def generate_sliding_window(half_width: int) -> Mask:
    """``|q - kv| <= half_width``: each token sees ``half_width`` neighbours on each side."""

    def sliding(b, h, q, kv):
        return (q - kv).abs() <= half_width

    def summary(grid):
        q_lo, q_hi = grid.q_ranges()
        kv_lo, kv_hi = grid.kv_ranges()
        nearest = torch.maximum(kv_lo - q_hi, q_lo - kv_hi).clamp(min=0)
        farthest = torch.maximum(kv_hi - q_lo, q_hi - kv_lo)
        return (nearest <= half_width)[None, None], (farthest <= half_width)[None, None]

    return Mask(sliding, summary, f"sliding_w{2 * half_width}", dynamic_cpu_compile=True)


def global_token_flags(
    batch: int,
    seq_len: int,
    *,
    positions: tuple[int, ...] = (),
    global_attention_mask: Tensor | None = None,
    key_is_real: Tensor | None = None,
    device=None,
) -> Tensor:
    """(batch, seq_len) bool: which tokens are global. ``positions`` count from each sample's first real token
    (positions beyond the input are absent); ``global_attention_mask`` (0/1 per token) adds per-batch ones; a padded
    token is never global (as in HF). No tensor value is read on the host."""
    tokens = [t for t in positions if t < seq_len]
    if key_is_real is None:
        is_global = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
        for t in tokens:
            is_global[:, t] = True
    else:
        rank = key_is_real.cumsum(-1) - 1  # positions counted from each sample's first real token
        is_global = torch.zeros_like(key_is_real)
        for t in tokens:
            is_global |= rank == t
    if global_attention_mask is not None:
        is_global = is_global | global_attention_mask.bool()
    if key_is_real is not None:
        is_global = is_global & key_is_real
    return is_global
