"""Bugs a mutation audit put into the code that no test caught, each now caught here:

* tile plans cached without the inference-mode flag (a training step after a forward under ``inference_mode``
  tried to save inference tensors for backward);
* ``attention_dropout="off"`` ignored on one of the paths (the native ``attn_implementation`` path, Swin's window
  path, the ViT window plan, the band and halo plans, the block-sparse path);
* the block-sparse dropout scaling kept entries by 1/(1 − p) instead of 256/(256 − round(256·p)), p rounded to the
  1/256 its byte-drawn keep mask realises;
* the dense mask cache keyed without the dtype (an fp32 call, then a bf16 call on the same model).
"""

import copy
from unittest import mock

import pytest
import torch
from transformers import BertModel, SwinConfig, SwinModel, ViTModel

import hf_flexattn as hfx
from hf_flexattn.kernels.block_sparse import block_sparse_attention
from hf_flexattn.masks import BatchMask, generate_full

from helpers import DEVICE, padded_batch, rel_err, tiny_bert_config, tiny_vit_config

SWIN = dict(patch_size=2, embed_dim=16, depths=[2], num_heads=[2], window_size=4, drop_path_rate=0.0)

# (family, variant, options, size): each past its CPU crossover, so that a tile plan (or Swin's window geometry) is
# built and cached: sizes in tokens for text, patches per side for images
PLANNED = [
    ("bert", "longformer", dict(window=64), 1100),  # the audit's reproduction: band plan (from 64 + 1,024 tokens)
    ("bert", "neighborhood", dict(kernel_size=5, dilation=2), 90),  # band plan over dilation groups
    ("vit", "neighborhood", dict(kernel_size=3), 22),  # halo plan
    ("vit", "swin", dict(window_size=2), 8),  # windows as tiles
    ("swin", "neighborhood", dict(kernel_size=5), 24),  # halo plan with Swin's bias
    ("swin", "swin", {}, 16),  # Swin's window algorithm (cached geometry)
]


def _model(family, size, **config):
    """A tiny random model of ``family`` and an unpadded input of ``size`` (tokens, or patches per side)."""
    torch.manual_seed(0)
    if family == "bert":
        cfg = tiny_bert_config(max_position_embeddings=max(512, size), **config)
        return BertModel(cfg), dict(input_ids=torch.randint(5, 120, (2, size)))
    if family == "vit":
        pixels = torch.randn(2, 3, 4 * size, 4 * size)
        model = ViTModel(tiny_vit_config(**config), add_pooling_layer=False)
        return model, dict(pixel_values=pixels, interpolate_pos_encoding=True)
    model = SwinModel(SwinConfig(image_size=2 * size, **SWIN, **config), add_pooling_layer=False)
    return model, dict(pixel_values=torch.randn(2, 3, 2 * size, 2 * size))


def _training_step(model, inputs):
    loss = model(**inputs).last_hidden_state.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.cpu_only  # the plans are CPU's (CUDA runs compiled flex)
