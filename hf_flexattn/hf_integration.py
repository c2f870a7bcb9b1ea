"""HF-native activation: the variants that add no parameters as transformers attention implementations.

Registered under their own names (``hf_flexattn_full``, ``hf_flexattn_longformer``, ``hf_flexattn_neighborhood``;
transformers' names are left alone) with both ``AttentionInterface`` and ``AttentionMaskInterface`` — without the
mask entry, transformers would hand the attention function no padding information. So

    config = AutoConfig.from_pretrained(path)
    config.hf_flexattn = {"variant": "longformer", "options": {"window": 256, "global_tokens": [0]}}
    model = AutoModel.from_pretrained(path, config=config, attn_implementation="hf_flexattn_longformer")
    model.set_attn_implementation("hf_flexattn_neighborhood")   # on a model already loaded

work without ``patch``; options are read from ``config.hf_flexattn`` (defaults where absent). The mask function
builds the batch's BlockMasks once (transformers calls it once per forward) and every layer's attention function
reads them. Per-batch ``global_attention_mask`` needs ``patch`` (transformers' mask interface cannot carry it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from . import kernels
from .families.base import key_padding_from_attention_mask
from .variants.base import ForwardInputs, LayerMasks

NATIVE_VARIANTS = ("full", "longformer", "neighborhood")
PREFIX = "hf_flexattn_"
_variants: dict[tuple, Any] = {}


def _variant_for(config, name: str):
    from .patching import FAMILIES, VARIANTS

    family = next((f for f in FAMILIES.values() if config.model_type in f.model_types), None)
    if family is None or family.name == "swin":
        raise ValueError(f"attn_implementation={PREFIX + name!r}: model_type={config.model_type!r} is not supported "
                         "(bert and vit families; use hf_flexattn.patch for swin)")
    spec = getattr(config, "hf_flexattn", None) or {}
    options = dict(spec.get("options", {})) if spec.get("variant", name) == name else {}
    key = (config.model_type, name, config.num_hidden_layers, repr(sorted(options.items())))
    if key not in _variants:
        variant = VARIANTS[name](family, config.num_hidden_layers, **options)
        if getattr(variant, "settings", {}).get("global_projections"):
            raise ValueError("global_projections=True adds parameters: use hf_flexattn.patch")
        _variants[key] = variant
    return _variants[key]


def _make_mask_function(name: str):
    def hf_flexattn_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                         attention_mask=None, device="cpu", config=None, **kwargs) -> LayerMasks:
        variant = _variant_for(config, name)
        grid, prefix = None, 0
        if variant.family.name == "vit":
            prefix = variant.family.num_prefix_tokens(config)
            side = math.isqrt(q_length - prefix)
            grid = (side, side)  # transformers passes lengths only: square patch grids
        key_is_real = key_padding_from_attention_mask(attention_mask, batch_size, kv_length)
        inputs = ForwardInputs(batch_size, q_length, torch.device(device), key_is_real=key_is_real, grid=grid,
                               num_prefix_tokens=prefix)
        return variant.build_masks(inputs)

    hf_flexattn_mask.__name__ = f"{PREFIX}{name}_mask"
    return hf_flexattn_mask


def _make_attention_function(name: str):
    def hf_flexattn_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if not isinstance(attention_mask, LayerMasks):
            raise ValueError(f"attn_implementation={PREFIX + name!r} got no hf_flexattn masks: its mask function "
                             "must be registered too (import hf_flexattn before loading the model)")
        entry = attention_mask.block_masks[getattr(module, "layer_idx", None) or 0]
        block_mask = entry[0] if isinstance(entry, tuple) else entry
        out = kernels.attend(query, key, value, block_mask, scale=scaling, dropout_p=dropout)
        return out.transpose(1, 2).contiguous(), None

    hf_flexattn_attention.__name__ = f"{PREFIX}{name}_attention"
    return hf_flexattn_attention


def register() -> None:
    """Register the native variants with transformers (idempotent; called on ``import hf_flexattn``)."""
    for name in NATIVE_VARIANTS:
        AttentionInterface.register(PREFIX + name, _make_attention_function(name))
        AttentionMaskInterface.register(PREFIX + name, _make_mask_function(name))
