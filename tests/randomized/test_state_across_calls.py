"""State across calls: a random sequence of calls on ONE patched model (forwards under ``inference_mode`` or
``no_grad``, training steps, eval ↔ train, fp32 ↔ bf16 ↔ float64, short ↔ long inputs crossing the CPU policy's
crossovers, with and without padding) gives, call by call, what a fresh copy of the model gives for that call alone.

:func:`test_calls_in_random_states_equal_fresh_models` draws the whole state each call is made in: batch size,
train/eval, ``inference_mode``/``no_grad``/grad, which parameters are frozen, dtype, padding side, per-batch
globals and the device policy (CUDA's, through the ``kernels.device_kind`` seam); the fresh model is put in the same
state (same casts, same frozen parameters) before its one call.

Whatever the library caches between calls (tile plans, dense masks, Swin's window geometry and bias) must never
leak from one call into another that differs in grad mode, dtype, size or padding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import BertModel, SwinConfig, SwinModel, ViTModel

import hf_flexattn as hfx

from .rules import examples, sdpa_mask_dtypes
from helpers import HALO_SIDE, NATTEN_1D_TOKENS, rel_err, tiny_bert_config, tiny_vit_config, use_cuda_policy

pytestmark = pytest.mark.cpu_only  # the crossovers crossed are CPU's

# (family, variant, options, native, sizes below and past the variant's CPU crossover: tokens, or patches per side)
MODELS = {
    "bert-longformer": ("bert", "longformer", dict(window=8, global_tokens=[0]), False, (24, 1040)),
    "bert-longformer-native": ("bert", "longformer", dict(window=8), True, (24, 1040)),
    "bert-neighborhood": ("bert", "neighborhood", dict(kernel_size=5), False, (24, NATTEN_1D_TOKENS)),
    "bert-full": ("bert", "full", {}, False, (24, 64)),
    "vit-neighborhood": ("vit", "neighborhood", dict(kernel_size=3), False, (6, HALO_SIDE)),
    "vit-swin": ("vit", "swin", dict(window_size=2), False, (4, 8)),
    "swin-swin": ("swin", "swin", {}, False, (8, 16)),
    "swin-neighborhood": ("swin", "neighborhood", dict(kernel_size=5), False, (8, HALO_SIDE)),
}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
OUTPUT_BOUND = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}

calls = st.one_of(
    st.tuples(st.sampled_from(["inference_mode", "no_grad"]), st.sampled_from(["eval", "train"]), st.booleans()),
    st.tuples(st.just("train_step"), st.just("train"), st.booleans()),
    st.tuples(st.just("dtype"), st.sampled_from(sorted(DTYPES)), st.just(False)),
)


def _build(family, variant, options, native, attention_dropout=0.0):
    torch.manual_seed(0)
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=attention_dropout)
    if family == "bert":
        model = BertModel(tiny_bert_config(max_position_embeddings=1040, **no_dropout))
    elif family == "vit":
        model = ViTModel(tiny_vit_config(**no_dropout), add_pooling_layer=False)
    else:
        config = SwinConfig(
            patch_size=2,
            embed_dim=16,
            depths=[2],
            num_heads=[2],
            window_size=4,
            drop_path_rate=0.0,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=attention_dropout,
        )
        model = SwinModel(config, add_pooling_layer=False)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "relative_position_bias_table" in name:
                    p.normal_(0, 0.5)
    if native:
        model.config.hf_flexattn = {"variant": variant, "options": options}
        model.set_attn_implementation(f"hf_flexattn_{variant}")
        return model
    return hfx.patch(model, variant, **options)


def _inputs(family, size, padded, seed):
    g = torch.Generator().manual_seed(seed)
    if family == "bert":
        ids = torch.randint(5, 120, (2, size), generator=g)
        inputs = dict(input_ids=ids)
        if padded:
            mask = torch.ones(2, size, dtype=torch.long)
            mask[1, : size // 5] = 0  # left
            mask[0, size - size // 4 :] = 0  # right
            inputs["attention_mask"] = mask
        return inputs
    side = 4 * size if family == "vit" else 2 * size
    pixels = torch.randn(2, 3, side, side, generator=g)
    return dict(pixel_values=pixels, interpolate_pos_encoding=True) if family == "vit" else dict(pixel_values=pixels)


def _call(model, kind, mode, inputs, dtype):
    """One call: its output (on real rows) and, for a training step, every parameter's gradient."""
    model.train(mode == "train")
    inputs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    real = inputs.get("attention_mask")
    pick = (lambda x: x) if real is None else (lambda x: x[real.bool()])
    if kind == "train_step":
        model.zero_grad(set_to_none=True)
        out = model(**inputs).last_hidden_state
        readout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        (pick(out) * pick(readout)).float().sum().backward()
        return pick(out).detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    context = torch.inference_mode if kind == "inference_mode" else torch.no_grad
    with context():
        return pick(model(**inputs).last_hidden_state).clone(), {}


