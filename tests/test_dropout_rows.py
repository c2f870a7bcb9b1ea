"""Attention dropout reaches every class of row on the tiled paths: local rows, global rows (per-batch globals, fixed
ones such as [CLS]), HF Longformer checkpoints' global rows through their own projections (folded below head_dim
rows, projected above), and the prefix tokens of a patch grid (CLS, DINOv2's registers).

One-layer models with attention dropout 0.5 and no other dropout: a token's output then depends on its own attention
row only, so a row whose output is the same in training as in eval had no dropout. Each class is checked on its own
(a check that *some* row changes lets one class run without dropout). Which path ran is recorded, not assumed."""

import pytest
import torch
from family_checks import registers_config
from transformers import BertModel, Dinov2WithRegistersModel, LongformerConfig, LongformerModel, ViTModel

import hf_flexattn as hfx
from hf_flexattn import kernels

from helpers import HALO_SIDE, generator, tiny_bert_config, tiny_vit_config

DROPOUT = {"attention_probs_dropout_prob": 0.5, "hidden_dropout_prob": 0.0, "num_hidden_layers": 1}
LENGTH = 1040  # past the band plan's crossover for a window of 8 (window + 1,024 tokens)


def _padded(batch_lengths, n, seed=0):
    ids = torch.randint(5, 120, (len(batch_lengths), n), generator=generator(seed))
    mask = (torch.arange(n)[None] < torch.tensor(batch_lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 1), mask


def _bert_band():
    """BERT, ``longformer`` with [CLS] fixed global and per-batch globals, a padded batch, on the band plan."""
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(max_position_embeddings=LENGTH, **DROPOUT), add_pooling_layer=False)
    hfx.patch(model, "longformer", window=8, global_tokens=[0])
    ids, mask = _padded([LENGTH, LENGTH - 300], LENGTH)
    globals_ = torch.zeros_like(mask)
    globals_[0, [17, 500]] = 1
    globals_[1, 600] = 1
    classes = {"cls": [(0, 0), (1, 0)], "global": [(0, 17), (0, 500), (1, 600)]}
    return model, {"input_ids": ids, "attention_mask": mask, "global_attention_mask": globals_}, classes


def _longformer_checkpoint(global_count):
    """An HF Longformer checkpoint: global rows through query/key/value_global; fewer than head_dim (8) of them are
    folded into the rows, more are projected."""
    torch.manual_seed(0)
    config = LongformerConfig(
        vocab_size=120,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=LENGTH + 2,
        pad_token_id=1,
        attention_window=[8],
        **DROPOUT,
    )
    model = hfx.patch(LongformerModel(config, add_pooling_layer=False), "longformer")
    ids, mask = _padded([LENGTH, LENGTH - 300], LENGTH)
    positions = [0] + [40 * (i + 1) for i in range(global_count - 1)]
    globals_ = torch.zeros_like(mask)
    globals_[:, positions] = 1
    classes = {"cls": [(0, 0), (1, 0)], "global": [(b, p) for b in (0, 1) for p in positions[1:]]}
    return model, {"input_ids": ids, "attention_mask": mask, "global_attention_mask": globals_}, classes


def _vit_halo():
    """ViT, ``neighborhood`` on the halo plan: [CLS] is the plan's global row."""
    torch.manual_seed(0)
    model = ViTModel(tiny_vit_config(**DROPOUT), add_pooling_layer=False)
    hfx.patch(model, "neighborhood", kernel_size=3)
    pixels = torch.randn(2, 3, 4 * HALO_SIDE, 4 * HALO_SIDE, generator=generator(0))  # past the halo crossover
    classes = {"cls": [(0, 0), (1, 0)]}
    return model, {"pixel_values": pixels, "interpolate_pos_encoding": True}, classes


def _registers_halo():
    """DINOv2 with registers, ``neighborhood`` on the halo plan: [CLS] and the registers are global rows."""
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(registers_config(**DROPOUT, out_features=["stage1"]))
    hfx.patch(model, "neighborhood", kernel_size=3)
    pixels = torch.randn(2, 3, 4 * HALO_SIDE, 4 * HALO_SIDE, generator=generator(0))
    classes = {"cls": [(0, 0), (1, 0)], "register": [(b, r) for b in (0, 1) for r in (1, 2)]}
    return model, {"pixel_values": pixels}, classes


CASES = {
    "bert-band": _bert_band,
    "longformer-checkpoint-folded": lambda: _longformer_checkpoint(3),
    "longformer-checkpoint-projected": lambda: _longformer_checkpoint(10),
    "vit-halo": _vit_halo,
    "dinov2-registers-halo": _registers_halo,
}


@pytest.mark.cpu_only  # the tiled plans are CPU's
@pytest.mark.parametrize("case", list(CASES))
def test_attention_dropout_reaches_every_class_of_row(case, monkeypatch):
    model, inputs, classes = CASES[case]()
    plans = []
    tiled = kernels.tiled_attention
    monkeypatch.setattr(
        kernels, "tiled_attention", lambda q, k, v, plan, *a, **kw: plans.append(plan) or tiled(q, k, v, plan, *a, **kw)
    )
    with torch.no_grad():
        evaluated = model.eval()(**inputs).last_hidden_state
        torch.manual_seed(1)
        trained = model.train()(**inputs).last_hidden_state
    assert plans and all(p.global_rows is not None for p in plans), "the tiled path with global rows did not run"

    changed = (trained - evaluated).abs().amax(-1) > 1e-4  # (B, N): the row's output moved
    real = inputs.get("attention_mask", torch.ones(changed.shape, dtype=torch.long)).bool()
    special = {position for rows in classes.values() for position in rows}
    local = real.clone()
    for b, p in special:
        local[b, p] = False
    assert changed[local].all(), f"{case}: {(~changed[local]).sum()} local rows without dropout"
    for name, rows in classes.items():
        unchanged = [(b, p) for b, p in rows if not changed[b, p]]
        assert not unchanged, f"{case}: {name} rows without dropout: {unchanged}"
