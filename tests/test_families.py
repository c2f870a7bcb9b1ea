"""DistilBERT, ALBERT, DINOv2 (+ registers) and BEiT: the general path (families/interface.py).

Every head equals the unpatched model under `full` (padded text, gradients); each local variant equals the same HF
model run with a dense reference attention (a registered attention function: HF's own projections, the rule
materialised, HF's own padding mask and, for BEiT, HF's own dense relative position bias)."""

import contextlib
import copy

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertForMultipleChoice,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
    AttentionInterface,
    AutoConfig,
    AutoModel,
    BeitBackbone,
    BeitConfig,
    BeitForImageClassification,
    BeitForMaskedImageModeling,
    BeitForSemanticSegmentation,
    BeitModel,
    Dinov2Backbone,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersBackbone,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForMultipleChoice,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

import hf_flexattn as hfx
from hf_flexattn import warnings as hfx_warnings
from hf_flexattn.families.beit import RelativePositionBiasWithCls
from hf_flexattn.patching import patch_state

from helpers import (
    assert_same_snapshot,
    hf_shift_rule,
    natten_1d_reference,
    natten_2d_reference,
    no_dropout,
    padded_batch,
    reference_attention,
    rel_err,
    snapshot,
    tol,
)

pytestmark = pytest.mark.cuda_policy  # also run on CPU under CUDA's policy (conftest)

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


