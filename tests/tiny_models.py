"""A tiny random model of every model type in ``MODEL_TYPE_TO_FAMILY``, and the variant that computes what the
unpatched model computes on it (``full``, or the family's own rule: Swin's windows, Longformer's checkpoint
function, DiNAT's neighbourhoods). Tests that must hold for every family iterate over ``MODEL_TYPES``."""

import inspect

import torch
from family_checks import VISION, albert_config, beit_config, distilbert_config, registers_config
from transformers import AutoConfig, AutoModel

from hf_flexattn.families import MODEL_TYPE_TO_FAMILY

from helpers import no_dropout

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
TEXT = {**SMALL, "vocab_size": 120, "max_position_embeddings": 64, "pad_token_id": 1}

# full CLIP/SigLIP models are refused (their vision tower is patched: ``clip_vision_model``/``siglip_vision_model``)
REFUSED_WHOLE = ("clip", "siglip")
MODEL_TYPES = [t for t in MODEL_TYPE_TO_FAMILY if t not in REFUSED_WHOLE]


def tiny_config(model_type: str):
    """A small config of ``model_type`` (eager attention, the model's own token geometry)."""
    family = MODEL_TYPE_TO_FAMILY[model_type].name
    if model_type == "distilbert":
        config = distilbert_config()
    elif model_type == "albert":
        config = albert_config()
    elif model_type == "dinov2_with_registers":
        config = registers_config()
    elif model_type == "beit":
        config = beit_config()
    elif model_type == "longformer":
        config = AutoConfig.for_model(model_type, **{**TEXT, "max_position_embeddings": 130}, attention_window=[4, 8])
    elif model_type == "modernbert":
        config = AutoConfig.for_model(
            model_type,
            **{**TEXT, "num_hidden_layers": 3},
            local_attention=8,
            global_attn_every_n_layers=2,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
        )
    elif model_type == "ernie":
        config = AutoConfig.for_model(model_type, **TEXT, use_task_id=True)
    elif family in ("swin", "swinv2"):
        config = AutoConfig.for_model(
            model_type, image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4
        )
    elif family == "dinat":
        import hf_flexattn as hfx

        config = hfx.dinat_modeling().DinatConfig(
            embed_dim=16, depths=[2, 2], num_heads=[2, 4], kernel_size=3, dilations=[[1, 2], [1, 2]], patch_size=4
        )
    elif family == "clip_vision":
        config = AutoConfig.for_model(model_type, **SMALL, image_size=32, patch_size=4)
    elif MODEL_TYPE_TO_FAMILY[model_type].spatial_dims == 2:
        config = AutoConfig.for_model(model_type, **{**VISION, "num_labels": 3})
    else:
        config = AutoConfig.for_model(model_type, **TEXT)
    config._attn_implementation = "eager"
    return config


def base_class(model_type: str) -> type:
    if MODEL_TYPE_TO_FAMILY[model_type].name == "dinat":
        import hf_flexattn as hfx

        return hfx.dinat_modeling().DinatModel
    return AutoModel._model_mapping[type(tiny_config(model_type))]


def tiny_model(model_type: str, cls: type | None = None, seed: int = 0, mask_token: bool = False):
    """A random ``cls`` (default: the base model) of ``model_type`` in eval mode without dropout. Its
    zero-initialised bias tables (BEiT, Swin, DiNAT) and logit scales (Swin v2) get values that matter. ``mask_token``:
    made where the class can have one (so that ``bool_masked_pos`` can be passed)."""
    cls = cls or base_class(model_type)
    config = tiny_config(model_type)
    if mask_token and hasattr(config, "use_mask_token"):
        config.use_mask_token = True
    torch.manual_seed(seed)
    if mask_token and "use_mask_token" in inspect.signature(cls.__init__).parameters:
        model = cls(config, use_mask_token=True)
    else:
        model = cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or name.endswith(".rpb") or "mask_token" in name:
                p.normal_(0, 0.5)
            if name.endswith("logit_scale"):
                p.uniform_(1.0, 5.0)
    return no_dropout(model).eval()


def exact_variant(model_type: str) -> tuple[str, dict]:
    """A variant (and options) whose patched model computes what the unpatched model computes."""
    family = MODEL_TYPE_TO_FAMILY[model_type].name
    return {"longformer": ("longformer", {}), "dinat": ("neighborhood", {})}.get(family, ("full", {}))


def variant_cases(model_type: str) -> list[tuple[str, dict]]:
    """Every variant of the model type's family, with options that fit the tiny models."""
    family = MODEL_TYPE_TO_FAMILY[model_type]
    options = {
        "longformer": {} if family.name == "longformer" else {"window": 4},
        "neighborhood": {} if family.name == "dinat" else {"kernel_size": 3},
        "swin": {} if family.name in ("swin", "swinv2") else {"window_size": 4},
        "linformer": {"proj_len": 8},
        "performer": {"num_features": 16},
    }
    return [(name, options.get(name, {})) for name in family.variants()]


def uses_legacy_natten(model_type: str) -> bool:
    """DiNAT's unpatched model needs NATTEN's legacy ops: tests run it on their dense copy (test_family_dinat)."""
    return MODEL_TYPE_TO_FAMILY[model_type].name == "dinat"
