"""``torch.export`` of a patched model at a fixed shape: the exported program computes what the eager model computes,
for the batch it was traced on and for another padding (and other global tokens) at the same shape, so nothing about
one batch's values is frozen into it. Export traces the dense path (the exact mask materialised for SDPA): the
structured CPU paths and the density policy read tensor values, which an exported graph may not."""

import pytest
import torch
from transformers import BertModel, ViTModel

import hf_flexattn as hfx
from hf_flexattn import kernels

from helpers import tiny_bert_config, tiny_vit_config

pytestmark = pytest.mark.cpu_only  # export traces the CPU policy's dense path here; on CUDA it would trace flex


def _bert(variant, max_positions=512, **options):
    torch.manual_seed(0)
    return hfx.patch(BertModel(tiny_bert_config(max_position_embeddings=max_positions)).eval(), variant, **options)


def _padded(length, real_lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 100, (len(real_lengths), length), generator=generator)
    attention_mask = torch.zeros(len(real_lengths), length, dtype=torch.long)
    for row, real in enumerate(real_lengths):
        attention_mask[row, :real] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _assert_export_matches_eager(model, traced_inputs, other_inputs, real_tokens=None):
    exported = torch.export.export(model, (), traced_inputs).module()
    for inputs in (traced_inputs, other_inputs):
        with torch.no_grad():
            expected = model(**inputs).last_hidden_state
            got = exported(**inputs).last_hidden_state
        # outputs at padded positions are unspecified (each path leaves its own values there): compare real tokens
        real = (
            inputs["attention_mask"].bool()[..., None]
            if "attention_mask" in inputs
            else torch.ones(1, 1, 1, dtype=bool)
        )
        torch.testing.assert_close(got * real, expected * real, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "variant, options",
    [
        ("full", {}),
        ("longformer", {"window": 4, "global_tokens": [0, 5]}),
        ("neighborhood", {"kernel_size": 5}),
    ],
)
def test_bert_exports_and_matches_eager(variant, options):
    model = _bert(variant, **options)
    _assert_export_matches_eager(model, _padded(24, [24, 13]), _padded(24, [7, 24], seed=1))


def test_longformer_per_batch_global_attention_mask_is_an_input_of_the_exported_program():
    model = _bert("longformer", window=4, global_tokens=[0])
    traced, other = _padded(24, [24, 13]), _padded(24, [9, 24], seed=1)
    traced["global_attention_mask"] = torch.zeros(2, 24, dtype=torch.long)
    traced["global_attention_mask"][:, 3] = 1
    other["global_attention_mask"] = torch.zeros(2, 24, dtype=torch.long)
    other["global_attention_mask"][0, 8] = other["global_attention_mask"][1, 20] = 1
    _assert_export_matches_eager(model, traced, other)


def test_long_input_exports_the_dense_path_where_eager_runs_the_band_path(monkeypatch):
    model = _bert("longformer", max_positions=2048, window=64, global_tokens=[0])
    traced, other = _padded(1100, [1100, 700]), _padded(1100, [300, 1100], seed=1)
    band_calls = []
    original = kernels.tiled_attention
    monkeypatch.setattr(kernels, "tiled_attention", lambda *a, **k: band_calls.append(1) or original(*a, **k))
    with torch.no_grad():
        model(**traced)
    assert band_calls, "eager should run the band path at this length (else this test checks nothing)"
    band_calls.clear()
    exported = torch.export.export(model, (), traced)
    assert not band_calls
    assert "scaled_dot_product_attention" in str(exported.graph)
    _assert_export_matches_eager(model, traced, other)


def test_vit_neighborhood_exports_and_matches_eager():
    torch.manual_seed(0)
    model = hfx.patch(ViTModel(tiny_vit_config()).eval(), "neighborhood", kernel_size=3)
    generator = torch.Generator().manual_seed(0)
    _assert_export_matches_eager(
        model,
        {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)},
        {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)},
    )
