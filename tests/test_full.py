"""Variant 'full' on the BERT and ViT families: the patched model is numerically the original model."""

import copy

import pytest
import torch
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    DeiTConfig,
    DeiTForImageClassification,
    RobertaForMaskedLM,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTModel,
)

import hf_flexattn as hfx
from hf_flexattn.patching import patch_state

from helpers import (
    count_batch_masks,
    no_dropout,
    padded_batch,
    rel_err,
    tiny_bert_config,
    tiny_roberta_config,
    tiny_vit_config,
    tol,
)


def _pair(model_cls, config, seed=0):
    torch.manual_seed(seed)
    original = model_cls(config).eval()
    patched = copy.deepcopy(original)
    hfx.patch(patched, "full")
    return original, patched


TEXT_MODELS = [
    (BertModel, tiny_bert_config),
    (BertForMaskedLM, tiny_bert_config),
    (BertForSequenceClassification, tiny_bert_config),
    (RobertaForMaskedLM, tiny_roberta_config),
]


@pytest.mark.parametrize("model_cls,make_config", TEXT_MODELS)
def test_text_eval_outputs_match_unpatched(model_cls, make_config):
    original, patched = _pair(model_cls, make_config())
    ids, mask = padded_batch(batch=3, seq_len=24)
    if model_cls is RobertaForMaskedLM:
        ids = ids.masked_fill(mask == 0, 1)  # RoBERTa's pad id, so its position ids count real tokens only
    with torch.no_grad():
        want = original(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = patched(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    for w, g in zip(want.hidden_states, got.hidden_states):
        assert (w - g)[real].abs().max() <= tol(1e-5)
    if hasattr(want, "logits"):
        w, g = want.logits, got.logits
        if w.dim() == 3:
            w, g = w[real], g[real]
        assert (w - g).abs().max() <= tol(1e-5)


def test_pretrained_minilm_matches_unpatched(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    original = BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    patched = copy.deepcopy(original)
    hfx.patch(patched, "full")
    texts = ["FlexAttention makes block-sparse attention fast.", "Short.", "A medium length sentence about cats."]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        want = original(**batch).last_hidden_state
        got = patched(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    assert (want - got)[real].abs().max() <= tol(1e-5)


VISION_MODELS = [
    (ViTModel, tiny_vit_config),
    (ViTForImageClassification, tiny_vit_config),
    (ViTForMaskedImageModeling, tiny_vit_config),
    (
        DeiTForImageClassification,
        lambda: DeiTConfig(**{k: v for k, v in tiny_vit_config().to_dict().items() if k != "model_type"}),
    ),
]


@pytest.mark.parametrize("model_cls,make_config", VISION_MODELS)
def test_vision_eval_outputs_match_unpatched(model_cls, make_config):
    config = make_config()
    config._attn_implementation = "eager"
    original, patched = _pair(model_cls, config)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = original(pixel_values=pixels, output_hidden_states=True)
        got = patched(pixel_values=pixels, output_hidden_states=True)
    for w, g in zip(want.hidden_states, got.hidden_states):
        assert (w - g).abs().max() <= tol(1e-5)
    out_w = getattr(want, "logits", None)
    out_w = want.reconstruction if out_w is None and hasattr(want, "reconstruction") else out_w
    out_g = getattr(got, "logits", None)
    out_g = got.reconstruction if out_g is None and hasattr(got, "reconstruction") else out_g
    if out_w is not None:
        assert (out_w - out_g).abs().max() <= tol(1e-5)


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_training_loss_and_every_gradient_match_unpatched(family):
    if family == "bert":
        original, patched = _pair(BertForMaskedLM, tiny_bert_config())
        ids, mask = padded_batch(batch=3, seq_len=24)
        labels = ids.masked_fill(mask == 0, -100)
        batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    else:
        original, patched = _pair(ViTForImageClassification, tiny_vit_config())
        batch = dict(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([1, 3]))
    for model in (original, patched):
        no_dropout(model).train()
    loss_w = original(**batch).loss
    loss_g = patched(**batch).loss
    loss_w.backward()
    loss_g.backward()
    assert abs(loss_w.item() - loss_g.item()) <= tol(1e-5) * abs(loss_w.item())
    for (name, pw), (_, pg) in zip(original.named_parameters(), patched.named_parameters()):
        if pw.grad is None:
            assert pg.grad is None, name
            continue
        assert rel_err(pg.grad, pw.grad) <= tol(1e-4), name


def test_masks_are_built_once_per_forward_and_cached_by_shape(monkeypatch):
    config = tiny_bert_config(num_hidden_layers=6)
    _, patched = _pair(BertModel, config)
    built = count_batch_masks(monkeypatch)
    ids, mask = padded_batch(batch=2, seq_len=40)
    with torch.no_grad():
        patched(input_ids=ids, attention_mask=mask)
        assert len(built) == 1  # one mask for six layers
        patched(input_ids=ids, attention_mask=torch.ones_like(mask))
        assert len(built) == 2  # an attention_mask is read per batch (its values are never read on the host)
        patched(input_ids=ids)
        assert len(built) == 3  # no attention_mask: a shape-only mask, built once...
        patched(input_ids=ids.flip(0))
        assert len(built) == 3  # ...and reused by the next batch of that shape...
        patched(input_ids=ids[:1])
        assert len(built) == 3  # ...and of any batch size (it is built for one sample and broadcast)


def test_print_shows_the_variant_and_state_dict_is_unchanged():
    original, patched = _pair(BertForMaskedLM, tiny_bert_config())
    text = str(patched)
    assert "(self): FlexBertSelfAttention(\n" in text and "variant=full" in text
    assert repr(patched.bert.encoder.layer[1].attention.self).startswith(
        "FlexBertSelfAttention(\n  variant=full, attention_dropout='standard'\n"
    )
    assert list(original.state_dict()) == list(patched.state_dict())
    attn = patched.bert.encoder.layer[0].attention.self
    assert isinstance(attn, type(original.bert.encoder.layer[0].attention.self))
    assert attn.query.weight is patched.bert.encoder.layer[0].attention.self.query.weight
    assert patched.config.hf_flexattn == {"variant": "full", "options": {"attention_dropout": "standard"}}


def test_unpatch_restores_classes_and_bitwise_outputs():
    original, patched = _pair(BertForMaskedLM, tiny_bert_config())
    ids, mask = padded_batch()
    hfx.unpatch(patched)
    assert [type(m) for m in patched.modules()] == [type(m) for m in original.modules()]
    assert not hasattr(patched.config, "hf_flexattn")
    with torch.no_grad():
        assert torch.equal(
            original(input_ids=ids, attention_mask=mask).logits, patched(input_ids=ids, attention_mask=mask).logits
        )


def test_save_and_from_pretrained_round_trip(tmp_path):
    _, patched = _pair(BertForMaskedLM, tiny_bert_config())
    ids, mask = padded_batch()
    patched.save_pretrained(tmp_path)
    assert '"hf_flexattn"' in (tmp_path / "config.json").read_text()
    reloaded = hfx.from_pretrained(BertForMaskedLM, tmp_path).eval()
    assert patch_state(reloaded).variant.name == "full"
    with torch.no_grad():
        assert torch.equal(
            patched(input_ids=ids, attention_mask=mask).logits, reloaded(input_ids=ids, attention_mask=mask).logits
        )