def _model(cls, config, seed=0):
    """A random-initialised model in eval mode, without dropout, BEiT's zero-initialised bias tables made to matter."""
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = no_dropout(cls(config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    return model


def _text_batch(cls, seq_len=24):
    ids, mask = padded_batch(batch=3, seq_len=seq_len)
    if "MultipleChoice" in cls.__name__:  # (batch, choices, seq_len)
        return {"input_ids": ids[:, None].repeat(1, 2, 1), "attention_mask": mask[:, None].repeat(1, 2, 1)}, None
    return {"input_ids": ids, "attention_mask": mask}, mask.bool()


def _outputs(out):
    """The tensors a head returns (last hidden state, logits, reconstruction, feature maps...)."""
    tensors = []
    for value in out.values():
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
            tensors.extend(value)
    return tensors


# ------------------------------------------------------------------------------------------------ `full`: every head

TEXT_HEADS = [
    (cls, distilbert_config)
    for cls in (
        DistilBertModel,
        DistilBertForMaskedLM,
        DistilBertForSequenceClassification,
        DistilBertForQuestionAnswering,
        DistilBertForTokenClassification,
        DistilBertForMultipleChoice,
    )
] + [
    (cls, albert_config)
    for cls in (
        AlbertModel,
        AlbertForMaskedLM,
        AlbertForPreTraining,
        AlbertForSequenceClassification,
        AlbertForQuestionAnswering,
        AlbertForTokenClassification,
        AlbertForMultipleChoice,
    )
]


@pytest.mark.parametrize("cls,make_config", TEXT_HEADS, ids=[c.__name__ for c, _ in TEXT_HEADS])
def test_text_heads_full_equals_unpatched_on_padded_batches(cls, make_config):
    original = _model(cls, make_config())
    patched = hfx.patch(copy.deepcopy(original), "full")
    batch, real = _text_batch(cls)
    with torch.no_grad():
        want, got = original(**batch, output_hidden_states=True), patched(**batch, output_hidden_states=True)
    for w, g in zip(_outputs(want), _outputs(got)):
        if real is not None and w.dim() == 3 and w.shape[:2] == real.shape:  # per token: real tokens only
            w, g = w[real], g[real]
        assert (w - g).abs().max() <= tol(1e-5)


VISION_HEADS = [
    (Dinov2Model, dinov2_config),
    (Dinov2ForImageClassification, dinov2_config),
    (Dinov2Backbone, dinov2_config),
    (Dinov2WithRegistersModel, registers_config),
    (Dinov2WithRegistersForImageClassification, registers_config),
    (Dinov2WithRegistersBackbone, registers_config),
    (BeitModel, beit_config),
    (BeitForImageClassification, beit_config),
    (BeitForMaskedImageModeling, beit_config),
    (
        BeitForSemanticSegmentation,
        lambda: beit_config(
            num_hidden_layers=3, out_indices=[0, 1, 2, 3], use_auxiliary_head=False, pool_scales=[1, 2]
        ),
    ),
    (BeitBackbone, beit_config),
]


@pytest.mark.parametrize("cls,make_config", VISION_HEADS, ids=[c.__name__ for c, _ in VISION_HEADS])
def test_vision_heads_full_equals_unpatched(cls, make_config):
    original = _model(cls, make_config())
    patched = hfx.patch(copy.deepcopy(original), "full")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = original(pixel_values=pixels), patched(pixel_values=pixels)
    pairs = list(zip(_outputs(want), _outputs(got)))
    assert pairs
    for w, g in pairs:
        assert (w - g).abs().max() <= tol(1e-5)


@pytest.mark.parametrize(
    "cls,config,size",
    [
        (Dinov2Model, dinov2_config(), (40, 36)),  # DINOv2 interpolates its position embeddings for any size
        (BeitModel, beit_config(), (40, 44)),  # BEiT resamples its bias table to the input's grid
        (BeitModel, beit_config(use_relative_position_bias=False, use_shared_relative_position_bias=True), (32, 32)),
        (BeitModel, beit_config(use_shared_relative_position_bias=True), (36, 32)),  # per-layer + shared, summed
    ],
)
def test_full_equals_unpatched_at_other_grids_and_bias_layouts(cls, config, size):
    original = _model(cls, config)
    patched = hfx.patch(copy.deepcopy(original), "full")
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        want = original(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        got = patched(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)


TRAINING = [
    ("distilbert", DistilBertForMaskedLM, distilbert_config),
    ("albert", AlbertForMaskedLM, albert_config),
    ("dinov2_with_registers", Dinov2WithRegistersForImageClassification, registers_config),
    ("beit", BeitForImageClassification, lambda: beit_config(use_shared_relative_position_bias=True)),
]


@pytest.mark.parametrize("name,cls,make_config", TRAINING, ids=[t[0] for t in TRAINING])
def test_full_training_loss_and_every_gradient_match_unpatched(name, cls, make_config):
    original = _model(cls, make_config()).train()
    patched = hfx.patch(copy.deepcopy(original), "full")
    if name in ("distilbert", "albert"):
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
    if name == "beit":
        assert tables == 3  # both layers' tables and the shared one received (HF's) gradients


def test_beit_bias_reaches_attention_as_a_score_mod_not_a_dense_tensor():
    model = hfx.patch(_model(BeitModel, beit_config()), "full")
    bias = model.layers[0].relative_position_bias((8, 8))
    assert isinstance(bias, RelativePositionBiasWithCls) and bias.table.shape == (15 * 15 + 3, 4)
    assert bias.table.requires_grad  # read from the trainable table
    hfx.unpatch(model)
    assert model.layers[0].relative_position_bias((8, 8)).shape == (1, 4, 65, 65)  # HF's own, dense, again


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


def _reference_model(original):
    reference = copy.deepcopy(original)
    reference.set_attn_implementation(REFERENCE)
    return reference


def _with_prefix(grid_rule, prefix):
    """A patch-grid rule with ``prefix`` leading global tokens (they see every token, every token sees them)."""
    n = prefix + grid_rule.shape[0]
    rule = torch.ones(n, n, dtype=torch.bool)
    rule[prefix:, prefix:] = grid_rule
    return rule


def _longformer_rule(n, window, globals_):
    i = torch.arange(n)
    rule = (i[:, None] - i[None]).abs() <= window // 2
    rule[globals_], rule[:, globals_] = True, True
    return rule


@pytest.mark.parametrize("cls,make_config", [(DistilBertModel, distilbert_config), (AlbertModel, albert_config)])
def test_text_local_variants_match_their_dense_rules(cls, make_config):
    original = _model(cls, make_config())
    ids, _mask = padded_batch(batch=3, seq_len=24, lengths=[24, 24, 24])  # no padding: the rule is the whole story
    cases = [
        ("longformer", {"window": 6, "global_tokens": [0]}, lambda i, m: _longformer_rule(24, 6, [0])),
        ("neighborhood", {"kernel_size": 5, "dilation": 2}, lambda i, m: natten_1d_reference(24, 5, 2)),
    ]
    for variant, options, rule in cases:
        patched = hfx.patch(copy.deepcopy(original), variant, **options)
        with torch.no_grad(), dense_reference(rule):
            want = _reference_model(original)(input_ids=ids).last_hidden_state
            got = patched(input_ids=ids).last_hidden_state
        assert (want - got).abs().max() <= tol(1e-5), variant
        with torch.no_grad():
            assert (original(input_ids=ids).last_hidden_state - got).abs().max() > 1e-3  # the rule really applied


def test_albert_per_layer_windows_apply_per_computed_layer_of_the_shared_module():
    original = _model(AlbertModel, albert_config(num_hidden_layers=3))
    patched = hfx.patch(copy.deepcopy(original), "longformer", window=[2, 8, 4])
    encoder = patched.encoder
    assert type(encoder).__name__ == "FlexAlbertTransformer"
    attention = encoder.albert_layer_groups[0].albert_layers[0].attention
    assert type(attention).__name__ == "FlexAlbertAttention" and "shared by several layers" in repr(attention)
    ids, _ = padded_batch(batch=2, seq_len=20, lengths=[20, 20])
    with torch.no_grad(), dense_reference(lambda i, m: _longformer_rule(20, [2, 8, 4][i], [])):
        want = _reference_model(original)(input_ids=ids).last_hidden_state
        got = patched(input_ids=ids).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)
    hfx.unpatch(patched)
    assert type(patched.encoder) is type(original.encoder) and type(attention) is type(
        original.encoder.albert_layer_groups[0].albert_layers[0].attention
    )


def test_albert_groups_and_inner_layers_number_the_computed_layers():
    # 4 layers over 2 groups of 2 inner layers: 8 computed layers, 4 shared modules
    config = albert_config(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)
    original = _model(AlbertModel, config)
    windows = [2, 4, 6, 8, 10, 12, 2, 4]
    patched = hfx.patch(copy.deepcopy(original), "longformer", window=windows)
    attention_modules = {id(m) for m, _ in patch_state(patched).originals if "hfx_layer_idx" in m.__dict__}
    assert len(attention_modules) == 4
    ids, _ = padded_batch(batch=1, seq_len=20, lengths=[20])
    with torch.no_grad(), dense_reference(lambda i, m: _longformer_rule(20, windows[i], [])):
        want = _reference_model(original)(input_ids=ids).last_hidden_state
        got = patched(input_ids=ids).last_hidden_state
    assert (want - got).abs().max() <= tol(1e-5)
    with pytest.raises(ValueError, match="window has 4 entries; give one int, or one per layer \\(8\\)"):
        hfx.patch(copy.deepcopy(original), "longformer", window=[2, 4, 6, 8])


VISION_LOCAL = [
    ("dinov2", Dinov2Model, dinov2_config, 1),
    ("registers", Dinov2WithRegistersModel, registers_config, 3),  # CLS + 2 registers, all global
    ("beit", BeitModel, lambda: beit_config(use_shared_relative_position_bias=True), 1),
]


# 10x8: not the config's 8x8; 24x22: past the CPU halo/tile crossover (the structured paths run, except where
# the model adds its own bias: BEiT)
@pytest.mark.parametrize("grid", [(10, 8), (24, 22)], ids=["10x8", "24x22"])
@pytest.mark.parametrize("name,cls,make_config,prefix", VISION_LOCAL, ids=[v[0] for v in VISION_LOCAL])
def test_vision_local_variants_match_their_dense_rules(name, cls, make_config, prefix, grid):
    original = _model(cls, make_config())
    rows, cols = grid
    pixels = torch.randn(2, 3, 4 * rows, 4 * cols)
    shifted = [hf_shift_rule(rows, cols, 2, 0), hf_shift_rule(rows, cols, 2, 1)]  # unshifted, then shifted layers
    cases = [
        (
            "neighborhood",
            {"kernel_size": (3, 5), "dilation": (2, 1)},
            lambda i, m: natten_2d_reference(rows, cols, (3, 5), (2, 1), prefix),
        ),
        ("swin", {"window_size": 2, "shift": 1}, lambda i, m: _with_prefix(shifted[i % 2], prefix)),
    ]
    for variant, options, rule in cases:
        patched = hfx.patch(copy.deepcopy(original), variant, **options)
        with torch.no_grad(), dense_reference(rule):
            want = _reference_model(original)(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
            got = patched(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        assert (want - got).abs().max() <= tol(1e-5), variant


def _linformer_rule(patched, real):
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


def _performer_rule(patched, real):
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


LINEAR = [
    ("distilbert", DistilBertModel, distilbert_config),
    ("albert", AlbertModel, albert_config),
    ("dinov2", Dinov2Model, dinov2_config),
    ("beit", BeitModel, beit_config),
]


@pytest.mark.parametrize("name,cls,make_config", LINEAR, ids=[v[0] for v in LINEAR])
def test_linformer_and_performer_match_their_formulas(name, cls, make_config):
    original = _model(cls, make_config())
    if name in ("distilbert", "albert"):
        ids, mask = padded_batch(batch=3, seq_len=24)
        batch, real = {"input_ids": ids, "attention_mask": mask}, mask.bool()
    else:
        batch, real = {"pixel_values": torch.randn(2, 3, 32, 32)}, None
    for variant, options, make_rule in [
        ("linformer", {"proj_len": 8}, _linformer_rule),
        ("performer", {"num_features": 16}, _performer_rule),
    ]:
        hfx_warnings._warned.discard(f"beit-bias-{variant}")
        with (
            pytest.warns(UserWarning, match="BEiT's relative position bias is not applied")
            if name == "beit"
            else contextlib.nullcontext()
        ):
            patched = hfx.patch(copy.deepcopy(original), variant, **options)
        with torch.no_grad():
            got = patched(**batch).last_hidden_state
            # BEiT: these variants have no score matrix, so the reference runs without the bias too
            reference = _reference_model(original)
            for module in reference.modules():
                if type(module).__name__ == "BeitRelativePositionBias":
                    module.relative_position_bias_table.zero_()
            with dense_reference(make_rule(patched, real)):
                want = reference(**batch).last_hidden_state
        diff = (want - got) if real is None else (want - got)[real]
        assert diff.abs().max() <= tol(1e-4), variant


# ------------------------------------------------------------------------------------------------ HF-native path


def test_native_attn_implementation_on_distilbert_dinov2_and_albert(tmp_path):
    original = _model(DistilBertModel, distilbert_config())
    original.save_pretrained(tmp_path / "distilbert")
    config = AutoConfig.from_pretrained(tmp_path / "distilbert")
    config.hf_flexattn = {"variant": "longformer", "options": {"window": 6, "global_tokens": [0]}}
    native = AutoModel.from_pretrained(
        tmp_path / "distilbert", config=config, attn_implementation="hf_flexattn_longformer"
    ).eval()
    patched = hfx.patch(copy.deepcopy(original), "longformer", window=6, global_tokens=[0])
    ids, mask = padded_batch(batch=3, seq_len=24)
    with torch.no_grad():
        a, b = (
            native(input_ids=ids, attention_mask=mask).last_hidden_state,
            patched(input_ids=ids, attention_mask=mask).last_hidden_state,
        )
    assert (a - b)[mask.bool()].abs().max() <= tol(1e-6)

    dinov2 = _model(Dinov2Model, dinov2_config())
    native = copy.deepcopy(dinov2)
    native.set_attn_implementation("hf_flexattn_full")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (
            native(pixel_values=pixels).last_hidden_state - dinov2(pixel_values=pixels).last_hidden_state
        ).abs().max() <= tol(1e-5)

    # ALBERT's (shared) modules have no layer index: per-layer windows are refused on the native path, not mixed up
    albert = _model(AlbertModel, albert_config())
    albert.config.hf_flexattn = {"variant": "longformer", "options": {"window": [2, 4, 6]}}
    albert.set_attn_implementation("hf_flexattn_longformer")
    with pytest.raises(ValueError, match=r"does not know its layer index .* per-layer options"):
        albert(input_ids=ids, attention_mask=mask)


def test_native_path_refuses_beit():
    model = _model(BeitModel, beit_config())
    with pytest.raises(ValueError, match="relative position bias reaches the attention as a dense tensor"):
        model.set_attn_implementation("hf_flexattn_full")
        model(pixel_values=torch.randn(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------------ the API around it


def test_copy_save_and_reload_keep_helper_modules_and_shared_parameters(tmp_path):
    model = hfx.patch(_model(AlbertForMaskedLM, albert_config()), "linformer", proj_len=8)
    names = [n for n, _ in model.named_parameters() if "linformer" in n]
    assert names == [
        "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.linformer.E",
        "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.linformer.F",
    ]  # shared, once
    ids, mask = padded_batch()
    copied = copy.deepcopy(model)
    assert type(copied.albert.encoder).__name__ == "FlexAlbertTransformer"
    model.save_pretrained(tmp_path)
    reloaded = hfx.from_pretrained(AlbertForMaskedLM, tmp_path).eval()
    beit = hfx.patch(_model(BeitModel, beit_config()), "full")
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(copied(input_ids=ids, attention_mask=mask).logits, want)
        assert torch.equal(reloaded(input_ids=ids, attention_mask=mask).logits, want)
        pixels = torch.randn(1, 3, 32, 32)
        assert torch.equal(
            copy.deepcopy(beit)(pixel_values=pixels).last_hidden_state, beit(pixel_values=pixels).last_hidden_state
        )


@pytest.mark.parametrize(
    "cls,config,variant,options,message",
    [
        (DistilBertModel, distilbert_config(), "swin", {"window_size": 2}, "does not support the distilbert family"),
        (
            AlbertModel,
            albert_config(),
            "longformer",
            {"window": [2, 4]},
            "window has 2 entries; give one int, or one per layer \\(3\\)",
        ),
        (
            Dinov2Model,
            dinov2_config(),
            "neighborhood",
            {"kernel_size": 9},
            "spans 9 positions, more than the rows of the model's 8x8",
        ),
        (Dinov2WithRegistersModel, registers_config(), "longformer", {}, "does not support the dinov2 family"),
        (
            BeitModel,
            beit_config(),
            "swin",
            {"window_size": 3},
            "window_size=3 does not divide the model's 8x8 patch grid",
        ),
        (BeitModel, beit_config(), "linformer", {"proj_len": 66}, "proj_len=66 is larger than the model's 65 tokens"),
    ],
)
def test_bad_options_are_refused_at_patch_time_and_leave_the_model_unchanged(cls, config, variant, options, message):
    model = _model(cls, config)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        hfx.patch(model, variant, **options)
    assert_same_snapshot(before, snapshot(model))


def test_supported_and_patch_functions_list_the_new_families():
    rows = {row["variant"]: row for row in hfx.supported()}
    for family in ("distilbert", "albert", "dinov2", "beit"):
        assert family in rows["full"]["families"] and family in rows["neighborhood"]["families"]
    assert {"distilbert", "albert"} <= set(rows["longformer"]["families"]) and "beit" not in rows["longformer"][
        "families"
    ]
    assert "dinov2_with_registers" in rows["swin"]["model_types"]
    assert "beit" not in rows["full"]["native_families"] and "distilbert" in rows["full"]["native_families"]
    assert "neighborhood:" in hfx.patch_dinov2.__doc__ and "proj_len" in hfx.patch_beit.__doc__
    with pytest.raises(ValueError, match="patch_albert: model_type='distilbert' is not in the albert family"):
        hfx.patch_albert(_model(DistilBertModel, distilbert_config()))
