"""Swin's (shifted) windows as a mask over a whole feature map, and the token order that makes it block-sparse.

With a cyclic shift ``s``, Swin's windows (including the split wrap-around regions of its shift mask) are, in the
un-rolled map, the intervals ``[0, s), [s, s + w), …`` on each axis, i.e. window index ``(i + w - s) // w``.

In row-major order a window's tokens are spread over ``w`` rows, so a 128-token block meets many windows; listing
each window's tokens together (:func:`window_contiguous_order`, as attention-gym's ``generate_tiled_natten`` keeps
its tile order beside its mask) lets the BlockMask skip most key blocks: :func:`generate_window_contiguous_windows`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Mask, padded_length


def shifted_window_index(position: Tensor, window: int, shift: int) -> Tensor:
    """Swin's window along one axis after a cyclic shift by ``shift``, expressed in un-rolled coordinates."""
    return (position + window - shift) // window


def generate_shifted_windows(grid: tuple[int, int], window: int, shift: int, num_global: int = 0, device=None) -> Mask:
    """Tokens see the tokens of their (shifted) window; ``num_global`` leading tokens are global.

    The sizes are captured as tensors, not ints, so one compiled kernel serves every window, shift and map of the
    same length (a captured int is a compile-time constant); int32, as flex's indices (an int64 capture would turn
    every score's integer arithmetic into 64-bit arithmetic).
    """
    name = f"swin_w{window}_s{shift}"
    cols, window, shift = (torch.full((), v, dtype=torch.int32, device=device) for v in (grid[1], window, shift))

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


def window_contiguous_order(grid: tuple[int, int], window: int, shift: int, device=None) -> Tensor:
    """Token permutation of a row-major ``grid`` that lists the tokens of each (shifted) window together, window
    after window, padded with the identity to the block multiple: position i of the sequence is token ``order[i]``.
    int32: the permuted mods read it at flex's int32 indices (an int64 table would make their arithmetic 64-bit)."""
    rows, cols = grid
    r = torch.arange(rows, device=device).view(-1, 1).expand(rows, cols)
    c = torch.arange(cols, device=device).view(1, -1).expand(rows, cols)
    win_r, win_c = shifted_window_index(r, window, shift), shifted_window_index(c, window, shift)
    key = ((win_r * (cols + window) + win_c) * rows + r) * cols + c
    order = torch.argsort(key.flatten())
    n, n_pad = rows * cols, padded_length(rows * cols)
    return torch.cat([order, torch.arange(n, n_pad, device=device)]).to(torch.int32)


def generate_window_contiguous_windows(
    grid: tuple[int, int], window: int, shift: int, device=None
) -> tuple[Mask, Tensor]:
    """:func:`generate_shifted_windows` on a ``grid`` whose tokens are in :func:`window_contiguous_order`: the mask
    and the order (the queries, keys and values are gathered with it, the output scattered back)."""
    order = window_contiguous_order(grid, window, shift, device)
    return generate_permuted(generate_shifted_windows(grid, window, shift, device=device), order), order