@pytest.mark.parametrize("family,variant,options,size", PLANNED, ids=[f"{c[0]}-{c[1]}" for c in PLANNED])
def test_a_training_step_after_an_inference_mode_forward_equals_a_fresh_one(family, variant, options, size):
    """Plans built under ``torch.inference_mode()`` hold inference tensors, which autograd cannot save: a training
    step after such a forward must build its own (and compute what a fresh model computes)."""
    model, inputs = _model(family, size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
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


# ------------------------------------------------------------------------------------------------ attention_dropout


def _native_bert(variant, options, size):
    """BERT with attention dropout 0.5 on the native path: ``attn_implementation="hf_flexattn_<variant>"``."""
    torch.manual_seed(0)
    config = tiny_bert_config(max_position_embeddings=max(512, size), attention_probs_dropout_prob=0.5)
    config.hidden_dropout_prob = 0.0
    config.hf_flexattn = {"variant": variant, "options": options}
    model = BertModel(config)
    model.set_attn_implementation(f"hf_flexattn_{variant}")
    ids, mask = padded_batch(batch=2, seq_len=size, lengths=[size, size - 5])
    return model, dict(input_ids=ids, attention_mask=mask)


def _patched(family, variant, options, size):
    dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    model, inputs = _model(family, size, **dropout)
    return hfx.patch(model, variant, **options), inputs


# every path a training forward can take, each with attention dropout 0.5: (name, build(attention_dropout))
DROPOUT_PATHS = [
    ("native-dense", lambda setting: _native_bert("longformer", dict(window=8, attention_dropout=setting), 24)),
    ("native-band", lambda setting: _native_bert("longformer", dict(window=8, attention_dropout=setting), 1040)),
    ("native-neighborhood", lambda setting: _native_bert("neighborhood", dict(attention_dropout=setting), 24)),
    ("native-full", lambda setting: _native_bert("full", dict(attention_dropout=setting), 24)),
    ("block-sparse", lambda setting: _patched("bert", "longformer", dict(window=8, attention_dropout=setting), 40)),
    ("band", lambda setting: _patched("bert", "longformer", dict(window=8, attention_dropout=setting), 1040)),
    (
        "band-natten",
        lambda setting: _patched("bert", "neighborhood", dict(kernel_size=5, attention_dropout=setting), 90),
    ),
    ("halo", lambda setting: _patched("vit", "neighborhood", dict(kernel_size=3, attention_dropout=setting), 22)),
    ("vit-windows", lambda setting: _patched("vit", "swin", dict(window_size=2, attention_dropout=setting), 8)),
    ("swin-windows", lambda setting: _patched("swin", "swin", dict(attention_dropout=setting), 8)),
    ("swin-halo", lambda setting: _patched("swin", "neighborhood", dict(kernel_size=5, attention_dropout=setting), 24)),
    (
        "swin-generic",
        lambda setting: _patched("swin", "neighborhood", dict(kernel_size=3, attention_dropout=setting), 8),
    ),
]


@pytest.mark.parametrize("build", [b for _, b in DROPOUT_PATHS], ids=[name for name, _ in DROPOUT_PATHS])
def test_attention_dropout_off_means_off_and_standard_drops_on_every_path(build):
    """With ``attention_dropout='off'`` a training forward equals the eval forward; with 'standard' it does not
    (so the model's rate of 0.5 does reach this path)."""
    for setting in ("off", "standard"):
        model, inputs = build(setting)
        with torch.no_grad():
            evaluated = model.eval()(**inputs).last_hidden_state
            trained = model.train()(**inputs).last_hidden_state
        if "attention_mask" in inputs:  # padded rows are no one's output
            trained, evaluated = (x[inputs["attention_mask"].bool()] for x in (trained, evaluated))
        difference = (trained - evaluated).abs().max()
        if setting == "off":
            assert difference <= 1e-6, difference
        else:
            assert difference > 1e-3, difference


# ------------------------------------------------------------------------------------------------ dropout scale


def dropped_probabilities(p: float, keys: int = 64, rows: int = 256) -> torch.Tensor:
    """The attention probabilities after dropout as the block-sparse path draws and scales them (the function that
    draws its keep mask is ``SparsePlan.keep_mask``, the scaling ``SparsePlan.dropout``): with zero queries every
    probability is 1/keys, and identity values read the dropped probabilities out. Returns (rows, keys)."""
    query = torch.zeros(1, 1, rows, keys, dtype=torch.float64)
    value = torch.eye(keys, dtype=torch.float64)[None, None]
    mask = BatchMask(generate_full(), rows, keys, device=query.device)
    out = block_sparse_attention(query, value.clone(), value, mask.block_mask(), dropout_p=p)
    return out[0, 0]


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.77])
def test_block_sparse_dropout_scales_kept_entries_by_the_rate_it_draws(p):
    """The keep mask is drawn from bytes, so entries drop with probability p′ = round(256·p)/256; kept ones are
    scaled by exactly 1/(1 − p′) = 256/(256 − round(256·p)) (at p = 0.3: 1.43017, where 1/(1 − p) = 1.42857)."""
    dropped = dropped_probabilities(p) * 64  # kept entries: the scale itself
    kept = dropped != 0
    want = 256 / (256 - round(256 * p))
    assert kept.any() and (~kept).any()
    assert rel_err(dropped[kept], torch.full_like(dropped[kept], want)) <= 1e-6
    # ... and entries drop at about the rate p′ (16,384 draws: 4 standard deviations below 0.015)
    assert abs((~kept).double().mean().item() - round(256 * p) / 256) <= 0.015


# ------------------------------------------------------------------------------------------------ dense mask dtype


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
