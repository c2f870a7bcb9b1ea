"""Bad input, in one place: every way in refuses it with an error that names the argument, the value and what is
allowed, and a refused ``patch`` leaves the model as it was.

* each variant's options on each family, refused at patch time (the model unchanged);
* ``patch`` calls that cannot apply (unknown variant, unsupported or decoder model, not a model);
* a battery over the whole API: options, models, forward inputs, ``extend_position_embeddings``, ``unpatch``.

Checks that belong to one variant's or op's semantics stay beside it: forward-time geometry (test_vit_variants,
test_family_dinat, test_longformer's per-batch globals), the plain-tensor ops (test_ops), tile plans (test_tiles),
Linformer's module (test_linear_variants), per-layer options counted over ALBERT's shared layers
(test_family_albert)."""

import re

import pytest
import torch
from family_checks import albert_config, beit_config, dinov2_config, distilbert_config, family_model, registers_config
from test_family_clip import _tower as clip_tower
from test_family_dinat import _model as dinat_model
from test_family_longformer import _model as longformer_model
from test_swin import swin_config
from test_swinv2 import _model as swinv2_model
from test_swinv2 import swinv2_config
from transformers import (
    AlbertModel,
    BeitModel,
    BertModel,
    Dinov2Model,
    Dinov2WithRegistersModel,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    SwinModel,
    Swinv2Model,
    ViTModel,
)

import hf_flexattn as hfx
from hf_flexattn.ops import LinformerAttention

from helpers import assert_same_snapshot, padded_batch, snapshot, tiny_bert_config, tiny_vit_config


def _bert():
    torch.manual_seed(0)
    return BertModel(tiny_bert_config()).eval()


def _vit():
    return ViTModel(tiny_vit_config())


def _swin():
    return SwinModel(swin_config(4, 32))


def _swinv2():
    return swinv2_model(Swinv2Model, swinv2_config(4, 32))


# ------------------------------------------------------------------------------------------------ options at patch time

