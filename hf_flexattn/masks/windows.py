"""Swin's (shifted) windows as a mask over a whole feature map, and token permutations.

With a cyclic shift ``s``, Swin's windows (including the split wrap-around regions of its shift mask) are, in the
un-rolled map, the intervals ``[0, s), [s, s + w), …`` on each axis, i.e. window index ``(i + w - s) // w``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Mask


def shifted_window_index(position: Tensor, window: int, shift: int) -> Tensor:
    """Swin's window along one axis after a cyclic shift by ``shift``, expressed in un-rolled coordinates."""
    return (position + window - shift) // window


def generate_shifted_windows(grid: tuple[int, int], window: int, shift: int, num_global: int = 0, device=None) -> Mask:
    """Tokens see the tokens of their (shifted) window; ``num_global`` leading tokens are global.

    The sizes are captured as tensors, not ints, so one compiled kernel serves every window, shift and map of the
    same length (a captured int is a compile-time constant).
    """
    name = f"swin_w{window}_s{shift}"
    cols, window, shift = (torch.full((), v, dtype=torch.long, device=device) for v in (grid[1], window, shift))

    def shifted_windows(b, h, q, kv):
        qg, kg = (q - num_global).clamp(min=0), (kv - num_global).clamp(min=0)
        same_row = shifted_window_index(qg // cols, window, shift) == shifted_window_index(kg // cols, window, shift)
        same_col = shifted_window_index(qg % cols, window, shift) == shifted_window_index(kg % cols, window, shift)
        return (same_row & same_col) | (q < num_global) | (kv < num_global)

    return Mask(shifted_windows, name=name)


def generate_permuted(mask: Mask, order: Tensor) -> Mask:
    """``mask`` seen through a token permutation: position i of the sequence is token ``order[i]``."""
    base = mask.mask_mod

    def permuted(b, h, q, kv):
        return base(b, h, order[q], order[kv])

    return Mask(permuted, name=f"{mask.name}_permuted", reads_token_tables=True)
