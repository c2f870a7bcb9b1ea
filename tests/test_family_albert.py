"""ALBERT (families/albert.py, on the general path): every head equals the unpatched model under `full` (padded
batches, outputs and every gradient); the local and linear variants equal their dense rules and formulas
(tests/family_checks.py); the shared attention module computes each layer with that layer's own options, across
groups and inner layers; copies, saves and reloads keep the patched helper modules and shared parameters."""

import copy

import pytest
import torch
from family_checks import (
    albert_config,
    check_full_training_matches_unpatched,
    check_linformer_and_performer_match_their_formulas,
    check_text_head_full_equals_unpatched,
    check_text_local_variants_match_their_dense_rules,
    dense_reference,
    family_model,
    longformer_rule,
    reference_model,
)
from transformers import (
    AlbertForMaskedLM,
    AlbertForMultipleChoice,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
)

import hf_flexattn as hfx
from hf_flexattn.patching import patch_state

from helpers import padded_batch, tol

pytestmark = pytest.mark.cuda_policy  # also run on CPU under CUDA's policy (conftest)

HEADS = [
    AlbertModel,
    AlbertForMaskedLM,
    AlbertForPreTraining,
    AlbertForSequenceClassification,
    AlbertForQuestionAnswering,
    AlbertForTokenClassification,
    AlbertForMultipleChoice,
]


@pytest.mark.parametrize("cls", HEADS, ids=[c.__name__ for c in HEADS])
def test_every_head_under_full_equals_unpatched_on_padded_batches(cls):
    check_text_head_full_equals_unpatched(cls, albert_config())


def test_full_training_loss_and_every_gradient_match_unpatched():
    check_full_training_matches_unpatched(AlbertForMaskedLM, albert_config(), text=True)


def test_local_variants_match_their_dense_rules():
    check_text_local_variants_match_their_dense_rules(AlbertModel, albert_config())


def test_linformer_and_performer_match_their_formulas():
    check_linformer_and_performer_match_their_formulas(AlbertModel, albert_config(), text=True)


def test_albert_per_layer_windows_apply_per_computed_layer_of_the_shared_module():
    original = family_model(AlbertModel, albert_config(num_hidden_layers=3))
    patched = hfx.patch(copy.deepcopy(original), "longformer", window=[2, 8, 4])
    encoder = patched.encoder
    assert type(encoder).__name__ == "FlexAlbertTransformer"
    attention = encoder.albert_layer_groups[0].albert_layers[0].attention
    assert type(attention).__name__ == "FlexAlbertAttention" and "shared by several layers" in repr(attention)
    ids, _ = padded_batch(batch=2, seq_len=20, lengths=[20, 20])
    with torch.no_grad(), dense_reference(lambda i, m: longformer_rule(20, [2, 8, 4][i], [])):
        want = reference_model(original)(input_ids=ids).last_hidden_state
        got = patched(input_ids=ids).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)
    hfx.unpatch(patched)
    assert type(patched.encoder) is type(original.encoder) and type(attention) is type(
        original.encoder.albert_layer_groups[0].albert_layers[0].attention
    )


def test_albert_groups_and_inner_layers_number_the_computed_layers():
    # 4 layers over 2 groups of 2 inner layers: 8 computed layers, 4 shared modules
    config = albert_config(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)
    original = family_model(AlbertModel, config)
    windows = [2, 4, 6, 8, 10, 12, 2, 4]
    patched = hfx.patch(copy.deepcopy(original), "longformer", window=windows)
    attention_modules = {id(m) for m, _ in patch_state(patched).originals if "hfx_layer_idx" in m.__dict__}
    assert len(attention_modules) == 4
    ids, _ = padded_batch(batch=1, seq_len=20, lengths=[20])
    with torch.no_grad(), dense_reference(lambda i, m: longformer_rule(20, windows[i], [])):
        want = reference_model(original)(input_ids=ids).last_hidden_state
        got = patched(input_ids=ids).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)
    with pytest.raises(ValueError, match="window has 4 entries; give one int, or one per layer \\(8\\)"):
        hfx.patch(copy.deepcopy(original), "longformer", window=[2, 4, 6, 8])


def test_copy_save_and_reload_keep_helper_modules_and_shared_parameters(tmp_path):
    model = hfx.patch(family_model(AlbertForMaskedLM, albert_config()), "linformer", proj_len=8)
    names = [n for n, _ in model.named_parameters() if "linformer" in n]
    assert names == [
        "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.linformer.E",
        "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.linformer.F",
    ]  # shared, once
    ids, mask = padded_batch()
    copied = copy.deepcopy(model)
    assert type(copied.albert.encoder).__name__ == "FlexAlbertTransformer"
    model.save_pretrained(tmp_path)
    reloaded = hfx.from_pretrained(AlbertForMaskedLM, tmp_path).eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(copied(input_ids=ids, attention_mask=mask).logits, want)
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).logits, want)