# (model, how it is built, variant, options, the error's text)
BAD_OPTIONS = [
    # every variant's options, on BERT
    (
        "bert",
        _bert,
        "full",
        {"attention_dropout": "sometimes"},
        "attention_dropout='sometimes'; expected 'standard' or 'off'",
    ),
    ("bert", _bert, "longformer", {"window": 7}, "window=7"),
    ("bert", _bert, "longformer", {"window": 0}, "positive even int"),
    ("bert", _bert, "longformer", {"window": -4}, "positive even int"),
    ("bert", _bert, "longformer", {"window": "512"}, "window='512'"),
    ("bert", _bert, "longformer", {"window": [8, 8, 8]}, "one per layer (2)"),
    ("bert", _bert, "longformer", {"global_tokens": [-1]}, "global_tokens=[-1]"),
    ("bert", _bert, "longformer", {"global_projections": "yes"}, "global_projections='yes'"),
    ("bert", _bert, "neighborhood", {"kernel_size": 4}, "kernel_size=4; must be odd"),
    ("bert", _bert, "neighborhood", {"kernel_size": 0}, "kernel_size=0; expected a positive int"),
    ("bert", _bert, "neighborhood", {"kernel_size": 2.5}, "kernel_size=2.5"),
    ("bert", _bert, "neighborhood", {"dilation": 0}, "dilation=0; expected a positive int"),
    ("bert", _bert, "neighborhood", {"radius": 3}, "unknown option 'radius'"),
    ("bert", _bert, "linformer", {"proj_len": 0}, "proj_len=0; expected a positive int"),
    ("bert", _bert, "linformer", {"proj_len": -3}, "proj_len=-3"),
    ("bert", _bert, "linformer", {"proj_len": 600}, "proj_len=600 is larger than the model's 512 tokens"),
    ("bert", _bert, "linformer", {"share_kv": "no"}, "share_kv='no'"),
    ("bert", _bert, "performer", {"num_features": 0}, "num_features=0; expected a positive int"),
    ("bert", _bert, "performer", {"redraw_interval": -1}, "redraw_interval=-1"),
    # on a patch grid (ViT)
    ("vit", _vit, "neighborhood", {"kernel_size": 9}, "spans 9 positions, more than the rows of the model's 8x8"),
    ("vit", _vit, "neighborhood", {"kernel_size": 3, "dilation": 3}, "spans 9 positions"),
    ("vit", _vit, "neighborhood", {"kernel_size": (3, 4)}, "must be odd"),
    ("vit", _vit, "neighborhood", {"kernel_size": (3, 3, 3)}, "a (rows, cols) pair"),
    ("vit", _vit, "swin", {"window_size": 3}, "window_size=3 does not divide the model's 8x8 patch grid"),
    ("vit", _vit, "swin", {}, "needs window_size"),
    ("vit", _vit, "longformer", {"window": 8}, "does not support the vit family"),
    # the families' own limits
    (
        "distilbert",
        lambda: family_model(DistilBertModel, distilbert_config()),
        "swin",
        {"window_size": 2},
        "does not support the distilbert family",
    ),
    (
        "albert",
        lambda: family_model(AlbertModel, albert_config()),
        "longformer",
        {"window": [2, 4]},
        "window has 2 entries; give one int, or one per layer (3)",
    ),
    (
        "dinov2",
        lambda: family_model(Dinov2Model, dinov2_config()),
        "neighborhood",
        {"kernel_size": 9},
        "spans 9 positions, more than the rows of the model's 8x8",
    ),
    (
        "dinov2_with_registers",
        lambda: family_model(Dinov2WithRegistersModel, registers_config()),
        "longformer",
        {},
        "does not support the dinov2 family",
    ),
    (
        "beit",
        lambda: family_model(BeitModel, beit_config()),
        "swin",
        {"window_size": 3},
        "window_size=3 does not divide the model's 8x8 patch grid",
    ),
    (
        "beit",
        lambda: family_model(BeitModel, beit_config()),
        "linformer",
        {"proj_len": 66},
        "proj_len=66 is larger than the model's 65 tokens",
    ),
    (
        "siglip",
        lambda: clip_tower("siglip"),
        "neighborhood",
        {"kernel_size": 9},
        "kernel_size=9 with dilation=1 spans 9 positions",
    ),
    (
        "siglip",
        lambda: clip_tower("siglip"),
        "swin",
        {"window_size": 3},
        "window_size=3 does not divide the model's 8x8 patch grid",
    ),
    (
        "siglip",
        lambda: clip_tower("siglip"),
        "longformer",
        {"window": 4},
        "variant='longformer' does not support the clip_vision family",
    ),
    (
        "longformer",
        longformer_model,
        "longformer",
        {"window": [4, 8, 8]},
        "window has 3 entries; give one int, or one per layer (2)",
    ),
    ("longformer", longformer_model, "longformer", {"window": 5}, "window=5; expected a positive even int"),
    ("longformer", longformer_model, "longformer", {"global_projections": False}, "global_projections=False"),
    ("longformer", longformer_model, "longformer", {"kernel_size": 3}, "unknown option 'kernel_size'"),
    ("swin", _swin, "swin", {"window_size": 8}, "window_size=8 is larger than the checkpoint's 4"),
    ("swin", _swin, "swin", {"window_size": 0}, "window_size=0; expected a positive int"),
    ("swin", _swin, "swin", {"shift": 4}, "shift=4; must be smaller than window_size=4"),
    ("swin", _swin, "neighborhood", {"kernel_size": 4}, "kernel_size=4; must be odd"),
    ("swin", _swin, "neighborhood", {"kernel_size": 17}, "spans 17 positions, more than the rows of the model's 16x16"),
    ("swin", _swin, "longformer", {}, "does not support the swin family"),
    ("swinv2", _swinv2, "swin", {"shift": 4}, "shift=4; must be smaller than window_size=4"),
    ("swinv2", _swinv2, "neighborhood", {"kernel_size": 4}, "kernel_size=4; must be odd"),
    (
        "swinv2",
        _swinv2,
        "neighborhood",
        {"kernel_size": 17},
        "spans 17 positions, more than the rows of the model's 16x16",
    ),
    ("swinv2", _swinv2, "linformer", {}, "does not support the swinv2 family"),
    ("dinat", dinat_model, "neighborhood", {"kernel_size": 5}, "kernel_size=5 is larger than the checkpoint's 3"),
    ("dinat", dinat_model, "neighborhood", {"kernel_size": 4}, "kernel_size=4; expected a positive odd int"),
]


