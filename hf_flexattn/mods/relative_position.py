"""Swin's relative position bias as a ``score_mod`` that reads the checkpoint's own (trainable) table."""

from __future__ import annotations

import torch
from torch import Tensor


def generate_relative_position_bias(table: Tensor, cols: int, table_window: int):
    """``score_mod`` adding Swin's bias ``table[(dr + w - 1)·(2w - 1) + dc + w - 1, head]`` for offsets
    (dr, dc) = query − key on a grid with ``cols`` columns; offsets the table does not cover get no bias."""
    reach, span, cols = (
        torch.full((), v, dtype=torch.long, device=table.device) for v in (table_window - 1, 2 * table_window - 1, cols)
    )

    def relative_position_bias(score, b, h, q, kv):
        dr = q // cols - kv // cols
        dc = q % cols - kv % cols
        covered = (dr.abs() <= reach) & (dc.abs() <= reach)
        index = (torch.clamp(dr, -reach, reach) + reach) * span + torch.clamp(dc, -reach, reach) + reach
        return score + torch.where(covered, table[index, h], torch.zeros_like(score))

    return relative_position_bias
