"""A model called in one state, then in another, computes what a fresh model computes in the second: what its
caches keep is keyed by everything that changes it.

* a training step after a forward under ``torch.inference_mode()`` (tile plans and Swin's window geometry cached
  with inference tensors, which autograd cannot save for backward);
* a bf16 call after an fp32 call (the dense path's additive mask cached per dtype).

(Written for bugs a mutation audit put into the code and no test caught; each fails with its bug put back.)
"""

import copy
from unittest import mock

import pytest
import torch
from transformers import BertModel

import hf_flexattn as hfx

from helpers import DEVICE, HALO_SIDE, NATTEN_1D_TOKENS, rel_err, tiny_bert_config, tiny_model_and_input

# (family, variant, options, size): each past its CPU crossover, so that a tile plan (or Swin's window geometry) is
# built and cached: sizes in tokens for text, patches per side for images
PLANNED = [
    ("bert", "longformer", dict(window=64), 1100),  # the audit's reproduction: band plan (from 64 + 1,024 tokens)
    ("bert", "neighborhood", dict(kernel_size=5, dilation=2), 2 * NATTEN_1D_TOKENS),  # band plan over dilation groups
    ("vit", "neighborhood", dict(kernel_size=3), HALO_SIDE),  # halo plan
    ("vit", "swin", dict(window_size=2), 8),  # windows as tiles
    ("swin", "neighborhood", dict(kernel_size=5), HALO_SIDE),  # halo plan with Swin's bias
    ("swin", "swin", {}, 16),  # Swin's window algorithm (cached geometry)
]


def _training_step(model, inputs):
    loss = model(**inputs).last_hidden_state.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.cpu_only  # the plans are CPU's (CUDA runs compiled flex)
