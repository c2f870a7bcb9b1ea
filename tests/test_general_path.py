"""The general path on model types without a file of their own (families/general.py): each listed type is exact
under `full` (padded text, every gradient) and runs a local variant exactly as its dense rule says."""

import copy

import pytest
import torch
from family_checks import dense_reference, reference_model
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

import hf_flexattn as hfx
from hf_flexattn.families import FAMILIES
from hf_flexattn.patching import patch_state

from helpers import generator, natten_1d_reference, natten_2d_reference, no_dropout, padded_batch, rel_err, tol

TEXT_TYPES = FAMILIES["general_text"].model_types
VISION_TYPES = FAMILIES["general_vision"].model_types
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def _config(model_type):
    if model_type in VISION_TYPES:
        config = AutoConfig.for_model(model_type, **SMALL, image_size=32, patch_size=4)
    else:
        config = AutoConfig.for_model(model_type, **SMALL, vocab_size=120, max_position_embeddings=64, pad_token_id=1)
    config._attn_implementation = "eager"
    return config


def _model(model_type, head=AutoModel):
    torch.manual_seed(0)
    return no_dropout(head.from_config(_config(model_type))).eval()


def _text_batch():
    ids, mask = padded_batch(batch=3, seq_len=24)
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}, mask.bool()


@pytest.mark.parametrize("model_type", TEXT_TYPES + VISION_TYPES)
def test_full_equals_unpatched_with_every_gradient(model_type):
    vision = model_type in VISION_TYPES
    original = _model(model_type)
    patched = hfx.patch(copy.deepcopy(original), "full")
    assert patch_state(patched).family is FAMILIES["general_vision" if vision else "general_text"]
    if vision:
        batch, real = {"pixel_values": torch.randn(2, 3, 32, 32)}, None
    else:
        batch, real = _text_batch()
    with torch.no_grad():
        want, got = original(**batch).last_hidden_state, patched(**batch).last_hidden_state
    diff = want - got if real is None else (want - got)[real]
    assert diff.abs().max() <= tol(1e-5)
    original.train()
    patched.train()
    weights = torch.randn(want.shape, generator=generator(1))
    if real is not None:
        weights = weights * real[..., None]
    (original(**batch).last_hidden_state * weights).sum().backward()
    (patched(**batch).last_hidden_state * weights).sum().backward()
    for (name, pw), (_, pg) in zip(original.named_parameters(), patched.named_parameters()):
        if pw.grad is None:
            assert pg.grad is None, name
            continue
        # zero in exact arithmetic (a key bias shifts a whole row of scores): float noise
        if pw.grad.norm() < tol(1e-6):
            assert pg.grad.norm() < tol(1e-6), name
            continue
        assert rel_err(pg.grad, pw.grad) <= tol(1e-4), name


@pytest.mark.parametrize("model_type", ["ernie", "esm", "xlm-roberta-xl"])
def test_text_neighborhood_and_longformer_match_their_dense_rules(model_type):
    original = _model(model_type)
    ids = torch.randint(5, 120, (2, 24), generator=generator(0))
    i = torch.arange(24)
    window_rule = ((i[:, None] - i[None]).abs() <= 3) | (i[:, None] == 0) | (i[None] == 0)
    for variant, options, rule in [
        ("neighborhood", {"kernel_size": 5}, natten_1d_reference(24, 5, 1)),
        ("longformer", {"window": 6, "global_tokens": [0]}, window_rule),
    ]:
        patched = hfx.patch(copy.deepcopy(original), variant, **options)
        with torch.no_grad(), dense_reference(lambda call, module, rule=rule: rule):
            want = reference_model(original)(input_ids=ids).last_hidden_state
            got = patched(input_ids=ids).last_hidden_state
        assert (want - got).abs().max() <= tol(1e-5), variant


@pytest.mark.parametrize("model_type,prefix", [("vit_msn", 1), ("ijepa", 0)])
def test_vision_neighborhood_matches_its_dense_rule_with_the_prefix_tokens_global(model_type, prefix):
    original = _model(model_type)
    patched = hfx.patch(copy.deepcopy(original), "neighborhood", kernel_size=3)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), dense_reference(lambda call, module: natten_2d_reference(8, 8, (3, 3), (1, 1), prefix)):
        want = reference_model(original)(pixel_values=pixels).last_hidden_state
        got = patched(pixel_values=pixels).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)


def test_longformer_global_projections_copy_each_types_own_projections():
    model = hfx.patch(
        _model("data2vec-text", AutoModelForMaskedLM),
        "longformer",
        window=6,
        global_tokens=[0],
        global_projections=True,
    )
    attention = model.base_model.encoder.layer[0].attention.self
    assert torch.equal(attention.query_global.weight, attention.query.weight)
    batch, real = _text_batch()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits[real]).all()


def test_a_model_outside_the_measured_list_is_refused_by_name():
    config = AutoConfig.for_model("megatron-bert", **SMALL, vocab_size=120)
    model = AutoModel.from_config(config)
    with pytest.raises(ValueError, match=r"config.model_type='megatron-bert' is not supported"):
        hfx.patch(model, "full")


def test_a_dropout_rate_read_elsewhere_than_hf_passes_it_is_refused(monkeypatch):
    model = hfx.patch(_model("ernie"), "full").train()
    batch, _ = _text_batch()
    model(**batch)  # the family reads the rate HF passes (0 here)
    monkeypatch.setattr(type(FAMILIES["general_text"]), "dropout_p", lambda self, module: 0.5)
    with pytest.raises(
        RuntimeError, match=r"passes dropout=0.0 to its attention function, but the general_text family reads 0.5"
    ):
        model(**batch)
