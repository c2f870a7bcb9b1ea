"""DiNAT's relative position bias (NATTEN's ``rpb``) as a ``score_mod`` that reads the layer's own (trainable) table."""

from __future__ import annotations

import torch
from torch import Tensor


def generate_natten_bias(rpb: Tensor, cols: int, kernel_size: int, dilation: int, table_kernel: int):
    """``score_mod`` adding DiNAT's bias ``rpb[h, dr/d + K − 1, dc/d + K − 1]`` for the key's offset (dr, dc) from the
    query on a map with ``cols`` columns (K: the checkpoint's kernel, which sizes the table; a smaller
    ``kernel_size`` reads its centre). Offsets outside the window are masked, and clamped here only to stay in the
    table."""
    reach = table_kernel - 1
    cols_t, dilation_t = (torch.full((), v, dtype=torch.int32, device=rpb.device) for v in (cols, dilation))

    def dinat_bias(score, b, h, q, kv):
        dr = torch.div(kv // cols_t - q // cols_t, dilation_t, rounding_mode="floor")
        dc = torch.div(kv % cols_t - q % cols_t, dilation_t, rounding_mode="floor")
        return score + rpb[h, (dr + reach).clamp(0, 2 * reach), (dc + reach).clamp(0, 2 * reach)]

    return dinat_bias
