"""Attention masks as small named factories, and the BlockMask builder.

A :class:`Mask` is a FlexAttention ``mask_mod`` (pure tensor code, no Python branching on index tensors)
paired with a *block summary*: for every (query block, key block) pair it says whether *any* and whether
*all* of the block's entries are allowed. The summary is computed on the block grid (N/128 × N/128
entries), so a per-batch :class:`~torch.nn.attention.flex_attention.BlockMask` is built without ever
materialising the N×N mask. Masks combine with ``&`` and ``|``; the combined summary stays *safe*: a block
marked empty is empty and a block marked full is full (partial blocks evaluate the ``mask_mod``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

BLOCK_SIZE = 128

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class BlockGrid:
    """Index ranges of the query and key blocks of a (q_len × kv_len) attention matrix."""

    q_len: int
    kv_len: int
    batch: int
    heads: int
    device: torch.device
    block_size: int = BLOCK_SIZE

    @property
    def num_q_blocks(self) -> int:
        return math.ceil(self.q_len / self.block_size)

    @property
    def num_kv_blocks(self) -> int:
        return math.ceil(self.kv_len / self.block_size)

    def _ranges(self, length: int, n_blocks: int) -> tuple[Tensor, Tensor]:
        lo = torch.arange(n_blocks, device=self.device) * self.block_size
        hi = (lo + self.block_size - 1).clamp(max=length - 1)
        return lo, hi

    def q_ranges(self) -> tuple[Tensor, Tensor]:
        """First and last query index of each query block, shape (nq, 1)."""
        lo, hi = self._ranges(self.q_len, self.num_q_blocks)
        return lo[:, None], hi[:, None]

    def kv_ranges(self) -> tuple[Tensor, Tensor]:
        """First and last key index of each key block, shape (1, nk)."""
        lo, hi = self._ranges(self.kv_len, self.num_kv_blocks)
        return lo[None, :], hi[None, :]

    def per_block(self, flags: Tensor, axis: str) -> tuple[Tensor, Tensor]:
        """Reduce per-token flags (B, L) to per-block (any, all), shaped to broadcast on (B, 1, nq, nk)."""
        n_blocks = self.num_q_blocks if axis == "q" else self.num_kv_blocks
        length = flags.shape[-1]
        padded = torch.zeros(flags.shape[0], n_blocks * self.block_size, dtype=torch.int32, device=flags.device)
        padded[:, :length] = flags.to(torch.int32)
        counts = padded.view(flags.shape[0], n_blocks, self.block_size).sum(-1)
        sizes = torch.full((n_blocks,), self.block_size, device=flags.device)
        sizes[-1] = length - (n_blocks - 1) * self.block_size
        any_, all_ = counts > 0, counts == sizes
        if axis == "q":
            return any_[:, None, :, None], all_[:, None, :, None]
        return any_[:, None, None, :], all_[:, None, None, :]


BlockSummary = Callable[[BlockGrid], "tuple[Tensor, Tensor]"]


class Mask:
    """A named ``mask_mod`` with an optional block summary (see module docstring)."""

    def __init__(self, mask_mod: MaskMod, block_summary: BlockSummary | None = None, name: str | None = None):
        self.mask_mod = mask_mod
        self.block_summary = block_summary if block_summary is not None else self._dense_block_summary
        self.name = name or getattr(mask_mod, "__name__", "mask")
        mask_mod.__name__ = self.name

    def __repr__(self) -> str:
        return f"Mask({self.name})"

    def __and__(self, other: Mask) -> Mask:
        a, b = self.mask_mod, other.mask_mod

        def and_mask(bi, h, q, kv):
            return a(bi, h, q, kv) & b(bi, h, q, kv)

        def summary(grid):
            (any_a, all_a), (any_b, all_b) = self.block_summary(grid), other.block_summary(grid)
            return any_a & any_b, all_a & all_b  # any: a superset (safe); all: exact

        return Mask(and_mask, summary, f"{self.name}&{other.name}")

    def __or__(self, other: Mask) -> Mask:
        a, b = self.mask_mod, other.mask_mod

        def or_mask(bi, h, q, kv):
            return a(bi, h, q, kv) | b(bi, h, q, kv)

        def summary(grid):
            (any_a, all_a), (any_b, all_b) = self.block_summary(grid), other.block_summary(grid)
            return any_a | any_b, all_a | all_b  # any: exact; all: a subset (safe)

        return Mask(or_mask, summary, f"({self.name}|{other.name})")

    def _dense_block_summary(self, grid: BlockGrid) -> tuple[Tensor, Tensor]:
        """Fallback for masks without an analytic summary: evaluate one query block row at a time."""
        bs = grid.block_size
        kv_pad = grid.num_kv_blocks * bs
        b = torch.arange(grid.batch, device=grid.device)[:, None, None, None]
        h = torch.arange(grid.heads, device=grid.device)[None, :, None, None]
        kv = torch.arange(kv_pad, device=grid.device)
        kv_in = kv < grid.kv_len
        kv_idx = kv.clamp(max=grid.kv_len - 1)[None, None, None, :]
        any_rows, all_rows = [], []
        for i in range(grid.num_q_blocks):
            q = torch.arange(i * bs, min((i + 1) * bs, grid.q_len), device=grid.device)
            dense = self.mask_mod(b, h, q[None, None, :, None], kv_idx).expand(grid.batch, grid.heads, len(q), kv_pad)
            blocks = dense.reshape(grid.batch, grid.heads, len(q), grid.num_kv_blocks, bs)
            inside = kv_in.view(grid.num_kv_blocks, bs)
            any_rows.append((blocks & inside).any(-1).any(2))
            all_rows.append((blocks | ~inside).all(-1).all(2))
        return torch.stack(any_rows, 2), torch.stack(all_rows, 2)

    def dense(self, batch: int, heads: int, q_len: int, kv_len: int, device=None) -> Tensor:
        """The (batch, heads, q_len, kv_len) boolean mask, for references and tests."""
        b = torch.arange(batch, device=device)[:, None, None, None]
        h = torch.arange(heads, device=device)[None, :, None, None]
        q = torch.arange(q_len, device=device)[None, None, :, None]
        kv = torch.arange(kv_len, device=device)[None, None, None, :]
        return self.mask_mod(b, h, q, kv).expand(batch, heads, q_len, kv_len)


# ---------------------------------------------------------------------------------------------- factories


def generate_full() -> Mask:
    """Every query sees every key."""

    def full(b, h, q, kv):
        return (q >= 0) & (kv >= 0)

    def summary(grid):
        ones = torch.ones(1, 1, grid.num_q_blocks, grid.num_kv_blocks, dtype=torch.bool, device=grid.device)
        return ones, ones

    return Mask(full, summary, "full")


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

    return Mask(padding, lambda grid: grid.per_block(key_is_real.bool(), "kv"), "padding")


def generate_global_keys(is_global: Tensor) -> Mask:
    """Every query sees the global keys (``is_global[b, kv]``)."""
    lookup = _token_lookup(is_global)

    def global_keys(b, h, q, kv):
        return lookup(b, kv)

    return Mask(global_keys, lambda grid: grid.per_block(is_global.bool(), "kv"), "global_keys")


def generate_global_queries(is_global: Tensor) -> Mask:
    """Global queries (``is_global[b, q]``) see every key."""
    lookup = _token_lookup(is_global)

    def global_queries(b, h, q, kv):
        return lookup(b, q)

    return Mask(global_queries, lambda grid: grid.per_block(is_global.bool(), "q"), "global_queries")


def generate_global(is_global: Tensor) -> Mask:
    """Global tokens see every key and are seen by every query (HF Longformer's global attention)."""
    mask = generate_global_queries(is_global) | generate_global_keys(is_global)
    mask.name = mask.mask_mod.__name__ = "global"
    return mask


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

    return Mask(sliding, summary, f"sliding_w{2 * half_width}")


# ---------------------------------------------------------------------------------------------- BlockMask


def _dense_to_lists(dense: Tensor) -> tuple[Tensor, Tensor]:
    """(B, H, nq, nk) booleans → (counts, indices) with the set blocks first, as BlockMask expects."""
    counts = dense.sum(-1, dtype=torch.int32)
    order = torch.sort(dense.to(torch.int8), dim=-1, descending=True, stable=True).indices
    return counts, order.to(torch.int32).contiguous()


def build_block_mask(
    mask: Mask,
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    device: torch.device | str,
    block_size: int = BLOCK_SIZE,
) -> BlockMask:
    """Build the BlockMask of ``mask`` from its block summary; ``batch``/``heads`` may be 1 to broadcast."""
    grid = BlockGrid(q_len, kv_len, batch, heads, torch.device(device), block_size)
    any_, all_ = mask.block_summary(grid)
    shape = (batch, heads, grid.num_q_blocks, grid.num_kv_blocks)
    any_ = any_.expand(shape)
    full = all_.expand(shape) & any_
    partial = any_ & ~full
    kv_num, kv_idx = _dense_to_lists(partial)
    full_num, full_idx = _dense_to_lists(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask.mask_mod, seq_lengths=(q_len, kv_len)
    )


def padded_length(seq_len: int, block_size: int = BLOCK_SIZE) -> int:
    """Lengths are bucketed to the block size: one compiled kernel per bucket, not per length."""
    return -(-seq_len // block_size) * block_size


def build_padded_block_mask(
    mask: Mask, seq_len: int, device, key_is_real: Tensor | None = None, batch: int = 1, kv_len: int | None = None
) -> BlockMask:
    """BlockMask of ``mask`` at the bucketed length; keys past ``kv_len`` (default ``seq_len``) or marked
    False in ``key_is_real`` (B or 1, kv_len) are masked."""
    kv_len = seq_len if kv_len is None else kv_len
    q_pad, kv_pad = padded_length(seq_len), padded_length(kv_len)
    if key_is_real is None and kv_pad != kv_len:
        key_is_real = torch.ones(1, kv_len, dtype=torch.bool, device=device)
    if key_is_real is not None:
        real = torch.zeros(key_is_real.shape[0], kv_pad, dtype=torch.bool, device=device)
        real[:, :kv_len] = key_is_real
        mask = mask & generate_key_padding(real)
    return build_block_mask(mask, batch, 1, q_pad, kv_pad, device)


def block_mask_to_dense_blocks(block_mask: BlockMask) -> tuple[Tensor, Tensor]:
    """(partial, full) as (B, H, nq, nk) booleans: what a BlockMask says about each block, for tests/plots."""
    def to_dense(num, idx):
        nk = math.ceil(block_mask.seq_lengths[1] / block_mask.BLOCK_SIZE[1])
        out = torch.zeros(*idx.shape[:-1], nk + 1, dtype=torch.bool, device=idx.device)
        valid = torch.arange(idx.shape[-1], device=idx.device) < num[..., None]
        out.scatter_(-1, torch.where(valid, idx.long(), nk), True)
        return out[..., :nk]

    partial = to_dense(block_mask.kv_num_blocks, block_mask.kv_indices)
    if block_mask.full_kv_num_blocks is None:
        return partial, torch.zeros_like(partial)
    return partial, to_dense(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
