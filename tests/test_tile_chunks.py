"""How the tiled kernel cuts a plan into kernel calls: as few chunks as the memory rule allows, masks kept per plan.

On a shared CPU every call is a parallel region that waits for every thread, so the chunk count is the kernel's main
cost under load (docs/benchmarks.md, "Under contention"); these tests pin the rule, not a timing.
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_flexattn.kernels import tiles
from hf_flexattn.kernels.band import sliding_window_plan
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
