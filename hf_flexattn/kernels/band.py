"""1D band plans for :func:`~hf_flexattn.kernels.tiles.tiled_attention`: text patterns whose keys lie near the query.

Queries are cut into chunks of ``c`` consecutive slots; a chunk's keys are one contiguous range that covers every
window in it, the same length for every chunk (shifted inward at the ends, like NATTEN's windows), plus the global
keys. One batched SDPA call then computes every chunk; see :mod:`.tiles` for why that is exact. Without global key
columns a chunk's slots are consecutive tokens, so the kernel reads the interior chunks as strided views of q/k/v
(no copy, :class:`~.tiles.StridedRun`) and small chunks pay (:func:`strided_chunk`); with them the keys are gathered
and larger chunks pay (:func:`band_chunk`).

* :func:`sliding_window_plan` — HF Longformer's pattern: query ``i`` sees key ``j`` iff ``|i − j| ≤ w/2``, plus the
  global tokens (each sees every real key and is seen by every query); padded keys are never seen. A chunk
  ``[s, s + c)`` needs keys ``[s − w/2, s + c − 1 + w/2]``: ``K = c + w`` keys (fewer for short inputs).
* :func:`natten_1d_plan` — NATTEN's rule over each sample's real tokens: with dilation ``d`` the real tokens split
  into ``d`` groups by rank (``rank mod d``); in a group of ``L`` tokens, token ``i`` sees the ``k_eff = min(k, L)``
  tokens ``[s, s + k_eff)`` with ``s = clamp(i − ⌊k/2⌋, 0, L − k_eff)``. Padding (on either side, or in between)
  takes no part: each group's real tokens are gathered into consecutive slots (one gather), chunked, and each token
  reads its output back from its slot. A chunk ``[i0, i0 + c)`` needs ``K = c + k − 1`` keys from ``s(i0)`` on.
  Padded tokens read the output of their sample's last real token (what the flex path gives right padding).

Plans depend on the lengths, the padding and the global flags; a plan without padding or per-sample globals
depends on the shape only and is cached by its caller.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..masks.natten import natten_window
from .tiles import TilePlan, build_plan

# Query chunk of the band plans: about half the window, 32 … 256. Measured (kernel alone, fp32, 1 thread,
# B=1, H=12, D=32, chunks 32 … 512): window 64 → 64 best; 256 → 64 (128: 5–8 % slower); 512 → 256 (or 128, within
# 10 %); 1,024 and 2,048 → 256; NATTEN 1D k=7 and 31 → 32 (64: ~10 % slower).
MAX_CHUNK = 256
MIN_CHUNK = 32


def band_chunk(window: int) -> int:
    """Query chunk for a band of ``window`` keys around each query whose tiles are gathered (a band with global key
    columns): half the window rounded to a power of two, 32 … 256."""
    return max(MIN_CHUNK, min(MAX_CHUNK, (1 << max(0, (window - 1).bit_length())) // 2))


def strided_chunk(window: int) -> int:
    """Query chunk for a band without global key columns, whose tiles the kernel reads as strided views (no copy,
    kernels/tiles.py): a sixteenth of the window rounded to a power of two, 32 … 256. Small tiles waste fewer
    scores (a tile computes ``c + window`` keys per query for ``window + 1`` needed) and cost nothing to gather;
    measured (kernel alone, fp32, B=1, D=64, 8,192 tokens): window 128 (H=6) and 512 (H=12): 32 best (64: 5–15 %
    slower, 256: 30–100 %); window 2,048: 128–256."""
    return max(MIN_CHUNK, min(MAX_CHUNK, (1 << max(0, (window - 1).bit_length())) // 16))


def band_pays(seq_len: int, window: int) -> bool:
    """Whether NATTEN 1D's band plan (kernel ``window``) beats the dense kernel with the same mask: when a chunk's
    key range (chunk + window) is shorter than the input. Measured (same set-up as ``band_chunk``): k=7: even at 128
    tokens (1.0×), 1.9× at 256."""
    return seq_len > band_chunk(window) + window


# the sliding window's band pays from this many tokens past its window, or a second window's if larger (see below)
SLIDING_WINDOW_MIN_EXTRA = 1024


def sliding_window_pays(seq_len: int, window: int) -> bool:
    """Whether the sliding-window band plan (``window`` keys around each query, ± window/2) beats the dense kernel with
    the same mask: from ``window + max(window, SLIDING_WINDOW_MIN_EXTRA)`` tokens. Measured after the tiles became
    chunked and strided (2 torch threads, B=1, H=12, fp32; band time vs dense SDPA's): window 512, D 64 (the benchmark's
    kernel section): 0.55× at 1,024, 0.70× at 1,280, 0.98× at 1,536, 1.41× at 2,048; D 32 with a global token: window 64
    0.65× at 512; 128: 0.73× at 512, 1.11× at 768; 256: 0.89× at 768, 1.15× at 1,024; 1,024: 0.81× at 1,536, 1.09× at
    2,048. (Before, at one thread, the band paid from chunk + window: 768 tokens at window 512.)"""
    return seq_len >= window + max(window, SLIDING_WINDOW_MIN_EXTRA)


def _global_positions(is_global: Tensor) -> tuple[Tensor, Tensor]:
    """(B, N) flags → (B, G) positions of each sample's global tokens (ascending, padded) and their validity."""
    counts = is_global.sum(-1)
    count = int(counts.max()) if is_global.numel() else 0
    positions = torch.sort(is_global.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :count]
    valid = torch.arange(count, device=is_global.device) < counts[:, None]
    return positions, valid


