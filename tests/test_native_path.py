"""transformers' own ``attn_implementation="hf_flexattn_<variant>"`` (no ``patch``; hf_integration.py): it equals
``patch`` where it can (text and ViT, padding included; the options read from ``config.hf_flexattn`` and validated as
``patch`` validates them), its names sit beside transformers' own, and it refuses what it cannot do with a message
that says why: a non-square grid it would have to guess, per-layer options on modules that do not know their layer
(ALBERT), a bias that reaches attention as a dense tensor (BEiT), a model that keeps its own windowing (Swin v2). On
ModernBERT, whose modules know their layer, `full` is the model's own global/sliding pattern there too."""

import copy

import pytest
import torch
from family_checks import albert_config, beit_config, dinov2_config, distilbert_config, family_model
from test_family_modernbert import _batch as modernbert_batch
from test_family_modernbert import _model as modernbert_model
from test_swinv2 import _model as swinv2_model
from test_swinv2 import swinv2_config
from transformers import (
    AlbertModel,
    AutoConfig,
    AutoModel,
    BeitModel,
    BertModel,
    Dinov2Model,
    DistilBertModel,
    Swinv2Model,
    ViTModel,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import hf_flexattn as hfx
from hf_flexattn.hf_integration import native_variant

from helpers import padded_batch, tiny_bert_config, tiny_vit_config, tol


def _bert(cls=BertModel, **kw):
    torch.manual_seed(0)
    return cls(tiny_bert_config(**kw)).eval()


def test_native_attn_implementation_from_pretrained_and_set(tmp_path):
    model = _bert()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    config.hf_flexattn = {"variant": "longformer", "options": {"window": 8, "global_tokens": [0]}}
    native = AutoModel.from_pretrained(tmp_path, config=config, attn_implementation="hf_flexattn_longformer").eval()
    patched = hfx.patch(copy.deepcopy(model), "longformer", window=8, global_tokens=[0])
    ids, mask = padded_batch()
    with torch.no_grad():
        a = native(input_ids=ids, attention_mask=mask).last_hidden_state
        b = patched(input_ids=ids, attention_mask=mask).last_hidden_state
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.set_attn_implementation("hf_flexattn_full")
        c = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (a - b)[real].abs().max() <= tol(1e-6)  # padding reached the native path (the mask interface works)
    assert (c - want)[real].abs().max() <= tol(1e-5)
    assert not torch.allclose(a[real], want[real], atol=1e-3)  # and the window really applied


def test_native_names_do_not_replace_transformers_own():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward
    assert {"hf_flexattn_full", "hf_flexattn_longformer", "hf_flexattn_neighborhood"} <= set(
        ALL_ATTENTION_FUNCTIONS.valid_keys()
    )


def _native_vit(tmp_path, name, options):
    torch.manual_seed(0)
    model = ViTModel(tiny_vit_config(), add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    config.hf_flexattn = {"variant": name, "options": options}
    native = AutoModel.from_pretrained(tmp_path, config=config, attn_implementation=f"hf_flexattn_{name}").eval()
    return model, native


def test_native_vit_neighborhood_equals_patch_on_the_config_grid_and_refuses_other_grids(tmp_path):
    model, native = _native_vit(tmp_path, "neighborhood", {"kernel_size": 3, "dilation": 2})
    patched = hfx.patch(copy.deepcopy(model), "neighborhood", kernel_size=3, dilation=2)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = native(pixel_values=pixels).last_hidden_state
        b = patched(pixel_values=pixels).last_hidden_state
        c = model(pixel_values=pixels).last_hidden_state
    assert (a - b).abs().max() <= tol(1e-6)
    assert (a - c).abs().max() > 1e-3  # the neighborhood really applied
    # a non-square image: transformers hands lengths only, so the native path refuses instead of guessing a grid
    wide = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        patched(pixel_values=wide, interpolate_pos_encoding=True)  # patch reads the grid from the pixels
        with pytest.raises(ValueError, match="has 97 tokens, but the config's 8x8 patch grid has 65"):
            native(pixel_values=wide, interpolate_pos_encoding=True)


def test_native_text_neighborhood_equals_patch_with_padding(tmp_path):
    model = _bert()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    config.hf_flexattn = {"variant": "neighborhood", "options": {"kernel_size": 5, "dilation": 2}}
    native = AutoModel.from_pretrained(tmp_path, config=config, attn_implementation="hf_flexattn_neighborhood").eval()
    patched = hfx.patch(copy.deepcopy(model), "neighborhood", kernel_size=5, dilation=2)
    ids, mask = padded_batch()
    with torch.no_grad():
        a = native(input_ids=ids, attention_mask=mask).last_hidden_state
        b = patched(input_ids=ids, attention_mask=mask).last_hidden_state
        c = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (a - b)[real].abs().max() <= tol(1e-6)
    assert (a - c)[real].abs().max() > 1e-3


def test_native_path_validates_options_like_patch(tmp_path):
    torch.manual_seed(0)
    _bert().save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    config.hf_flexattn = {"variant": "longformer", "options": {"window": 7}}
    model = AutoModel.from_pretrained(tmp_path, config=config, attn_implementation="hf_flexattn_longformer")
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match=r"attn_implementation='hf_flexattn_longformer'|window=7"):
        model(input_ids=ids, attention_mask=mask)


@pytest.mark.cuda_policy
def test_native_longformer_on_distilbert_from_pretrained_equals_patch(tmp_path):
    original = family_model(DistilBertModel, distilbert_config())
    original.save_pretrained(tmp_path / "distilbert")
    config = AutoConfig.from_pretrained(tmp_path / "distilbert")
    config.hf_flexattn = {"variant": "longformer", "options": {"window": 6, "global_tokens": [0]}}
    native = AutoModel.from_pretrained(
        tmp_path / "distilbert", config=config, attn_implementation="hf_flexattn_longformer"
    ).eval()
    patched = hfx.patch(copy.deepcopy(original), "longformer", window=6, global_tokens=[0])
    ids, mask = padded_batch(batch=3, seq_len=24)
    with torch.no_grad():
        a, b = (
            native(input_ids=ids, attention_mask=mask).last_hidden_state,
            patched(input_ids=ids, attention_mask=mask).last_hidden_state,
        )
    assert (a - b)[mask.bool()].abs().max() <= tol(1e-6)


@pytest.mark.cuda_policy
def test_native_full_on_dinov2_equals_the_unpatched_model():
    dinov2 = family_model(Dinov2Model, dinov2_config())
    native = copy.deepcopy(dinov2)
    native.set_attn_implementation("hf_flexattn_full")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (
            native(pixel_values=pixels).last_hidden_state - dinov2(pixel_values=pixels).last_hidden_state
        ).abs().max() <= tol(1e-5)


@pytest.mark.cuda_policy
def test_native_path_refuses_per_layer_options_on_alberts_shared_modules():
    # ALBERT's (shared) modules have no layer index: per-layer windows are refused on the native path, not mixed up
    albert = family_model(AlbertModel, albert_config())
    albert.config.hf_flexattn = {"variant": "longformer", "options": {"window": [2, 4, 6]}}
    albert.set_attn_implementation("hf_flexattn_longformer")
    ids, mask = padded_batch(batch=3, seq_len=24)
    with pytest.raises(ValueError, match=r"does not know its layer index .* per-layer options"):
        albert(input_ids=ids, attention_mask=mask)


@pytest.mark.cuda_policy
def test_native_path_refuses_beit():
    model = family_model(BeitModel, beit_config())
    with pytest.raises(ValueError, match="relative position bias reaches the attention as a dense tensor"):
        model.set_attn_implementation("hf_flexattn_full")
        model(pixel_values=torch.randn(1, 3, 32, 32))


def test_native_path_refuses_swinv2():
    model = swinv2_model(Swinv2Model, swinv2_config(4, 32))
    with pytest.raises(ValueError, match=r"model_type='swinv2' keeps its own windowing; use hf_flexattn.patch"):
        native_variant(model.config, "full")


def test_native_full_on_modernbert_is_the_models_own_pattern():
    """transformers' `attn_implementation="hf_flexattn_full"`: the modules know their layer index, so each layer gets
    its own pattern there as well."""
    original = modernbert_model()
    native = modernbert_model(implementation="hf_flexattn_full")
    native.load_state_dict(original.state_dict())
    ids, mask = modernbert_batch(300)
    with torch.no_grad():
        want = original(input_ids=ids, attention_mask=mask).last_hidden_state
        got = native(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (want - got)[mask.bool()].abs().max() <= tol(1e-5)
