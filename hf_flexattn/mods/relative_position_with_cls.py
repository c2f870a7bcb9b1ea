"""BEiT's relative position bias (with its three entries for the CLS token) as a ``score_mod``."""

from __future__ import annotations

import torch
from torch import Tensor


def generate_relative_position_bias_with_cls(table: Tensor, grid: tuple[int, int]):
    """``score_mod`` adding BEiT's bias over [CLS, patches of a ``grid`` (rows, cols), row-major].

    ``table`` is (num_entries, heads) for this grid (HF interpolates the checkpoint's table to it): patch pairs read
    ``table[(dr + rows - 1)·(2·cols - 1) + dc + cols - 1]`` for offsets (dr, dc) = query − key; the last three rows are
    CLS → patch, patch → CLS and CLS → CLS. Sizes are captured as tensors (one compiled kernel for every grid), int32
    as flex's indices (an int64 capture would make the arithmetic 64-bit).
    """
    rows, cols, first, last = (
        torch.full((), v, dtype=torch.int32, device=table.device) for v in (*grid, 0, table.shape[0] - 1)
    )

    def relative_position_bias_with_cls(score, b, h, q, kv):
        q_patch, kv_patch = (q - 1).clamp(min=0), (kv - 1).clamp(min=0)
        dr = q_patch // cols - kv_patch // cols
        dc = q_patch % cols - kv_patch % cols
        patch_index = (dr + rows - 1) * (2 * cols - 1) + dc + cols - 1
        # CLS rows: CLS → patch is last − 2, patch → CLS last − 1, CLS → CLS last (arithmetic, not nested
        # torch.where on scalars: inductor's CPU flex template cannot lower those)
        q_cls, kv_cls = (q == 0).to(torch.int32), (kv == 0).to(torch.int32)
        cls_index = last - 1 - q_cls + 2 * q_cls * kv_cls
        index = torch.where((q_cls + kv_cls) > 0, cls_index, patch_index)
        # positions past the sequence (a bucket's padding, never attended) stay inside the table; both bounds are
        # tensors (an int bound with a tensor one makes inductor read the tensor as a Python scalar, and fail)
        return score + table[torch.clamp(index, first, last), h]

    return relative_position_bias_with_cls
