"""Mask factories against a plainly written dense rule, and BlockMask structure against the dense mask.

Uncompiled flex ignores block structure, so a wrong BlockMask would hide in output tests: check it here.
"""

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any torch operation produces inside the block (whatever made it)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("variant,options", [("longformer", dict(window=512, global_tokens=[0])), ("neighborhood", {})])
def test_per_batch_masks_are_built_without_an_n_by_n_tensor(variant, options):
    """At N=16,384 a padded batch's masks (what a forward builds, in every form flex uses) come from block summaries:
    no operation allocates anything near N×N (2.7e8 entries); the largest tensor is a few blocks' rows."""
    from transformers import BertModel

    import hf_flexattn as hfx
    from hf_flexattn.patching import patch_state
    from hf_flexattn.variants import ForwardInputs, ForwardMasks

    from helpers import tiny_bert_config

    n = 16384
    model = hfx.patch(BertModel(tiny_bert_config(max_position_embeddings=n)), variant, **options)
    real = torch.ones(2, n, dtype=torch.bool)
    real[1, 9000:] = False
    glob = torch.zeros(2, n, dtype=torch.bool)
    glob[1, 4000] = True
    extra = {"global_attention_mask": glob} if variant == "longformer" else {}
    inputs = ForwardInputs(2, n, torch.device("cpu"), key_is_real=real, **extra)
    with LargestAllocation() as largest:
        masks_for_layer = ForwardMasks(patch_state(model).variant, inputs).for_layer(0, inputs.device)
        mask = masks_for_layer[0] if isinstance(masks_for_layer, tuple) else masks_for_layer
        block_mask = mask.block_mask(bucketed=True)
        mask.block_mask(bucketed=False)
    assert largest.numel <= 64 * n, largest.numel
    # the mask is still right where it matters: a block in the middle of sample 0 visits the window's blocks only
    visited = block_mask.kv_num_blocks[0, 0, 40] + block_mask.full_kv_num_blocks[0, 0, 40]
    assert visited <= 6
