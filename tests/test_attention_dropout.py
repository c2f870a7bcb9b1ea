"""Attention dropout: ``attention_dropout="off"`` means no dropout and ``"standard"`` the model's own rate, on every
path a training forward can take (the native ``attn_implementation`` path, Swin's window path, the ViT window plan,
the band and halo plans, the block-sparse path); the block-sparse path scales kept entries by the rate its byte-drawn
keep mask realises, 256/(256 − round(256·p)), not 1/(1 − p).

(Written for bugs a mutation audit put into the code and no test caught; each fails with its bug put back.)
"""

import pytest
import torch
from transformers import BertModel

import hf_flexattn as hfx
from hf_flexattn.kernels.block_sparse import block_sparse_attention
from hf_flexattn.masks import BatchMask, generate_full

from helpers import HALO_SIDE, NATTEN_1D_TOKENS, padded_batch, rel_err, tiny_bert_config, tiny_model_and_input


def _native_bert(variant, options, size):
    """BERT with attention dropout 0.5 on the native path: ``attn_implementation="hf_flexattn_<variant>"``."""
    torch.manual_seed(0)
    config = tiny_bert_config(max_position_embeddings=max(512, size), attention_probs_dropout_prob=0.5)
    config.hidden_dropout_prob = 0.0
    config.hf_flexattn = {"variant": variant, "options": options}
    model = BertModel(config)
    model.set_attn_implementation(f"hf_flexattn_{variant}")
    ids, mask = padded_batch(batch=2, seq_len=size, lengths=[size, size - 5])
    return model, dict(input_ids=ids, attention_mask=mask)


def _patched(family, variant, options, size):
    dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    model, inputs = tiny_model_and_input(family, size, **dropout)
    return hfx.patch(model, variant, **options), inputs


# every path a training forward can take, each with attention dropout 0.5: (name, build(attention_dropout))
DROPOUT_PATHS = [
    ("native-dense", lambda setting: _native_bert("longformer", dict(window=8, attention_dropout=setting), 24)),
    ("native-band", lambda setting: _native_bert("longformer", dict(window=8, attention_dropout=setting), 1040)),
    ("native-neighborhood", lambda setting: _native_bert("neighborhood", dict(attention_dropout=setting), 24)),
    ("native-full", lambda setting: _native_bert("full", dict(attention_dropout=setting), 24)),
    ("block-sparse", lambda setting: _patched("bert", "longformer", dict(window=8, attention_dropout=setting), 40)),
    ("band", lambda setting: _patched("bert", "longformer", dict(window=8, attention_dropout=setting), 1040)),
    (
        "band-natten",
        lambda setting: _patched(
            "bert", "neighborhood", dict(kernel_size=5, attention_dropout=setting), NATTEN_1D_TOKENS
        ),
    ),
    (
        "halo",
        lambda setting: _patched("vit", "neighborhood", dict(kernel_size=3, attention_dropout=setting), HALO_SIDE),
    ),
    ("vit-windows", lambda setting: _patched("vit", "swin", dict(window_size=2, attention_dropout=setting), 8)),
    ("swin-windows", lambda setting: _patched("swin", "swin", dict(attention_dropout=setting), 8)),
    (
        "swin-halo",
        lambda setting: _patched("swin", "neighborhood", dict(kernel_size=5, attention_dropout=setting), HALO_SIDE),
    ),
    (
        "swin-generic",
        lambda setting: _patched("swin", "neighborhood", dict(kernel_size=3, attention_dropout=setting), 8),
    ),
]


@pytest.mark.parametrize("build", [b for _, b in DROPOUT_PATHS], ids=[name for name, _ in DROPOUT_PATHS])
def test_attention_dropout_off_means_off_and_standard_drops_on_every_path(build):
    """With ``attention_dropout='off'`` a training forward equals the eval forward; with 'standard' it does not
    (so the model's rate of 0.5 does reach this path)."""
    for setting in ("off", "standard"):
        model, inputs = build(setting)
        with torch.no_grad():
            evaluated = model.eval()(**inputs).last_hidden_state
            trained = model.train()(**inputs).last_hidden_state
        if "attention_mask" in inputs:  # padded rows are no one's output
            trained, evaluated = (x[inputs["attention_mask"].bool()] for x in (trained, evaluated))
        difference = (trained - evaluated).abs().max()
        if setting == "off":
            assert difference <= 1e-6, difference
        else:
            assert difference > 1e-3, difference


def dropped_probabilities(p: float, keys: int = 64, rows: int = 256) -> torch.Tensor:
    """The attention probabilities after dropout as the block-sparse path draws and scales them (the function that
    draws its keep mask is ``SparsePlan.keep_mask``, the scaling ``SparsePlan.dropout``): with zero queries every
    probability is 1/keys, and identity values read the dropped probabilities out. Returns (rows, keys)."""
    query = torch.zeros(1, 1, rows, keys, dtype=torch.float64)
    value = torch.eye(keys, dtype=torch.float64)[None, None]
    mask = BatchMask(generate_full(), rows, keys, device=query.device)
    out = block_sparse_attention(query, value.clone(), value, mask.block_mask(), dropout_p=p)
    return out[0, 0]


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.77, 255 / 256])
def test_block_sparse_dropout_scales_kept_entries_by_the_rate_it_draws(p):
    """The keep mask is drawn from bytes, so entries drop with probability p′ = round(256·p)/256; kept ones are
    scaled by exactly 1/(1 − p′) = 256/(256 − round(256·p)) (at p = 0.3: 1.43017, where 1/(1 − p) = 1.42857)."""
    dropped = dropped_probabilities(p) * 64  # kept entries: the scale itself
    kept = dropped != 0
    want = 256 / (256 - round(256 * p))
    assert kept.any() and (~kept).any()
    assert rel_err(dropped[kept], torch.full_like(dropped[kept], want)) <= 1e-6
    # ... and entries drop at about the rate p′ (16,384 draws: 4 standard deviations below 0.015)
    assert abs((~kept).double().mean().item() - round(256 * p) / 256) <= 0.015


def test_block_sparse_dropout_of_one_drops_everything():
    """p = 1 drops every probability (as ``torch.nn.functional.dropout`` does): the output is zero, not an error
    (the scale 256/(256 − 256) is never formed) and not the undropped attention."""
    assert torch.equal(dropped_probabilities(1.0, rows=64), torch.zeros(64, 64, dtype=torch.float64))
