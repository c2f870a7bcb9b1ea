"""``patch`` / ``unpatch`` / ``from_pretrained``: swap a model's attention modules for hf_flexattn variants.

Patching changes the class of each attention module in place (``module.__class__`` becomes a subclass of the
HF class), so parameters, state-dict keys and the forward signature stay; no weight is copied. A forward
pre-hook on the base model builds the batch's masks once and hands them to every layer as a keyword
argument, which HF's layers pass through to the attention modules (gradient checkpointing included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .families.base import Family
from .families.bert import BertFamily
from .families.swin import SwinFamily
from .families.vit import ViTFamily
from .variants.base import Variant
from .variants.full import FullVariant
from .variants.longformer import LongformerVariant
from .variants.linformer import LinformerVariant
from .variants.neighborhood import NeighborhoodVariant
from .variants.performer import PerformerVariant
from .variants.swin import SwinVariant

FAMILIES: dict[str, Family] = {f.name: f for f in (BertFamily(), ViTFamily(), SwinFamily())}
VARIANTS: dict[str, type[Variant]] = {
    v.name: v
    for v in (FullVariant, LongformerVariant, NeighborhoodVariant, SwinVariant, LinformerVariant, PerformerVariant)
}

CONFIG_KEY = "hf_flexattn"


@dataclass
class PatchState:
    """What ``unpatch`` needs, kept on the base model (a plain attribute: not in the state dict)."""

    family: Family
    variant: Variant
    originals: list[tuple[nn.Module, type]]
    hook: Any


def family_for(model: nn.Module) -> Family:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported_types = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(
        f"model: config.model_type={model_type!r} is not supported; supported model types: {', '.join(supported_types)}"
    )


def patch_state(model: nn.Module) -> PatchState | None:
    base = getattr(model, "base_model", model)
    return base.__dict__.get("_hfx_state")


def is_patched(model: nn.Module) -> bool:
    return patch_state(model) is not None


def _make_variant(model: nn.Module, family: Family, variant: str, options: dict) -> Variant:
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"patch: variant={variant!r} is unknown; variants: {', '.join(VARIANTS)}")
    variant_cls = family.variant_overrides.get(variant, VARIANTS[variant])
    if family.name not in variant_cls.families:
        allowed = [n for n, v in VARIANTS.items() if family.name in v.families]
        raise ValueError(
            f"patch: variant={variant!r} does not support the {family.name} family "
            f"(model_type={model.config.model_type!r}); variants for {family.name}: {', '.join(allowed)}"
        )
    modules = family.attention_modules(family.base_model(model))
    instance = variant_cls(family, len(modules), **options)
    instance.validate_model(model)
    return instance


def patch(model: nn.Module, variant: str = "full", **options) -> nn.Module:
    """Replace every self-attention module of ``model`` with ``variant``; returns the same model object.

    Raises ``ValueError`` (before anything changes) for an unsupported model, an unknown variant or a bad
    option. If anything fails half way, the model is restored exactly as it was.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"patch: model must be a transformers PreTrainedModel, got {type(model).__name__}")
    family = family_for(model)
    if is_patched(model):
        current = patch_state(model).variant.name
        raise ValueError(f"patch: model is already patched with variant={current!r}; call hf_flexattn.unpatch(model) first")
    family.check_model(model)
    instance = _make_variant(model, family, variant, options)
    base = family.base_model(model)
    modules = family.attention_modules(base)
    for i, module in enumerate(modules):
        family.check_attention_module(module, i)

    originals: list[tuple[nn.Module, type]] = []
    try:
        for i, module in enumerate(modules):
            originals.append((module, type(module)))
            module.__class__ = family.patched_class(type(module))
            module.hfx_variant = instance
            module.hfx_layer_idx = i
            module.hfx_block_idx = family.block_index(base, i)
            instance.attach(module, i)
        hook = base.register_forward_pre_hook(_build_masks_hook, with_kwargs=True)
        base.__dict__["_hfx_state"] = PatchState(family, instance, originals, hook)
        model.config.__dict__[CONFIG_KEY] = instance.config_dict()
    except BaseException:
        _restore(base, model, instance, originals)
        raise
    return model


def _restore(base: nn.Module, model: nn.Module, variant: Variant, originals: list[tuple[nn.Module, type]]) -> None:
    for module, cls in reversed(originals):
        variant.detach(module)
        module.__dict__.pop("hfx_variant", None)
        module.__dict__.pop("hfx_layer_idx", None)
        module.__dict__.pop("hfx_block_idx", None)
        module.__class__ = cls
    state = base.__dict__.pop("_hfx_state", None)
    if state is not None:
        state.hook.remove()
    model.config.__dict__.pop(CONFIG_KEY, None)


def unpatch(model: nn.Module) -> nn.Module:
    """Give ``model`` back its original HF attention modules (same weights); returns the same model object."""
    state = patch_state(model)
    if state is None:
        raise ValueError("unpatch: model is not patched by hf_flexattn (nothing to undo)")
    _restore(state.family.base_model(model), model, state.variant, state.originals)
    return model


