"""BEiT (families/beit.py, on the general path): every head equals the unpatched model under `full`, at other grids
and with each bias layout (per layer, shared, both), outputs and every gradient, the bias tables' included; its
relative position bias reaches the attention as a `score_mod` reading the trainable table, not a dense tensor;
`neighborhood` and `swin` equal their dense rules with the bias; `linformer` and `performer`, which cannot apply the
bias, say so and equal their formulas (tests/family_checks.py)."""

import copy

import pytest
import torch
from family_checks import (
    VISION_GRIDS,
    beit_config,
    check_full_equals_unpatched_at_grid,
    check_full_training_matches_unpatched,
    check_linformer_and_performer_match_their_formulas,
    check_vision_head_full_equals_unpatched,
    check_vision_local_variants_match_their_dense_rules,
    family_model,
)
from transformers import (
    BeitBackbone,
    BeitForImageClassification,
    BeitForMaskedImageModeling,
    BeitForSemanticSegmentation,
    BeitModel,
)

import hf_flexattn as hfx
from hf_flexattn.families.beit import RelativePositionBiasWithCls

pytestmark = pytest.mark.cuda_policy  # also run on CPU under CUDA's policy (conftest)

HEADS = [
    (BeitModel, beit_config),
    (BeitForImageClassification, beit_config),
    (BeitForMaskedImageModeling, beit_config),
    (
        BeitForSemanticSegmentation,
        lambda: beit_config(
            num_hidden_layers=3, out_indices=[0, 1, 2, 3], use_auxiliary_head=False, pool_scales=[1, 2]
        ),
    ),
    (BeitBackbone, beit_config),
]


@pytest.mark.parametrize("cls,make_config", HEADS, ids=[c.__name__ for c, _ in HEADS])
def test_every_head_under_full_equals_unpatched(cls, make_config):
    check_vision_head_full_equals_unpatched(cls, make_config())


@pytest.mark.parametrize(
    "config,size",
    [
        (beit_config(), (40, 44)),  # BEiT resamples its bias table to the input's grid
        (beit_config(use_relative_position_bias=False, use_shared_relative_position_bias=True), (32, 32)),
        (beit_config(use_shared_relative_position_bias=True), (36, 32)),  # per-layer + shared, summed
    ],
)
def test_full_equals_unpatched_at_other_grids_and_bias_layouts(config, size):
    check_full_equals_unpatched_at_grid(BeitModel, config, size)


def test_full_training_loss_and_every_gradient_match_unpatched():
    config = beit_config(use_shared_relative_position_bias=True)
    tables = check_full_training_matches_unpatched(BeitForImageClassification, config, text=False)
    assert tables == 3  # both layers' tables and the shared one received (HF's) gradients


def test_beit_bias_reaches_attention_as_a_score_mod_not_a_dense_tensor():
    model = hfx.patch(family_model(BeitModel, beit_config()), "full")
    bias = model.layers[0].relative_position_bias((8, 8))
    assert isinstance(bias, RelativePositionBiasWithCls) and bias.table.shape == (15 * 15 + 3, 4)
    assert bias.table.requires_grad  # read from the trainable table
    hfx.unpatch(model)
    assert model.layers[0].relative_position_bias((8, 8)).shape == (1, 4, 65, 65)  # HF's own, dense, again


@VISION_GRIDS
def test_local_variants_match_their_dense_rules(grid):
    config = beit_config(use_shared_relative_position_bias=True)
    check_vision_local_variants_match_their_dense_rules(BeitModel, config, 1, grid)


def test_linformer_and_performer_match_their_formulas():
    check_linformer_and_performer_match_their_formulas(BeitModel, beit_config(), text=False, beit=True)


def test_a_deep_copy_keeps_the_patched_bias_module():
    beit = hfx.patch(family_model(BeitModel, beit_config()), "full")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            copy.deepcopy(beit)(pixel_values=pixels).last_hidden_state, beit(pixel_values=pixels).last_hidden_state
        )
