"""The patch API contract: dispatch, clear errors before any change, atomic patching, supported()."""

import pytest
import torch
from family_checks import distilbert_config, family_model
from transformers import BertModel, DistilBertModel

import hf_flexattn as hfx
from hf_flexattn.families import FAMILIES, MODEL_TYPE_TO_FAMILY
from hf_flexattn.patching import patch_state
from hf_flexattn.variants.linformer import LinformerVariant

from helpers import assert_same_snapshot, padded_batch, snapshot, tiny_bert_config


def _bert():
    torch.manual_seed(0)
    return BertModel(tiny_bert_config()).eval()


def test_patch_twice_and_unpatch_unpatched():
    model = _bert()
    with pytest.raises(ValueError, match="model is not patched by hf_flexattn"):
        hfx.unpatch(model)
    hfx.patch(model, "full")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"already patched with variant='full'; call hf_flexattn\.unpatch"):
        hfx.patch(model, "longformer", window=8)
    assert_same_snapshot(before, snapshot(model))


def test_failure_half_way_leaves_the_model_as_it_was(monkeypatch):
    model = _bert()
    ids, mask = padded_batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    before = snapshot(model)

    # attach is called on variants that add parameters (AddsParameters): layer 0 gets Linformer's E/F, layer 1 fails
    original = LinformerVariant.attach

    def attach(self, module, layer_idx):
        if layer_idx == 1:
            raise RuntimeError("layer 1 does not match")
        original(self, module, layer_idx)

    monkeypatch.setattr(LinformerVariant, "attach", attach)
    with pytest.raises(RuntimeError, match="layer 1 does not match"):
        hfx.patch(model, "linformer", proj_len=8)
    assert_same_snapshot(before, snapshot(model))
    assert patch_state(model) is None and not hasattr(model.config, "hf_flexattn")
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state, want)


def test_layer_that_does_not_match_is_refused_before_any_change():
    model = _bert()
    del model.encoder.layer[1].attention.self.query
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"layer 1: BertSelfAttention lacks \['query'\]"):
        hfx.patch(model, "full")
    assert_same_snapshot(before, snapshot(model))


def test_global_attention_mask_on_another_variant_is_refused():
    model = hfx.patch(_bert(), "full")
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match="global_attention_mask is only used by variant='longformer'"):
        model(input_ids=ids, attention_mask=mask, global_attention_mask=mask)


def test_supported_lists_every_variant_with_families_and_options():
    rows = {row["variant"]: row for row in hfx.supported()}
    # `full` patches every family whose attention is a full one to begin with (not HF Longformer's or DiNAT's)
    assert set(FAMILIES) - set(rows["full"]["families"]) == {"longformer", "dinat"}
    assert rows["full"]["model_types"] == sorted(set(MODEL_TYPE_TO_FAMILY) - {"longformer", "dinat"})
    assert rows["longformer"]["options"] == {
        "window": 512,
        "global_tokens": [],
        "global_projections": False,
        "attention_dropout": "standard",
        "backend": "auto",
    }
    assert "window/2 on each side" in rows["longformer"]["help"]["window"]
    assert "roberta" in rows["longformer"]["model_types"] and "vit" not in rows["longformer"]["model_types"]
    # every listed variant really patches a model of its first family
    for name, row in rows.items():
        if "bert" in row["families"]:
            model = hfx.patch(_bert(), name)
            assert patch_state(model).variant.name == name


def test_supported_and_patch_functions_list_the_new_families():
    rows = {row["variant"]: row for row in hfx.supported()}
    for family in ("distilbert", "albert", "dinov2", "beit"):
        assert family in rows["full"]["families"] and family in rows["neighborhood"]["families"]
    assert {"distilbert", "albert"} <= set(rows["longformer"]["families"]) and "beit" not in rows["longformer"][
        "families"
    ]
    assert "dinov2_with_registers" in rows["swin"]["model_types"]
    assert "beit" not in rows["full"]["native_families"] and "distilbert" in rows["full"]["native_families"]
    assert "neighborhood:" in hfx.patch_dinov2.__doc__ and "proj_len" in hfx.patch_beit.__doc__
    with pytest.raises(ValueError, match="patch_albert: model_type='distilbert' is not in the albert family"):
        hfx.patch_albert(family_model(DistilBertModel, distilbert_config()))
