"""The structured CPU kernels (kernels/tiles.py and its plans: band, halo, windows) against the dense rules, in
float64: outputs and gradients, padding on either side, dilation, global tokens, odd grids and lengths."""

import dataclasses

import pytest
import torch

from hf_flexattn.kernels import tiles
from hf_flexattn.kernels.band import (
    _global_positions,
    band_chunk,
    band_pays,
    natten_1d_plan,
    sliding_window_pays,
    sliding_window_plan,
    strided_chunk,
)
from hf_flexattn.kernels.halo import (
    HALO_MIN_CELLS,
    gather_tile_bias,
    halo_pays,
    natten_2d_plan,
    tile_relative_position_index,
    tile_side,
)
from hf_flexattn.kernels.tiles import tiled_attention
from hf_flexattn.kernels.windows import (
    hf_shift_mask,
    relative_position_index,
    rolled_partition_index,
    shift_regions,
    shifted_window_plan,
)
from hf_flexattn.masks import generate_shifted_windows

from helpers import hf_shift_rule, natten_1d_reference, natten_2d_reference, reference_attention

pytestmark = pytest.mark.cpu_only  # the structured paths are the CPU policy


@pytest.fixture(autouse=True, params=["one call", "chunks of 3 tiles"])
def chunking(request, monkeypatch):
    """Every exactness test twice: all tiles in one kernel call, and in chunks of 3 tiles (chunks that cross from
    one sample to the next, a shorter last chunk) with each chunk's mask built from the boolean rule (no cached
    additive masks)."""
    if request.param == "one call":
        monkeypatch.setattr(tiles, "MIN_CHUNK_ELEMENTS", 1 << 40)
    else:
        chunks = tiles.TilePlan.chunks
        monkeypatch.setattr(tiles.TilePlan, "chunks", lambda plan, h, d, t=None: chunks(plan, h, d, t or 3))
        monkeypatch.setattr(tiles, "MASK_CACHE_ELEMENTS", 0)
    return request.param