def _option_id(row) -> str:
    model, _, variant, options, _ = row
    return f"{model}-{variant}-" + ",".join(f"{k}={v!r}" for k, v in options.items())


@pytest.mark.cuda_policy  # refused at patch time whatever the device policy (conftest)
@pytest.mark.parametrize("model,make,variant,options,message", BAD_OPTIONS, ids=[_option_id(r) for r in BAD_OPTIONS])
def test_bad_options_are_refused_at_patch_time_and_leave_the_model_unchanged(model, make, variant, options, message):
    model = make()
    before = snapshot(model)
    with pytest.raises(ValueError, match=re.escape(message)):
        hfx.patch(model, variant, **options)
    assert_same_snapshot(before, snapshot(model))


# ------------------------------------------------------------------------------------------------ patch calls

BAD_PATCHES = [
    ("unknown variant", _bert, ("sparse",), {}, "variant='sparse' is unknown; variants: full, longformer"),
    ("variant given as non-string", _bert, (3,), {}, "variant=3 is unknown"),
    ("unknown option", _bert, ("full",), {"window": 3}, "unknown option 'window'; options of 'full': none"),
    (
        "variant not for family",
        lambda: ViTModel(tiny_vit_config()),
        ("longformer",),
        {},
        "does not support the vit family",
    ),
    (
        "unsupported model type",
        lambda: GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2)),
        ("full",),
        {},
        "config.model_type='gpt2' is not supported; supported model types: albert, beit, bert, camembert",
    ),
    ("decoder BERT", lambda: BertModel(tiny_bert_config(is_decoder=True)), ("full",), {}, "config.is_decoder=True"),
    ("not a model", lambda: torch.ones(3), ("full",), {}, "model must be a transformers PreTrainedModel, got Tensor"),
]


@pytest.mark.parametrize("case,make,args,kwargs,message", BAD_PATCHES, ids=[c[0] for c in BAD_PATCHES])
def test_bad_patch_calls_raise_and_leave_the_model_unchanged(case, make, args, kwargs, message):
    model = make()
    before = snapshot(model) if isinstance(model, torch.nn.Module) else None
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hfx.patch(model, *args, **kwargs)
    if before is not None:
        assert_same_snapshot(before, snapshot(model))


# ------------------------------------------------------------------------------------------------ the battery


def _patched(variant="full", **options):
    return lambda: hfx.patch(_bert(), variant, **options)


def _forward(model_factory, **inputs):
    def run():
        model = model_factory()
        with torch.no_grad():
            return model(**inputs)

    return run


