"""CLIP and SigLIP vision towers (families/clip.py): `full` equals the unpatched tower (outputs and gradients),
`neighborhood` and `swin` follow their dense rules on the grid read from `pixel_values` ([CLS] global on CLIP,
no prefix token on SigLIP), and the tower inside a full CLIP model is patched on its own."""

import copy

import pytest
import torch
from family_checks import dense_reference, reference_model
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    SiglipVisionConfig,
    SiglipVisionModel,
)

import hf_flexattn as hfx
from hf_flexattn.masks import generate_shifted_windows
from hf_flexattn.patching import is_patched, patch_state

from helpers import assert_same_snapshot, generator, natten_2d_reference, no_dropout, rel_err, snapshot, tol

SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=4
)
TOWERS = {
    "clip": (CLIPVisionModel, CLIPVisionConfig, 1),
    "clip-projection": (CLIPVisionModelWithProjection, CLIPVisionConfig, 1),
    "siglip": (SiglipVisionModel, SiglipVisionConfig, 0),
}


def _tower(name, dtype=torch.float32, implementation="eager"):
    model_class, config_class, _ = TOWERS[name]
    torch.manual_seed(0)
    return no_dropout(model_class(config_class(**SMALL, attn_implementation=implementation))).to(dtype).eval()


def _pixels(size=32, dtype=torch.float32):
    return torch.randn(2, 3, size, size, generator=generator(0), dtype=dtype)


def _outputs(out):
    return [
        t for t in (out.get("last_hidden_state"), out.get("pooler_output"), out.get("image_embeds")) if t is not None
    ]


@pytest.mark.parametrize("name", TOWERS)
def test_full_equals_the_tower_with_every_gradient(name):
    original = _tower(name, torch.float64, "sdpa")  # eager's softmax runs in float32
    patched = hfx.patch(copy.deepcopy(original), "full")
    pixels = _pixels(dtype=torch.float64)
    with torch.no_grad():
        for want, got in zip(_outputs(original(pixel_values=pixels)), _outputs(patched(pixel_values=pixels))):
            assert (want - got).abs().max() <= tol(1e-10)
    original.train()
    patched.train()
    tokens = TOWERS[name][2] + 64  # prefix + the 8x8 grid
    readout = torch.randn(2, tokens, 32, generator=generator(1), dtype=torch.float64)
    for model in (original, patched):
        (model(pixel_values=pixels).last_hidden_state * readout).sum().backward()
    reference = dict(original.named_parameters())
    for parameter_name, parameter in patched.named_parameters():
        if reference[parameter_name].grad is None:  # heads outside the read-out
            assert parameter.grad is None, parameter_name
            continue
        assert rel_err(parameter.grad, reference[parameter_name].grad) <= tol(1e-9), parameter_name


def _swin_rules(grid, prefix):
    n = prefix + grid[0] * grid[1]
    return [generate_shifted_windows(grid, 4, shift, prefix).dense(1, 1, n, n)[0, 0] for shift in (0, 2)]


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("size", [32, 48], ids=["config-grid", "interpolated-grid"])
@pytest.mark.parametrize("variant", ["neighborhood", "swin"])
def test_local_variants_follow_their_rule_on_the_input_grid(name, size, variant):
    original = _tower(name)
    prefix = TOWERS[name][2]
    grid = (size // 4, size // 4)
    if variant == "neighborhood":
        patched = hfx.patch(copy.deepcopy(original), "neighborhood", kernel_size=3, dilation=2)
        rules = [natten_2d_reference(*grid, (3, 3), (2, 2), prefix)] * 2
    else:
        patched = hfx.patch(copy.deepcopy(original), "swin", window_size=4)  # shifted by 2 on odd layers
        rules = _swin_rules(grid, prefix)
        assert not torch.equal(rules[0], rules[1])
    if prefix:
        assert rules[0][0].all() and rules[0][:, 0].all()  # [CLS] sees and is seen by every patch
    pixels = _pixels(size)
    with torch.no_grad(), dense_reference(lambda call, module: rules[call % 2]):
        want = reference_model(original)(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        got = patched(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)


def test_the_vision_tower_of_a_full_clip_model_is_patched_on_its_own():
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
    config = CLIPConfig(
        text_config={**text, "bos_token_id": 0, "eos_token_id": 2}, vision_config=SMALL, projection_dim=16
    )
    config._attn_implementation = "eager"
    original = no_dropout(CLIPModel(config)).eval()
    before = snapshot(original)
    with pytest.raises(ValueError, match=r"call hf_flexattn.patch\(model.vision_model, variant, ...\)"):
        hfx.patch(original, "full")
    assert_same_snapshot(before, snapshot(original))

    patched = copy.deepcopy(original)
    hfx.patch(patched.vision_model, "neighborhood", kernel_size=3)
    assert is_patched(patched.vision_model) and patch_state(patched.vision_model).family.name == "clip_vision"
    ids = torch.randint(3, 100, (2, 7), generator=generator(1))
    pixels = _pixels()
    rule = natten_2d_reference(8, 8, (3, 3), (1, 1), 1)
    with torch.no_grad():
        got = patched(input_ids=ids, pixel_values=pixels)
        want_text = original(input_ids=ids, pixel_values=pixels).text_embeds
        with dense_reference(lambda call, module: rule):
            pooled = reference_model(original.vision_model)(pixel_values=pixels).pooler_output
        want_image = original.visual_projection(pooled)
        want_image = want_image / want_image.norm(dim=-1, keepdim=True)  # CLIPModel's normalised image_embeds
    assert (got.text_embeds - want_text).abs().max() <= tol(1e-6)  # the causal text tower keeps its attention
    assert (got.image_embeds - want_image).abs().max() <= tol(1e-5)