def _build_masks_hook(base: nn.Module, args: tuple, kwargs: dict):
    state: PatchState = base.__dict__["_hfx_state"]
    arguments = state.family.bind_arguments(base, args, kwargs)
    global_mask = kwargs.pop("global_attention_mask", None)
    if global_mask is not None and not getattr(state.variant, "accepts_global_attention_mask", False):
        raise ValueError(
            f"global_attention_mask is only used by variant='longformer'; this model is patched with "
            f"variant={state.variant.name!r}"
        )
    inputs = state.family.forward_inputs(base, arguments)
    inputs.global_attention_mask = global_mask
    kwargs["hfx_masks"] = state.variant.build_masks(inputs)
    return args, kwargs


def from_pretrained(model_class, path, **kwargs) -> nn.Module:
    """Load a checkpoint saved from a patched model and patch it the same way, extra weights included.

    The variant and its options are read from ``config.hf_flexattn`` (written by :func:`patch`).
    """
    from transformers import AutoConfig

    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path, **{k: v for k, v in kwargs.items() if k in ("revision", "cache_dir", "local_files_only", "token")})
    spec = getattr(config, CONFIG_KEY, None)
    if spec is None:
        raise ValueError(f"from_pretrained: {path!r} has no config.{CONFIG_KEY}; it was not saved from a patched model")
    model = model_class.from_pretrained(path, config=config, **kwargs)
    model.config.__dict__.pop(CONFIG_KEY, None)
    stock_keys = set(model.state_dict())
    patch(model, spec["variant"], **spec.get("options", {}))
    added = [k for k in model.state_dict() if k not in stock_keys]
    if added:
        _load_added_weights(model, path, added)
    return model


def _load_added_weights(model: nn.Module, path, keys: list[str]) -> None:
    """Weights the variant added are unknown to the stock class, so transformers skipped them: load them now."""
    import os

    from safetensors import safe_open

    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    found = {}
    for f in files:
        with safe_open(f, framework="pt") as reader:
            for k in set(keys) & set(reader.keys()):
                found[k] = reader.get_tensor(k)
    missing = [k for k in keys if k not in found]
    if missing:
        raise ValueError(f"from_pretrained: {str(path)!r} lacks the variant's weights, e.g. {missing[:3]}")
    model.load_state_dict(found, strict=False)


def _patch_family(family: str, model: nn.Module, variant: str, options: dict) -> nn.Module:
    if family_for(model).name != family:
        raise ValueError(
            f"patch_{family}: model_type={model.config.model_type!r} is not in the {family} family "
            f"({', '.join(FAMILIES[family].model_types)}); use hf_flexattn.patch"
        )
    return patch(model, variant, **{k: v for k, v in options.items() if v is not None})


def patch_bert(model: nn.Module, variant: str = "full", *, window: int | list[int] | None = None,
               global_tokens: list[int] | None = None, global_projections: bool | None = None,
               kernel_size: int | None = None, dilation: int | None = None, proj_len: int | None = None,
               share_kv: bool | None = None, num_features: int | None = None,
               redraw_interval: int | None = None) -> nn.Module:
    """``patch`` for BERT-family models, with every text variant's options in the signature."""
    return _patch_family("bert", model, variant, dict(
        window=window, global_tokens=global_tokens, global_projections=global_projections, kernel_size=kernel_size,
        dilation=dilation, proj_len=proj_len, share_kv=share_kv, num_features=num_features,
        redraw_interval=redraw_interval))


def patch_vit(model: nn.Module, variant: str = "full", *, kernel_size: int | tuple[int, int] | None = None,
              dilation: int | tuple[int, int] | None = None, window_size: int | None = None, shift: int | None = None,
              proj_len: int | None = None, share_kv: bool | None = None, num_features: int | None = None,
              redraw_interval: int | None = None) -> nn.Module:
    """``patch`` for ViT-family models (ViT, DeiT), with every vision variant's options in the signature."""
    return _patch_family("vit", model, variant, dict(
        kernel_size=kernel_size, dilation=dilation, window_size=window_size, shift=shift, proj_len=proj_len,
        share_kv=share_kv, num_features=num_features, redraw_interval=redraw_interval))


def patch_swin(model: nn.Module, variant: str = "swin", *, window_size: int | None = None, shift: int | None = None,
               kernel_size: int | tuple[int, int] | None = None,
               dilation: int | tuple[int, int] | None = None) -> nn.Module:
    """``patch`` for Swin models (``swin``/``full``: exact; ``neighborhood``)."""
    return _patch_family("swin", model, variant, dict(
        window_size=window_size, shift=shift, kernel_size=kernel_size, dilation=dilation))


def supported() -> list[dict[str, Any]]:
    """One row per variant: the families it patches and its options with their defaults."""
    return [
        {
            "variant": name,
            "families": list(v.families),
            "model_types": sorted(t for f in v.families if f in FAMILIES for t in FAMILIES[f].model_types),
            "options": {k: o.default for k, o in v.options.items()},
        }
        for name, v in VARIANTS.items()
    ]
