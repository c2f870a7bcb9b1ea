"""ModernBERT (families/modernbert.py): `full` is the model's own pattern (global layers full, sliding layers their
window), equal to the unpatched model in outputs and gradients on padded batches, with the sliding layers on the band
path past its crossover on CPU; `longformer` and `neighborhood` follow their dense rules with the rotary positions
kept."""

import copy

import pytest
import torch
from family_checks import dense_reference, reference_model
from transformers import (
    ModernBertConfig,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification,
    ModernBertModel,
)

import hf_flexattn as hfx
from hf_flexattn import kernels
from hf_flexattn.patching import patch_state

from helpers import (
    assert_same_snapshot,
    generator,
    natten_1d_reference,
    no_dropout,
    reference_attention,
    rel_err,
    snapshot,
    tol,
)


def _model(head=ModernBertModel, implementation="eager", dtype=torch.float32):
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=2048,
        local_attention=16,  # sliding layers: 8 tokens on each side
        global_attn_every_n_layers=3,  # layer 0 global, layers 1 and 2 sliding
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        cls_token_id=2,
        sep_token_id=3,
        attn_implementation=implementation,
    )
    return no_dropout(head(config)).to(dtype).eval()


def _batch(n=40, seed=0, lengths=None):
    ids = torch.randint(5, 120, (3, n), generator=generator(seed))
    lengths = torch.tensor(lengths or [n, n - 11, n // 3])
    mask = (torch.arange(n)[None] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, 1), mask


def _output(out):
    return out.last_hidden_state if "last_hidden_state" in out else out.logits


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "head",
    [ModernBertModel, ModernBertForMaskedLM, ModernBertForSequenceClassification, ModernBertForTokenClassification],
)
@pytest.mark.parametrize("n", [40, 1100], ids=["dense-path", "band-path"])
def test_full_is_the_models_own_pattern(head, implementation, n):
    original = _model(head, implementation)
    patched = hfx.patch(copy.deepcopy(original), "full")
    ids, mask = _batch(n)
    with torch.no_grad():
        want = _output(original(input_ids=ids, attention_mask=mask))
        got = _output(patched(input_ids=ids, attention_mask=mask))
    if want.dim() == 3:
        want, got = want[mask.bool()], got[mask.bool()]
    assert (want - got).abs().max() <= tol(1e-5)


def test_sliding_layers_run_the_band_path_on_cpu(monkeypatch):
    patched = hfx.patch(_model(), "full")
    calls = []
    tiled = kernels.tiled_attention
    monkeypatch.setattr(kernels, "tiled_attention", lambda *a, **k: calls.append(a[3]) or tiled(*a, **k))
    ids, mask = _batch(1100)  # past the sliding window's crossover (16 + 1,024 tokens)
    with torch.no_grad():
        patched(input_ids=ids, attention_mask=mask)
    assert len(calls) == 2  # the two sliding layers; the global layer attends every key
    assert patch_state(patched).variant.half_windows == (None, 8, 8)


@pytest.mark.parametrize("n", [40, 1100], ids=["dense-path", "band-path"])
def test_full_gradients_equal_the_model(n):
    original = _model(dtype=torch.float64).train()
    patched = hfx.patch(copy.deepcopy(original), "full").train()
    # padding shorter than the one-sided window: HF's padded query rows that see no real key are NaN (eager), and
    # their NaN reaches HF's gradients through a zero read-out
    ids, mask = _batch(n, lengths=[n, n - 5, n - 7])
    readout = torch.randn(*ids.shape, 32, generator=generator(1), dtype=torch.float64) * mask[..., None]
    for model in (original, patched):
        (model(input_ids=ids, attention_mask=mask).last_hidden_state * readout).sum().backward()
    reference = dict(original.named_parameters())
    for name, parameter in patched.named_parameters():
        # float64, but HF's rotary runs in float32 (forward and backward): float32 rounding, not the function
        assert rel_err(parameter.grad, reference[name].grad) <= tol(1e-6), name


def _window_rule(n, window, globals_=()):
    i = torch.arange(n)
    rule = (i[:, None] - i[None]).abs() <= window // 2
    rule[list(globals_)], rule[:, list(globals_)] = True, True
    return rule


@pytest.mark.parametrize(
    "variant, options, rule",
    [
        ("longformer", {"window": 6, "global_tokens": [0]}, _window_rule(24, 6, [0])),
        ("neighborhood", {"kernel_size": 5}, natten_1d_reference(24, 5, 1)),
    ],
)
def test_local_variants_follow_their_rule_with_rotary_positions(variant, options, rule):
    original = _model()
    patched = hfx.patch(copy.deepcopy(original), variant, **options)
    ids = torch.randint(5, 120, (2, 24), generator=generator(0))
    # every layer follows the rule alone, not under HF's own sliding mask (no padding here)
    dense = lambda q, k, v, scale: reference_attention(q, k, v, rule, scale=scale)
    with torch.no_grad(), dense_reference(lambda call, module: dense):
        want = reference_model(original)(input_ids=ids).last_hidden_state
        got = patched(input_ids=ids).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)


def test_global_projections_are_refused_and_the_model_untouched():
    model = _model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"global_projections=True on model_type='modernbert'.*rotary"):
        hfx.patch(model, "longformer", window=8, global_projections=True)
    assert_same_snapshot(before, snapshot(model))


def test_unpatch_restores_the_model():
    original = _model(ModernBertForMaskedLM)
    model = hfx.patch(copy.deepcopy(original), "full")
    hfx.unpatch(model)
    ids, mask = _batch()
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, original(ids, attention_mask=mask).logits)


def test_print_names_each_layers_pattern():
    """``print(model)`` says which layers are global and the sliding layers' window (the config's local_attention,
    16: 8 tokens on each side); the variant itself says the pattern is the model's own."""
    patched = hfx.patch(_model(), "full")
    assert [repr(layer.attn).splitlines()[1].strip() for layer in patched.layers] == [
        "variant=full, global layer",
        "variant=full, sliding layer, window=16",
        "variant=full, sliding layer, window=16",
    ]
    assert repr(patch_state(patched).variant) == "LayerTypesFullVariant(variant=full (the model's own pattern))"


def test_sliding_layers_band_path_gets_the_layers_scale_and_dropout(monkeypatch):
    patched = hfx.patch(_model(), "full").train()
    for layer in patched.layers:
        layer.attn.attention_dropout = 0.1  # the module's own rate, read at each training call
    calls = []
    tiled = kernels.tiled_attention
    monkeypatch.setattr(kernels, "tiled_attention", lambda *a, **k: calls.append(a[4:]) or tiled(*a, **k))
    ids, mask = _batch(1100)
    with torch.no_grad():
        patched(input_ids=ids, attention_mask=mask)
    assert calls == [(8**-0.5, 0.1)] * 2  # head dim 8; the two sliding layers


def test_backend_flex_keeps_the_sliding_layers_off_the_band_path(monkeypatch):
    """``backend="flex"`` asks for FlexAttention on every layer, the sliding ones included (flex_reference stands in
    for the compiled kernel, which would take minutes to compile here)."""
    from hf_flexattn.kernels import flex

    original = _model()
    patched = hfx.patch(copy.deepcopy(original), "full", backend="flex")
    monkeypatch.setattr(kernels, "tiled_attention", lambda *a, **k: pytest.fail("the band path"))
    monkeypatch.setattr(flex, "compiled_flex_attention", lambda dynamic: flex.flex_reference)
    ids, mask = _batch(1100)
    with torch.no_grad():
        want = original(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
        got = patched(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()]
    assert (want - got).abs().max() <= tol(1e-5)
