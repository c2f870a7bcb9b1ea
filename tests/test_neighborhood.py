"""Variant 'neighborhood': NATTEN's clamped windows with dilation, against a plainly written reference."""


import pytest
import torch
from transformers import BertModel

import hf_flexattn as hfx
from hf_flexattn.variants.neighborhood import generate_natten_1d

from conftest import assert_equals_full, assert_same_snapshot, dense_bert_layer, check_block_structure, padded_batch, snapshot, tiny_bert_config


def natten_1d_reference(length, kernel_size, dilation):
    """NATTEN 1D, entry by entry: within each dilation group, the k-window centred on the query, shifted
    inward at the ends; a group shorter than k is seen whole."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for q in range(length):
        group = [p for p in range(length) if p % dilation == q % dilation]
        k = min(kernel_size, len(group))
        j = group.index(q)
        start = min(max(j - kernel_size // 2, 0), len(group) - k)
        for p in group[start : start + k]:
            allowed[q, p] = True
    return allowed


CASES = [(n, k, d) for n in (1, 7, 16, 33) for k in (1, 3, 5, 9) for d in (1, 2, 3)]


@pytest.mark.parametrize("n,k,d", CASES)
def test_natten_1d_mask_equals_reference(n, k, d):
    mask = generate_natten_1d(torch.tensor(n), k, d)
    got = mask.dense(1, 1, n, n)[0, 0]
    assert torch.equal(got, natten_1d_reference(n, k, d))
    # every query sees exactly min(k, group length) keys: clamped, never cut off
    assert (got.sum(-1) > 0).all()


def test_per_sample_lengths_and_block_structure():
    lengths = torch.tensor([300, 170, 41])
    mask = generate_natten_1d(lengths, 31, 2)
    from hf_flexattn.masks import build_block_mask, generate_key_padding

    real = torch.arange(300)[None] < lengths[:, None]
    full_mask = mask & generate_key_padding(real)
    dense = full_mask.dense(3, 1, 300, 300)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(dense[b, 0, :n, :n], natten_1d_reference(n, 31, 2))
        assert not dense[b, 0, :, n:].any()
    check_block_structure(build_block_mask(full_mask, 3, 1, 300, 300, "cpu", 32), dense)


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
    assert (got - want)[mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(kernel_size=4), "kernel_size=4; must be odd"),
        (dict(kernel_size=0), "kernel_size=0; expected a positive int"),
        (dict(kernel_size=2.5), "kernel_size=2.5"),
        (dict(dilation=0), "dilation=0; expected a positive int"),
        (dict(radius=3), "unknown option 'radius'"),
    ],
)
def test_bad_options(options, message):
    model = BertModel(tiny_bert_config())
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        hfx.patch(model, "neighborhood", **options)
    assert_same_snapshot(before, snapshot(model))


def test_left_padding_is_refused():
    model = BertModel(tiny_bert_config()).eval()
    hfx.patch(model, "neighborhood", kernel_size=3)
    ids, mask = padded_batch(seq_len=12)
    with pytest.raises(ValueError, match="right-padded"):
        model(input_ids=ids, attention_mask=mask.flip(-1))
