"""Swin family: variant 'swin' (and 'full') reproduce HF Swin exactly, block by block (CPU: HF's window algorithm;
CUDA: per block HF's window algorithm or one flex call over the block's feature map, whichever computes fewer
scores: tests/test_swin_cuda.py)."""

import copy

import pytest
import torch
from transformers import SwinConfig, SwinForImageClassification, SwinForMaskedImageModeling, SwinModel

import hf_flexattn as hfx
import hf_flexattn.variants.swin as swin_variant
from hf_flexattn.masks import build_block_mask, generate_shifted_windows

from helpers import (
    check_block_structure,
    hf_shift_rule,
    natten_2d_reference,
    no_dropout,
    reference_attention,
    rel_err,
    tol,
)


def swin_config(window=4, image=32, **kw):
    args = dict(
        image_size=image,
        patch_size=2,
        embed_dim=16,
        depths=[2, 2, 2],
        num_heads=[2, 2, 4],
        window_size=window,
        num_labels=3,
        attn_implementation="eager",
    )
    args.update(kw)
    return SwinConfig(**args)


def _pair(cls, config, seed=0):
    torch.manual_seed(seed)
    original = cls(config).eval()
    with torch.no_grad():  # HF initialises the bias tables to zero: make them matter
        for name, p in original.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    patched = copy.deepcopy(original)
    return original, patched


@pytest.mark.parametrize(
    "height,width,window,shift", [(8, 8, 4, 2), (8, 12, 4, 0), (14, 14, 7, 3), (12, 12, 4, 1), (6, 6, 3, 1)]
)
def test_shifted_window_mask_equals_hf_rule_and_block_structure(height, width, window, shift):
    mask = generate_shifted_windows((height, width), window, shift)
    n = height * width
    dense = mask.dense(1, 1, n, n)
    assert torch.equal(dense[0, 0], hf_shift_rule(height, width, window, shift))
    check_block_structure(build_block_mask(mask, n, n, batch=1, heads=1, device="cpu", block_size=16), dense)


CASES = [(4, 32), (4, 36), (7, 56), (7, 60)]  # window 4 and 7; images that are / are not multiples of window·patch


@pytest.mark.parametrize("window,image", CASES)
def test_swin_eval_matches_hf(window, image):
    original, patched = _pair(SwinForImageClassification, swin_config(window, image))
    hfx.patch(patched, "swin")
    pixels = torch.randn(2, 3, image, image)
    with torch.no_grad():
        want = original(pixel_values=pixels, output_hidden_states=True)
        got = patched(pixel_values=pixels, output_hidden_states=True)
    assert (want.logits - got.logits).abs().max() <= tol(1e-5)
    for w, g in zip(want.hidden_states, got.hidden_states):
        assert (w - g).abs().max() <= tol(1e-5)


def test_output_attentions_are_hfs_per_window_probabilities():
    """HF's format: the last block of each stage, (B·nW, heads, w², w²), as HF's eager attention computes them."""
    original, patched = _pair(SwinModel, swin_config(4, 36))
    hfx.patch(patched, "swin")
    pixels = torch.randn(2, 3, 36, 36)
    with torch.no_grad():
        want = original(pixel_values=pixels, output_attentions=True).attentions
        got = patched(pixel_values=pixels, output_attentions=True).attentions
    assert len(got) == len(want) == 3
    for w, g in zip(want, got):
        assert g.shape == w.shape and (w - g).abs().max() <= tol(1e-6)
    assert got[0].shape == (2 * 25, 2, 16, 16)  # stage 1: the 18×18 map padded to 20×20, 25 windows of 4×4


def test_cached_fused_weights_and_masks_follow_in_place_parameter_updates():
    """Inference caches the concatenated q/k/v weights and the bias + shift mask; an optimizer step changes the
    parameters in place, and the next forward must see it."""
    original, patched = _pair(SwinModel, swin_config(4, 32))
    hfx.patch(patched, "swin")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        patched(pixel_values=pixels)  # fills the caches
        for model in (original, patched):
            block = model.encoder.layers[0].blocks[1]
            block.attention.k_proj.weight.mul_(1.5)
            block.attention.relative_position_bias.relative_position_bias_table.add_(1.0).mul_(-2.0)
        assert (
            original(pixel_values=pixels).last_hidden_state - patched(pixel_values=pixels).last_hidden_state
        ).abs().max() <= tol(1e-5)


def test_window_contiguous_order_makes_windows_contiguous():
    from hf_flexattn.masks import window_contiguous_order

    order = window_contiguous_order((8, 8), 4, 2)
    assert sorted(order[:64].tolist()) == list(range(64)) and order[64:].tolist() == list(range(64, 128))
    rule = hf_shift_rule(8, 8, 4, 2)[order[:64]][:, order[:64]]
    # in window-contiguous order every window is one contiguous diagonal block
    assert torch.equal(
        rule, torch.block_diag(*[torch.ones(n, n, dtype=torch.bool) for n in (4, 8, 4, 8, 16, 8, 4, 8, 4)])
    )


