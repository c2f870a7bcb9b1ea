"""extend_position_embeddings: the Longformer recipe (tile the pretrained rows), BERT and RoBERTa."""

import copy

import pytest
import torch
from transformers import BertForMaskedLM, RobertaForMaskedLM

import hf_flexattn as hfx

from helpers import tiny_bert_config, tiny_roberta_config


@pytest.mark.parametrize(
    "make_config,cls,offset", [(tiny_bert_config, BertForMaskedLM, 0), (tiny_roberta_config, RobertaForMaskedLM, 2)]
)
def test_tiles_rows_updates_buffers_and_keeps_short_outputs(make_config, cls, offset):
    torch.manual_seed(0)
    model = cls(make_config()).eval()
    original = copy.deepcopy(model)
    hfx.extend_position_embeddings(model, 2048)
    emb = model.base_model.embeddings
    old = original.base_model.embeddings.position_embeddings.weight
    new = emb.position_embeddings.weight
    assert new.shape[0] == 2048 + offset
    assert model.config.max_position_embeddings == 2048 + offset
    assert emb.position_ids.shape == (1, 2048 + offset) and torch.equal(
        emb.position_ids[0, -3:], torch.arange(2045 + offset, 2048 + offset)
    )
    assert emb.token_type_ids.shape == (1, 2048 + offset)
    assert torch.equal(new[: 512 + offset], old)  # the pretrained rows are kept
    assert torch.equal(new[offset + 512 : offset + 1024], old[offset:])  # and tiled
    assert torch.equal(new[offset + 1536 + 7], old[offset + 7])
    ids = torch.randint(5, 120, (2, 512))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, original(input_ids=ids).logits)


def test_too_long_input_names_the_function_and_extension_fixes_it():
    model = BertForMaskedLM(tiny_bert_config()).eval()
    hfx.patch(model, "longformer", window=64)
    ids = torch.randint(5, 120, (1, 700))
    with pytest.raises(
        ValueError, match=r"exceeds the model's 512 position embeddings; call hf_flexattn.extend_position_embeddings"
    ):
        model(input_ids=ids)
    hfx.extend_position_embeddings(model, 1024)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("max_len", [100, "4096", 4096.0])
def test_bad_max_len(max_len):
    model = BertForMaskedLM(tiny_bert_config())
    with pytest.raises(ValueError, match=f"max_len={max_len!r}"):
        hfx.extend_position_embeddings(model, max_len)
    assert model.bert.embeddings.position_embeddings.num_embeddings == 512