def sliding_window_plan(
    seq_len: int,
    half_width: int,
    *,
    batch: int = 1,
    key_is_real: Tensor | None = None,
    is_global: Tensor | None = None,
    chunk: int | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> TilePlan:
    """Plan of ``|i − j| ≤ half_width`` + global tokens + key padding over ``seq_len`` tokens.

    ``key_is_real`` (B, N) bool or None (no padding); ``is_global`` (B or 1, N) bool or None, already restricted
    to real tokens (a padded token is never global). Per-sample globals may differ in number.
    """
    n, half = seq_len, half_width
    positions = valid = None
    if is_global is not None:
        is_global = is_global.bool().expand(batch, n)
        positions, valid = _global_positions(is_global)
    with_global_keys = positions is not None and positions.shape[1] > 0
    # global keys apart (kernels/tiles.py) where every sample has as many: the tiles keep only the band and are read
    # as strided views; else the global keys are key columns of every tile, gathered
    keys_apart = with_global_keys and bool(valid.all())
    with_global_columns = with_global_keys and not keys_apart
    c = min(chunk or (band_chunk if with_global_columns else strided_chunk)(2 * half), n)
    tiles = math.ceil(n / c)
    tk = min(c + 2 * half, n)
    arange = lambda m: torch.arange(m, device=device)
    q_pos = (arange(tiles)[:, None] * c + arange(c)).clamp(max=n - 1)  # slots past the end act as the last token
    k_pos = (arange(tiles) * c - half).clamp(min=0, max=n - tk)[:, None] + arange(tk)  # (T, K)
    # a tile's rule depends only on where its keys start relative to its queries (and, for the last tile, on the
    # slots past the end): computed once per distinct tile, a handful however long the input
    offset = k_pos[:, 0] - arange(tiles) * c + (q_pos[:, -1] != arange(tiles) * c + c - 1) * (3 * n)
    _, tile_pattern = torch.unique(offset, return_inverse=True)
    first = torch.full((int(tile_pattern.max()) + 1,), tiles, device=device)
    first = first.scatter_reduce(0, tile_pattern, arange(tiles), "amin")  # a tile of each pattern
    keys = k_pos[first, None, :]
    # |i − j| ≤ half as two comparisons of broadcast (U, c, 1) bounds: no (U, c, K) integer temporary
    allowed = (keys >= q_pos[first, :, None] - half) & (keys <= q_pos[first, :, None] + half)  # (U, c, K)
    keys_seen = None  # (B, T, K) keys the band may show: real, and not global (those get a column of their own)
    if key_is_real is not None:
        keys_seen = key_is_real.bool()[:, k_pos]
    if is_global is not None:
        not_global = ~is_global[:, k_pos]
        keys_seen = not_global if keys_seen is None else keys_seen & not_global
    key_tokens = k_pos.expand(batch, tiles, tk)
    if with_global_columns:
        count = positions.shape[1]
        key_tokens = torch.cat([key_tokens, positions[:, None, :].expand(batch, tiles, count)], -1)
        allowed = torch.cat([allowed, allowed.new_ones(allowed.shape[0], c, count)], -1)
        keys_seen = torch.cat([keys_seen, valid[:, None, :].expand(batch, tiles, count)], -1)
    return build_plan(
        allowed,
        key_tokens,
        n,
        dtype,
        tile_pattern=tile_pattern.expand(batch, tiles),
        key_seen=keys_seen,
        global_positions=positions,
        global_valid=valid,
        key_is_real=key_is_real,
        global_keys=positions if keys_apart else None,
    )


def natten_1d_plan(
    seq_len: int,
    kernel_size: int,
    dilation: int = 1,
    *,
    batch: int = 1,
    key_is_real: Tensor | None = None,
    chunk: int | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> TilePlan:
    """Plan of NATTEN 1D (clamped windows, dilation) over each sample's real tokens (``key_is_real`` (B, N))."""
    n, k, d = seq_len, kernel_size, dilation
    arange = lambda m: torch.arange(m, device=device)
    if key_is_real is None:
        lengths = torch.full((batch,), n, device=device)
        token_of_rank = arange(n).expand(batch, n)
        rank_of_token = token_of_rank
    else:
        real = key_is_real.bool()
        lengths = real.sum(-1)
        token_of_rank = torch.sort((~real).to(torch.int8), dim=-1, stable=True).indices  # real tokens first
        last = (lengths - 1).clamp(min=0)[:, None]
        rank_of_token = torch.where(real, real.long().cumsum(-1) - 1, last)  # padding reads the last real token
    capacity = math.ceil(n / d)  # the most tokens a group can hold
    c = min(chunk or band_chunk(k), capacity)
    per_group = math.ceil(capacity / c)
    slots = per_group * c  # slots of each group
    tk = min(c + k - 1, slots)
    tiles = d * per_group

    group = arange(tiles) // per_group  # (T,)
    i = (arange(tiles) % per_group)[:, None] * c + arange(c)  # (T, c) position within the group
    real_len = ((lengths[:, None] - arange(d) + d - 1) // d).clamp(min=0)[:, group]  # (B, T) real tokens in group
    group_len = real_len.clamp(min=1)[:, :, None]  # NATTEN's rule, as masks.natten_axis computes it
    centre = torch.minimum(i.expand(batch, tiles, c), group_len - 1)
    start, k_eff = natten_window(centre, k, group_len)  # (B, T, c)
    first = torch.minimum(start[:, :, :1], torch.full_like(start[:, :, :1], slots - tk))  # (B, T, 1)
    j = first + arange(tk)  # (B, T, K) key position within the group
    allowed = (j[:, :, None, :] >= start[..., None]) & (j[:, :, None, :] < (start + k_eff)[..., None])
    allowed = allowed & (j < real_len[..., None])[:, :, None, :]

    def tokens(position: Tensor) -> Tensor:  # group position → token (0 for slots past the group's real tokens)
        rank = (group.view(1, tiles, 1) + position * d).clamp(max=n - 1)
        token = token_of_rank.gather(1, rank.reshape(batch, -1)).view(position.shape)
        return torch.where(position < real_len[..., None], token, torch.zeros_like(token))

    query_tokens = output_slots = None
    if key_is_real is not None or d > 1:
        query_tokens = tokens(i.expand(batch, tiles, c))
        output_slots = (rank_of_token % d) * slots + rank_of_token // d
    return build_plan(
        allowed,
        tokens(j),
        n,
        dtype,
        query_tokens=query_tokens,
        output_slots=output_slots,
    )