def test_full_is_swin_with_defaults_and_masked_image_modeling_works():
    original, patched = _pair(SwinForMaskedImageModeling, swin_config(4, 32, encoder_stride=8))
    hfx.patch(patched, "full")
    assert "variant=full" in repr(patched.swin.encoder.layers[0].blocks[1])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = original(pixel_values=pixels).reconstruction
        got = patched(pixel_values=pixels).reconstruction
    assert (want - got).abs().max() <= tol(1e-5)


def test_training_gradients_including_the_bias_table_match_hf():
    original, patched = _pair(SwinForImageClassification, swin_config(4, 36))
    hfx.patch(patched, "swin")
    for m in (original, patched):
        no_dropout(m).train()
    pixels, labels = torch.randn(2, 3, 36, 36), torch.tensor([0, 2])
    lw, lg = original(pixel_values=pixels, labels=labels).loss, patched(pixel_values=pixels, labels=labels).loss
    lw.backward()
    lg.backward()
    assert abs(lw.item() - lg.item()) <= tol(1e-5)
    tables = 0
    for (name, pw), (_, pg) in zip(original.named_parameters(), patched.named_parameters()):
        assert rel_err(pg.grad, pw.grad) <= tol(1e-4), name
        tables += "relative_position_bias_table" in name and pg.grad.abs().sum() > 0
    assert tables == 6  # every block's table received a gradient


def test_masks_are_built_once_per_stage_geometry(monkeypatch):
    _, patched = _pair(SwinModel, swin_config(4, 32))
    hfx.patch(patched, "swin")
    built = []  # the window geometry (CPU: HF's window algorithm) or the BlockMask (CUDA: flex) of a block
    for name in ("rolled_partition_index", "generate_window_contiguous_windows"):
        original = getattr(swin_variant, name)
        monkeypatch.setattr(swin_variant, name, lambda *a, _f=original, _n=name, **k: built.append(_n) or _f(*a, **k))
    with torch.no_grad():
        patched(pixel_values=torch.randn(1, 3, 32, 32))
    # stage maps 16x16, 8x8 (shifted and not), 4x4 (one window, unshifted): 5 masks for 6 blocks
    assert len(built) == 5
    with torch.no_grad():
        patched(pixel_values=torch.randn(3, 3, 32, 32))
    assert len(built) == 5


def _block_against_dense(block, rule, covered=None, side=16):
    """A patched Swin block on a side×side map against the block written densely: mask + bias + softmax."""
    from hf_flexattn.variants import ForwardInputs, ForwardMasks

    n, channels = side * side, block.layernorm_before.normalized_shape[0]
    heads_n = block.attention.num_attention_heads if hasattr(block.attention, "num_attention_heads") else 2
    x = torch.randn(2, n, channels)
    with torch.no_grad():
        masks = ForwardMasks(block.hfx_variant, ForwardInputs(batch=2, seq_len=n, device=torch.device("cpu")))
        got, _ = block(x, (side, side), hfx_masks=masks)
        attn = block.attention
        h = block.layernorm_before(x)
        heads = lambda t: t.view(2, n, heads_n, -1).transpose(1, 2)
        pos = torch.arange(n)
        dr, dc = pos[:, None] // side - pos[None] // side, pos[:, None] % side - pos[None] % side
        table = attn.relative_position_bias.relative_position_bias_table  # a 4-window table: offsets ±3
        bias = table[(dr.clamp(-3, 3) + 3) * 7 + dc.clamp(-3, 3) + 3].permute(2, 0, 1)
        if covered is not None:
            bias = bias * covered(dr, dc)
        ctx = reference_attention(heads(attn.q_proj(h)), heads(attn.k_proj(h)), heads(attn.v_proj(h)), rule, bias)
        mid = x + attn.o_proj(ctx.transpose(1, 2).reshape(2, n, channels))
        want = mid + block.mlp(block.layernorm_after(mid))
    assert (got - want).abs().max() <= tol(1e-5)


def test_smaller_window_uses_the_checkpoint_table_and_matches_a_dense_block():
    _, patched = _pair(SwinModel, swin_config(4, 32))
    hfx.patch(patched, "swin", window_size=2, shift=1)
    block = patched.encoder.layers[0].blocks[1]  # a shifted block on the 16x16 map
    _block_against_dense(block, generate_shifted_windows((16, 16), 2, 1).dense(1, 1, 256, 256))


def test_neighborhood_on_swin_adds_the_bias_where_the_table_covers_the_offset():

    _, patched = _pair(SwinModel, swin_config(4, 32))
    hfx.patch(patched, "neighborhood", kernel_size=9)  # offsets up to ±8; the table covers ±3
    rule = natten_2d_reference(16, 16, (9, 9), (1, 1), 0)
    _block_against_dense(patched.encoder.layers[0].blocks[0], rule, lambda dr, dc: (dr.abs() <= 3) & (dc.abs() <= 3))
    # a stage smaller than the kernel (the 4x4 map of stage 3, kernel 9) sees its whole map, bias where covered
    last = patched.encoder.layers[2].blocks[0]
    _block_against_dense(
        last, torch.ones(16, 16, dtype=torch.bool), lambda dr, dc: (dr.abs() <= 3) & (dc.abs() <= 3), 4
    )
