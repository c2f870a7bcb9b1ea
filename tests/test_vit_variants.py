"""ViT family: 2D neighborhood attention and window attention, CLS global, grid read at forward time."""

import copy

import pytest
import torch
from transformers import ViTForImageClassification, ViTModel

import hf_flexattn as hfx
from hf_flexattn.masks import build_block_mask, generate_natten_2d, generate_shifted_windows

from helpers import (
    check_block_structure,
    natten_2d_reference,
    reference_attention,
    tiny_vit_config,
    tol,
)

NATTEN_CASES = [
    ((5, 5), (3, 3), (1, 1), 1),
    ((8, 8), (3, 3), (2, 2), 1),
    ((7, 9), (5, 3), (1, 2), 2),
    ((6, 6), (5, 5), (1, 1), 0),
    ((9, 9), (3, 5), (3, 1), 1),
    ((4, 4), (1, 1), (1, 1), 1),
    ((10, 6), (7, 3), (1, 2), 1),
]


@pytest.mark.parametrize("grid,kernel,dilation,num_global", NATTEN_CASES)
def test_natten_2d_mask_equals_reference_corners_included(grid, kernel, dilation, num_global):
    mask = generate_natten_2d(grid, kernel, dilation, num_global)
    n = num_global + grid[0] * grid[1]
    dense = mask.dense(1, 1, n, n)
    want = natten_2d_reference(*grid, kernel, dilation, num_global)
    assert torch.equal(dense[0, 0], want)
    # clamped, not cut off: a corner query sees a full kernel_size window
    corner = num_global  # top-left patch
    assert want[corner, num_global:].sum() == kernel[0] * kernel[1]
    check_block_structure(build_block_mask(mask, n, n, batch=1, heads=1, device="cpu", block_size=16), dense)


@pytest.mark.parametrize("grid,window,shift", [((8, 8), 4, 0), ((8, 8), 4, 2), ((6, 9), 3, 1)])
def test_vit_windows_keep_cls_global(grid, window, shift):
    mask = generate_shifted_windows(grid, window, shift, num_global=1)
    n = 1 + grid[0] * grid[1]
    dense = mask.dense(1, 1, n, n)[0, 0]
    assert dense[0].all() and dense[:, 0].all()
    check_block_structure(
        build_block_mask(mask, n, n, batch=1, heads=1, device="cpu", block_size=16), dense[None, None]
    )
    # unshifted windows hold window² patches; shifted ones split at the borders, as Swin's shift mask does
    seen = dense[1:, 1:].sum(-1)
    assert (
        (seen == window * window).all()
        if shift == 0
        else ((seen <= window * window).all() and seen.min() < window * window)
    )


def _vit_pair(**config):
    torch.manual_seed(0)
    original = ViTModel(tiny_vit_config(**config), add_pooling_layer=False).eval()
    return original, copy.deepcopy(original)


def _dense_vit_forward(model, pixels, rule, **kwargs):
    """The ViT forward with every attention computed densely under ``rule`` (N×N bool)."""
    hidden = model.embeddings(pixels, **kwargs)
    for layer in model.layers:
        attn = layer.attention
        h = layer.layernorm_before(hidden)
        B, N, _ = h.shape
        heads = lambda t: t.view(B, N, -1, attn.head_dim).transpose(1, 2)
        ctx = reference_attention(heads(attn.q_proj(h)), heads(attn.k_proj(h)), heads(attn.v_proj(h)), rule(layer))
        hidden = hidden + attn.o_proj(ctx.transpose(1, 2).reshape(B, N, -1))
        hidden = hidden + layer.mlp(layer.layernorm_after(hidden))
    return model.layernorm(hidden)


def test_neighborhood_vit_matches_dense_reference():
    _, patched = _vit_pair()
    hfx.patch(patched, "neighborhood", kernel_size=3, dilation=2)
    pixels = torch.randn(2, 3, 32, 32)
    rule = natten_2d_reference(8, 8, (3, 3), (2, 2), 1)
    with torch.no_grad():
        got = patched(pixel_values=pixels).last_hidden_state
        want = _dense_vit_forward(patched, pixels, lambda layer: rule)
    assert (got - want).abs().max() <= tol(1e-5)