@settings(max_examples=examples(8))
@given(
    name=st.sampled_from(sorted(MODELS)),
    sequence=st.lists(st.tuples(calls, st.booleans()), min_size=2, max_size=5),
    padded=st.booleans(),
)
@example(  # the audit's first survivor: inference_mode past the band crossover, then a training step
    name="bert-longformer",
    sequence=[(("inference_mode", "eval", True), False), (("train_step", "train", True), False)],
    padded=False,
)
@example(  # fp32 then bf16 past the band crossover on one model (the tile plan's mask is per dtype)
    name="bert-neighborhood",
    sequence=[
        (("no_grad", "eval", True), False),
        (("dtype", "bf16", False), False),
        (("no_grad", "eval", True), False),
    ],
    padded=False,
)
@example(  # fp32 then bf16 below the crossover on one model (the dense mask cache is per dtype)
    name="bert-longformer",
    sequence=[
        (("no_grad", "eval", False), False),
        (("dtype", "bf16", False), False),
        (("no_grad", "eval", False), False),
    ],
    padded=False,
)
def test_a_sequence_of_calls_equals_fresh_models(name, sequence, padded):
    """``sequence``: ((kind, mode or dtype, long?), padded-this-call?) steps."""
    family, variant, options, native, sizes = MODELS[name]
    pristine = _build(family, variant, options, native)  # never called: takes the same dtype casts (and roundings)
    model = copy.deepcopy(pristine)
    dtype = torch.float32
    for step, ((kind, setting, long), pad) in enumerate(sequence):
        if kind == "dtype":
            dtype = DTYPES[setting]
            model.to(dtype)
            pristine.to(dtype)
            continue
        inputs = _inputs(family, sizes[long], padded and pad and family == "bert", seed=step)
        mismatches = []
        with sdpa_mask_dtypes(mismatches):  # a mask cached for another dtype would be converted silently on CPU
            got, grads = _call(model, kind, setting, inputs, dtype)
        assert mismatches == [], (step, kind, setting, long)
        want, want_grads = _call(copy.deepcopy(pristine), kind, setting, inputs, dtype)
        bound = OUTPUT_BOUND[dtype] * max(1.0, want.abs().max().item())
        assert got.dtype == dtype and (got - want).abs().max() <= bound, (step, kind, setting, long)
        assert grads.keys() == want_grads.keys(), step
        for key, g in grads.items():  # (a bias table's gradient sums in a thread-dependent order)
            assert rel_err(g.double(), want_grads[key].double(), floor=1e-2) <= 10 * OUTPUT_BOUND[dtype], (step, key)


# ------------------------------------------------------------------------------------------------ the whole state


@dataclass(frozen=True)
class CallState:
    """The state one call is made in (what the model was set to before it is a :data:`MODEL_CHANGES` entry)."""

    grad: str  # "inference_mode", "no_grad", or "grad" (a training step: backward through the output)
    mode: str  # "eval" or "train" (attention dropout 0.1: both calls draw it from the same seed)
    batch: int
    long: bool  # past the variant's CPU crossover
    padding: str  # "none", "left", "right", "both" (text)
    per_batch_globals: bool  # a global_attention_mask (the patched longformer variant)
    policy: str  # "cpu", or "cuda": CUDA's decisions on CPU tensors (compiled flex replaced by its dense reference)


call_states = st.builds(
    CallState,
    grad=st.sampled_from(["inference_mode", "no_grad", "grad"]),
    mode=st.sampled_from(["eval", "train"]),
    batch=st.integers(1, 3),
    long=st.booleans(),
    padding=st.sampled_from(["none", "left", "right", "both"]),
    per_batch_globals=st.booleans(),
    policy=st.sampled_from(["cpu", "cuda"]),
)

# what may change on the model between calls (applied to the fresh model's source too)
MODEL_CHANGES = ("none", "fp32", "bf16", "fp64", "freeze_qkv", "freeze_bias_tables", "freeze_all_but_qkv", "unfreeze")
QKV_NAMES = ("query", "key", "value", "q_proj", "k_proj", "v_proj")


def _change(model, change):
    if change in DTYPES:
        model.to(DTYPES[change])
        return
    for name, parameter in model.named_parameters():
        is_qkv = any(f".{n}." in name for n in QKV_NAMES)
        if change == "freeze_qkv" and is_qkv:
            parameter.requires_grad_(False)
        elif change == "freeze_bias_tables" and "relative_position_bias_table" in name:
            parameter.requires_grad_(False)
        elif change == "freeze_all_but_qkv":
            parameter.requires_grad_(is_qkv)
        elif change == "unfreeze":
            parameter.requires_grad_(True)


