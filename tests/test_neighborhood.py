"""Variant 'neighborhood': NATTEN's clamped windows with dilation, against a plainly written reference."""

import pytest
import torch
from transformers import BertModel

import hf_flexattn as hfx
from hf_flexattn.masks import generate_natten_1d

from helpers import (
    assert_equals_full,
    check_block_structure,
    dense_bert_layer,
    natten_1d_reference,
    padded_batch,
    tiny_bert_config,
    tol,
)

CASES = [(n, k, d) for n in (1, 7, 16, 33) for k in (1, 3, 5, 9) for d in (1, 2, 3)]


@pytest.mark.parametrize("n,k,d", CASES)
def test_natten_1d_mask_equals_reference(n, k, d):
    mask = generate_natten_1d(k, d, torch.tensor(n))
    got = mask.dense(1, 1, n, n)[0, 0]
    assert torch.equal(got, natten_1d_reference(n, k, d))
    # every query sees exactly min(k, group length) keys: clamped, never cut off
    assert (got.sum(-1) > 0).all()


def test_per_sample_lengths_and_block_structure():
    lengths = torch.tensor([300, 170, 41])
    mask = generate_natten_1d(31, 2, lengths)
    from hf_flexattn.masks import build_block_mask, generate_key_padding

    real = torch.arange(300)[None] < lengths[:, None]
    full_mask = mask & generate_key_padding(real)
    dense = full_mask.dense(3, 1, 300, 300)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(dense[b, 0, :n, :n], natten_1d_reference(n, 31, 2))
        assert not dense[b, 0, :, n:].any()
    check_block_structure(build_block_mask(full_mask, 300, 300, batch=3, heads=1, device="cpu", block_size=32), dense)


def test_kernel_covering_the_sequence_equals_full():
    assert_equals_full("neighborhood", 30, kernel_size=63)


def test_patched_model_matches_dense_reference_with_padding():
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(num_hidden_layers=1)).eval()
    hfx.patch(model, "neighborhood", kernel_size=5, dilation=2)
    ids, mask = padded_batch(seq_len=30, lengths=[30, 17, 9])
    rule = torch.zeros(3, 1, 30, 30, dtype=torch.bool)
    for b, n in enumerate([30, 17, 9]):
        rule[b, 0, :n, :n] = natten_1d_reference(n, 5, 2)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = dense_bert_layer(model, ids, rule)
    assert (got - want)[mask.bool()].abs().max() <= tol(1e-5)


@pytest.mark.parametrize("side", ["left", "both"])
def test_padding_on_any_side_leaves_real_tokens_unchanged(side):
    """Windows run over each sample's real tokens, so left padding (or padding on both sides) changes nothing."""
    torch.manual_seed(0)
    model = hfx.patch(BertModel(tiny_bert_config()).eval(), "neighborhood", kernel_size=5, dilation=2)
    ids = torch.randint(5, 120, (1, 17))
    before, after = (6, 0) if side == "left" else (4, 9)
    padded = torch.cat([torch.zeros(1, before, dtype=torch.long), ids, torch.zeros(1, after, dtype=torch.long)], 1)
    mask = torch.zeros_like(padded)
    mask[:, before : before + 17] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as a left-padding tokenizer's model would count them
    with torch.no_grad():
        alone = model(input_ids=ids).last_hidden_state
        got = model(input_ids=padded, attention_mask=mask, position_ids=positions).last_hidden_state
    assert (got[:, before : before + 17] - alone).abs().max() <= tol(1e-5)
