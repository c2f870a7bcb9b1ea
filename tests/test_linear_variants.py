"""Linformer and Performer: exactness limits, padding invariance, statistics of FAVOR+, save/reload, bad input."""

import copy

import pytest
import torch
from transformers import BertModel, ViTForImageClassification

import hf_flexattn as hfx
from hf_flexattn.variants.linformer import LinformerProjection
from hf_flexattn.variants.performer import favor_attention, orthogonal_random_features

from helpers import (
    assert_same_snapshot,
    no_dropout,
    padded_batch,
    reference_attention,
    snapshot,
    tiny_bert_config,
    tiny_vit_config,
)


def _bert(**kw):
    torch.manual_seed(0)
    return BertModel(tiny_bert_config(**kw)).eval()


# ------------------------------------------------------------------------------------------------- Linformer


def test_linformer_with_identity_projections_equals_full():
    base = _bert()
    full, lin = copy.deepcopy(base), copy.deepcopy(base)
    hfx.patch(full, "full")
    hfx.patch(lin, "linformer", proj_len=24)
    with torch.no_grad():
        for layer in lin.encoder.layer:
            eye = torch.zeros(512, 24)
            eye[:24] = torch.eye(24)
            layer.attention.self.linformer.E.copy_(eye)
            layer.attention.self.linformer.F.copy_(eye)
    ids, _ = padded_batch(seq_len=24)
    with torch.no_grad():
        assert (full(input_ids=ids).last_hidden_state - lin(input_ids=ids).last_hidden_state).abs().max() <= 1e-5


@pytest.mark.parametrize("variant,options", [("linformer", dict(proj_len=8)), ("performer", dict(num_features=32))])
def test_outputs_at_real_tokens_do_not_depend_on_padding(variant, options):
    model = hfx.patch(_bert(), variant, **options)
    ids, _ = padded_batch(batch=2, seq_len=40, lengths=[40, 13])
    with torch.no_grad():
        alone = model(input_ids=ids[1:, :13]).last_hidden_state
        batched = model(input_ids=ids, attention_mask=(torch.arange(40) < torch.tensor([[40], [13]])).long())
    assert (batched.last_hidden_state[1, :13] - alone[0]).abs().max() <= 1e-5


def test_linformer_gradients_reach_E_and_F_on_cpu():
    model = no_dropout(hfx.patch(_bert(), "linformer", proj_len=8)).train()
    ids, mask = padded_batch()
    model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(3).sum().backward()
    proj = model.encoder.layer[0].attention.self.linformer
    assert proj.E.grad is not None and proj.E.grad[:24].abs().sum() > 0 and proj.F.grad[:24].abs().sum() > 0
    assert proj.E.grad[24:].abs().sum() == 0  # rows past the input length are not used


def test_linformer_share_kv_has_one_matrix_and_vit_works():
    model = ViTForImageClassification(tiny_vit_config())
    hfx.patch(model, "linformer", proj_len=16, share_kv=True)
    proj = model.vit.layers[0].attention.linformer
    assert proj.F is None and proj.E.shape == (65, 16)
    assert [k for k in model.state_dict() if "linformer" in k][:1] == ["vit.layers.0.attention.linformer.E"]
    with torch.no_grad():
        assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 5)


def test_linformer_module_refuses_longer_input():
    proj = LinformerProjection(max_len=16, proj_len=4)
    x = torch.randn(1, 2, 17, 8)
    with pytest.raises(ValueError, match="input length 17 exceeds max_len=16"):
        proj(x, x, x)


# ------------------------------------------------------------------------------------------------- Performer


def _qkv(seed, n=64, d=16):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, n, d, generator=g) * s for s in (0.5, 0.5, 1.0))
    return q, k, v