@pytest.mark.parametrize("family,variant,options,size", PLANNED, ids=[f"{c[0]}-{c[1]}" for c in PLANNED])
def test_a_training_step_after_an_inference_mode_forward_equals_a_fresh_one(family, variant, options, size):
    """Plans built under ``torch.inference_mode()`` hold inference tensors, which autograd cannot save: a training
    step after such a forward must build its own (and compute what a fresh model computes)."""
    model, inputs = tiny_model_and_input(family, size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hfx.patch(model, variant, **options)
    fresh = copy.deepcopy(model)
    with torch.inference_mode():
        model.eval()(**inputs)
    loss, grads = _training_step(model.train(), inputs)
    want_loss, want_grads = _training_step(fresh.train(), inputs)
    assert torch.equal(loss, want_loss)
    assert grads.keys() == want_grads.keys()
    for name, g in grads.items():  # (a bias table's gradient sums in a thread-dependent order: not bit-equal)
        assert rel_err(g, want_grads[name], floor=1e-2) <= 1e-6, name


@pytest.mark.parametrize("variant,options", [("longformer", dict(window=8)), ("neighborhood", dict(kernel_size=5))])
def test_a_bf16_call_after_an_fp32_call_gets_masks_in_bf16(variant, options):
    """The dense path's additive mask is cached per mask and dtype: after an fp32 call, a bf16 call on the same model
    must hand SDPA a bf16 mask (its contract: a float mask has the query's dtype; CUDA refuses another, CPU converts
    it silently) and compute what a fresh bf16 model computes."""
    torch.manual_seed(0)
    model = hfx.patch(BertModel(tiny_bert_config()).eval(), variant, **options)
    fresh = copy.deepcopy(model).to(torch.bfloat16)
    ids = torch.randint(5, 120, (2, 24))
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []

    def record(query, key, value, attn_mask=None, **kwargs):
        seen.append((query.dtype, None if attn_mask is None else attn_mask.dtype))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    with torch.no_grad():
        model(input_ids=ids)
        with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", record):
            low = model.to(torch.bfloat16)(input_ids=ids).last_hidden_state
        want = fresh(input_ids=ids).last_hidden_state
    assert seen or DEVICE.type != "cpu"  # (CUDA runs flex here: no SDPA call)
    assert all(mask in (None, torch.bool, query) for query, mask in seen), seen
    assert low.dtype == torch.bfloat16 and torch.equal(low, want)


@pytest.mark.cpu_only  # the plans are CPU's
def test_the_plan_cache_keeps_at_most_its_byte_budget_most_recent_first(monkeypatch):
    """A process that sees many lengths (each a shape-only plan) keeps the most recent within ``PLANS.max_bytes``:
    the oldest go first; what a call returns does not depend on what was kept."""
    from hf_flexattn import ops

    lengths = [1100, 1200, 1300, 1400, 1500]
    generator = torch.Generator().manual_seed(0)
    inputs = {n: [torch.randn(1, 2, n, 8, generator=generator) for _ in range(3)] for n in lengths}

    def plan_bytes(n):
        ops.PLANS.clear()
        ops.longformer_attention(*inputs[n], window=64)
        return ops.PLANS.kept_bytes()

    sizes = {n: plan_bytes(n) for n in lengths}
    assert all(size > 0 for size in sizes.values())
    want = {n: ops.longformer_attention(*inputs[n], window=64) for n in lengths}
    budget = sizes[lengths[-1]] + sizes[lengths[-2]]  # room for the last two
    monkeypatch.setattr(ops.PLANS, "max_bytes", budget)
    ops.PLANS.clear()
    for n in lengths:
        assert torch.equal(ops.longformer_attention(*inputs[n], window=64), want[n])
        assert ops.PLANS.kept_bytes() <= budget
    assert [key[0][1] for key in ops.PLANS.keys()] == lengths[-2:]  # (("band", seq_len, ...), inference mode)


@pytest.mark.cpu_only
def test_a_plan_over_the_budget_is_built_once_per_forward_and_not_kept(monkeypatch):
    """A shape-only plan larger than the whole budget: every layer of the forward shares the one it built (not one
    per layer), the cache keeps nothing, and the output is the model's with the plan kept."""
    from hf_flexattn import ops
    from hf_flexattn.kernels import band

    model, inputs = tiny_model_and_input("bert", 1100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    assert model.config.num_hidden_layers > 1
    hfx.patch(model.eval(), "longformer", window=64)
    ops.PLANS.clear()
    with torch.no_grad():
        want = model(**inputs).last_hidden_state
    assert len(ops.PLANS) > 0
    builds = []
    real_plan = band.sliding_window_plan
    monkeypatch.setattr(ops, "sliding_window_plan", lambda *a, **k: builds.append(1) or real_plan(*a, **k))
    monkeypatch.setattr(ops.PLANS, "max_bytes", 1)
    ops.PLANS.clear()
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
    assert builds == [1]
    assert len(ops.PLANS) == 0
    assert torch.equal(got, want)


def test_kept_tensors_counts_what_masks_materialise_and_not_a_modules_parameters():
    """The cache's byte count sees tensors inside objects (a BatchMask's dense and additive masks, its BlockMask's
    block lists), each storage once, and not a module's parameters."""
    from hf_flexattn import ops
    from hf_flexattn.masks import BatchMask
    from hf_flexattn.masks.common import generate_sliding_window

    bound = BatchMask(generate_sliding_window(4), 300, batch=1)
    empty = ops.tensor_bytes(bound)
    dense = bound.dense()
    additive, _ = bound.sdpa_mask(torch.float32, read_values=True)
    block_mask = bound.block_mask()
    lists = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in block_mask.as_tuple()[2:]
             if isinstance(t, torch.Tensor)}  # fmt: skip
    want = dense.untyped_storage().nbytes() + additive.untyped_storage().nbytes() + sum(lists.values())
    assert ops.tensor_bytes(bound) - empty == want
    assert ops.tensor_bytes([bound, bound]) == ops.tensor_bytes(bound)
    layer = torch.nn.Linear(64, 64)
    assert ops.tensor_bytes({"layer": layer, "mask": dense}) == dense.untyped_storage().nbytes()
