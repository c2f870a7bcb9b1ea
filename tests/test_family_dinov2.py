"""DINOv2 and DINOv2 with registers (families/dinov2.py, on the general path): every head equals the unpatched
model under `full`, at the config's grid and at others (outputs and every gradient); `neighborhood` and `swin` equal
their dense rules on the grid read from `pixel_values`, the CLS (and register) tokens global; `linformer` and
`performer` equal their formulas (tests/family_checks.py)."""

import pytest
from family_checks import (
    VISION_GRIDS,
    check_full_equals_unpatched_at_grid,
    check_full_training_matches_unpatched,
    check_linformer_and_performer_match_their_formulas,
    check_vision_head_full_equals_unpatched,
    check_vision_local_variants_match_their_dense_rules,
    dinov2_config,
    registers_config,
)
from transformers import (
    Dinov2Backbone,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersBackbone,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
)

pytestmark = pytest.mark.cuda_policy  # also run on CPU under CUDA's policy (conftest)

HEADS = [
    (Dinov2Model, dinov2_config),
    (Dinov2ForImageClassification, dinov2_config),
    (Dinov2Backbone, dinov2_config),
    (Dinov2WithRegistersModel, registers_config),
    (Dinov2WithRegistersForImageClassification, registers_config),
    (Dinov2WithRegistersBackbone, registers_config),
]


@pytest.mark.parametrize("cls,make_config", HEADS, ids=[c.__name__ for c, _ in HEADS])
def test_every_head_under_full_equals_unpatched(cls, make_config):
    check_vision_head_full_equals_unpatched(cls, make_config())


def test_full_equals_unpatched_at_another_grid():
    check_full_equals_unpatched_at_grid(Dinov2Model, dinov2_config(), (40, 36))  # interpolated position embeddings


def test_full_training_loss_and_every_gradient_match_unpatched():
    check_full_training_matches_unpatched(Dinov2WithRegistersForImageClassification, registers_config(), text=False)


LOCAL = [
    ("dinov2", Dinov2Model, dinov2_config, 1),
    ("registers", Dinov2WithRegistersModel, registers_config, 3),  # CLS + 2 registers, all global
]


@VISION_GRIDS
@pytest.mark.parametrize("name,cls,make_config,prefix", LOCAL, ids=[v[0] for v in LOCAL])
def test_local_variants_match_their_dense_rules(name, cls, make_config, prefix, grid):
    check_vision_local_variants_match_their_dense_rules(cls, make_config(), prefix, grid)


def test_linformer_and_performer_match_their_formulas():
    check_linformer_and_performer_match_their_formulas(Dinov2Model, dinov2_config(), text=False)