def _state_inputs(family, size, state, seed):
    g = torch.Generator().manual_seed(seed)
    if family != "bert":
        side = 4 * size if family == "vit" else 2 * size
        pixels = torch.randn(state.batch, 3, side, side, generator=g)
        return (
            dict(pixel_values=pixels, interpolate_pos_encoding=True) if family == "vit" else dict(pixel_values=pixels)
        )
    inputs = dict(input_ids=torch.randint(5, 120, (state.batch, size), generator=g))
    mask = torch.ones(state.batch, size, dtype=torch.long)
    if state.padding in ("left", "both"):
        mask[-1, : size // 5] = 0
    if state.padding in ("right", "both"):
        mask[0, size - size // 4 :] = 0
    if state.padding != "none":
        inputs["attention_mask"] = mask
    if state.per_batch_globals:
        globals_ = torch.zeros_like(mask)
        for row in range(state.batch):
            real = mask[row].nonzero().flatten()
            globals_[row, real[torch.randint(len(real), (2,), generator=g)]] = 1
        inputs["global_attention_mask"] = globals_
    return inputs


def _call_in_state(model, state, inputs, dtype, seed):
    """One call in ``state``: its output (on real rows) and, with grad, every parameter's gradient; attention dropout
    (in train mode) drawn from ``seed``."""
    torch.manual_seed(seed)
    trainable = any(p.requires_grad for p in model.parameters())
    kind = state.grad if state.grad != "grad" else "train_step" if trainable else "no_grad"  # nothing to train
    with pytest.MonkeyPatch.context() as monkeypatch:
        if state.policy == "cuda":
            use_cuda_policy(monkeypatch)
        return _call(model, kind, state.mode, inputs, dtype)


@settings(max_examples=examples(6))
@given(
    name=st.sampled_from(sorted(MODELS)),
    sequence=st.lists(st.tuples(st.sampled_from(MODEL_CHANGES), call_states), min_size=2, max_size=4),
)
@example(  # Swin, frozen q/k/v: inference_mode, then a training step (nothing kept may reach training)
    name="swin-swin",
    sequence=[
        ("freeze_qkv", CallState("inference_mode", "eval", 2, True, "none", False, "cpu")),
        ("none", CallState("grad", "train", 2, True, "none", False, "cpu")),
    ],
)
@example(  # two batch sizes in a row past the band crossover (plans shared by the layers are per batch size)
    name="bert-longformer",
    sequence=[
        ("none", CallState("no_grad", "eval", 2, True, "none", False, "cpu")),
        ("none", CallState("no_grad", "eval", 3, True, "none", False, "cpu")),
    ],
)
@example(  # CUDA's policy, bf16 without autocast, training with dropout on a padded batch with per-batch globals
    name="bert-longformer",
    sequence=[
        ("bf16", CallState("no_grad", "eval", 2, False, "left", False, "cuda")),
        ("none", CallState("grad", "train", 3, False, "both", True, "cuda")),
    ],
)
def test_calls_in_random_states_equal_fresh_models(name, sequence):
    """``sequence``: (change made to the model first, state of the call) steps."""
    family, variant, options, native, sizes = MODELS[name]
    pristine = _build(family, variant, options, native, attention_dropout=0.1)  # never called: the same changes
    model = copy.deepcopy(pristine)
    dtype = torch.float32
    for step, (change, state) in enumerate(sequence):
        _change(model, change)
        _change(pristine, change)
        dtype = DTYPES.get(change, dtype)
        globals_ok = variant == "longformer" and not native
        state = CallState(**{**state.__dict__, "per_batch_globals": state.per_batch_globals and globals_ok})
        inputs = _state_inputs(family, sizes[state.long], state, seed=step)
        mismatches = []
        with sdpa_mask_dtypes(mismatches):  # a mask cached for another dtype would be converted silently on CPU
            got, grads = _call_in_state(model, state, inputs, dtype, seed=step)
        assert mismatches == [], (step, state)
        want, want_grads = _call_in_state(copy.deepcopy(pristine), state, inputs, dtype, seed=step)
        bound = OUTPUT_BOUND[dtype] * max(1.0, want.abs().max().item())
        assert got.dtype == dtype and (got - want).abs().max() <= bound, (step, change, state)
        assert grads.keys() == want_grads.keys(), (step, change, state)
        for key, g in grads.items():  # (a bias table's gradient sums in a thread-dependent order)
            error = rel_err(g.double(), want_grads[key].double(), floor=1e-2)
            assert error <= 10 * OUTPUT_BOUND[dtype], (step, key, change, state)
