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


def test_usable_positions_with_padding_idx_zero():
    """RoBERTa-style tables count positions from padding_idx + 1, also when padding_idx is 0 (a falsy value that once
    slipped through as 'no offset'): the position check, the extension and the scripts' recipe agree on it."""
    from transformers import RobertaConfig

    from hf_flexattn.long_context import usable_positions
    from scripts import recipes

    config = RobertaConfig(**{**tiny_roberta_config().to_dict(), "pad_token_id": 0, "max_position_embeddings": 66})
    model = RobertaForMaskedLM(config).eval()
    assert usable_positions(model) == 65
    hfx.patch(model, "longformer", window=8)
    with torch.no_grad():
        model(input_ids=torch.randint(5, 120, (1, 65)))  # every usable position
        with pytest.raises(ValueError, match="input length 66 exceeds the model's 65 position embeddings"):
            model(input_ids=torch.randint(5, 120, (1, 66)))
    recipes.apply_variant(model, None, {}, max_positions=65)
    assert model.roberta.embeddings.position_embeddings.num_embeddings == 66  # nothing to extend
    recipes.apply_variant(model, None, {}, max_positions=130)
    assert usable_positions(model) == 130
