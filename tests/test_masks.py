"""Mask factories against a plainly written dense rule, and BlockMask structure against the dense mask.

Uncompiled flex ignores block structure, so a wrong BlockMask would hide in output tests: check it here.
"""

import itertools

import pytest
import torch

from hf_flexattn.masks import (
    build_block_mask,
    generate_full,
    generate_global,
    generate_key_padding,
    generate_sliding_window,
)

from helpers import check_block_structure


def dense_rule(N, half, globals_, real):
    """Longformer-style rule written out entry by entry."""
    B = real.shape[0]
    out = torch.zeros(B, N, N, dtype=torch.bool)
    for b, q, kv in itertools.product(range(B), range(N), range(N)):
        seen = abs(q - kv) <= half or bool(globals_[b, q]) or bool(globals_[b, kv])
        out[b, q, kv] = seen and bool(real[b, kv])
    return out


@pytest.mark.parametrize(
    "N,half,block,glob_pos",
    [(40, 3, 8, []), (37, 5, 8, [0]), (64, 16, 16, [0, 33]), (100, 7, 16, [99]), (130, 200, 32, [5]), (9, 0, 4, [])],
)
def test_longformer_pieces_match_dense_rule_and_block_structure(N, half, block, glob_pos):
    B = 2
    real = torch.ones(B, N, dtype=torch.bool)
    real[1, N - N // 3 :] = False
    globals_ = torch.zeros(B, N, dtype=torch.bool)
    globals_[:, glob_pos] = True
    globals_[1, N // 2] = True  # per-sample global
    mask = (generate_sliding_window(half) | generate_global(globals_)) & generate_key_padding(real)
    want = dense_rule(N, half, globals_, real)
    assert torch.equal(mask.dense(B, 1, N, N)[:, 0], want)
    bm = build_block_mask(mask, N, N, batch=B, heads=1, device="cpu", block_size=block)
    check_block_structure(bm, want[:, None])


@pytest.mark.parametrize("N,half,block", [(64, 4, 8), (100, 20, 16), (256, 64, 32), (50, 49, 8)])
def test_sliding_window_block_mask_is_tight(N, half, block):
    """For the plain window the analytic summary is exact: listed blocks = blocks with an allowed entry."""
    mask = generate_sliding_window(half)
    bm = build_block_mask(mask, N, N, batch=1, heads=1, device="cpu", block_size=block)
    partial, full, any_true, all_true = check_block_structure(bm, mask.dense(1, 1, N, N))
    assert torch.equal(partial | full, any_true)
    assert torch.equal(full, all_true)


def test_dense_fallback_summary_is_exact_for_an_arbitrary_mask():
    from hf_flexattn.masks import Mask

    mask = Mask(lambda b, h, q, kv: (q // 10) == (kv // 10))  # no analytic summary: evaluated block by block
    bm = build_block_mask(mask, 70, 70, batch=1, heads=1, device="cpu", block_size=16)
    partial, full, any_true, all_true = check_block_structure(bm, mask.dense(1, 1, 70, 70))
    assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)


def test_padding_blocks_and_full_mask():
    real = torch.zeros(2, 50, dtype=torch.bool)
    real[0, :50] = True
    real[1, :10] = True
    mask = generate_full() & generate_key_padding(real)
    bm = build_block_mask(mask, 50, 50, batch=2, heads=1, device="cpu", block_size=16)
    partial, full, any_true, _ = check_block_structure(bm, mask.dense(2, 1, 50, 50))
    assert torch.equal(partial | full, any_true)
    assert full[0].all() and not full[1, :, :, 1:].any()  # sample 1: keys past 10 are never visited


def test_large_block_mask_is_built_without_a_dense_matrix(monkeypatch):
    """At N=16384 the per-batch mask comes from block summaries: no N×N tensor is ever allocated."""
    N = 16384
    real = torch.ones(2, N, dtype=torch.bool)
    real[1, 9000:] = False
    globals_ = torch.zeros(2, N, dtype=torch.bool)
    globals_[:, 0] = True
    mask = (generate_sliding_window(256) | generate_global(globals_)) & generate_key_padding(real)
    biggest = []
    real_zeros = torch.zeros

    def tracking_zeros(*size, **kw):
        t = real_zeros(*size, **kw)
        biggest.append(t.numel())
        return t

    monkeypatch.setattr(torch, "zeros", tracking_zeros)
    bm = build_block_mask(mask, N, N, batch=2, heads=1, device="cpu")
    assert max(biggest) < N * 64
    assert bm.kv_num_blocks.shape == (2, 1, N // 128)
    # row 40 (a block in the middle of sample 0): at most 2·256/128 + 1 window blocks + 1 global block
    total = bm.kv_num_blocks[0, 0, 40] + bm.full_kv_num_blocks[0, 0, 40]
    assert total <= 6