IDS, MASK = padded_batch()
BATTERY = [
    # (name, action, expected error text)
    ("variant not a string", lambda: hfx.patch(_bert(), 1), "variant=1 is unknown"),
    ("unknown variant", lambda: hfx.patch(_bert(), "bigbird"), "variant='bigbird' is unknown"),
    ("unknown option", lambda: hfx.patch(_bert(), "longformer", windw=8), "unknown option 'windw'"),
    ("window odd", lambda: hfx.patch(_bert(), "longformer", window=9), "window=9"),
    ("window float", lambda: hfx.patch(_bert(), "longformer", window=8.0), "window=8.0"),
    ("window list too short", lambda: hfx.patch(_bert(), "longformer", window=[8]), "window has 1 entries"),
    ("global token negative", lambda: hfx.patch(_bert(), "longformer", global_tokens=[-2]), "global_tokens=[-2]"),
    ("global tokens not a list", lambda: hfx.patch(_bert(), "longformer", global_tokens=0), "global_tokens=0"),
    ("kernel even", lambda: hfx.patch(_bert(), "neighborhood", kernel_size=6), "kernel_size=6; must be odd"),
    ("kernel pair on text", lambda: hfx.patch(_bert(), "neighborhood", kernel_size=(3, 3)), "text is 1D"),
    ("dilation zero", lambda: hfx.patch(_bert(), "neighborhood", dilation=0), "dilation=0"),
    ("proj_len zero", lambda: hfx.patch(_bert(), "linformer", proj_len=0), "proj_len=0"),
    ("proj_len too large", lambda: hfx.patch(_bert(), "linformer", proj_len=10_000), "proj_len=10000 is larger"),
    ("num_features negative", lambda: hfx.patch(_bert(), "performer", num_features=-1), "num_features=-1"),
    (  # the module used directly (as ops users do), not through the variant's options
        "linformer module proj_len above max_len",
        lambda: LinformerAttention(max_len=8, proj_len=16),
        "proj_len=16; expected an int in 1..max_len=8",
    ),
    ("swin variant on text", lambda: hfx.patch(_bert(), "swin"), "does not support the bert family"),
    (
        "window on vit",
        lambda: hfx.patch(ViTModel(tiny_vit_config()), "swin", window_size=5),
        "window_size=5 does not divide",
    ),
    (
        "kernel larger than grid",
        lambda: hfx.patch(ViTModel(tiny_vit_config()), "neighborhood", kernel_size=11),
        "spans 11 positions",
    ),
    (
        "not a model",
        lambda: hfx.patch(torch.nn.Linear(2, 2), "full"),
        "model must be a transformers PreTrainedModel, got Linear",
    ),
    ("a submodule", lambda: hfx.patch(_bert().encoder, "full"), "pass the whole model"),
    ("patch twice", lambda: hfx.patch(hfx.patch(_bert(), "full"), "full"), "already patched"),
    ("unpatch unpatched", lambda: hfx.unpatch(_bert()), "not patched by hf_flexattn"),
    ("patch_vit on bert", lambda: hfx.patch_vit(_bert()), "patch_vit: model_type='bert' is not in the vit family"),
    (
        "sequence longer than positions",
        _forward(_patched(), input_ids=torch.randint(5, 120, (1, 600))),
        "extend_position_embeddings",
    ),
    (
        "4D attention mask",
        _forward(_patched(), input_ids=IDS, attention_mask=MASK[:, None, None, :]),
        "expects the 2D padding mask",
    ),
    (
        "mask of wrong length",
        _forward(_patched(), input_ids=IDS, attention_mask=MASK[:, :10]),
        "attention_mask has shape (3, 10)",
    ),
    (
        "global mask wrong shape",
        _forward(_patched("longformer", window=8), input_ids=IDS, global_attention_mask=MASK[:2]),
        "global_attention_mask has shape (2, 24)",
    ),
    (
        "global mask on full",
        _forward(_patched(), input_ids=IDS, global_attention_mask=MASK),
        "only used by variant='longformer'",
    ),
    ("no input ids", _forward(_patched()), "exactly one of input_ids or inputs_embeds"),
    ("extend to fewer positions", lambda: hfx.extend_position_embeddings(_bert(), 100), "max_len=100"),
    (
        "extend a vit",
        lambda: hfx.extend_position_embeddings(ViTModel(tiny_vit_config()), 1024),
        "no absolute position table",
    ),
]


@pytest.mark.parametrize("name,action,message", BATTERY, ids=[b[0] for b in BATTERY])
def test_bad_input_battery(name, action, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        action()


def test_battery_leaves_models_unchanged():
    model = _bert()
    before = snapshot(model)
    for options in (dict(window=9), dict(global_tokens=[-1]), dict(windw=3)):
        with pytest.raises(ValueError):
            hfx.patch(model, "longformer", **options)
    assert_same_snapshot(before, snapshot(model))