def test_neighborhood_kernel_covering_grid_equals_full():
    original, patched = _vit_pair()
    hfx.patch(patched, "neighborhood", kernel_size=7)
    pixels = torch.randn(2, 3, 28, 28)  # a 7x7 grid: the 7x7 window covers it
    with torch.no_grad():
        want = original(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        got = patched(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)


def test_swin_windows_on_vit_alternate_shift_and_match_dense():
    _, patched = _vit_pair(num_hidden_layers=2)
    hfx.patch(patched, "swin", window_size=4)
    pixels = torch.randn(2, 3, 32, 32)
    rules = [generate_shifted_windows((8, 8), 4, s, 1).dense(1, 1, 65, 65)[0, 0] for s in (0, 2)]
    assert not torch.equal(rules[0], rules[1])
    layers = list(patched.layers)
    with torch.no_grad():
        got = patched(pixel_values=pixels).last_hidden_state
        want = _dense_vit_forward(patched, pixels, lambda layer: rules[layers.index(layer) % 2])
    assert (got - want).abs().max() <= tol(1e-5)


def test_grid_comes_from_the_input_interpolated_4096_patches():
    """A 256×256 image on a 32×32-trained ViT: 64×64 = 4,096 patches, masks sized from the input."""
    torch.manual_seed(0)
    model = ViTForImageClassification(tiny_vit_config(num_hidden_layers=1)).eval()
    hfx.patch(model, "neighborhood", kernel_size=7)
    pixels = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = model(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
    assert out.hidden_states[-1].shape[1] == 4097
    with torch.no_grad():
        base = model.vit
        rule = generate_natten_2d((64, 64), (7, 7), (1, 1), 1).dense(1, 1, 4097, 4097)[0, 0]
        want = _dense_vit_forward(base, pixels, lambda layer: rule, interpolate_pos_encoding=True)
    assert (base.layernorm(out.hidden_states[-1]) - want).abs().max() <= tol(1e-4)


def test_input_grid_that_does_not_fit_is_refused_at_forward():
    model = ViTModel(tiny_vit_config()).eval()
    hfx.patch(model, "swin", window_size=4)
    with pytest.raises(ValueError, match="window_size=4 does not divide the input's 9x9 patch grid"):
        model(pixel_values=torch.randn(1, 3, 36, 36), interpolate_pos_encoding=True)


def test_linformer_on_vit_matches_its_dense_reference():
    """ViT + linformer: each layer's keys and values projected by its own E/F along the 65 tokens, softmax over them."""
    _, patched = _vit_pair()
    hfx.patch(patched, "linformer", proj_len=16)
    pixels = torch.randn(2, 3, 32, 32)

    def dense(model):
        hidden = model.embeddings(pixels)
        for layer in model.layers:
            attn = layer.attention
            h = layer.layernorm_before(hidden)
            heads = lambda t: t.view(2, 65, -1, attn.head_dim).transpose(1, 2)
            E, F = attn.linformer.E[:65], attn.linformer.F[:65]
            keys = torch.einsum("nk,bhnd->bhkd", E, heads(attn.k_proj(h)))
            values = torch.einsum("nk,bhnd->bhkd", F, heads(attn.v_proj(h)))
            ctx = reference_attention(heads(attn.q_proj(h)), keys, values)
            hidden = hidden + attn.o_proj(ctx.transpose(1, 2).reshape(2, 65, -1))
            hidden = hidden + layer.mlp(layer.layernorm_after(hidden))
        return model.layernorm(hidden)

    with torch.no_grad():
        assert (patched(pixel_values=pixels).last_hidden_state - dense(patched)).abs().max() <= tol(1e-5)


@pytest.mark.parametrize("variant,options", [("neighborhood", dict(kernel_size=3)), ("swin", dict(window_size=4))])
def test_deit_keeps_its_two_leading_tokens_global(variant, options):
    """DeiT puts CLS and a distillation token before the grid: both stay global under the local variants."""
    from transformers import DeiTConfig, DeiTModel

    torch.manual_seed(0)
    config = DeiTConfig(**{k: v for k, v in tiny_vit_config().to_dict().items() if k != "model_type"})
    model = hfx.patch(DeiTModel(config, add_pooling_layer=False).eval(), variant, **options)
    pixels = torch.randn(2, 3, 32, 32)
    if variant == "neighborhood":
        rules = [natten_2d_reference(8, 8, (3, 3), (1, 1), 2)] * 2
    else:
        rules = [generate_shifted_windows((8, 8), 4, s, 2).dense(1, 1, 66, 66)[0, 0] for s in (0, 2)]
    assert rules[0][:2].all() and rules[0][:, :2].all()
    layers = list(model.layers)
    with torch.no_grad():
        got = model(pixel_values=pixels).last_hidden_state
        want = _dense_vit_forward(model, pixels, lambda layer: rules[layers.index(layer)])
    assert (got - want).abs().max() <= tol(1e-5)
