"""transformers' attention interfaces: the HF-native ``attn_implementation`` path, and the name patched models use.

* ``hf_flexattn_full``, ``hf_flexattn_longformer``, ``hf_flexattn_neighborhood``: the variants that add no
  parameters, as attention implementations (registered with both ``AttentionInterface`` and
  ``AttentionMaskInterface``: without the mask entry transformers would hand the attention function no padding).
  Options come from ``config.hf_flexattn`` (defaults where absent); the variant is made by the same factory and
  checks as ``patch``. transformers hands these functions lengths and the padding only: where a variant needs more
  (a ViT input whose patch grid is not the config's, per-batch ``global_attention_mask``), it refuses clearly.
* ``hf_flexattn``: what a *patched* model's config names, so transformers builds no dense mask of its own (the
  patched base model builds them in its forward).

    config = AutoConfig.from_pretrained(path)
    config.hf_flexattn = {"variant": "longformer", "options": {"window": 256, "global_tokens": [0]}}
    model = AutoModel.from_pretrained(path, config=config, attn_implementation="hf_flexattn_longformer")
"""

from __future__ import annotations

import json
import weakref

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .factory import make_variant
from .families import family_for
from .families.base import PATCHED_IMPLEMENTATION
from .families.tokens import key_padding_from_attention_mask
from .variants import VARIANTS, ForwardMasks, NativeAttention, PerLayerMasks, Variant
from .variants.base import LayerCall, adds_parameters

PREFIX = "hf_flexattn_"
NATIVE_VARIANTS = tuple(name for name, cls in VARIANTS.items() if issubclass(cls, NativeAttention))

# id(config) → (weak reference to the config, {spec: variant}): one variant per loaded model and options
# (configs define __eq__ without __hash__, so they cannot key a WeakKeyDictionary)
_variants: dict[int, tuple[weakref.ref, dict[str, Variant]]] = {}


def _variants_of(config) -> dict[str, Variant]:
    key = id(config)
    entry = _variants.get(key)
    if entry is None or entry[0]() is not config:
        entry = (weakref.ref(config, lambda _: _variants.pop(key, None)), {})
        _variants[key] = entry
    return entry[1]


def native_variant(config, name: str) -> Variant:
    """The variant ``attn_implementation=hf_flexattn_<name>`` runs for a model with ``config``."""
    where = f"attn_implementation={PREFIX + name!r}"
    spec = getattr(config, "hf_flexattn", None) or {}
    options = dict(spec.get("options", {})) if spec.get("variant", name) == name else {}
    key = json.dumps([name, options], sort_keys=True, default=str)
    cached = _variants_of(config).get(key)
    if cached is not None:
        return cached
    family = family_for(config)
    if family.hierarchical:
        raise ValueError(f"{where}: model_type={config.model_type!r} keeps its own windowing; use hf_flexattn.patch")
    if family.native_refusal:
        raise ValueError(f"{where}: model_type={config.model_type!r}: {family.native_refusal}; use hf_flexattn.patch")
    variant = make_variant(config, name, options, family=family, where=where)
    if adds_parameters(variant):
        raise ValueError(f"{where}: these options add parameters (e.g. global_projections=True); use hf_flexattn.patch")
    _variants_of(config)[key] = variant
    return variant


def _make_mask_function(name: str):
    def hf_flexattn_mask(
        batch_size,
        q_length,
        kv_length,
        q_offset=0,
        kv_offset=0,
        mask_function=None,
        attention_mask=None,
        device="cpu",
        config=None,
        **kwargs,
    ) -> ForwardMasks:
        variant = native_variant(config, name)
        key_is_real = key_padding_from_attention_mask(attention_mask, batch_size, kv_length)
        inputs = variant.family.native_inputs(config, batch_size, q_length, key_is_real, torch.device(device))
        return ForwardMasks.checked(variant, inputs)

    hf_flexattn_mask.__name__ = f"{PREFIX}{name}_mask"
    return hf_flexattn_mask


def _make_attention_function(name: str):
    def hf_flexattn_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if not isinstance(attention_mask, ForwardMasks):
            raise ValueError(
                f"attn_implementation={PREFIX + name!r} got no hf_flexattn masks: its mask function must "
                "be registered too (import hf_flexattn before loading the model)"
            )
        variant = attention_mask.variant
        # transformers' modules keep their index as layer_idx where they have one; masks that differ per layer
        # (a per-layer window) need it
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            if (
                isinstance(variant, PerLayerMasks)
                and len({variant.layer_key(i) for i in range(variant.num_layers)}) > 1
            ):
                raise ValueError(
                    f"attn_implementation={PREFIX + name!r}: {type(module).__name__} does not know its layer index "
                    f"(no layer_idx), so per-layer options ({variant.extra_repr()}) cannot be told apart; give one "
                    "value for every layer, or use hf_flexattn.patch"
                )
            layer = 0
        dropout_p = 0.0 if variant.options.attention_dropout == "off" else dropout
        out = variant.attend(LayerCall(query, key, value, attention_mask, layer, scaling, dropout_p))
        return out.transpose(1, 2).contiguous(), None

    hf_flexattn_attention.__name__ = f"{PREFIX}{name}_attention"
    return hf_flexattn_attention


def _patched_mask(*args, **kwargs):
    """A patched model builds its own masks (in its base model's forward): transformers needs none."""
    return None


def _patched_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A patched model's attention function: modules on the general path (families/interface.py) compute their
    attention here with their variant; any other module calling it was not patched."""
    attention_function = getattr(module, "hfx_attention_function", None)
    if attention_function is not None:
        return attention_function(query, key, value, attention_mask, scaling, dropout, kwargs)
    raise RuntimeError(
        f"{type(module).__name__} is not patched by hf_flexattn, but its model's attn_implementation is "
        f"{PATCHED_IMPLEMENTATION!r}; this module is outside what hf_flexattn.patch replaces"
    )


def register() -> None:
    """Register the implementations with transformers (idempotent; called on ``import hf_flexattn``)."""
    for name in NATIVE_VARIANTS:
        AttentionInterface.register(PREFIX + name, _make_attention_function(name))
        AttentionMaskInterface.register(PREFIX + name, _make_mask_function(name))
    AttentionInterface.register(PATCHED_IMPLEMENTATION, _patched_attention)
    AttentionMaskInterface.register(PATCHED_IMPLEMENTATION, _patched_mask)
