"""A patched model is called however its library calls it: ``model(...)``, ``model.forward(...)`` (sentence-transformers
calls ``auto_model.forward(**features)``), or its base model's ``forward``. The masks are built in the base model's
forward itself, so every way gives the same outputs, for every family and variant, with padding and per-batch
globals; and a model whose attention modules never reach the patched attention function is refused, not silently
left unpatched."""

import copy

import pytest
import torch
from family_checks import albert_config, beit_config, dinov2_config, distilbert_config
from test_swin import swin_config
from test_swinv2 import swinv2_config
from transformers import (
    AlbertModel,
    BeitModel,
    BertForMaskedLM,
    BertModel,
    Dinov2Model,
    DistilBertModel,
    SwinModel,
    Swinv2Model,
    ViTForImageClassification,
)

import hf_flexattn as hfx
from hf_flexattn.families import family_for

from helpers import generator, no_dropout, padded_batch, tiny_bert_config, tiny_vit_config, tol

# options that make each variant differ from full attention at these small sizes
LOCAL_OPTIONS = {
    "longformer": {"window": 4, "global_tokens": [0]},
    "neighborhood": {"kernel_size": 3},
    "swin": {"window_size": 4},
    "linformer": {"proj_len": 8},
    "performer": {"num_features": 16},
}

MODELS = [
    (BertForMaskedLM, tiny_bert_config),
    (BertModel, tiny_bert_config),
    (DistilBertModel, distilbert_config),
    (AlbertModel, albert_config),
    (ViTForImageClassification, tiny_vit_config),
    (Dinov2Model, dinov2_config),
    (BeitModel, beit_config),
    (SwinModel, swin_config),
    (Swinv2Model, swinv2_config),
]


def _cases():
    for cls, make_config in MODELS:
        for variant in family_for(make_config()).variants():
            yield pytest.param(cls, make_config, variant, id=f"{cls.__name__}-{variant}")


def _batch(config):
    if family_for(config).spatial_dims == 2:
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator(0))}, None
    ids, mask = padded_batch(batch=3, seq_len=24)
    return {"input_ids": ids, "attention_mask": mask}, mask.bool()


def _first_output(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("cls,make_config,variant", _cases())
def test_forward_called_directly_equals_call(cls, make_config, variant):
    torch.manual_seed(0)
    model = no_dropout(cls(make_config())).eval()
    options = dict(LOCAL_OPTIONS.get(variant, {}))
    if variant == "swin" and model.config.model_type == "vit":
        options = {"window_size": 4}
    hfx.patch(model, variant, **options)
    batch, _ = _batch(model.config)
    if variant == "longformer":  # per-batch globals on top of the fixed [CLS]
        globals_ = torch.zeros_like(batch["attention_mask"])
        globals_[1, 5] = 1
        batch["global_attention_mask"] = globals_
    with torch.no_grad():
        called = _first_output(model(**batch))
        direct = _first_output(model.forward(**batch))
        base = model.base_model
        through_base = base.forward(**batch).last_hidden_state
        want_base = base(**batch).last_hidden_state
    assert torch.equal(called, direct)
    assert torch.equal(through_base, want_base)


@pytest.mark.parametrize(
    "cls,make_config", [(BertModel, tiny_bert_config), (ViTForImageClassification, tiny_vit_config)]
)
def test_full_through_forward_equals_the_unpatched_model(cls, make_config):
    torch.manual_seed(0)
    original = no_dropout(cls(make_config())).eval()
    patched = hfx.patch(copy.deepcopy(original), "full")
    batch, real = _batch(original.config)
    with torch.no_grad():
        want, got = _first_output(original.forward(**batch)), _first_output(patched.forward(**batch))
    diff = want - got if real is None or want.dim() == 2 else (want - got)[real]
    assert diff.abs().max() <= tol(1e-5)


def test_attention_modules_that_bypass_the_attention_function_are_refused():
    """Were a model's attention module to compute its own attention (not through transformers' attention function),
    the patched model would silently be the original one: its forward says so instead."""
    model = hfx.patch(BertModel(tiny_bert_config()).eval(), "longformer", window=4)
    for layer in model.encoder.layer:
        attention = layer.attention.self
        attention.forward = lambda hidden_states, *args, **kwargs: (hidden_states, None)
    ids, mask = padded_batch()
    with pytest.raises(RuntimeError, match="no patched attention module reached"):
        model(input_ids=ids, attention_mask=mask)


def test_patched_base_model_keeps_its_class_name_and_records_outputs(tmp_path):
    """The base model's patched class keeps HF's name (``save_pretrained`` writes it into ``architectures``) and
    records hidden states and attentions as HF's does."""
    model = hfx.patch(BertModel(tiny_bert_config()).eval(), "full")
    assert type(model).__name__ == "BertModel" and isinstance(model, BertModel) and type(model) is not BertModel
    ids, mask = padded_batch()
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    model.save_pretrained(tmp_path)
    assert BertModel.from_pretrained(tmp_path).config.architectures == ["BertModel"]
    hfx.unpatch(model)
    assert type(model) is BertModel


def test_a_model_with_accelerate_hooks_runs_patched_and_unpatches_cleanly():
    """accelerate's hooks (``device_map``, offloading) wrap the forward they find; the patched base model's forward
    must still be the one that runs, and unpatch gives the hooked model back as it was."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    torch.manual_seed(0)
    plain = no_dropout(BertModel(tiny_bert_config())).eval()
    hooked = add_hook_to_module(copy.deepcopy(plain), ModelHook())
    ids, mask = padded_batch()
    with torch.no_grad():
        unpatched = hooked(input_ids=ids, attention_mask=mask).last_hidden_state
        hfx.patch(plain, "longformer", window=4)
        hfx.patch(hooked, "longformer", window=4)
        want = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        got = hooked(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(got, want) and not torch.allclose(got, unpatched)
        hfx.unpatch(hooked)
        assert torch.equal(hooked(input_ids=ids, attention_mask=mask).last_hidden_state, unpatched)
