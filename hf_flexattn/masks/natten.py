"""NATTEN's neighborhood attention as masks: clamped windows with dilation, on a line (text) or a grid (images).

Each query sees the ``kernel_size`` keys centred on it; at the borders the window is *clamped* (shifted inward, not
cut off), so every query sees exactly ``kernel_size`` keys per axis. With dilation ``d``, positions split into ``d``
interleaved groups (position mod d) and the rule applies within each group. A line shorter than the kernel is seen
whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import Mask, padded_length


def natten_window(position: Tensor, kernel_size: int, length) -> tuple[Tensor, Tensor | int]:
    """NATTEN's clamped window on a line of ``length`` positions (int or tensor): ``(start, size)`` of the keys
    ``position`` sees, ``size = min(kernel_size, length)`` (a line shorter than the kernel is seen whole) and
    ``start = clamp(position − ⌊kernel_size/2⌋, 0, length − size)`` (shifted inward at the borders, not cut off)."""
    size = length.clamp(max=kernel_size) if isinstance(length, Tensor) else min(kernel_size, length)
    start = (position - kernel_size // 2).clamp(min=0)
    limit = length - size
    return (torch.minimum(start, limit) if isinstance(limit, Tensor) else start.clamp(max=limit)), size


def natten_axis(query: Tensor, key: Tensor, length, kernel_size: int, dilation: int) -> Tensor:
    """NATTEN's rule along one axis: does ``query`` see ``key`` on a line of ``length`` positions?"""
    group = query % dilation
    group_len = ((length - group + dilation - 1) // dilation).clamp(min=1)  # positions in query's group
    qi, ki = (query // dilation).clamp(max=group_len - 1), key // dilation
    start, k_eff = natten_window(qi, kernel_size, group_len)
    return (key % dilation == group) & (ki >= start) & (ki < start + k_eff)


def generate_natten_1d(kernel_size: int, dilation: int, lengths: Tensor, ranks: Tensor | None = None) -> Mask:
    """1D neighborhood mask over each sample's real tokens.

    ``lengths`` is (B,) real tokens per sample, or a 0-dim tensor shared by every sample. ``ranks`` (B, N) gives
    each token's index among its sample's real tokens (``cumsum(real) - 1``), so padding on either side, or in
    between, does not move any window; ``None`` when there is no padding (rank = position).
    """
    per_sample = lengths.dim() == 1
    name = f"natten1d_k{kernel_size}_d{dilation}"
    # a real query's keys lie within (kernel_size - 1) * dilation real positions, plus whatever padding lies between;
    # a padded query sees the first or last window of its dilation group, up to the padding's length further away,
    # plus the dilation - 1 positions its group may end (or start) before the sample's last (first) real token
    summary = _reach_summary((kernel_size - 1) * dilation, dilation - 1, lengths)

    if ranks is None:

        def natten_1d(b, h, q, kv):
            length = lengths[b] if per_sample else lengths
            return natten_axis(q, kv, length, kernel_size, dilation)

        return Mask(natten_1d, summary, name, dynamic_cpu_compile=not per_sample)

    def natten_1d_ranked(b, h, q, kv):
        length = lengths[b] if per_sample else lengths
        return natten_axis(ranks[b, q], ranks[b, kv], length, kernel_size, dilation)

    return Mask(natten_1d_ranked, summary, name, reads_token_tables=True)


def _reach_summary(reach: int, padded_slack: int, lengths: Tensor):
    """Block summary of a mask whose keys lie within ``reach`` + (tokens past ``lengths``) positions of the query,
    + ``padded_slack`` in samples with padding: a safe superset ('any'), never claiming a block full."""

    def summary(grid):
        q_lo, q_hi = grid.q_ranges()
        kv_lo, kv_hi = grid.kv_ranges()
        nearest = torch.maximum(kv_lo - q_hi, q_lo - kv_hi).clamp(min=0)[None, None]
        beyond = (grid.kv_len - lengths).clamp(min=0).reshape(-1, 1, 1, 1)  # padding of each sample (B or 1)
        any_ = nearest <= reach + beyond + padded_slack * (beyond > 0)
        return any_, torch.zeros_like(any_)

    return summary


def generate_natten_2d(
    grid: tuple[int, int],
    kernel_size: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    num_global: int = 0,
    device=None,
) -> Mask:
    """2D neighborhood mask over ``num_global`` global tokens followed by a row-major ``grid``.

    The grid sizes are captured as tensors so that grids of the same length share one compiled kernel, as int32:
    flex hands the ``mask_mod`` int32 indices on CUDA, and an int64 capture would turn every division and remainder
    of every score into 64-bit arithmetic (emulated, several times slower on GPUs).

    Blocks are marked full exactly where the rule allows (the default block summary evaluates the rule per block):
    a 128-token block of a row-major grid spans whole rows, so a small kernel (7×7 on 56×56) allows none, and the
    ``mask_mod`` runs on every visited block; kernels that span (nearly) a whole axis get full blocks.
    """
    rows, cols = (torch.full((), v, dtype=torch.int32, device=device) for v in grid)

    def natten_2d(b, h, q, kv):
        qg, kg = (q - num_global).clamp(min=0), (kv - num_global).clamp(min=0)
        seen = natten_axis(qg // cols, kg // cols, rows, kernel_size[0], dilation[0])
        seen = seen & natten_axis(qg % cols, kg % cols, cols, kernel_size[1], dilation[1])
        return seen | (q < num_global) | (kv < num_global)

    name = f"natten2d_k{kernel_size[0]}x{kernel_size[1]}_d{dilation[0]}x{dilation[1]}"
    return Mask(natten_2d, name=name)


def generate_natten_1d_over_real_tokens(
    kernel_size: int, dilation: int, seq_len: int, key_is_real: Tensor | None, device=None
) -> Mask:
    """:func:`generate_natten_1d` for a batch: over each sample's real tokens when ``key_is_real`` (B, N) marks
    padding (on either side, or in between), over all ``seq_len`` positions otherwise. Per-token tables are built
    at ``seq_len`` rounded up to the block size (see masks/batch.py)."""
    if key_is_real is None:
        return generate_natten_1d(kernel_size, dilation, torch.full((), seq_len, dtype=torch.int32, device=device))
    # int32 tables, as flex's indices: an int64 one would make the mask's arithmetic 64-bit
    real = key_is_real.bool()
    ranks = real.cumsum(-1, dtype=torch.int32) - 1  # index among the sample's real tokens
    ranks = torch.nn.functional.pad(ranks, (0, padded_length(seq_len) - seq_len))
    return generate_natten_1d(kernel_size, dilation, real.sum(-1, dtype=torch.int32), ranks)
