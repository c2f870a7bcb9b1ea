"""Swin v2 family: `full`/`swin` reproduce HF Swin v2 (cosine attention, clamped logit scale, continuous position
bias, pretrained window sizes) block by block; `neighborhood` matches its dense rule with the bias.

Exactness is tested in float64. In float32, a random-initialised Swin v2 is ill-conditioned: its residual post-norm
LayerNorms rescale small attention outputs, and HF's own float32 result differs from its float64 result by 2e-5 to
1e-3 on these tiny models; the float32 test asks that hf_flexattn be no further from float64 than HF is."""

import copy
import math

import pytest
import torch
from family_checks import head_outputs
from transformers import (
    Swinv2Backbone,
    Swinv2Config,
    Swinv2ForImageClassification,
    Swinv2ForMaskedImageModeling,
    Swinv2Model,
)
from transformers.models.swinv2.modeling_swinv2 import Swinv2SelfAttention

import hf_flexattn as hfx

from helpers import (
    generator,
    natten_2d_reference,
    no_dropout,
    reference_attention,
    rel_err,
    tol,
)


def swinv2_config(window=4, image=32, **kw):
    args = {
        "image_size": image,
        "patch_size": 2,
        "embed_dim": 16,
        "depths": [2, 2, 2],
        "num_heads": [2, 2, 4],
        "window_size": window,
        "num_labels": 3,
        "out_features": ["stage1", "stage3"],
        "attn_implementation": "eager",
    }
    return Swinv2Config(**{**args, **kw})


def _model(cls, config, seed=0):
    torch.manual_seed(seed)
    model = no_dropout(cls(config)).eval()
    with torch.no_grad():  # HF starts every logit scale at log 10: spread them, one above the clamp (log 100)
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.uniform_(1.0, 5.0)
    return model


CASES = [
    (Swinv2ForImageClassification, swinv2_config(4, 32), "full", {}),
    (Swinv2Model, swinv2_config(4, 36), "swin", {}),  # maps 18, 9, 5: padded to the window, last stage one window
    (Swinv2ForMaskedImageModeling, swinv2_config(4, 32, encoder_stride=16), "full", {}),
    (Swinv2Backbone, swinv2_config(4, 32), "swin", {"window_size": 4, "shift": 2}),  # HF's own, spelled out
    (Swinv2Model, swinv2_config(4, 32, pretrained_window_sizes=[3, 3, 3]), "full", {}),  # bias coordinates ÷ (3 − 1)
]


@pytest.mark.parametrize("cls,config,variant,options", CASES, ids=[f"{c[0].__name__}-{c[2]}" for c in CASES])
def test_full_and_swin_equal_hf_swinv2(cls, config, variant, options):
    original = _model(cls, config).double()
    patched = hfx.patch(copy.deepcopy(original), variant, **options)
    pixels = torch.randn(2, 3, config.image_size, config.image_size, dtype=torch.float64)
    with torch.no_grad():
        want, got = (
            original(pixel_values=pixels, output_hidden_states=True),
            patched(pixel_values=pixels, output_hidden_states=True),
        )
    pairs = list(zip(head_outputs(want), head_outputs(got)))
    assert pairs
    for w, g in pairs:
        assert (w - g).abs().max() <= tol(1e-10)


def test_float32_is_as_close_to_float64_as_hf_itself():
    truth = _model(Swinv2ForImageClassification, swinv2_config(4, 36)).double()
    hf32 = copy.deepcopy(truth).float()
    ours32 = hfx.patch(copy.deepcopy(hf32), "full")

    def error(model, pixels, want) -> float:
        got = model(pixel_values=pixels, output_hidden_states=True)
        return max((w - g).abs().max().item() for w, g in zip(head_outputs(want), head_outputs(got)))

    # summed over several inputs: the largest rounding error of one input swings by 2x either way between two
    # float32 orders of summation (measured: ours/HF's from 0.45 to 2.05 over single draws)
    hf_error = our_error = 0.0
    with torch.no_grad():
        for seed in range(4):
            pixels = torch.randn(2, 3, 36, 36, generator=generator(seed))
            want = truth(pixel_values=pixels.double(), output_hidden_states=True)
            hf_error += error(hf32, pixels, want)
            our_error += error(ours32, pixels, want)
    assert our_error <= 2 * hf_error + 1e-6, (our_error, hf_error)


