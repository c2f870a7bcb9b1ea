"""What the family test files of the general path (families/interface.py) share: tiny configs, a dense reference
attention, and the checks each family runs on its own models (tests/test_family_<name>.py).

The dense reference is a registered transformers attention implementation: HF's own projections, the rule of each
call materialised (or a function of q/k/v), plain softmax attention with HF's own additive mask (padding; for BEiT
also its dense relative position bias). A local variant is exact when the patched model equals the same HF model
run on it."""

import contextlib
import copy

import pytest
import torch
from transformers import (
    AlbertConfig,
    AttentionInterface,
    BeitConfig,
    Dinov2Config,
    Dinov2WithRegistersConfig,
    DistilBertConfig,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

import hf_flexattn as hfx
from hf_flexattn import warnings as hfx_warnings

from helpers import (
    HALO_SIDE,
    hf_shift_rule,
    natten_1d_reference,
    natten_2d_reference,
    no_dropout,
    padded_batch,
    reference_attention,
    rel_err,
    tol,
)

# ------------------------------------------------------------------------------------------------ tiny configs


def distilbert_config(**kw):
    args = {"vocab_size": 120, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, "max_position_embeddings": 64}
    return DistilBertConfig(**{**args, **kw})


def albert_config(**kw):
    args = {
        "vocab_size": 120,
        "embedding_size": 16,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    return AlbertConfig(**{**args, **kw})


VISION = {
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_labels": 3,
}


def dinov2_config(**kw):
    return Dinov2Config(**{**VISION, "out_features": ["stage1", "stage2"], **kw})


def registers_config(**kw):
    return Dinov2WithRegistersConfig(**{**VISION, "num_register_tokens": 2, "out_features": ["stage1", "stage2"], **kw})


def beit_config(**kw):
    args = {"use_relative_position_bias": True, "out_indices": [1, 2]}
    return BeitConfig(**{**VISION, **args, **kw})


def family_model(cls, config, seed=0):
    """A random-initialised model in eval mode, without dropout, BEiT's zero-initialised bias tables made to matter."""
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = no_dropout(cls(config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    return model


def text_batch(cls, seq_len=24):
    """A padded batch for a text head (per choice for multiple choice) and its real tokens (None: not per token)."""
    ids, mask = padded_batch(batch=3, seq_len=seq_len)
    if "MultipleChoice" in cls.__name__:  # (batch, choices, seq_len)
        return {"input_ids": ids[:, None].repeat(1, 2, 1), "attention_mask": mask[:, None].repeat(1, 2, 1)}, None
    return {"input_ids": ids, "attention_mask": mask}, mask.bool()


def head_outputs(out):
    """The tensors a head returns (last hidden state, logits, reconstruction, feature maps...)."""
    tensors = []
    for value in out.values():
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
            tensors.extend(value)
    return tensors


# ------------------------------------------------------------------------------------------------ dense references

REFERENCE = "hfx_test_dense_reference"
_rule = {}


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF's projections → the rule of this call (bool N×N, or a function of q/k/v) → plain softmax attention, with
    HF's own additive mask (padding; for BEiT also its dense relative position bias)."""
    rule = _rule["rule"](_rule.setdefault("calls", 0), module)
    _rule["calls"] += 1
    if callable(rule):
        out = rule(query, key, value, scaling)
    else:
        out = reference_attention(query, key, value, rule, attention_mask, scale=scaling)
    return out.transpose(1, 2), None


AttentionInterface.register(REFERENCE, _reference_attention)
AttentionMaskInterface.register(REFERENCE, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


@contextlib.contextmanager
def dense_reference(rule):
    """Within: the model set to REFERENCE attention computes call i with ``rule(i, module)``."""
    _rule.clear()
    _rule["rule"] = rule
    try:
        yield
    finally:
        _rule.clear()


def reference_model(original):
    reference = copy.deepcopy(original)
    reference.set_attn_implementation(REFERENCE)
    return reference


def with_prefix(grid_rule, prefix):
    """A patch-grid rule with ``prefix`` leading global tokens (they see every token, every token sees them)."""
    n = prefix + grid_rule.shape[0]
    rule = torch.ones(n, n, dtype=torch.bool)
    rule[prefix:, prefix:] = grid_rule
    return rule


def longformer_rule(n, window, globals_):
    i = torch.arange(n)
    rule = (i[:, None] - i[None]).abs() <= window // 2
    rule[globals_], rule[:, globals_] = True, True
    return rule


def linformer_rule(patched, real):
    """Linformer written out: keys and values (padding zeroed) projected along the sequence by the layer's E, F."""
    modules = [m for m in patched.modules() if hasattr(m, "linformer")]

    def rule(i, module):
        projection = modules[i % len(modules)].linformer  # ALBERT: one shared module for every layer

        def attend(q, k, v, scale):
            keep = torch.ones(q.shape[0], q.shape[2]) if real is None else real.float()
            n = q.shape[2]
            k_proj = torch.einsum("nk,bhnd->bhkd", projection.E[:n], k * keep[:, None, :, None])
            v_proj = torch.einsum("nk,bhnd->bhkd", projection.F[:n], v * keep[:, None, :, None])
            return reference_attention(q, k_proj, v_proj, scale=scale)

        return attend

    return rule


def performer_rule(patched, real):
    """FAVOR+ written out: φ(x) = exp(ω·x' − ‖x'‖²/2) / √m with x' = x·d^-1/4 (stabilisers cancel), padded keys out."""
    modules = [m for m in patched.modules() if hasattr(m, "performer")]

    def rule(i, module):
        omega = modules[i % len(modules)].performer.features

        def attend(q, k, v, scale):
            def phi(x):
                x = x * x.shape[-1] ** -0.25
                return torch.exp(x @ omega.T - (x * x).sum(-1, keepdim=True) / 2) / omega.shape[0] ** 0.5

            phi_k = phi(k) if real is None else phi(k) * real[:, None, :, None]
            weights = phi(q) @ phi_k.transpose(-1, -2)
            return (weights / weights.sum(-1, keepdim=True)) @ v

        return attend

    return rule


# ------------------------------------------------------------------------------------------------ the checks


def check_text_head_full_equals_unpatched(cls, config):
    """``full`` on a text head equals the unpatched head on a padded batch (per-token outputs at real tokens)."""
    original = family_model(cls, config)
    patched = hfx.patch(copy.deepcopy(original), "full")
    batch, real = text_batch(cls)
    with torch.no_grad():
        want, got = original(**batch, output_hidden_states=True), patched(**batch, output_hidden_states=True)
    for w, g in zip(head_outputs(want), head_outputs(got)):
        if real is not None and w.dim() == 3 and w.shape[:2] == real.shape:  # per token: real tokens only
            w, g = w[real], g[real]
        assert (w - g).abs().max() <= tol(1e-5)


def check_vision_head_full_equals_unpatched(cls, config):
    original = family_model(cls, config)
    patched = hfx.patch(copy.deepcopy(original), "full")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = original(pixel_values=pixels), patched(pixel_values=pixels)
    pairs = list(zip(head_outputs(want), head_outputs(got)))
    assert pairs
    for w, g in pairs:
        assert (w - g).abs().max() <= tol(1e-5)


def check_full_equals_unpatched_at_grid(cls, config, size):
    """``full`` at an image size other than the config's (``interpolate_pos_encoding=True``)."""
    original = family_model(cls, config)
    patched = hfx.patch(copy.deepcopy(original), "full")
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        want = original(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        got = patched(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)


def check_full_training_matches_unpatched(cls, config, text: bool) -> int:
    """One training step under ``full``: the loss and every gradient equal the unpatched model's (padded text, or
    images with labels). Returns how many relative position bias tables received a gradient."""
    original = family_model(cls, config).train()
    patched = hfx.patch(copy.deepcopy(original), "full")
    if text:
        ids, mask = padded_batch(batch=3, seq_len=24)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    else:
        batch = {"pixel_values": torch.randn(2, 3, 32, 32), "labels": torch.tensor([0, 2])}
    loss_w, loss_g = original(**batch).loss, patched(**batch).loss
    loss_w.backward()
    loss_g.backward()
    assert abs(loss_w.item() - loss_g.item()) <= tol(1e-5) * abs(loss_w.item())
    tables = 0
    for (n, pw), (_, pg) in zip(original.named_parameters(), patched.named_parameters()):
        if pw.grad is None:
            assert pg.grad is None, n
            continue
        assert rel_err(pg.grad, pw.grad) <= tol(1e-4), n
        tables += "relative_position_bias_table" in n
    return tables


def check_text_local_variants_match_their_dense_rules(cls, config):
    original = family_model(cls, config)
    ids, _mask = padded_batch(batch=3, seq_len=24, lengths=[24, 24, 24])  # no padding: the rule is the whole story
    cases = [
        ("longformer", {"window": 6, "global_tokens": [0]}, lambda i, m: longformer_rule(24, 6, [0])),
        ("neighborhood", {"kernel_size": 5, "dilation": 2}, lambda i, m: natten_1d_reference(24, 5, 2)),
    ]
    for variant, options, rule in cases:
        patched = hfx.patch(copy.deepcopy(original), variant, **options)
        with torch.no_grad(), dense_reference(rule):
            want = reference_model(original)(input_ids=ids).last_hidden_state
            got = patched(input_ids=ids).last_hidden_state
        assert (want - got).abs().max() <= tol(1e-5), variant
        with torch.no_grad():
            assert (original(input_ids=ids).last_hidden_state - got).abs().max() > 1e-3  # the rule really applied


# 10x8: not the config's 8x8; the other: past the CPU halo/tile crossover (the structured paths run, except where
# the model adds its own bias: BEiT), and not square
PAST_HALO = (HALO_SIDE + 2, HALO_SIDE)
VISION_GRIDS = pytest.mark.parametrize("grid", [(10, 8), PAST_HALO], ids=["10x8", "past_halo"])


def check_vision_local_variants_match_their_dense_rules(cls, config, prefix, grid):
    """``neighborhood`` and ``swin`` on a ``grid`` of patches after ``prefix`` global tokens."""
    original = family_model(cls, config)
    rows, cols = grid
    pixels = torch.randn(2, 3, 4 * rows, 4 * cols)
    shifted = [hf_shift_rule(rows, cols, 2, 0), hf_shift_rule(rows, cols, 2, 1)]  # unshifted, then shifted layers
    cases = [
        (
            "neighborhood",
            {"kernel_size": (3, 5), "dilation": (2, 1)},
            lambda i, m: natten_2d_reference(rows, cols, (3, 5), (2, 1), prefix),
        ),
        ("swin", {"window_size": 2, "shift": 1}, lambda i, m: with_prefix(shifted[i % 2], prefix)),
    ]
    for variant, options, rule in cases:
        patched = hfx.patch(copy.deepcopy(original), variant, **options)
        with torch.no_grad(), dense_reference(rule):
            want = reference_model(original)(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
            got = patched(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        assert (want - got).abs().max() <= tol(1e-5), variant


def check_linformer_and_performer_match_their_formulas(cls, config, text: bool, beit: bool = False):
    """Both variants against their formulas written out (padded text, or images); on BEiT, whose bias these
    variants cannot apply, with the warning that says so and a reference without the bias."""
    original = family_model(cls, config)
    if text:
        ids, mask = padded_batch(batch=3, seq_len=24)
        batch, real = {"input_ids": ids, "attention_mask": mask}, mask.bool()
    else:
        batch, real = {"pixel_values": torch.randn(2, 3, 32, 32)}, None
    for variant, options, make_rule in [
        ("linformer", {"proj_len": 8}, linformer_rule),
        ("performer", {"num_features": 16}, performer_rule),
    ]:
        hfx_warnings._warned.discard(f"beit-bias-{variant}")
        with (
            pytest.warns(UserWarning, match="BEiT's relative position bias is not applied")
            if beit
            else contextlib.nullcontext()
        ):
            patched = hfx.patch(copy.deepcopy(original), variant, **options)
        with torch.no_grad():
            got = patched(**batch).last_hidden_state
            # BEiT: these variants have no score matrix, so the reference runs without the bias too
            reference = reference_model(original)
            for module in reference.modules():
                if type(module).__name__ == "BeitRelativePositionBias":
                    module.relative_position_bias_table.zero_()
            with dense_reference(make_rule(patched, real)):
                want = reference(**batch).last_hidden_state
        diff = (want - got) if real is None else (want - got)[real]
        assert diff.abs().max() <= tol(1e-4), variant
