"""The :class:`Mask` type and BlockMask construction from block summaries.

A :class:`Mask` is a FlexAttention ``mask_mod`` (pure tensor code, no Python branching on index tensors) paired
with a *block summary*: for every (query block, key block) pair it says whether *any* and whether *all* of the
block's entries are allowed. The summary is computed on the block grid (N/128 × N/128 entries), so a per-batch
:class:`~torch.nn.attention.flex_attention.BlockMask` is built without ever materialising the N×N mask. Masks
combine with ``&`` and ``|``; the combined summary stays *safe*: a block marked empty is empty and a block marked
full is full (partial blocks evaluate the ``mask_mod``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
        sizes = (length - torch.arange(n_blocks, device=flags.device) * self.block_size).clamp(max=self.block_size)
        any_, all_ = counts > 0, counts == sizes
        if axis == "q":
            return any_[:, None, :, None], all_[:, None, :, None]
        return any_[:, None, None, :], all_[:, None, None, :]


BlockSummary = Callable[[BlockGrid], "tuple[Tensor, Tensor]"]


class Mask:
    """A named ``mask_mod`` with an optional block summary (see module docstring).

    ``reads_token_tables``: the ``mask_mod`` indexes a per-token tensor (``flags[b, q]``), which must cover the
    bucketed length (masks/batch.py). ``dynamic_cpu_compile``: inductor's dynamic-shape CPU template is known to
    compile this ``mask_mod`` (torch 2.13 fails on per-token tables and on some index arithmetic, e.g. the 2D
    neighborhood); other masks run with static shapes on bucketed lengths on CPU. Both combine through ``&``/``|``.
    ``sees_everything``: every query sees every key (``full``), so the dense path needs no mask at all.
    """

    def __init__(
        self,
        mask_mod: MaskMod,
        block_summary: BlockSummary | None = None,
        name: str | None = None,
        *,
        reads_token_tables: bool = False,
        dynamic_cpu_compile: bool = False,
        sees_everything: bool = False,
    ):
        self.mask_mod = mask_mod
        self.sees_everything = sees_everything
        self.block_summary = block_summary if block_summary is not None else self._dense_block_summary
        self.name = name or getattr(mask_mod, "__name__", "mask")
        self.reads_token_tables = reads_token_tables
        self.dynamic_cpu_compile = dynamic_cpu_compile and not reads_token_tables
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

        return Mask(and_mask, summary, f"{self.name}&{other.name}", **self._combined_flags(other))

    def __or__(self, other: Mask) -> Mask:
        a, b = self.mask_mod, other.mask_mod

        def or_mask(bi, h, q, kv):
            return a(bi, h, q, kv) | b(bi, h, q, kv)

        def summary(grid):
            (any_a, all_a), (any_b, all_b) = self.block_summary(grid), other.block_summary(grid)
            return any_a | any_b, all_a | all_b  # any: exact; all: a subset (safe)

        return Mask(or_mask, summary, f"({self.name}|{other.name})", **self._combined_flags(other))

    def _combined_flags(self, other: Mask) -> dict[str, bool]:
        return {
            "reads_token_tables": self.reads_token_tables or other.reads_token_tables,
            "dynamic_cpu_compile": self.dynamic_cpu_compile and other.dynamic_cpu_compile,
        }

    def renamed(self, name: str) -> Mask:
        return Mask(
            self.mask_mod,
            self.block_summary,
            name,
            reads_token_tables=self.reads_token_tables,
            dynamic_cpu_compile=self.dynamic_cpu_compile,
            sees_everything=self.sees_everything,
        )

    def _dense_block_summary(self, grid: BlockGrid) -> tuple[Tensor, Tensor]:
        """Fallback for masks without an analytic summary: evaluate one query block row at a time."""
        bs = grid.block_size
        kv_pad = grid.num_kv_blocks * bs
        b = torch.arange(grid.batch, device=grid.device)[:, None, None, None]
        h = torch.arange(grid.heads, device=grid.device)[None, :, None, None]
        kv = torch.arange(kv_pad, device=grid.device)
        kv_in = kv < grid.kv_len
        kv_idx = kv.clamp(max=grid.kv_len - 1)[None, None, None, :]
        inside = kv_in.view(grid.num_kv_blocks, bs)
        any_rows, all_rows = [], []
        for i in range(grid.num_q_blocks):
            q = torch.arange(i * bs, min((i + 1) * bs, grid.q_len), device=grid.device)
            dense = self.mask_mod(b, h, q[None, None, :, None], kv_idx).expand(grid.batch, grid.heads, len(q), kv_pad)
            blocks = dense.reshape(grid.batch, grid.heads, len(q), grid.num_kv_blocks, bs)
            any_rows.append((blocks & inside).any(-1).any(2))
            all_rows.append((blocks | ~inside).all(-1).all(2))
        return torch.stack(any_rows, 2), torch.stack(all_rows, 2)

    def dense(self, batch: int, heads: int, q_len: int, kv_len: int, device=None) -> Tensor:
        """The (batch, heads, q_len, kv_len) boolean mask (for the dense kernel path, references and plots)."""
        b = torch.arange(batch, device=device)[:, None, None, None]
        h = torch.arange(heads, device=device)[None, :, None, None]
        q = torch.arange(q_len, device=device)[None, None, :, None]
        kv = torch.arange(kv_len, device=device)[None, None, None, :]
        return self.mask_mod(b, h, q, kv).expand(batch, heads, q_len, kv_len)


def _block_lists(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """(B, H, nq, nk) booleans → (counts, indices) with the set blocks first, as BlockMask expects."""
    counts = blocks.sum(-1, dtype=torch.int32)
    order = torch.sort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).indices
    return counts, order.to(torch.int32).contiguous()


def build_block_mask(
    mask: Mask,
    q_len: int,
    kv_len: int | None = None,
    *,
    batch: int = 1,
    heads: int = 1,
    device: torch.device | str = "cpu",
    block_size: int = BLOCK_SIZE,
) -> BlockMask:
    """The BlockMask of ``mask`` from its block summary; ``batch``/``heads`` may be 1 to broadcast."""
    kv_len = q_len if kv_len is None else kv_len
    grid = BlockGrid(q_len, kv_len, batch, heads, torch.device(device), block_size)
    any_, all_ = mask.block_summary(grid)
    shape = (batch, heads, grid.num_q_blocks, grid.num_kv_blocks)
    any_ = any_.expand(shape)
    full = all_.expand(shape) & any_
    kv_num, kv_idx = _block_lists(any_ & ~full)
    full_num, full_idx = _block_lists(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask.mask_mod, seq_lengths=(q_len, kv_len)
    )


def padded_length(seq_len: int, block_size: int = BLOCK_SIZE) -> int:
    """``seq_len`` rounded up to the block size (the length of a bucket of static shapes)."""
    return -(-seq_len // block_size) * block_size


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
