"""Swin's (shifted) window attention as HF Swin computes it, with the index work done once per geometry.

HF's ``SwinLayer`` rolls the (padded) map by ``−s``, cuts it into ``w × w`` windows and attends inside each window,
adding the relative position bias and, when shifted, a mask of −100 between the *regions* of a window (tokens that
the roll brought from opposite borders). Per axis of ``L`` cells on the rolled map the regions are
``[0, L − w)``, ``[L − w, L − s)`` and ``[L − s, L)``; two tokens of a window interact without the −100 iff they are
in the same region on both axes.

Here the roll and the partition are one gather (:func:`rolled_partition_index`; its inverse brings the windows
back), and the mask is built once per geometry (:func:`hf_shift_mask`); the attention itself is one SDPA
call on (B·nW, H, w², D). :func:`shifted_window_plan` is the same pattern as a
:class:`~hf_flexattn.kernels.tiles.TilePlan` for ViT's windows (exact masking instead of −100, global prefix tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..mods.relative_position import relative_position_row
from .tiles import TilePlan, build_plan, with_prefix_globals

# HF Swin's value between shift regions (its get_attn_mask): not −inf, so the `swin` variant uses it too
HF_SHIFT_MASK_VALUE = -100.0


def rolled_partition_index(height: int, width: int, window: int, shift: int, device=None) -> Tensor:
    """(H·W,) gather index of HF's window partition of the rolled map: the row-major cell at each position of
    ``window_partition(torch.roll(x, (−s, −s)))``, flattened (``x.index_select(1, index)`` is that partition)."""
    cells = torch.arange(height * width, device=device).view(height, width)
    if shift:
        cells = torch.roll(cells, shifts=(-shift, -shift), dims=(0, 1))
    return cells.view(height // window, window, width // window, window).transpose(1, 2).reshape(-1)


def shift_regions(height: int, width: int, window: int, shift: int, device=None) -> Tensor:
    """(nW, w²) region of each token of each window on the rolled map (all 0 without a shift)."""

    def axis(length: int) -> Tensor:
        i = torch.arange(length, device=device)
        if not shift:
            return torch.zeros_like(i)
        return (i >= length - window).long() + (i >= length - shift).long()

    region = axis(height)[:, None] * 3 + axis(width)[None, :]
    return region.view(height // window, window, width // window, window).transpose(1, 2).reshape(-1, window * window)


def hf_shift_mask(height: int, width: int, window: int, shift: int, dtype, device=None) -> Tensor | None:
    """HF's additive shift mask, (nW, 1, w², w²): −100 between different regions of a window, else 0; None when
    unshifted."""
    if not shift:
        return None
    region = shift_regions(height, width, window, shift, device)
    different = region[:, :, None] != region[:, None, :]
    mask = torch.zeros(different.shape, dtype=dtype, device=device).masked_fill_(different, HF_SHIFT_MASK_VALUE)
    return mask.unsqueeze(1)


def relative_position_index(window: int, table_window: int, device=None) -> Tensor:
    """(w², w²) row of a Swin bias table built for windows of ``table_window`` ≥ ``window`` for every pair of a
    ``window × window`` window: offset (dr, dc) ↦ ``(dr + W − 1)·(2W − 1) + dc + W − 1`` (HF's index when
    W = w; a smaller window reads the centre of a larger checkpoint's table)."""
    cells = torch.arange(window * window, device=device)
    dr = cells[:, None] // window - cells[None, :] // window
    dc = cells[:, None] % window - cells[None, :] % window
    return relative_position_row(dr, dc, table_window)


def shifted_window_plan(
    grid: tuple[int, int],
    window: int,
    shift: int,
    num_global: int = 0,
    *,
    batch: int = 1,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> TilePlan:
    """Plan of (shifted) windows on a row-major ``grid`` (divisible by ``window``) after ``num_global`` global
    tokens: a token sees the tokens of its window *and region* (masked exactly, not −100), and the globals."""
    rows, cols = grid
    partition = rolled_partition_index(rows, cols, window, shift, device)
    region = shift_regions(rows, cols, window, shift, device)
    tiles, n = region.shape
    allowed = region[:, :, None] == region[:, None, :]  # (nW, w², w²)
    cells = partition.view(tiles, n)
    allowed, key_tokens, positions, valid = with_prefix_globals(allowed, cells + num_global, num_global, batch)
    output_slots = torch.zeros(num_global + rows * cols, dtype=torch.long, device=device)
    output_slots[num_global + partition] = torch.arange(rows * cols, device=device)
    return build_plan(
        allowed.expand(batch, *allowed.shape),
        key_tokens.expand(batch, *key_tokens.shape),
        num_global + rows * cols,
        dtype,
        query_tokens=(cells + num_global).expand(batch, tiles, n),
        output_slots=output_slots.expand(batch, -1),
        global_positions=positions,
        global_valid=valid,
    )
