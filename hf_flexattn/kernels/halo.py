"""2D halo plans for :func:`~hf_flexattn.kernels.tiles.tiled_attention`: NATTEN's neighborhood on an image grid.

The rule (NATTEN; :func:`hf_flexattn.masks.natten_axis` per axis): with dilation ``(dr, dc)`` the grid splits into
``dr·dc`` interleaved sub-grids (cells with equal ``(row mod dr, col mod dc)``), and the rule runs inside each. On a
sub-grid axis of ``L`` cells, cell ``i`` sees the ``k_eff = min(k, L)`` cells ``[s, s + k_eff)``,
``s = clamp(i − ⌊k/2⌋, 0, L − k_eff)`` (the window shifted inward at the border, never cut); a query sees a key iff
both axes allow it. ``num_global`` prefix tokens (ViT's CLS) see every token and are seen by every token.

Each sub-grid is cut into query tiles of ``th × tw`` cells (the last tile of an axis shifted inward, so every tile
is full; the few cells two tiles share are computed twice and read once). A tile's queries need only its *halo*:
``(th + k_eff − 1) × (tw + k_eff − 1)`` cells starting at the first query's window start (shifted inward like the
windows, so every halo has the same size). The tile's mask is the product of the two axes' rules; the global tokens
are appended to every tile's keys. Small tiles are the fastest (the halo of a small tile wastes fewer scores):
4 cells per axis on long axes, 8 (or 7 where 8 does not divide the axis but 7 does: 28 cells) on short ones
(:func:`tile_side`; the measurements are in docs/crossover.md).

For Swin's ``neighborhood`` the checkpoint's relative position bias is added on the tiles' pairs
(:func:`tile_relative_position_index`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks.natten import natten_window
from ..mods.relative_position import relative_position_row
from .tiles import TilePlan, build_plan, with_prefix_globals

# Tile side per axis: 4 on an axis of at least LONG_AXIS cells, else 8, unless 7 computes > 15 % fewer scores on
# that axis (each where it measured fastest: docs/crossover.md)
LONG_AXIS = 48
LONG_AXIS_TILE = 4
TILE_SIDES = (8, 7)
TILE_GAIN = 0.85


# The halo plan is chosen from this many grid cells: past its quiet-machine crossover, where it wins by about 1.5x,
# since beside other work its extra calls may each wait a scheduler slice (docs/crossover.md, ``halo`` rows)
HALO_MIN_CELLS = 32 * 32


def halo_pays(grid: tuple[int, int]) -> bool:
    """Whether the halo plan beats the dense kernel with the same mask on a grid of this size."""
    return grid[0] * grid[1] >= HALO_MIN_CELLS


def tile_side(length: int, kernel: int) -> int:
    """Query tile side on an axis of ``length`` cells: 4 on a long axis; else the side whose tiles, with their
    halos, compute the fewest scores (ceil(L/t)·t·(t + k − 1)), preferring 8 unless another is clearly cheaper."""
    if length >= LONG_AXIS:
        return LONG_AXIS_TILE
    k_eff = min(kernel, length)
    cost = {t: -(-length // t) * min(t, length) * min(t + k_eff - 1, length) for t in TILE_SIDES}
    best = min(cost, key=cost.get)
    return best if cost[best] < TILE_GAIN * cost[TILE_SIDES[0]] else TILE_SIDES[0]


def _axis_tiles(length: int, kernel: int, tile: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """One sub-grid axis of ``length`` cells: query cells (n_t, t), halo cells (n_t, h) and the rule (n_t, t, h)."""
    k_eff = min(kernel, length)
    t = min(tile, length)
    starts = list(range(0, length - t + 1, t))
    if starts[-1] + t < length:
        starts.append(length - t)  # the last tile shifted inward
    starts = torch.tensor(starts, device=device)
    halo = min(t + k_eff - 1, length)
    queries = starts[:, None] + torch.arange(t, device=device)
    window, _ = natten_window(queries, kernel, length)
    first = window[:, :1].clamp(max=length - halo)
    keys = first + torch.arange(halo, device=device)
    allowed = (keys[:, None, :] >= window[:, :, None]) & (keys[:, None, :] < window[:, :, None] + k_eff)
    return queries, keys, allowed


def natten_2d_plan(
    grid: tuple[int, int],
    kernel_size: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    num_global: int = 0,
    *,
    batch: int = 1,
    tile: tuple[int, int] | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> TilePlan:
    """Plan of NATTEN 2D over ``num_global`` global tokens followed by a row-major ``grid`` (see module docstring).

    The plan's ``cells`` (the grid cell of each tile's query and key slots, −1 for a global key) let a caller add
    a relative position bias (:func:`tile_relative_position_index`).
    """
    rows, cols = grid
    if tile is None:  # the sub-grids' axes are about rows / dilation cells long
        tile = tuple(tile_side(-(-g // d), k) for g, d, k in zip(grid, dilation, kernel_size))
    groups = []  # per dilation sub-grid: query cells (T, tq), key cells (T, K), rule (T, tq, K)
    for a in range(min(dilation[0], rows)):  # a dilation beyond the axis leaves its other sub-grids empty
        row_of = torch.arange(a, rows, dilation[0], device=device)
        q_r, k_r, ok_r = _axis_tiles(len(row_of), kernel_size[0], tile[0], device)
        for b in range(min(dilation[1], cols)):
            col_of = torch.arange(b, cols, dilation[1], device=device)
            q_c, k_c, ok_c = _axis_tiles(len(col_of), kernel_size[1], tile[1], device)
            n_r, n_c = q_r.shape[0], q_c.shape[0]
            # cells of tile (i, j): row_of[r[i]] × col_of[c[j]], row-major within the tile
            query_cells = row_of[q_r][:, None, :, None] * cols + col_of[q_c][None, :, None, :]
            key_cells = row_of[k_r][:, None, :, None] * cols + col_of[k_c][None, :, None, :]
            rule = ok_r[:, None, :, None, :, None] & ok_c[None, :, None, :, None, :]  # (i, j, th, tw, kh, kw)
            groups.append(
                (
                    query_cells.reshape(n_r * n_c, -1),
                    key_cells.reshape(n_r * n_c, -1),
                    rule.reshape(n_r * n_c, q_r.shape[1] * q_c.shape[1], k_r.shape[1] * k_c.shape[1]),
                )
            )
    # sub-grids of unequal size (a dilation that does not divide the grid) have smaller tiles: pad them to the
    # largest, padded query slots repeating the tile's first query, padded key slots masked
    tq = max(g[0].shape[1] for g in groups)
    tk = max(g[1].shape[1] for g in groups)
    query_cells, key_cells, rules = [], [], []
    for q, k, rule in groups:
        tiles, nq, nk = rule.shape
        query_cells.append(torch.cat([q, q[:, :1].expand(tiles, tq - nq)], 1))
        key_cells.append(torch.cat([k, torch.full((tiles, tk - nk), -1, device=device, dtype=k.dtype)], 1))
        padded = torch.zeros(tiles, tq, tk, dtype=torch.bool, device=device)
        padded[:, :nq, :nk] = rule
        padded[:, nq:] = padded[:, :1]
        rules.append(padded)
    query_cells, key_cells, allowed = torch.cat(query_cells), torch.cat(key_cells), torch.cat(rules)
    tiles = allowed.shape[0]
    # each cell reads one slot (cells two tiles share hold equal values: any slot will do)
    output_slots = torch.zeros(num_global + rows * cols, dtype=torch.long, device=device)
    output_slots[num_global + query_cells.reshape(-1)] = torch.arange(tiles * tq, device=device)
    key_tokens = torch.where(key_cells >= 0, key_cells + num_global, torch.zeros_like(key_cells))
    allowed, key_tokens, positions, valid = with_prefix_globals(allowed, key_tokens, num_global, batch)
    key_cells = torch.cat([key_cells, key_cells.new_full((tiles, num_global), -1)], 1)  # −1: a global key
    plan = build_plan(
        allowed.expand(batch, *allowed.shape),
        key_tokens.expand(batch, *key_tokens.shape),
        num_global + rows * cols,
        dtype,
        query_tokens=(query_cells + num_global).expand(batch, tiles, tq),
        output_slots=output_slots.expand(batch, -1),
        global_positions=positions,
        global_valid=valid,
    )
    plan.cells = (query_cells, key_cells)
    return plan


def tile_relative_position_index(cells: tuple[Tensor, Tensor], cols: int, table_window: int) -> Tensor:
    """(T, tq, K) row of a Swin relative position table ((2W − 1)² rows, W = ``table_window``) for every pair of a
    2D plan's tiles: offset (dr, dc) = query cell − key cell ↦ ``(dr + W − 1)·(2W − 1) + dc + W − 1``; pairs the
    table does not cover (|dr| or |dc| ≥ W, global keys) get row (2W − 1)², an extra zero row (no bias)."""
    query_cells, key_cells = cells
    reach, span = table_window - 1, 2 * table_window - 1
    q, k = query_cells[:, :, None], key_cells[:, None, :]
    dr, dc = q // cols - k // cols, q % cols - k % cols
    covered = (dr.abs() <= reach) & (dc.abs() <= reach) & (k >= 0)
    return torch.where(covered, relative_position_row(dr, dc, table_window), torch.full_like(dr, span * span))


def gather_tile_bias(table: Tensor, index: Tensor) -> Tensor:
    """(T, H, tq, K) bias from a ((2W − 1)², H) table and :func:`tile_relative_position_index`'s rows
    (differentiable: the table keeps its gradient)."""
    padded = torch.cat([table, table.new_zeros(1, table.shape[1])])
    return padded[index].permute(0, 3, 1, 2)
