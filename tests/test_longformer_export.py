"""Back out to plain transformers (hf_flexattn/longformer_export.py): a BERT/RoBERTa model with extended positions,
patched with `longformer`, written as a native Longformer checkpoint that transformers loads without hf_flexattn and
that gives the patched model's outputs; what has no Longformer equivalent is refused by name."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    ElectraConfig,
    ElectraModel,
    LongformerForMaskedLM,
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
    LongformerModel,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)

import hf_flexattn as hfx

from helpers import generator, no_dropout, tiny_bert_config, tiny_roberta_config, tol


def _patched(head, config, **options):
    """A tiny model with its positions extended past the checkpoint's (64 → 96) and patched with 'longformer',
    its global projections moved away from the local ones (as training would)."""
    torch.manual_seed(0)
    model = no_dropout(head(config)).eval()
    hfx.extend_position_embeddings(model, 96)
    hfx.patch(model, "longformer", **{"window": [8, 4], **options})
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "_global." in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator(1)))
    return model


def _batch(pad, n=90):
    """Right-padded ids, padding = ``pad`` (Longformer counts positions over non-padding tokens)."""
    ids = torch.randint(5, 120, (3, n), generator=generator(0))
    lengths = torch.tensor([n, n - 20, 33])
    mask = (torch.arange(n)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, pad)
    glob = torch.zeros_like(mask)
    glob[0, 40] = 1
    glob[2, 3] = 1
    return ids, mask, glob


def _compare(patched, native, batch, **call):
    ids, mask, _ = batch
    with torch.no_grad():
        want, got = (
            patched(input_ids=ids, attention_mask=mask, **call),
            native(input_ids=ids, attention_mask=mask, **call),
        )
    for name in ("last_hidden_state", "logits", "start_logits", "end_logits"):
        if name in want:
            w, g = want[name], got[name]
            if w.dim() == 3:  # per token: real tokens only
                w, g = w[mask.bool()], g[mask.bool()]
            elif w.shape == mask.shape:
                w, g = w.masked_fill(mask == 0, 0), g.masked_fill(mask == 0, 0)
            assert (w - g).abs().max() <= tol(2e-5), name


SMALL = dict(max_position_embeddings=64)
CASES = [
    (BertModel, tiny_bert_config(**SMALL, pad_token_id=0), LongformerModel, {}),
    (BertForMaskedLM, tiny_bert_config(**SMALL, pad_token_id=0), LongformerForMaskedLM, {}),
    (BertForSequenceClassification, tiny_bert_config(**SMALL, num_labels=3), LongformerForSequenceClassification, {}),
    (RobertaForMaskedLM, tiny_roberta_config(max_position_embeddings=66), LongformerForMaskedLM, {}),
    (RobertaForSequenceClassification, tiny_roberta_config(max_position_embeddings=66), None, {}),
    (RobertaForTokenClassification, tiny_roberta_config(max_position_embeddings=66, num_labels=5), None, {}),
    (RobertaForQuestionAnswering, tiny_roberta_config(max_position_embeddings=66), LongformerForQuestionAnswering, {}),
    (RobertaForMaskedLM, tiny_roberta_config(max_position_embeddings=66), None, {"global_projections": False}),
]


@pytest.mark.parametrize("head, config, longformer_class, options", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_exported_longformer_gives_the_patched_outputs(head, config, longformer_class, options):
    classification = head.__name__.endswith("ForSequenceClassification")
    options = {"global_projections": True, "global_tokens": [0] if classification else [], **options}
    patched = _patched(head, config, **options)
    native = hfx.to_longformer(patched).eval()
    suffix = head.__name__[head.__name__.index("For") :] if "For" in head.__name__ else "Model"
    assert type(native).__name__ == "Longformer" + suffix
    assert longformer_class in (None, type(native))
    assert native.config.attention_window == [8, 4]
    batch = _batch(config.pad_token_id)
    glob = batch[2].clone()
    if classification:  # HF's classification head makes [CLS] global only when it is given no mask
        glob[:, 0] = 1
    _compare(patched, native, batch, global_attention_mask=glob)
    if not head.__name__.endswith("QuestionAnswering"):  # QA's head derives question globals when given none
        _compare(patched, native, batch)


def test_plain_transformers_loads_the_checkpoint_without_hf_flexattn(tmp_path):
    patched = _patched(BertForMaskedLM, tiny_bert_config(**SMALL, pad_token_id=0), global_projections=True)
    hfx.save_as_longformer(patched, tmp_path)
    ids, mask, glob = _batch(0)
    torch.save({"ids": ids, "mask": mask, "glob": glob}, tmp_path / "batch.pt")
    script = f"""
import sys, torch, json
from transformers import AutoModelForMaskedLM
model = AutoModelForMaskedLM.from_pretrained({str(tmp_path)!r}).eval()
batch = torch.load({str(tmp_path / "batch.pt")!r})
with torch.no_grad():
    logits = model(input_ids=batch["ids"], attention_mask=batch["mask"], global_attention_mask=batch["glob"]).logits
torch.save(logits, {str(tmp_path / "logits.pt")!r})
print(json.dumps({{"class": type(model).__name__, "hf_flexattn": "hf_flexattn" in sys.modules}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "class": "LongformerForMaskedLM",
        "hf_flexattn": False,
    }
    with torch.no_grad():
        want = patched(input_ids=ids, attention_mask=mask, global_attention_mask=glob).logits
    got = torch.load(tmp_path / "logits.pt")
    assert (want - got)[mask.bool()].abs().max() <= tol(2e-5)


def test_what_has_no_longformer_equivalent_is_refused_by_name():
    bert = lambda: no_dropout(BertForMaskedLM(tiny_bert_config(**SMALL)))
    with pytest.raises(ValueError, match=r"variant='neighborhood'; only variant='longformer'"):
        hfx.to_longformer(hfx.patch(bert(), "neighborhood", kernel_size=5))
    with pytest.raises(ValueError, match=r"variant=None"):
        hfx.to_longformer(bert())
    with pytest.raises(ValueError, match=r"global_tokens=\[0\] on BertForMaskedLM; HF Longformer has no fixed global"):
        hfx.to_longformer(hfx.patch(bert(), "longformer", window=8, global_tokens=[0]))
    classifier = no_dropout(BertForSequenceClassification(tiny_bert_config(**SMALL)))
    with pytest.raises(ValueError, match=r"always makes \[CLS\] global, so patch with global_tokens=\[0\]"):
        hfx.to_longformer(hfx.patch(classifier, "longformer", window=8))
    electra = ElectraModel(
        ElectraConfig(
            vocab_size=120,
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )
    with pytest.raises(ValueError, match=r"model_type='electra'; a native Longformer holds BERT's layers"):
        hfx.to_longformer(hfx.patch(electra, "longformer", window=8))
    relu = no_dropout(BertForMaskedLM(tiny_bert_config(**SMALL, hidden_act="relu")))
    with pytest.raises(ValueError, match=r"hidden_act='relu'; HF Longformer's LM head applies 'gelu'"):
        hfx.to_longformer(hfx.patch(relu, "longformer", window=8))


def test_the_patched_model_is_left_as_it_is():
    patched = _patched(RobertaForMaskedLM, tiny_roberta_config(max_position_embeddings=66), global_projections=True)
    before = copy.deepcopy(patched.state_dict())
    hfx.to_longformer(patched)
    assert hfx.is_patched(patched)
    assert all(torch.equal(before[k], v) for k, v in patched.state_dict().items())
