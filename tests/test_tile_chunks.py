"""How the tiled kernel cuts a plan into kernel calls: as few chunks as the memory rule allows, masks kept per plan.

On a shared CPU every call is a parallel region that waits for every thread, so the chunk count is the kernel's main
cost under load (docs/benchmarks.md, "Under contention"); these tests pin the rule, not a timing.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hf_flexattn.kernels import tiles
from hf_flexattn.kernels.band import natten_1d_plan, sliding_window_plan
from hf_flexattn.kernels.halo import natten_2d_plan

pytestmark = pytest.mark.cpu_only  # the structured paths are the CPU policy

HEADS, DIM = 4, 64


def test_gathered_chunks_hold_at_most_the_output_and_are_as_few_as_that_allows():
    plan = natten_2d_plan((64, 64), (7, 7))  # 4×4 tiles: K = 100 key slots per 16 queries
    output = plan.batch * plan.seq_len * HEADS * DIM
    assert plan.chunk_elements(HEADS, DIM) == output
    chunks = plan.chunks(HEADS, DIM)
    per_chunk = output // (plan.tile_keys * HEADS * DIM)
    gathered = [(first, end) for first, end, run in chunks if run is None]
    assert all((end - first) * plan.tile_keys * HEADS * DIM <= output for first, end in gathered)
    assert len(gathered) == math.ceil(plan.tiles / per_chunk)  # 7 here (an eighth of the output gave 52)
    assert [first for first, _ in gathered] == list(range(0, plan.tiles, per_chunk))


def test_a_small_output_still_gets_chunks_of_the_minimum_size():
    plan = natten_2d_plan((24, 24), (7, 7))
    heads, dim = 1, 8
    assert plan.batch * plan.seq_len * heads * dim < tiles.MIN_CHUNK_ELEMENTS
    assert plan.chunk_elements(heads, dim) == tiles.MIN_CHUNK_ELEMENTS


def test_a_strided_run_is_one_call_when_its_output_fits():
    plan = sliding_window_plan(4096, 256)
    run_chunks = [(first, end, run) for first, end, run in plan.chunks(12, 32) if run is not None]
    runs = {run for _, _, run in run_chunks}
    assert len(run_chunks) == len(runs) >= 1  # each run in one call: its output is at most the whole output


def test_a_plan_keeps_each_chunks_mask_for_the_next_layer():
    plan = sliding_window_plan(2048, 128, batch=2, key_is_real=torch.arange(2048).expand(2, -1) < 2000)
    gathered = [(first, end) for first, end, run in plan.chunks(HEADS, DIM) if run is None or run.pattern < 0]
    assert gathered  # padded samples: the tiles past the padding are gathered, with their own masks
    first, end = gathered[0]
    mask = plan.mask(first, end, torch.float32)
    assert plan.mask(first, end, torch.float32) is mask  # the second layer's call builds nothing
    assert plan.mask(first, end, torch.float64) is not mask  # per dtype


def test_kept_masks_stay_within_the_cache_bound(monkeypatch):
    plan = sliding_window_plan(2048, 128, batch=2, key_is_real=torch.arange(2048).expand(2, -1) < 2000)
    gathered = [(first, end) for first, end, run in plan.chunks(HEADS, DIM) if run is None or run.pattern < 0]
    small, large = min(gathered, key=lambda c: c[1] - c[0]), max(gathered, key=lambda c: c[1] - c[0])
    entries = lambda chunk: (chunk[1] - chunk[0]) * plan.tile_queries * plan.tile_keys
    bound = plan.allowed.numel()  # the patterns' table fits; the small chunk's mask too, the large one's not
    assert entries(small) <= bound < entries(large)
    monkeypatch.setattr(tiles, "MASK_CACHE_ELEMENTS", bound)
    kept = plan.mask(*small, torch.float32)
    assert plan.mask(*small, torch.float32) is kept
    built = plan.mask(*large, torch.float32)
    again = plan.mask(*large, torch.float32)
    assert again is not built and torch.equal(again, built)  # over the bound: built again each time, not kept


@pytest.mark.parametrize("tiles_per_chunk", [None, 3])
@pytest.mark.parametrize("kind", ["gathered", "strided"])
def test_each_pass_makes_the_kernel_calls_its_chunks_say(kind, tiles_per_chunk, monkeypatch):
    """The forward makes one fused-kernel call per chunk of ``plan.chunks(H, D)``, the backward one per
    ``plan.backward_chunks(H, D)`` (a strided run's tiles merged), autograd's path (a trained bias) one SDPA call
    per forward chunk, and each one more for the global rows; ``tiles_per_chunk`` sets them all. Gathered tiles
    (NATTEN 2D), 16 heads of dim 4: the output is under MIN_CHUNK_ELEMENTS, so the head dim (not the heads, nor
    the tokens) sets a chunk's tiles."""
    if kind == "gathered":
        plan, heads, dim = natten_2d_plan((16, 16), (7, 7), num_global=1, batch=2), 16, 4
        assert len(plan.chunks(heads, dim)) not in (len(plan.chunks(heads, heads)), len(plan.chunks(heads, 257)))
    else:
        plan, heads, dim = sliding_window_plan(1024, 64), 2, 8  # runs only: no gathered chunk, no buffers
        assert all(run is not None for *_, run in plan.chunks(heads, dim))
        assert len(plan.backward_chunks(heads, dim)) != len(plan.backward_chunks(heads, dim, merge_runs=False))
    q, k, v = (torch.randn(plan.batch, plan.seq_len, heads, dim).transpose(1, 2).requires_grad_() for _ in range(3))
    calls = {"forward": 0, "backward": 0, "sdpa": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(tiles, "_flash", counted("forward", tiles._flash))
    monkeypatch.setattr(tiles, "_flash_backward", counted("backward", tiles._flash_backward))
    sdpa = counted("sdpa", torch.nn.functional.scaled_dot_product_attention)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    tiles.tiled_attention(q, k, v, plan, tiles_per_chunk=tiles_per_chunk).sum().backward()
    chunks = plan.chunks(heads, dim, tiles_per_chunk)
    backward = plan.backward_chunks(heads, dim, tiles_per_chunk)
    global_rows = int(plan.global_rows is not None)
    assert calls == {"forward": len(chunks), "backward": len(backward), "sdpa": global_rows}
    bias = torch.zeros(plan.tiles, heads, plan.tile_queries, plan.tile_keys, requires_grad=True)
    calls["sdpa"] = 0
    tiles.tiled_attention(q, k, v, plan, bias=bias, tiles_per_chunk=tiles_per_chunk)
    assert calls["sdpa"] == len(chunks) + global_rows


def _merging_plans():
    """Band and NATTEN 1D plans whose strided runs merge in the backward: tiles of 32 (4 merged), a run of 2 tiles
    of 8 (2 merged, not 16), a run of pattern 0 with tiles of 128 (merged alone), and chunks bound by the budget."""
    return [
        (sliding_window_plan(4096, 128), 12, 32),  # merged chunks of 10 merged tiles of 4
        (sliding_window_plan(800, 256), 16, 64),  # one merged tile is most of the budget: one per chunk
        (natten_1d_plan(60, 5, 2, chunk=8), 4, 16),
        (sliding_window_plan(1000, 64, chunk=128), 4, 16),
        (sliding_window_plan(300, 12, chunk=16), 4, 16),
    ]


def test_the_backward_takes_a_runs_tiles_about_128_queries_at_a_time_within_the_budget():
    """``backward_chunks``: the forward's chunks, except each run whose tiles merge, taken ``merge`` tiles at a time
    (as many as make BACKWARD_TILE_QUERIES queries, at most the run, at least 1), in as few chunks as keep each
    chunk's key gradients (merged tiles × (K + (merge − 1)·tq) × H × D) within the budget (or one merged tile),
    a remainder of fewer than ``merge`` tiles alone; the same tiles, in order."""
    for plan, heads, dim in _merging_plans():
        tq, budget = plan.tile_queries, plan.chunk_elements(heads, dim)
        chunks = plan.backward_chunks(heads, dim)
        assert [c for c in chunks if c[2] is None or not c[2].merges(tq)] == [
            (*c, 1) for c in plan.chunks(heads, dim) if c[2] is None or not c[2].merges(tq)
        ]
        assert [f for f, *_ in chunks] == sorted(f for f, *_ in chunks)
        assert [e for _, e, *_ in chunks[:-1]] == [f for f, *_ in chunks[1:]] and chunks[-1][1] == plan.tiles
        merging = [run for run in plan.runs if run.merges(tq)]
        assert merging
        for run in merging:
            merge = max(1, min(tiles.BACKWARD_TILE_QUERIES // tq, run.end - run.first))
            whole = (run.end - run.first) // merge * merge
            per_tile = (plan.tile_keys + (merge - 1) * tq) * heads * dim
            per_chunk = max(1, budget // per_tile)
            mine = [(f, e, m) for f, e, r, m in chunks if r is run]
            merged = [(f, e) for f, e, m in mine if m == merge]
            assert all((e - f) % merge == 0 for f, e in merged)
            assert sum(e - f for f, e in merged) == whole
            assert len(merged) == -(-(whole // merge) // per_chunk)
            assert all((e - f) // merge * per_tile <= budget or e - f == merge for f, e in merged)
            rest = [(f, e, m) for f, e, m in mine if (f, e) not in merged]
            assert rest == ([(run.first + whole, run.end, 1)] if whole < run.end - run.first else [])


def test_the_backward_keeps_the_forwards_chunks_where_its_tiles_may_not_merge():
    """Tiles per chunk given, merging off (a bias, which the merged masks leave out), or tokens that read another
    token's slot (NATTEN 1D's padding): the forward's chunks, one tile at a time."""
    for plan, heads, dim in _merging_plans():
        forward = [(*c, 1) for c in plan.chunks(heads, dim)]
        assert plan.backward_chunks(heads, dim) != forward
        assert plan.backward_chunks(heads, dim, merge_runs=False) == forward
        assert plan.backward_chunks(heads, dim, 3) == [(*c, 1) for c in plan.chunks(heads, dim, 3)]
    real = torch.ones(2, 400, dtype=torch.bool)
    real[1, 300:] = False
    padded = natten_1d_plan(400, 7, 1, batch=2, key_is_real=real, chunk=8)
    assert padded.extra_tokens is not None and any(run.merges(8) for run in padded.runs)
    assert padded.backward_chunks(HEADS, DIM) == [(*c, 1) for c in padded.chunks(HEADS, DIM)]


def test_a_strided_runs_keys_advance_with_its_queries_unless_its_key_step_says_otherwise():
    """``key_step`` −1 (the default): the keys move tq·step tokens a tile, as the queries do; the tiles of a run merge
    where they have one pattern (0 included) and their keys move so."""
    run = tiles.StridedRun(first=0, end=4, sample=0, query_start=0, key_start=0, step=2, pattern=0)
    assert run.key_advance(8) == 16 and run.merges(8)
    assert dataclasses.replace(run, key_step=16).merges(8)
    assert dataclasses.replace(run, key_step=0).key_advance(8) == 0 and not dataclasses.replace(run, key_step=0).merges(
        8
    )
    assert not dataclasses.replace(run, pattern=-1).merges(8)