def test_favor_error_falls_as_num_features_grows():
    """Statistical: over 8 seeds, the mean relative error at m=256 is well below that at m=16."""
    errors = {m: [] for m in (16, 64, 256)}
    for seed in range(8):
        q, k, v = _qkv(seed)
        exact = reference_attention(q, k, v)
        for m in errors:
            feats = orthogonal_random_features(m, 16, generator=torch.Generator().manual_seed(100 + seed))
            approx = favor_attention(q, k, v, feats)
            errors[m].append(((approx - exact).norm() / exact.norm()).item())
    mean = {m: sum(e) / len(e) for m, e in errors.items()}
    assert mean[64] < 0.8 * mean[16] and mean[256] < 0.6 * mean[64], mean


def test_mean_over_redraws_approaches_softmax():
    q, k, v = _qkv(0)
    exact = reference_attention(q, k, v)
    g = torch.Generator().manual_seed(7)
    draws = torch.stack([favor_attention(q, k, v, orthogonal_random_features(32, 16, generator=g)) for _ in range(200)])
    single = ((draws - exact).flatten(1).norm(dim=1) / exact.norm()).mean()
    averaged = (draws.mean(0) - exact).norm() / exact.norm()
    assert averaged < 0.35 * single, (averaged, single)


def test_padded_keys_have_no_influence():
    q, k, v = _qkv(1)
    feats = orthogonal_random_features(32, 16)
    real = torch.ones(1, 64, dtype=torch.bool)
    real[:, 40:] = False
    a = favor_attention(q, k, v, feats, real)
    k2, v2 = k.clone(), v.clone()
    k2[..., 40:, :] = 100 * torch.randn_like(k2[..., 40:, :])
    v2[..., 40:, :] = 100 * torch.randn_like(v2[..., 40:, :])
    b = favor_attention(q, k2, v2, feats, real)
    assert torch.equal(a, b)
    c = favor_attention(q[..., :40, :], k[..., :40, :], v[..., :40, :], feats)
    assert (a[..., :40, :] - c).abs().max() <= 1e-5


def test_performer_eval_is_deterministic_and_training_redraws_on_schedule():
    model = hfx.patch(_bert(), "performer", num_features=16, redraw_interval=2)
    ids, mask = padded_batch()
    feats = model.encoder.layer[0].attention.self.performer.features
    start = feats.clone()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b) and torch.equal(feats, start)
    model.train()
    with torch.no_grad():
        model(input_ids=ids)  # training forward 1
        model(input_ids=ids)  # 2
        assert torch.equal(feats, start)
        model(input_ids=ids)  # 3: redrawn before this one (every 2)
    assert not torch.equal(feats, start)


@pytest.mark.parametrize("variant,options", [("linformer", dict(proj_len=8)), ("performer", dict(num_features=16))])
def test_save_and_reload_reproduces_outputs(tmp_path, variant, options):
    from transformers import BertModel as Cls

    model = hfx.patch(_bert(), variant, **options)
    ids, mask = padded_batch()
    model.save_pretrained(tmp_path)
    torch.manual_seed(123)  # a reload must not depend on the RNG: the added weights come from the file
    reloaded = hfx.from_pretrained(Cls, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).last_hidden_state,
            reloaded(input_ids=ids, attention_mask=mask).last_hidden_state,
        )


@pytest.mark.parametrize(
    "variant,options,message",
    [
        ("linformer", dict(proj_len=0), "proj_len=0; expected a positive int"),
        ("linformer", dict(proj_len=-3), "proj_len=-3"),
        ("linformer", dict(proj_len=600), "proj_len=600 is larger than the model's 512 tokens"),
        ("linformer", dict(share_kv="no"), "share_kv='no'"),
        ("performer", dict(num_features=0), "num_features=0; expected a positive int"),
        ("performer", dict(redraw_interval=-1), "redraw_interval=-1"),
    ],
)
def test_bad_options_leave_the_model_unchanged(variant, options, message):
    model = _bert()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        hfx.patch(model, variant, **options)
    assert_same_snapshot(before, snapshot(model))