def test_training_gradients_reach_the_logit_scale_and_the_bias_mlp_as_in_hf():
    original = _model(Swinv2ForImageClassification, swinv2_config(4, 36, pretrained_window_sizes=[3, 3, 3]))
    original = original.double().train()
    patched = hfx.patch(copy.deepcopy(original), "swin")
    pixels, labels = torch.randn(2, 3, 36, 36, dtype=torch.float64), torch.tensor([0, 2])
    loss_w, loss_g = original(pixel_values=pixels, labels=labels).loss, patched(pixel_values=pixels, labels=labels).loss
    loss_w.backward()
    loss_g.backward()
    assert abs(loss_w.item() - loss_g.item()) <= tol(1e-10)
    reached = {"logit_scale": 0, "continuous_position_bias_mlp": 0}
    for (name, pw), (_, pg) in zip(original.named_parameters(), patched.named_parameters()):
        assert rel_err(pg.grad, pw.grad) <= tol(1e-8), name
        for key in reached:
            reached[key] += key in name and pg.grad.abs().sum().item() > 0
    # every block's scale (one of them clamped: no gradient, as in HF) and MLP layers
    assert reached["continuous_position_bias_mlp"] == 6 * 3 and reached["logit_scale"] >= 5


def test_a_larger_window_than_the_checkpoint_uses_the_continuous_bias_as_swinv2_window_transfer_does():
    """Patched with window 8, a window-4 checkpoint equals HF Swin v2 built with window 8 and pretrained window 4
    (the same weights: the bias MLP does not depend on the window)."""
    config = swinv2_config(4, 64, pretrained_window_sizes=[4, 4, 4])
    original = _model(Swinv2Model, config).double()
    patched = hfx.patch(copy.deepcopy(original), "swin", window_size=8)
    assert "window_size=8, shift=4" in repr(patched.encoder.layers[0].blocks[1])
    wider = Swinv2Model(swinv2_config(8, 64, pretrained_window_sizes=[4, 4, 4])).double().eval()
    wider.load_state_dict(original.state_dict())
    pixels = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        want, got = wider(pixel_values=pixels).last_hidden_state, patched(pixel_values=pixels).last_hidden_state
        assert (original(pixel_values=pixels).last_hidden_state - got).abs().max() > 1e-3  # the window changed
    assert (want - got).abs().max() <= tol(1e-10)


