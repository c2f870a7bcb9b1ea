"""Swin's relative position bias as a ``score_mod`` that reads the checkpoint's own (trainable) table."""

from __future__ import annotations

import torch
from torch import Tensor


def relative_position_row(dr, dc, table_window):
    """The row of a Swin bias table built for windows of ``table_window`` = W ((2W − 1)² rows) for the offset
    (dr, dc) = query − key, |dr|, |dc| < W: ``(dr + W − 1)·(2W − 1) + dc + W − 1`` (HF's relative_position_index).
    Ints or tensors (a 0-d tensor W inside a compiled ``score_mod``)."""
    reach = table_window - 1
    return (dr + reach) * (2 * table_window - 1) + dc + reach


def generate_relative_position_bias(table: Tensor, cols: int, table_window: int):
    """``score_mod`` adding Swin's bias ``table[relative_position_row(dr, dc, w), head]`` for offsets
    (dr, dc) = query − key on a grid with ``cols`` columns; offsets the table does not cover get no bias. Sizes are
    captured as int32 tensors, as flex's indices (an int64 capture would make the arithmetic 64-bit)."""
    window, reach, cols = (
        torch.full((), v, dtype=torch.int32, device=table.device) for v in (table_window, table_window - 1, cols)
    )

    def relative_position_bias(score, b, h, q, kv):
        dr = q // cols - kv // cols
        dc = q % cols - kv % cols
        covered = (dr.abs() <= reach) & (dc.abs() <= reach)
        index = relative_position_row(torch.clamp(dr, -reach, reach), torch.clamp(dc, -reach, reach), window)
        return score + torch.where(covered, table[index, h], torch.zeros_like(score))

    return relative_position_bias
