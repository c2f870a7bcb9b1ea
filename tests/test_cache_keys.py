"""What a patched model keeps across calls (Swin's window masks, tile plans, shape-only masks) is keyed by all that
changes it: one model called in one state, then another, computes what a fresh model computes in the second.

* Swin with q/k/v frozen: a forward under ``torch.inference_mode()``, then a training step (nothing built from the
  frozen parameters under inference mode may reach the training step's graph);
* the plans and masks one forward's layers share, past each CPU crossover, with two batch sizes in a row.
* the bias the halo plan gathers from Swin's table, after the table changes in place.
"""

import copy

import pytest
import torch
from transformers import BertModel, SwinConfig, SwinModel, ViTModel

import hf_flexattn as hfx

from helpers import HALO_SIDE, NATTEN_1D_TOKENS, generator, rel_err, tiny_bert_config, tiny_vit_config

SWIN = dict(patch_size=2, embed_dim=16, depths=[2], num_heads=[2], window_size=4, drop_path_rate=0.0)


def _swin(size=16):
    torch.manual_seed(0)
    config = SwinConfig(image_size=2 * size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **SWIN)
    return SwinModel(config, add_pooling_layer=False), torch.randn(2, 3, 2 * size, 2 * size, generator=generator(0))


def _training_step(model, pixels):
    loss = model(pixel_values=pixels).last_hidden_state.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.cpu_only  # Swin's window algorithm (bias + shift mask cached) is CPU's path here
def test_swin_frozen_qkv_inference_mode_then_training_step_equals_a_fresh_model():
    model, pixels = _swin()
    hfx.patch(model, "swin")
    for name, parameter in model.named_parameters():
        if any(p in name for p in ("q_proj", "k_proj", "v_proj")):
            parameter.requires_grad_(False)  # frozen: nothing of theirs may be kept from the inference call
    fresh = copy.deepcopy(model)
    with torch.inference_mode():
        model.eval()(pixel_values=pixels)
    loss, grads = _training_step(model.train(), pixels)
    want_loss, want_grads = _training_step(fresh.train(), pixels)
    assert torch.equal(loss, want_loss)
    assert grads.keys() == want_grads.keys() and grads
    for name, grad in grads.items():  # (a bias table's gradient sums in a thread-dependent order)
        assert rel_err(grad, want_grads[name], floor=1e-2) <= 1e-6, name


# (family, variant, options, size): each past its CPU crossover (a plan is built, shared by the layers and cached),
# sizes in tokens for text, patches per side for images
PLANNED = [
    ("bert", "longformer", dict(window=64), 1100),  # band plan
    ("bert", "longformer", dict(window=8, global_tokens=[0, 5]), 1040),  # band plan with global rows
    ("bert", "neighborhood", dict(kernel_size=5, dilation=2), 2 * NATTEN_1D_TOKENS),  # band plan over dilation groups
    ("vit", "neighborhood", dict(kernel_size=3), HALO_SIDE),  # halo plan, CLS global
    ("vit", "swin", dict(window_size=2), 8),  # windows as tiles
    ("swin", "swin", {}, 16),  # Swin's window algorithm
    ("swin", "neighborhood", dict(kernel_size=5), HALO_SIDE),  # halo plan with Swin's bias
]


def _planned(family, size, batch):
    """A tiny model of ``family`` (seed 0, no dropout) and an unpadded input of ``batch`` samples of ``size``."""
    torch.manual_seed(0)
    none = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "bert":
        model = BertModel(tiny_bert_config(max_position_embeddings=max(512, size), **none))
        return model, dict(input_ids=torch.randint(5, 120, (batch, size), generator=generator(batch)))
    if family == "vit":
        pixels = torch.randn(batch, 3, 4 * size, 4 * size, generator=generator(batch))
        return ViTModel(tiny_vit_config(**none)), dict(pixel_values=pixels, interpolate_pos_encoding=True)
    model, _ = _swin(size)
    return model, dict(pixel_values=torch.randn(batch, 3, 2 * size, 2 * size, generator=generator(batch)))


@pytest.mark.parametrize("family,variant,options,size", PLANNED, ids=[f"{c[0]}-{c[1]}-{c[3]}" for c in PLANNED])
def test_two_batch_sizes_in_a_row_equal_fresh_models(family, variant, options, size):
    model, _ = _planned(family, size, 1)
    hfx.patch(model.eval(), variant, **options)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for batch in (2, 3, 2):
            _, inputs = _planned(family, size, batch)
            got = model(**inputs).last_hidden_state
            want = copy.deepcopy(fresh)(**inputs).last_hidden_state
            assert got.shape == want.shape and torch.equal(got, want), f"batch {batch} after another batch size"


@pytest.mark.cpu_only  # the halo plan (a bias gathered onto its tiles, kept between calls) is CPU's path here
def test_halo_bias_follows_an_in_place_change_of_swins_table():
    """The halo plan keeps Swin's bias table gathered onto its tiles while the table is unchanged (its version
    counter, compat.tensor_version); a table changed in place (an optimizer step, load_state_dict) is gathered
    again."""
    model, inputs = _planned("swin", 24, 1)
    hfx.patch(model, "neighborhood", kernel_size=5)
    with torch.no_grad():
        model.eval()(**inputs)  # keeps the gathered bias
        for name, parameter in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.add_(1.0).mul_(-2.0)
        got = model(**inputs).last_hidden_state
        want = copy.deepcopy(model)(**inputs).last_hidden_state  # a copy keeps nothing (Variant.__getstate__)
    assert rel_err(got, want) <= 1e-6