def test_neighborhood_block_matches_a_dense_block_with_the_continuous_bias():
    model = _model(Swinv2Model, swinv2_config(4, 32)).double()
    hfx.patch(model, "neighborhood", kernel_size=7)  # offsets up to ±6: beyond the checkpoint's window (±3)
    block = model.encoder.layers[0].blocks[0]  # a 16x16 map
    attention = block.attention.self
    # the bias for offsets ±6, as HF computes it for a 7-window whose coordinates are normalised by this block's 4
    wide = Swinv2SelfAttention(model.config, 16, 2, window_size=7, pretrained_window_size=[4, 4])
    wide.double().continuous_position_bias_mlp.load_state_dict(attention.continuous_position_bias_mlp.state_dict())
    x = torch.randn(2, 256, 16, dtype=torch.float64)
    with torch.no_grad():
        got = block(x, (16, 16))[0]
        table = wide.continuous_position_bias_mlp(wide.relative_coords_table).view(-1, 2)
        pos = torch.arange(256)
        dr, dc = pos[:, None] // 16 - pos[None] // 16, pos[:, None] % 16 - pos[None] % 16
        covered = (dr.abs() <= 6) & (dc.abs() <= 6)
        index = (dr.clamp(-6, 6) + 6) * 13 + dc.clamp(-6, 6) + 6
        bias = (16 * torch.sigmoid(table[index])).permute(2, 0, 1) * covered
        heads = lambda t: t.view(2, 256, 2, 8).transpose(1, 2)
        q = torch.nn.functional.normalize(heads(attention.query(x)), dim=-1)
        k = torch.nn.functional.normalize(heads(attention.key(x)), dim=-1)
        scale = attention.logit_scale.clamp(max=math.log(100)).exp()
        rule = natten_2d_reference(16, 16, (7, 7), (1, 1), 0)
        ctx = reference_attention(q * scale, k, heads(attention.value(x)), rule, bias, scale=1.0)
        mid = x + block.layernorm_before(block.attention.output.dense(ctx.transpose(1, 2).reshape(2, 256, 16)))
        want = mid + block.layernorm_after(block.output(block.intermediate(mid)))
    assert (got - want).abs().max() <= tol(1e-10)
    # and the whole model runs on every stage, including the 4x4 one smaller than the kernel
    with torch.no_grad():
        assert torch.isfinite(
            model(pixel_values=torch.randn(1, 3, 32, 32, dtype=torch.float64)).last_hidden_state
        ).all()


def test_patch_swinv2_swaps_the_blocks_and_unpatch_restores_them():
    model = _model(Swinv2Model, swinv2_config(4, 32))
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model(pixel_values=pixels).last_hidden_state
    hfx.patch_swinv2(model)
    assert type(model.encoder.layers[0].blocks[0]).__name__ == "FlexSwinv2Layer"
    hfx.unpatch(model)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).last_hidden_state, want)


def test_output_attentions_says_once_that_patched_blocks_return_none():
    import warnings

    from hf_flexattn import warnings as hfx_warnings

    torch.manual_seed(0)
    model = hfx.patch(Swinv2Model(swinv2_config(4, 32)).eval(), "full")
    hfx_warnings._warned.discard("swinv2-attentions")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = model(pixel_values=torch.randn(1, 3, 32, 32), output_attentions=True)
    assert any("do not return attention weights" in str(w.message) for w in caught)
    assert all(a is None for a in out.attentions)


@pytest.mark.parametrize("variant", ["swin", "full"])
def test_windows_are_attended_in_window_contiguous_order(variant):
    """Each (shifted) window contiguous in the token order flex sees, so that a 128-token block meets few windows:
    on a 32x32 map with windows of 8 the unshifted blocks' BlockMask visits 8 of 64 blocks (row-major: 16); the
    shifted blocks' edge fragments (4 + 8 + 8 + 8 + 4 per axis) make both orders visit 14 here."""
    from hf_flexattn import kernels
    from hf_flexattn.masks import BatchMask, generate_shifted_windows

    patched = hfx.patch(_model(Swinv2Model, swinv2_config(8, 64)), variant)
    with torch.no_grad():
        patched(pixel_values=torch.randn(1, 3, 64, 64))
    layer = next(m for m in patched.modules() if hasattr(m, "hfx_variant"))
    cache = layer.hfx_variant._cache
    stage_masks = {  # the cache's keys: (the variant's key, whether built under inference_mode)
        k[2:4]: cache.get((k, inference))[0]
        for k, inference in cache.keys()
        if isinstance(k, tuple) and k[:2] == ("windows_mask", (32, 32))
    }
    assert set(stage_masks) == {(8, 0), (8, 4)}  # the first stage's unshifted and shifted blocks
    query = torch.zeros(1, 1, 32 * 32, 16)
    for (window, shift), mask in stage_masks.items():
        row_major = BatchMask(generate_shifted_windows((32, 32), window, shift), 32 * 32)
        window_major, row = kernels.block_density(query, mask), kernels.block_density(query, row_major)
        assert (window_major < row) if shift == 0 else (window_major <= row), (window, shift, window_major, row)