def _qkv(batch, heads, n, dim=8, seed=0):
    """(B, H, N, D) float64 views of (B, N, H, D) tensors, as HF's projections give them."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, n, heads, dim, generator=g, dtype=torch.float64).transpose(1, 2).requires_grad_()
        for _ in range(3)
    ]


def _assert_exact(out, ref, inputs, real=None):
    """Equal outputs (on real rows) and equal gradients of every input, to float64 rounding."""
    rows = None if real is None else real[:, None, :, None].to(out.dtype)
    weights = torch.randn_like(ref) if rows is None else torch.randn_like(ref) * rows
    diff = out - ref if rows is None else (out - ref) * rows
    assert diff.abs().max() <= 1e-12
    got = torch.autograd.grad((out * weights).sum(), inputs)
    want = torch.autograd.grad((ref * weights).sum(), inputs)
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= 1e-12


def _padding(batch, n, kind):
    real = torch.ones(batch, n, dtype=torch.bool)
    if kind in ("right", "both"):
        real[1, n - n // 3 :] = False
    if kind in ("left", "both"):
        real[-1, : n // 4] = False
    if kind == "both":
        real[-1, n // 2 : n // 2 + 3] = False  # and a gap in between
    return real


@pytest.mark.parametrize(
    "n,half,chunk,padding,with_globals",
    [
        (300, 20, 64, None, False),
        (300, 20, 64, "both", True),
        (513, 64, 128, "right", True),
        (100, 300, None, "left", True),  # the window covers everything: one chunk, every key
        (77, 5, 16, "both", False),  # right-padded queries far from every real key see nothing: zero rows
        # the same globals in every sample: the global keys apart from the tiles, merged by log-sum-exp
        (300, 20, 64, "both", "same"),
        (513, 64, None, "right", "same"),  # strided tiles, the ends' shifted-in windows as runs of their own
        (77, 5, 16, "both", "same"),  # queries far from every real key see only the global keys
        (100, 300, None, "left", "same"),
        (400, 24, None, None, "first"),  # [CLS] global, as the `longformer` variant's default
    ],
)
def test_sliding_window_plan_equals_the_longformer_rule(n, half, chunk, padding, with_globals):
    batch = 3
    q, k, v = _qkv(batch, 2, n)
    real = _padding(batch, n, padding)
    is_global = torch.zeros(batch, n, dtype=torch.bool)
    if with_globals is True:  # per-sample globals, different in number; one on a padded token (never global)
        is_global[:, 0] = True
        is_global[1, [50, n - 1]] = True
        is_global[2, [30, 31, 32]] = True
    elif with_globals == "same":  # real tokens in every sample
        is_global[:, [n // 3, n // 3 + 2]] = True
    elif with_globals == "first":
        is_global[:, 0] = True
    is_global &= real
    pos = torch.arange(n)
    rule = ((pos[:, None] - pos[None]).abs() <= half) | is_global[:, :, None] | is_global[:, None, :]
    rule = rule & real[:, None, :]
    plan = sliding_window_plan(
        n,
        half,
        batch=batch,
        key_is_real=real if padding else None,
        is_global=is_global if with_globals else None,
        chunk=chunk,
        dtype=torch.float64,
    )
    assert (plan.global_keys is not None) == (with_globals in ("same", "first"))
    out = tiled_attention(q, k, v, plan)
    ref = reference_attention(q, k, v, rule[:, None])  # rows without keys: zeros, as flex gives
    _assert_exact(out, ref, (q, k, v))
    if plan.global_keys is not None:  # and through autograd (dropout's path), the global keys appended to the tiles
        rows = plan.global_rows
        flat = tiles.global_row_positions(rows, n)
        global_q = q.transpose(1, 2).reshape(batch * n, 2, 8)[flat].view(batch, -1, 2, 8).transpose(1, 2)
        global_out = torch.nn.functional.scaled_dot_product_attention(global_q, k, v, attn_mask=rows.key_mask)
        global_out = global_out.transpose(1, 2).reshape(-1, 2, 8)[rows.source]
        out = tiles._tiled_autograd(q, k, v, global_out, None, plan, None, 0.0, None)
        _assert_exact(out, reference_attention(q, k, v, rule[:, None]), (q, k, v))


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("position", [0, 321])
def test_a_single_global_key_is_merged_without_a_kernel_call_of_its_own(batch, position, monkeypatch):
    """One global key (the `longformer` variant's [CLS]): its softmax weight is 1, so the merge takes its value and
    score, and no fused-kernel call (whose output would be an output-sized tensor in every layer) runs for it."""
    n, half, heads, dim = 600, 32, 3, 16
    q, k, v = (x.float().detach() for x in _qkv(batch, heads, n, dim))
    is_global = (torch.arange(n) == position).expand(batch, n)
    plan = sliding_window_plan(n, half, batch=batch, is_global=is_global)
    assert plan.global_keys is not None and plan.global_keys.shape[1] == 1
    key_lengths = []
    flash = tiles._flash

    def counted(query, key, *args, **kwargs):
        key_lengths.append(key.shape[2])
        return flash(query, key, *args, **kwargs)

    monkeypatch.setattr(tiles, "_flash", counted)
    out = tiled_attention(q, k, v, plan)
    assert key_lengths and all(length == plan.tile_keys for length in key_lengths)  # the tiles' calls only
    pos = torch.arange(n)
    rule = ((pos[:, None] - pos[None]).abs() <= half) | is_global[:, :, None] | is_global[:, None, :]
    ref = reference_attention(q.double(), k.double(), v.double(), rule[:, None])
    assert (out.double() - ref).abs().max() <= 1e-5


def _natten_1d_over_real(real, kernel, dilation):
    rule = torch.zeros(real.shape[0], 1, real.shape[1], real.shape[1], dtype=torch.bool)
    for b in range(real.shape[0]):
        idx = real[b].nonzero().flatten()
        rule[b, 0][idx[:, None], idx[None]] = natten_1d_reference(len(idx), kernel, dilation)
    return rule


@pytest.mark.parametrize(
    "n,kernel,dilation,chunk,padding",
    [
        (40, 7, 1, 8, None),
        (40, 7, 2, 8, "both"),
        (33, 9, 3, None, "left"),
        (50, 5, 2, 16, None),
        (9, 15, 1, 4, "right"),  # groups shorter than the kernel are seen whole
        (64, 3, 4, 8, "both"),
    ],
)
def test_natten_1d_plan_equals_the_rule_over_real_tokens(n, kernel, dilation, chunk, padding):
    batch = 3
    q, k, v = _qkv(batch, 2, n)
    real = _padding(batch, n, padding)
    plan = natten_1d_plan(
        n, kernel, dilation, batch=batch, key_is_real=real if padding else None, chunk=chunk, dtype=torch.float64
    )
    out = tiled_attention(q, k, v, plan)
    _assert_exact(out, reference_attention(q, k, v, _natten_1d_over_real(real, kernel, dilation)), (q, k, v), real)


def test_natten_1d_padded_tokens_read_their_last_real_token_and_an_empty_sample_gives_zeros():
    q, k, v = _qkv(3, 2, 20)
    real = torch.ones(3, 20, dtype=torch.bool)
    real[0, 12:] = False
    real[1] = False
    real[2, 1:] = False  # one real token: the padding reads it
    out = tiled_attention(q, k, v, natten_1d_plan(20, 5, 1, batch=3, key_is_real=real, dtype=torch.float64))
    assert torch.equal(out[0, :, 12:], out[0, :, 11:12].expand(-1, 8, -1))
    assert out[1].abs().max() == 0
    assert torch.equal(out[2], v[2, :, :1].expand(-1, 20, -1))  # a token that sees only itself: its value
    # in dilation groups too (the padding reads the one real token's slot in group 0, not a slot of group 1)
    dilated = tiled_attention(q, k, v, natten_1d_plan(20, 5, 2, batch=3, key_is_real=real, dtype=torch.float64))
    assert torch.equal(dilated[2], v[2, :, :1].expand(-1, 20, -1))


def test_natten_1d_plan_defaults_to_one_sample_without_dilation_and_runs_kernels_of_one_and_two():
    for kernel in (1, 2, 5):
        q, k, v = _qkv(1, 2, 30)
        out = tiled_attention(q, k, v, natten_1d_plan(30, kernel, chunk=8, dtype=torch.float64))
        rule = natten_1d_reference(30, kernel, 1)
        _assert_exact(out, reference_attention(q, k, v, rule), (q, k, v))


@pytest.mark.parametrize("n,kernel,dilation,chunk", [(50, 5, 3, 4), (40, 7, 1, 8)])
def test_natten_1d_plan_has_ceil_of_a_groups_tokens_over_the_chunk_tiles_per_group_of_chunk_plus_kernel_keys(
    n, kernel, dilation, chunk
):
    plan = natten_1d_plan(n, kernel, dilation, chunk=chunk)
    group = -(-n // dilation)  # the most tokens a dilation group holds
    assert plan.tiles == dilation * -(-group // chunk)
    assert (plan.tile_queries, plan.tile_keys) == (chunk, chunk + kernel - 1)


@pytest.mark.parametrize(
    "grid,kernel,dilation,num_global,tile",
    [
        ((16, 16), (7, 7), (1, 1), 0, (8, 8)),
        ((13, 11), (5, 3), (2, 1), 1, (4, 4)),  # odd grid, unequal dilation groups, rectangular kernel
        ((9, 12), (7, 7), (1, 1), 2, (8, 8)),  # DeiT's two globals; tiles shifted inward
        ((20, 17), (3, 5), (3, 2), 1, (8, 8)),
        ((6, 6), (9, 9), (1, 1), 1, (8, 8)),  # kernel larger than the grid: every cell sees the whole grid
        ((50, 13), (7, 5), (1, 1), 1, None),  # the default tiles: 4 on the long axis, 7 on the short one
    ],
)
def test_natten_2d_plan_equals_the_rule(grid, kernel, dilation, num_global, tile):
    n = num_global + grid[0] * grid[1]
    q, k, v = _qkv(2, 2, n)
    plan = natten_2d_plan(grid, kernel, dilation, num_global, batch=2, tile=tile, dtype=torch.float64)
    out = tiled_attention(q, k, v, plan)
    _assert_exact(
        out, reference_attention(q, k, v, natten_2d_reference(*grid, kernel, dilation, num_global)), (q, k, v)
    )


def test_natten_2d_plan_with_a_relative_position_bias_trains_the_table():
    """Swin's neighborhood: the table's bias where it covers the offset (|dr|, |dc| < W), none beyond."""
    rows, cols, window = 11, 10, 3
    q, k, v = _qkv(2, 2, rows * cols)
    table = torch.randn((2 * window - 1) ** 2, 2, dtype=torch.float64, requires_grad=True)
    plan = natten_2d_plan((rows, cols), (7, 7), batch=2, tile=(4, 4), dtype=torch.float64)
    bias = gather_tile_bias(table, tile_relative_position_index(plan.cells, cols, window))
    out = tiled_attention(q, k, v, plan, bias=bias)
    pos = torch.arange(rows * cols)
    dr, dc = pos[:, None] // cols - pos[None] // cols, pos[:, None] % cols - pos[None] % cols
    covered = (dr.abs() < window) & (dc.abs() < window)
    dense_bias = table[((dr.clamp(-2, 2) + 2) * 5 + dc.clamp(-2, 2) + 2)].permute(2, 0, 1) * covered
    ref = reference_attention(q, k, v, natten_2d_reference(rows, cols, (7, 7), (1, 1), 0), dense_bias)
    _assert_exact(out, ref, (q, k, v, table))


@pytest.mark.parametrize("grid,window,shift,num_global", [((8, 8), 4, 2, 1), ((12, 8), 4, 0, 0), ((6, 9), 3, 1, 2)])
def test_shifted_window_plan_equals_the_window_mask(grid, window, shift, num_global):
    n = num_global + grid[0] * grid[1]
    q, k, v = _qkv(2, 2, n)
    rule = generate_shifted_windows(grid, window, shift, num_global).dense(1, 1, n, n)
    out = tiled_attention(q, k, v, shifted_window_plan(grid, window, shift, num_global, batch=2, dtype=torch.float64))
    _assert_exact(out, reference_attention(q, k, v, rule), (q, k, v))


@pytest.mark.parametrize("height,width,window,shift", [(8, 8, 4, 2), (12, 8, 4, 1), (6, 6, 3, 0)])
def test_rolled_partition_index_and_shift_mask_are_hfs_partition_and_regions(height, width, window, shift):
    from transformers.models.swin.modeling_swin import window_partition

    cells = torch.arange(height * width).view(1, height, width, 1)
    rolled = torch.roll(cells, shifts=(-shift, -shift), dims=(1, 2)) if shift else cells
    assert torch.equal(rolled_partition_index(height, width, window, shift), window_partition(rolled, window).flatten())
    mask = hf_shift_mask(height, width, window, shift, torch.float32)
    # the windows' region rule is HF's rule written out entry by entry
    order = rolled_partition_index(height, width, window, shift).view(-1, window * window)
    same = hf_shift_rule(height, width, window, shift)[order[:, :, None], order[:, None, :]]
    if shift:
        assert torch.equal(mask[:, 0] == 0, same) and set(mask.unique().tolist()) == {0.0, -100.0}
    else:
        assert mask is None and same.all() and (shift_regions(height, width, window, 0) == 0).all()


@pytest.mark.parametrize("height,width,window,shift", [(8, 8, 4, 2), (12, 8, 4, 1), (6, 9, 3, 2)])
def test_shift_regions_are_hfs_region_ids_and_the_shift_mask_takes_the_dtype_asked(height, width, window, shift):
    """The region of each token is the id HF's ``SwinLayer.get_attn_mask`` writes into its ``img_mask`` (one id per
    pair of row and column slices, counted row slice first), partitioned into windows as HF does."""
    from transformers.models.swin.modeling_swin import window_partition

    img_mask = torch.zeros(1, height, width, 1, dtype=torch.long)
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for count, (rows, cols) in enumerate((r, c) for r in slices for c in slices):
        img_mask[:, rows, cols, :] = count
    hf_regions = window_partition(img_mask, window).view(-1, window * window)
    assert torch.equal(shift_regions(height, width, window, shift), hf_regions)
    for dtype in (torch.float64, torch.bfloat16):
        mask = hf_shift_mask(height, width, window, shift, dtype)
        assert mask.dtype == dtype and torch.equal(
            mask, hf_shift_mask(height, width, window, shift, torch.float32).to(dtype)
        )


def test_window_tables_and_plans_are_made_on_the_device_asked_not_torchs_default():
    """A GPU model's tables must not hold a tensor of the default device: built with ``device="cpu"`` under a meta
    default device, every table and plan equals the one built without a default device."""
    q, k, v = _qkv(2, 2, 1 + 8 * 8)
    want = tiled_attention(q, k, v, shifted_window_plan((8, 8), 4, 2, 1, batch=2))
    with torch.device("meta"):
        tables = [
            rolled_partition_index(8, 8, 4, 2, device="cpu"),
            shift_regions(8, 8, 4, 2, device="cpu"),
            hf_shift_mask(8, 8, 4, 2, torch.float32, device="cpu"),
            relative_position_index(3, 7, device="cpu"),
        ]
        plan = shifted_window_plan((8, 8), 4, 2, 1, batch=2, device="cpu")
    for got, ref in zip(
        tables,
        [
            rolled_partition_index(8, 8, 4, 2),
            shift_regions(8, 8, 4, 2),
            hf_shift_mask(8, 8, 4, 2, torch.float32),
            relative_position_index(3, 7),
        ],
    ):
        assert got.device.type == "cpu" and torch.equal(got, ref)
    assert torch.equal(tiled_attention(q, k, v, plan), want)


def test_shifted_window_plan_defaults_to_one_sample_without_global_tokens():
    q, k, v = _qkv(1, 2, 8 * 8)
    rule = generate_shifted_windows((8, 8), 4, 2).dense(1, 1, 64, 64)
    _assert_exact(
        tiled_attention(q, k, v, shifted_window_plan((8, 8), 4, 2)), reference_attention(q, k, v, rule), (q, k, v)
    )


def test_relative_position_index_is_hfs_and_a_smaller_window_reads_the_centre_of_a_larger_table():
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    assert torch.equal(
        relative_position_index(7, 7).flatten(), SwinRelativePositionBias(2, (7, 7)).relative_position_index
    )
    small, large = relative_position_index(3, 3), relative_position_index(3, 7)
    # offset (dr, dc) is row (dr + W − 1)·(2W − 1) + dc + W − 1 of either table
    assert torch.equal(small // 5 - 2, large // 13 - 6) and torch.equal(small % 5 - 2, large % 13 - 6)


def test_halo_tiles_are_small_on_long_axes():
    assert [tile_side(length, 7) for length in (14, 28, 32, 47, 48, 64, 128)] == [7, 7, 8, 8, 4, 4, 4]
    assert natten_2d_plan((64, 64), (7, 7)).tile_queries == 16


def test_halo_tile_side_prefers_8_unless_7_computes_more_than_15_percent_fewer_scores():
    """Scores of an axis of L cells in tiles of t: ceil(L/t)·t·(t + k − 1) (both factors at most L)."""
    assert tile_side(20, 3) == 7  # 8: 3·8·10 = 240, 7: 3·7·9 = 189, 79 %
    assert tile_side(9, 3) == 8  # 8: 2·8·9 = 144 (the halo is the axis), 7: 2·7·9 = 126, 87.5 %
    assert tile_side(35, 28) == 8  # 8: 5·8·35 = 1400, 7: 5·7·34 = 1190, exactly 85 %: not clearly cheaper


def test_halo_pays_from_halo_min_cells_grid_cells():
    assert halo_pays((32, HALO_MIN_CELLS // 32)) and halo_pays((HALO_MIN_CELLS // 16, 16))
    assert not halo_pays((31, HALO_MIN_CELLS // 31)) and not halo_pays((1, HALO_MIN_CELLS - 1))


@pytest.mark.parametrize("grid", [(10, 16), (8, 16)])
def test_halo_plan_cuts_each_axis_into_full_tiles_with_their_halos(grid):
    """ceil(L/t) tiles per axis (the last one shifted inward, none twice where t divides L), each of th × tw queries
    and a halo of (th + k − 1) × (tw + k − 1) keys; the default tile side is the sub-grids' (ceil(L/d) cells)."""
    plan = natten_2d_plan(grid, (3, 5), tile=(4, 8))
    assert plan.tiles == -(-grid[0] // 4) * -(-grid[1] // 8)
    assert (plan.tile_queries, plan.tile_keys) == (4 * 8, (4 + 3 - 1) * (8 + 5 - 1))
    # 95 rows in dilation 2: sub-grids of 48 and 47 rows, the longer one a long axis (tiles of 4)
    assert natten_2d_plan((95, 8), (7, 7), (2, 1)).tile_queries == tile_side(48, 7) * tile_side(8, 7) == 4 * 8


def test_halo_plans_global_keys_read_no_relative_position_bias():
    plan = natten_2d_plan((8, 8), (3, 3), num_global=2)
    index = tile_relative_position_index(plan.cells, 8, 3)
    assert (index[..., -2:] == 5 * 5).all()  # the extra zero row of a 5² table
    assert (index[..., :-2] < 5 * 5).any()


def test_halo_plan_is_made_on_the_device_asked_not_torchs_default():
    """Unequal dilation sub-grids (9 rows in dilation 2: padded tiles) and global tokens, built with ``device="cpu"``
    under a meta default device: the same plan as without one."""
    q, k, v = _qkv(2, 2, 1 + 9 * 10)
    want = tiled_attention(q, k, v, natten_2d_plan((9, 10), (3, 5), (2, 1), 1, batch=2, dtype=torch.float64))
    with torch.device("meta"):
        plan = natten_2d_plan((9, 10), (3, 5), (2, 1), 1, batch=2, device="cpu", dtype=torch.float64)
    assert all(cells.device.type == "cpu" for cells in plan.cells)
    assert torch.equal(tiled_attention(q, k, v, plan), want)


def test_band_chunk_and_crossover_follow_the_window():
    assert [band_chunk(w) for w in (7, 64, 256, 512, 2048)] == [32, 32, 128, 256, 256]
    assert [strided_chunk(w) for w in (7, 128, 512, 1024, 2048, 8192)] == [32, 32, 32, 64, 128, 256]
    assert sliding_window_plan(8192, 64).tile_queries == 32  # no global key columns: strided tiles
    # a global [CLS]: its key apart from the tiles, which stay strided: the interior one run, each end one run of
    # tiles whose windows are shifted inward (the same keys: key_step 0), each tile with its own rule
    with_global = sliding_window_plan(8192, 64, is_global=torch.arange(8192)[None] == 0)
    assert with_global.tile_queries == 32 and with_global.global_keys.tolist() == [[0]]
    assert [(run.key_step, run.pattern >= 0) for run in with_global.runs] == [(0, False), (32, True), (0, False)]
    assert sum(run.end - run.first for run in with_global.runs) == with_global.tiles
    per_sample = torch.zeros(2, 8192, dtype=torch.bool)
    per_sample[:, 0], per_sample[1, 99] = True, True  # globals different in number: key columns of every tile
    columns = sliding_window_plan(8192, 64, batch=2, is_global=per_sample)
    assert columns.tile_queries == 64 and columns.runs == () and columns.global_keys is None
    assert not band_pays(511, 7) and band_pays(512, 7)  # NATTEN 1D: 512 tokens, or eight kernels'
    assert not band_pays(1015, 127) and band_pays(1016, 127)
    # the sliding window: from window + max(window, 1,024) tokens
    assert not sliding_window_pays(1535, 512) and sliding_window_pays(1536, 512)
    assert not sliding_window_pays(1151, 128) and sliding_window_pays(1152, 128)
    assert not sliding_window_pays(4095, 2048) and sliding_window_pays(4096, 2048)


def test_band_chunks_are_a_power_of_two_from_the_windows_next_one():
    """Half (band) or a sixteenth (strided) of the smallest power of two ≥ the window: 129 → 256, 128 → 128."""
    assert [band_chunk(w) for w in (128, 129)] == [64, 128]
    assert [strided_chunk(w) for w in (1024, 1025)] == [64, 128]


def test_global_positions_of_no_sample_are_empty():
    positions, valid = _global_positions(torch.zeros(0, 8, dtype=torch.bool))
    assert positions.shape == valid.shape == (0, 0)


def test_a_sliding_window_with_no_global_token_flagged_is_the_plain_band():
    """Global flags all False (a batch without globals): the plan of no flags, padded rows included."""
    q, k, v = _qkv(2, 2, 90)
    real = _padding(2, 90, "left")
    plain = tiled_attention(q, k, v, sliding_window_plan(90, 6, batch=2, key_is_real=real, chunk=16))
    flagged = sliding_window_plan(
        90, 6, batch=2, key_is_real=real, is_global=torch.zeros(2, 90, dtype=torch.bool), chunk=16
    )
    assert flagged.global_keys is None and flagged.global_rows is None
    assert torch.equal(tiled_attention(q, k, v, flagged), plain)


def test_a_one_token_sliding_window_sees_itself():
    q, k, v = _qkv(1, 2, 1)
    assert (tiled_attention(q, k, v, sliding_window_plan(1, 4)) - v).abs().max() <= 1e-12


def test_band_plans_are_made_on_the_device_asked_not_torchs_default():
    """Built with ``device="cpu"`` under a meta default device: the same plans (padding, globals in every sample,
    per-sample globals as key columns, dilation)."""
    q, k, v = _qkv(2, 2, 120)
    real = _padding(2, 120, "both")
    same = torch.zeros(2, 120, dtype=torch.bool)
    same[:, [3, 70]] = True
    per_sample = same.clone()
    per_sample[1, 90] = True
    builders = [
        lambda **kw: sliding_window_plan(120, 8, batch=2, key_is_real=real, is_global=same & real, chunk=16, **kw),
        lambda **kw: sliding_window_plan(120, 8, batch=2, key_is_real=real, is_global=per_sample & real, **kw),
        lambda **kw: natten_1d_plan(120, 5, 2, batch=2, key_is_real=real, chunk=8, **kw),
        lambda **kw: natten_1d_plan(120, 5, 1, batch=2, chunk=8, **kw),
    ]
    for build in builders:
        want = tiled_attention(q, k, v, build())
        with torch.device("meta"):
            plan = build(device="cpu")
        assert torch.equal(tiled_attention(q, k, v, plan), want)


def test_a_plan_refuses_inputs_of_another_shape():
    q, k, v = _qkv(2, 2, 30)
    with pytest.raises(ValueError, match=r"inputs are \(B=2, N=30\); the tile plan was built for \(B=1, N=30\)"):
        tiled_attention(q, k, v, sliding_window_plan(30, 4, dtype=torch.float64))


def _sliding_rule(n, half, real, is_global):
    pos = torch.arange(n)
    rule = ((pos[:, None] - pos[None]).abs() <= half) | is_global[:, :, None] | is_global[:, None, :]
    return (rule & real[:, None, :])[:, None]


def test_head_major_inputs_and_the_autograd_path_equal_the_rule():
    """Contiguous (B, H, N, D) inputs (the rows are gathered without a (B·N, H, D) copy), and the same chunks
    through autograd (the path of dropout and trainable biases), with padding and per-sample globals."""
    batch, n, half = 3, 150, 12
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(batch, 2, n, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    real = _padding(batch, n, "both")
    is_global = torch.zeros(batch, n, dtype=torch.bool)
    is_global[:, 0] = True
    is_global[2, [40, 41]] = True
    is_global &= real
    plan = sliding_window_plan(n, half, batch=batch, key_is_real=real, is_global=is_global, chunk=16, dtype=q.dtype)
    rule = _sliding_rule(n, half, real, is_global)
    _assert_exact(tiled_attention(q, k, v, plan), reference_attention(q, k, v, rule), (q, k, v))
    rows = plan.global_rows  # the autograd path takes the global rows' outputs as tiled_attention computes them
    flat = (rows.positions + torch.arange(batch)[:, None] * n).reshape(-1)
    global_q = q.transpose(1, 2).reshape(batch * n, 2, 8)[flat].view(batch, -1, 2, 8).transpose(1, 2)
    global_out = torch.nn.functional.scaled_dot_product_attention(global_q, k, v, attn_mask=rows.key_mask)
    global_out = global_out.transpose(1, 2).reshape(-1, 2, 8)[rows.source]
    out = tiles._tiled_autograd(q, k, v, global_out, None, plan, None, 0.0, None)
    _assert_exact(out, reference_attention(q, k, v, rule), (q, k, v))


def test_training_keeps_what_flash_attention_keeps():
    """The backward saves the inputs, the output and one log-sum-exp per query slot, never the tiles' key copies
    or masks: at window 64 those would be 3 × the keys."""
    n, heads, dim = 2048, 4, 16
    q, k, v = (torch.randn(1, n, heads, dim).transpose(1, 2).requires_grad_() for _ in range(3))
    plan = sliding_window_plan(n, 32)
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = tiled_attention(q, k, v, plan)
    io = 4 * n * heads * dim * 4  # q, k, v (one storage each) and the output, float32
    lse = plan.tiles * plan.tile_queries * heads * 4
    assert sum(saved.values()) <= io + lse + 4096
    out.sum().backward()  # and the backward runs from what was kept
    assert q.grad is not None and k.grad.abs().sum() > 0


def test_plans_keep_one_rule_per_distinct_tile():
    """A shape-only plan keeps its rule once whatever the batch; the band keeps one per distinct tile (first,
    interior, last) however long the input, with the padding and globals as per-tile key columns."""
    assert sliding_window_plan(8192, 256, chunk=256).allowed.shape[0] == 3
    # smaller tiles than the half-window: each of the tiles whose keys are shifted inward at either end is distinct
    assert sliding_window_plan(8192, 256, chunk=32).allowed.shape[0] == 2 * 256 // 32 + 1
    real = torch.ones(2, 4096, dtype=torch.bool)
    real[1, 3000:] = False
    plan = sliding_window_plan(
        4096, 256, batch=2, key_is_real=real, is_global=real & (torch.arange(4096) == 0), chunk=256
    )
    assert plan.allowed.shape[0] <= 3 and plan.key_seen.shape == (2 * plan.tiles, plan.tile_keys)
    assert natten_2d_plan((32, 32), (7, 7), batch=8).allowed.shape[0] == natten_2d_plan((32, 32), (7, 7)).tiles


@pytest.mark.parametrize(
    "make",
    [
        lambda real: sliding_window_plan(400, 24, batch=3, key_is_real=real, chunk=16, dtype=torch.float64),
        lambda real: natten_1d_plan(400, 7, 1, batch=3, key_is_real=real, chunk=8, dtype=torch.float64),
        lambda real: natten_1d_plan(400, 5, 3, batch=3, chunk=8, dtype=torch.float64),  # slots 3 tokens apart
    ],
    ids=["band", "natten 1d", "natten 1d dilated"],
)
def test_strided_runs_are_read_as_views_and_equal_the_gathered_tiles(make):
    """The tiles of a plan's strided runs (consecutive tiles whose slots are evenly spaced tokens) are read as views of
    q/k/v, not gathered: the outputs equal those of the same plan with every tile gathered, bit for bit, and the
    gradients (the backward takes a run's tiles together) to float64 rounding; runs stop at rows without keys, at
    the sample's ends and between samples."""
    real = _padding(3, 400, "both")
    plan = make(real)
    assert plan.runs and all(run.end - run.first >= tiles.MIN_RUN_TILES for run in plan.runs)
    by_sample = [run.sample for run in plan.runs]
    assert by_sample == sorted(by_sample) and set(by_sample) == {0, 1, 2}
    for run in plan.runs:  # every tile of a run: evenly spaced slots of its sample, the run's pattern (if one)
        for f in range(run.first, run.end):
            start = run.query_start + (f - run.first) * plan.tile_queries * run.step
            queries = plan.query_index.view(-1, plan.tile_queries)[f]
            assert torch.equal(queries, run.sample * 400 + start + run.step * torch.arange(plan.tile_queries))
            key_start = run.key_start + (f - run.first) * run.key_advance(plan.tile_queries)
            keys = plan.key_index.view(-1, plan.tile_keys)[f]
            assert torch.equal(keys, run.sample * 400 + key_start + run.step * torch.arange(plan.tile_keys))
            if run.pattern >= 0:
                assert torch.equal(plan.rule(f, f + 1)[0], plan.allowed[run.pattern])
    gathered = dataclasses.replace(plan, runs=())
    q, k, v = _qkv(3, 2, 400)
    weights = torch.randn(3, 2, 400, 8, dtype=torch.float64)
    got, want = tiled_attention(q, k, v, plan), tiled_attention(q, k, v, gathered)
    assert torch.equal(got, want)
    got_grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    for g, w in zip(got_grads, torch.autograd.grad((want * weights).sum(), (q, k, v))):
        assert (g - w).abs().max() <= 1e-12


def _plan_case(kind):
    """(plan, dense rule (B, 1, N, N), real tokens (B, N)) of each kind of plan the kernel runs, float64: the band
    with its global keys apart (two, or one: no kernel call of its own) or per-sample global columns, NATTEN 1D with
    padding and dilation (padded tokens read their last real token's slot), NATTEN 2D with a global token, windows."""
    f64 = torch.float64
    if kind.startswith("band"):
        batch, n, half = 3, 150, 12
        real = _padding(batch, n, "both")
        is_global = torch.zeros(batch, n, dtype=torch.bool)
        if kind == "band, global keys apart":
            is_global[:, [50, 52]] = True
        elif kind == "band, one global key":
            is_global[:, 40] = True
        else:  # per-sample globals, different in number
            is_global[:, 0] = True
            is_global[2, [40, 41]] = True
        is_global &= real
        plan = sliding_window_plan(n, half, batch=batch, key_is_real=real, is_global=is_global, chunk=16, dtype=f64)
        assert (plan.global_keys is None) == kind.endswith("columns")
        return plan, _sliding_rule(n, half, real, is_global), real
    if kind == "natten 1d":
        real = _padding(3, 60, "both")
        plan = natten_1d_plan(60, 5, 2, batch=3, key_is_real=real, chunk=8, dtype=f64)
        return plan, _natten_1d_over_real(real, 5, 2), real
    if kind == "natten 2d":
        n = 1 + 9 * 10
        plan = natten_2d_plan((9, 10), (3, 5), (2, 1), 1, batch=2, tile=(4, 4), dtype=f64)
        return plan, natten_2d_reference(9, 10, (3, 5), (2, 1), 1).expand(2, 1, n, n), torch.ones(2, n, dtype=bool)
    n = 1 + 8 * 8
    rule = generate_shifted_windows((8, 8), 4, 2, 1).dense(1, 1, n, n).expand(2, 1, n, n)
    return shifted_window_plan((8, 8), 4, 2, 1, batch=2, dtype=f64), rule, torch.ones(2, n, dtype=torch.bool)


PLAN_KINDS = [
    "band, global keys apart",
    "band, one global key",
    "band, per-sample global columns",
    "natten 1d",
    "natten 2d",
    "windows",
]


@pytest.mark.parametrize("path", ["kernel", "autograd"])
@pytest.mark.parametrize("kind", PLAN_KINDS)
def test_an_explicit_scale_reaches_every_part_of_every_plan(kind, path):
    """A scale other than 1/√D (the tiles, the global rows, the global keys apart, a single global key's score), on
    the kernel's path and on autograd's (a trainable bias, zero here); the two paths give every token the same row,
    the padded tokens that read another token's slot included."""
    plan, rule, real = _plan_case(kind)
    batch, n = real.shape
    q, k, v = _qkv(batch, 2, n)
    bias = None
    if path == "autograd":
        bias = torch.zeros(plan.tiles, 2, plan.tile_queries, plan.tile_keys, dtype=torch.float64, requires_grad=True)
    out = tiled_attention(q, k, v, plan, scale=0.3, bias=bias)
    _assert_exact(out, reference_attention(q, k, v, rule, scale=0.3), (q, k, v), real)
    if path == "autograd":
        fresh, _, _ = _plan_case(kind)
        assert (out - tiled_attention(q, k, v, fresh, scale=0.3)).abs().max() <= 1e-12


@pytest.mark.parametrize("kind", PLAN_KINDS)
def test_the_kernel_builds_nothing_on_torchs_default_device(kind):
    """CPU inputs under another default device (a GPU model's setting; meta here): every index and mask the kernel
    and its plan build on the way (forward, backward, autograd's path, the backward's merged masks) is on the
    inputs' device, and the outputs and gradients are those built without one."""
    plan, _, real = _plan_case(kind)
    q, k, v = _qkv(real.shape[0], 2, real.shape[1])
    bias = torch.zeros(plan.tiles, 2, plan.tile_queries, plan.tile_keys, dtype=torch.float64, requires_grad=True)
    merged = [(run.pattern, run.end - run.first) for run in plan.runs if run.pattern >= 0]

    def run(plan):
        out = tiled_attention(q, k, v, plan, scale=0.3)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        masks = [plan.merged_mask(pattern, tiles, torch.float64) for pattern, tiles in merged]
        masks += [plan.mask(first, end, torch.float64) for first, end, _ in plan.chunks(2, 8)]
        return [out, *grads, tiled_attention(q, k, v, plan, scale=0.3, bias=bias), plan.token_lse_index(2), *masks]

    want = run(plan)
    fresh, _, _ = _plan_case(kind)  # nothing kept from the first run
    with torch.device("meta"):
        got = run(fresh)
    assert all(x.device.type == "cpu" for x in got)
    assert all(torch.equal(x, y) for x, y in zip(got, want))


@pytest.mark.parametrize("kind", ["band, one global key", "natten 1d", "windows"])
def test_dropout_on_the_tiles_drops_and_keeps_the_expected_output(kind):
    """Dropout (autograd's path): with every value 1 each row's output is the kept probability mass over 1 − p, not
    1 everywhere, and 1 on average (8 draws of ≥ 2,000 rows, whose mass varies by about 0.5: their mean by about
    0.01; without the 1 / (1 − p) it would be 0.5)."""
    plan, rule, real = _plan_case(kind)
    batch, n = real.shape
    q, k, _ = _qkv(batch, 2, n)
    torch.manual_seed(0)
    outs = torch.stack([tiled_attention(q, k, torch.ones_like(q), plan, dropout_p=0.5) for _ in range(8)])
    seen = (rule.any(-1) & real[:, None])[..., None].expand_as(outs[0])  # real rows with keys
    assert ((outs - 1).abs() > 1e-6).any(0)[seen].all()  # every row (the global rows too) drops some key
    assert abs(outs[:, seen].mean().item() - 1) < 0.1


@pytest.mark.parametrize("kind", ["band", "band, global keys apart", "natten 1d", "natten 2d"])
def test_a_fixed_bias_on_the_kernels_path_equals_a_trained_one_on_autograds(kind):
    """A bias that is not trained takes the kernel's path (its backward then takes a run's tiles one at a time: the
    merged masks hold no bias), a trained one autograd's: the same outputs and q/k/v gradients. The plain band's
    runs would merge without a bias."""

    def make():
        if kind != "band":
            return _plan_case(kind)[0]
        plan = sliding_window_plan(300, 12, batch=2, chunk=16, dtype=torch.float64)
        assert any(run.merges(plan.tile_queries) for run in plan.runs)
        return plan

    plan = make()
    q, k, v = _qkv(plan.batch, 2, plan.seq_len)
    g = torch.Generator().manual_seed(3)
    shape = (plan.tiles, 2, plan.tile_queries, plan.tile_keys)
    bias = torch.randn(shape, generator=g, dtype=torch.float64)
    out = tiled_attention(q, k, v, plan, bias=bias)
    _assert_exact(out, tiled_attention(q, k, v, make(), bias=bias.clone().requires_grad_()), (q, k, v))


@pytest.mark.parametrize("per_sample", [False, True])
def test_natten_1d_padded_tokens_take_their_last_real_tokens_row_and_gradient(per_sample):
    """Padded tokens read their sample's last real token's slot: slot 0 of a sample of one real token (the first slot
    of a chunk, or with a chunk per sample the slot just past one), or the last slot of a tile (real tokens filling
    whole tiles), in a plan with strided runs. Their rows are that token's, and their outputs' gradients reach
    q/k/v."""
    n = 64
    real = torch.ones(3, n, dtype=torch.bool)
    real[0, 1:], real[1, 1:], real[2, 40:] = False, False, False  # 40: 5 tiles of 8
    plan = natten_1d_plan(n, 5, 1, batch=3, key_is_real=real, chunk=8, dtype=torch.float64)
    assert plan.runs and sorted(set(plan.extra_slots.tolist())) == [0, plan.tiles * 8, (2 * plan.tiles + 4) * 8 + 7]
    q, k, v = _qkv(3, 2, n)
    ref = reference_attention(q, k, v, _natten_1d_over_real(real, 5, 1))
    last = real.long().cumsum(1).argmax(1)  # each sample's last real token
    source = torch.where(real, torch.arange(n), last[:, None])
    out = tiled_attention(q, k, v, plan, tiles_per_chunk=plan.tiles if per_sample else None)
    _assert_exact(out, ref.gather(2, source[:, None, :, None].expand_as(ref)), (q, k, v))


def test_runs_left_at_the_default_key_step_read_the_same_tiles():
    """A run whose keys advance with its queries may leave ``key_step`` at its default (−1): the same outputs and
    gradients as the plan's own runs."""
    real = _padding(3, 400, "both")
    plan = sliding_window_plan(400, 24, batch=3, key_is_real=real, chunk=16, dtype=torch.float64)
    tq = plan.tile_queries
    moving = [run.key_step == tq * run.step for run in plan.runs]
    assert any(moving) and not all(moving)
    runs = tuple(dataclasses.replace(run, key_step=-1) if m else run for run, m in zip(plan.runs, moving))
    q, k, v = _qkv(3, 2, 400)
    _assert_exact(
        tiled_attention(q, k, v, dataclasses.replace(plan, runs=runs)), tiled_attention(q, k, v, plan), (q, k, v)
    )


@pytest.mark.parametrize("tiles_per_chunk", [1, 2, 4])
@pytest.mark.parametrize("kind", ["natten 2d", "padded band"])
def test_any_number_of_tiles_per_call_gives_the_rule(kind, tiles_per_chunk):
    """Chunks of 1, 2 or 4 tiles of plans whose tile t follows pattern t: NATTEN 2D's 9 tiles a sample (chunks that
    straddle two samples take their masks tile by tile, not as one slice of the patterns' table), and a padded band
    of 2 tiles a sample (a chunk within a sample: its slice of the table, then its key columns)."""
    if kind == "natten 2d":
        plan, rule, real = _plan_case(kind)
        assert plan.tiles % 2 == 1
    else:
        real = _padding(3, 100, "both")
        plan = sliding_window_plan(100, 300, batch=3, key_is_real=real, dtype=torch.float64)
        rule = _sliding_rule(100, 300, real, torch.zeros_like(real))
        assert plan.tiles == 2 and plan.key_seen is not None
    assert plan.tiles_are_patterns
    q, k, v = _qkv(real.shape[0], 2, real.shape[1])
    out = tiled_attention(q, k, v, plan, tiles_per_chunk=tiles_per_chunk)
    _assert_exact(out, reference_attention(q, k, v, rule), (q, k, v), real)


def test_half_precision_inputs_keep_a_float32_log_sum_exp():
    """bf16 q/k/v: the backward keeps the kernel's log-sum-exp in float32 (in bf16 it would be rounded by up to 2⁻⁸
    of itself, about 1 % on every probability the backward recomputes from it), and the gradients are those of
    the float64 reference to bf16's precision."""
    plan = sliding_window_plan(256, 16, chunk=16)
    q, k, v = (x.detach().to(torch.bfloat16).requires_grad_() for x in _qkv(1, 2, 256, dim=16))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = tiled_attention(q, k, v, plan)
    lse = [t for t in saved if t.shape == (plan.tiles, 2, plan.tile_queries)]
    assert len(lse) == 1 and lse[0].dtype == torch.float32
    pos = torch.arange(256)
    rule = (pos[:, None] - pos[None]).abs() <= 16
    wide = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = reference_attention(*wide, rule)
    weights = torch.randn(ref.shape, dtype=torch.float64)
    assert (out.double() - ref).abs().max() <= 0.02
    got = torch.autograd.grad((out.double() * weights).sum(), (q, k, v))
    for g, w in zip(got, torch.autograd.grad((ref * weights).sum(), wide)):
        assert (g.double() - w).abs().max() <= 0.05 * w.abs().max()


@pytest.mark.parametrize("layout", ["head-major", "head-major, sliced", "token-major", "keys-major"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("buffered", [False, True])
def test_gathered_tiles_are_the_indexed_token_rows_in_every_layout(layout, batch, buffered):
    """``_gather_tiles`` takes rows ``index`` (into B·N) of a (B, H, N, D) tensor as (tiles, H, S, D), whichever of its
    paths the memory layout picks (head by head, token rows, the general gather) and into a reused buffer or not."""
    from hf_flexattn.kernels.tiles import _gather_tiles

    heads, n, dim, tiles, slots = 3, 10, 4, 2, 5
    generator = torch.Generator().manual_seed(batch)
    values = torch.randn(batch, heads, n + 2, dim, generator=generator)
    if layout == "head-major":
        x = values[:, :, :n].contiguous()
    elif layout == "head-major, sliced":  # a head's tokens contiguous, the tensor not
        x = values[:, :, :n]
    elif layout == "token-major":  # HF's q/k/v: (B, N, H, D) in memory
        x = values[:, :, :n].transpose(1, 2).contiguous().transpose(1, 2)
    else:
        x = values[:, :, :n].transpose(2, 3).contiguous().transpose(2, 3)
    index = torch.randint(0, batch * n, (tiles * slots,), generator=generator)
    want = x.transpose(1, 2).reshape(batch * n, heads, dim)[index].view(tiles, slots, heads, dim).transpose(1, 2)
    out = torch.full((tiles * slots * heads * dim + 7,), float("nan")) if buffered else None
    got = _gather_tiles(x, index, tiles, out)
    assert got.shape == want.shape and torch.equal(got, want)
