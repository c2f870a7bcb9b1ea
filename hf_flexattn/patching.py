"""``patch`` / ``unpatch`` / ``from_pretrained``: swap a model's attention modules for hf_flexattn variants.

Patching changes the class of each attention module in place (``module.__class__`` becomes a subclass of the
HF class), so parameters, state-dict keys and the forward signature stay; no weight is copied. The base model's
class is swapped the same way: its forward builds the batch's masks once and hands them to every layer as a
keyword argument, which HF's layers pass through to the attention modules (gradient checkpointing included).
The model's ``config._attn_implementation`` becomes ``"hf_flexattn"`` while it is patched, so transformers builds
no dense mask of its own and routes every attention call to the patched modules.
"""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import compat, sentence_transformers
from .factory import make_variant
from .families import FAMILIES, Family, family_for
from .families.base import PATCHED_IMPLEMENTATION, patched_config_class
from .families.dinat import dinat_modeling
from .variants import VARIANTS, AddsParameters, Variant, VariantOptions

CONFIG_KEY = "hf_flexattn"


@dataclass
class PatchState:
    """What ``unpatch`` needs, kept on the base model (a plain attribute: not in the state dict)."""

    family: Family
    variant: Variant
    originals: list[tuple[nn.Module, type]]
    attn_implementation: str | None
    # accelerate's hooks (``device_map``, offloading) replace a module's ``forward`` by a wrapper that calls the
    # forward it found (``_old_forward``): the base model's, before patching. Repointed while patched.
    hooked_forward: Any = None


def patch_state(model: nn.Module) -> PatchState | None:
    base = getattr(model, "base_model", model)
    return base.__dict__.get("_hfx_state")


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` (or its base model; for a ``SentenceTransformer``, its transformers models) is patched by
    hf_flexattn."""
    if sentence_transformers.is_sentence_transformer(model):
        return _pipeline_is_patched(model)
    return patch_state(model) is not None


def _check_is_model(model: Any, where: str) -> None:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        hint = ""
        if isinstance(model, nn.Module) and hasattr(model, "config"):
            hint = " (this looks like a submodule: pass the whole model, e.g. hf_flexattn.patch(model, ...))"
        raise ValueError(f"{where}: model must be a transformers PreTrainedModel, got {type(model).__name__}{hint}")


def patch(model: nn.Module, variant: str | VariantOptions = "full", **options) -> nn.Module:
    """Replace every self-attention module of ``model`` with ``variant``; returns the same model object.

    ``variant`` is a name (options as keywords) or an options object such as ``LongformerOptions(window=256)``.
    ``model`` is a transformers ``PreTrainedModel`` or a sentence-transformers model (``SentenceTransformer``), whose
    transformers model(s) are patched. Raises ``ValueError`` (before anything changes) for an unsupported model, an
    unknown variant or a bad option. If anything fails half way, the model is restored exactly as it was.
    """
    if sentence_transformers.is_sentence_transformer(model):
        return _patch_pipeline(model, variant, options)
    _check_is_model(model, "patch")
    family = family_for(model.config)
    if is_patched(model):
        current = patch_state(model).variant.name
        raise ValueError(
            f"patch: model is already patched with variant={current!r}; call hf_flexattn.unpatch(model) first"
        )
    family.check_model(model)
    base = family.base_model(model)
    modules = family.attention_modules(base)
    instance = make_variant(model.config, variant, options, family=family, num_layers=family.layer_count(base, modules))
    for i, module in enumerate(modules):
        family.check_attention_module(module, i)

    originals: list[tuple[nn.Module, type]] = []
    implementation = compat.attn_implementation(model.config)
    try:
        for i, module in enumerate(modules):
            originals.append((module, type(module)))
            module.__class__ = family.patched_class(type(module))
            module.hfx_variant = instance
            module.hfx_layer_idx = i
            module.hfx_block_idx = family.block_index(base, i)
            if isinstance(instance, AddsParameters):
                instance.attach(module, i)
        for helper in family.helper_modules(base):
            originals.append((helper, type(helper)))
            helper.__class__ = family.patched_class(type(helper))
        # a model made as ``type(patched_model)(config)`` has the patched class already: unpatch gives it HF's
        originals.append((base, getattr(type(base), "hfx_original_class", type(base))))
        base.__class__ = family.patched_class(type(base))
        base.hfx_variant = instance
        hooked_forward = compat.accelerate_hooked_forward(base)
        if hooked_forward is not None:
            compat.set_accelerate_hooked_forward(base, types.MethodType(type(base).forward, base))
        base.__dict__["_hfx_state"] = PatchState(family, instance, originals, implementation, hooked_forward)
        model.config.__dict__[CONFIG_KEY] = instance.config_dict()
        _set_attn_implementation(model, PATCHED_IMPLEMENTATION)
    except BaseException:
        _restore(base, model, instance, originals, implementation)
        raise
    return model


def _model_configs(model: nn.Module) -> list:
    """Every config of the model (sub-configs included), once each."""
    config_class = getattr(type(model.config), "hfx_original_class", type(model.config))
    configs = {id(m.config): m.config for m in model.modules() if isinstance(getattr(m, "config", None), config_class)}
    return list(configs.values())


def _set_attn_implementation(model: nn.Module, name: str | None) -> None:
    """Set the attention implementation on every config of the model, as transformers does; while the model is
    patched its configs' class is :class:`PatchedConfig`'s (``output_attentions = True`` accepted)."""
    for config in _model_configs(model):
        original = getattr(type(config), "hfx_original_class", type(config))
        if name == PATCHED_IMPLEMENTATION:
            config.__class__ = patched_config_class(original)
            compat.set_attn_implementation(config, name)
            continue
        if config.output_attentions and name not in ("eager", None):
            # turned on while patched: transformers returns weights only from its eager implementation
            name = "eager"
        config.__class__ = original
        compat.set_attn_implementation(config, name)


def _restore(
    base: nn.Module,
    model: nn.Module,
    variant: Variant,
    originals: list[tuple[nn.Module, type]],
    implementation: str | None,
) -> None:
    for module, cls in reversed(originals):
        if "hfx_layer_idx" in module.__dict__ and isinstance(variant, AddsParameters):
            variant.detach(module)
        for name in ("hfx_variant", "hfx_layer_idx", "hfx_block_idx"):
            module.__dict__.pop(name, None)
        module.__class__ = cls
    state = base.__dict__.pop("_hfx_state", None)
    if state is not None and state.hooked_forward is not None:
        compat.set_accelerate_hooked_forward(base, state.hooked_forward)
    model.config.__dict__.pop(CONFIG_KEY, None)
    _set_attn_implementation(model, implementation)


def unpatch(model: nn.Module) -> nn.Module:
    """Give ``model`` back its original HF attention modules (same weights); returns the same model object.

    Its attention implementation is the one it had, except that a model whose ``config.output_attentions`` is on
    returns to ``"eager"`` (the only one transformers lets return weights)."""
    if sentence_transformers.is_sentence_transformer(model):
        return _unpatch_pipeline(model)
    state = patch_state(model)
    if state is None:
        raise ValueError("unpatch: model is not patched by hf_flexattn (nothing to undo)")
    _restore(state.family.base_model(model), model, state.variant, state.originals, state.attn_implementation)
    return model


# ------------------------------------------------------------------------------------------------ from_pretrained


def from_pretrained(model_class, path, **kwargs) -> nn.Module:
    """Load a checkpoint saved from a patched model and patch it the same way, extra weights included.

    ``path`` is a local folder or a hub id (resolved as transformers resolves it: ``revision``, ``cache_dir``,
    ``token`` and ``local_files_only`` are honoured). The variant and its options are read from
    ``config.hf_flexattn`` (written by :func:`patch`). The checkpoint may come from another head of the same model
    (saved from ``AutoModel``, loaded into ``AutoModelForMaskedLM``, or the reverse), as for stock weights.

    ``model_class`` may be a sentence-transformers class: ``from_pretrained(SentenceTransformer, path, **kwargs)``
    loads a pipeline saved with ``model.save(path)`` (``kwargs`` go to its constructor).
    """
    if isinstance(model_class, type) and sentence_transformers.is_sentence_transformer_class(model_class):
        return _pipeline_from_pretrained(model_class, path, **kwargs)
    from transformers import AutoConfig

    hub = {k: kwargs[k] for k in ("revision", "cache_dir", "local_files_only", "token") if k in kwargs}
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path, **hub)
    spec = getattr(config, CONFIG_KEY, None)
    if spec is None:
        raise ValueError(
            f"from_pretrained: {str(path)!r} has no config.{CONFIG_KEY}; it was not saved from a patched model"
        )
    model = model_class.from_pretrained(path, config=config, **kwargs)
    model.config.__dict__.pop(CONFIG_KEY, None)
    stock_keys = set(model.state_dict())
    patch(model, spec["variant"], **spec.get("options", {}))
    added = [k for k in model.state_dict() if k not in stock_keys]
    if added:
        _load_added_weights(model, path, added, hub)
    return model


def checkpoint_files(path, hub: dict) -> list[str]:
    """The weight files of a checkpoint, local or on the hub, found the way transformers finds them."""
    from transformers.utils import (
        SAFE_WEIGHTS_INDEX_NAME,
        SAFE_WEIGHTS_NAME,
        WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
        cached_file,
    )

    def resolve(name):
        return cached_file(str(path), name, _raise_exceptions_for_missing_entries=False, **hub)

    for single, index in ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
        found = resolve(single)
        if found:
            return [found]
        found = resolve(index)
        if found:
            with open(found) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [resolve(shard) for shard in shards]
    raise ValueError(f"from_pretrained: {str(path)!r} has no weights file ({SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME})")


def _read_tensors(file: str, wanted) -> dict:
    if file.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(file, framework="pt") as reader:
            return {k: reader.get_tensor(k) for k in reader.keys() if wanted(k)}
    import torch

    return {k: v for k, v in torch.load(file, map_location="cpu", weights_only=True).items() if wanted(k)}


def _load_added_weights(model: nn.Module, path, keys: list[str], hub: dict) -> None:
    """Weights the variant added are unknown to the stock class, so transformers skipped them: load them now, by the
    names this checkpoint gives them (:func:`checkpoint_names`: the hub's layout, or the modules' own names in files
    that earlier releases wrote), matching names relative to the base model (so a head saved with or without its
    prefix fits the other)."""
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""

    def relative(key: str) -> str:
        return key[len(prefix) :] if prefix and key.startswith(prefix) else key

    saved_names = checkpoint_names(model, keys)
    wanted = {relative(saved_names[k]): k for k in keys}
    found = {}
    for file in checkpoint_files(path, hub):
        for name, tensor in _read_tensors(file, lambda k: relative(k) in wanted).items():
            found[wanted[relative(name)]] = tensor
    missing = [saved_names[k] for k in keys if k not in found]
    if missing:
        raise ValueError(f"from_pretrained: {str(path)!r} lacks the variant's weights, e.g. {missing[:3]}")
    model.load_state_dict(found, strict=False)


def checkpoint_names(model: nn.Module, keys: list[str]) -> dict[str, str]:
    """The name each of the model's state-dict ``keys`` has in its checkpoint: transformers renames some models' keys
    to the hub's layout (ViT's ``layers.0.attention`` is saved as ``encoder.layer.0.attention``), by the mapping it
    loaded the model with (none for a file already in the modules' names) or, for a model made otherwise, its own."""
    state = model.state_dict()
    return {key: compat.checkpoint_key(model, key, state[key]) for key in keys}


def load_dinat(head: str | type, path_or_config, **kwargs) -> nn.Module:
    """A DiNAT model (``head``: a class or its name, e.g. ``"DinatForImageClassification"``) loaded from
    ``path_or_config`` (a checkpoint path or hub id with ``from_pretrained``'s keywords, or a ``DinatConfig`` for a
    randomly initialised model), patched with DiNAT's own attention (``patch(model, "neighborhood")``)."""
    modeling = dinat_modeling()
    model_class = getattr(modeling, head) if isinstance(head, str) else head
    if isinstance(path_or_config, modeling.DinatConfig):
        model = model_class(path_or_config, **kwargs)
    else:
        model = model_class.from_pretrained(path_or_config, **kwargs)
    return patch(model, "neighborhood")


# ------------------------------------------------------------------------------------------------ sentence-transformers


def _patch_pipeline(model: nn.Module, variant, options: dict) -> nn.Module:
    """Patch every transformers model inside the pipeline with the same variant and options (all or none)."""
    done = []
    try:
        for _, _, hf_model in sentence_transformers.transformer_modules(model, "patch"):
            patch(hf_model, variant, **options)
            done.append(hf_model)
    except BaseException:
        for hf_model in done:
            unpatch(hf_model)
        raise
    return model


def _unpatch_pipeline(model: nn.Module) -> nn.Module:
    patched = [
        hf_model
        for _, _, hf_model in sentence_transformers.transformer_modules(model, "unpatch")
        if is_patched(hf_model)
    ]
    if not patched:
        raise ValueError("unpatch: model is not patched by hf_flexattn (nothing to undo)")
    for hf_model in patched:
        unpatch(hf_model)
    return model


def _pipeline_is_patched(model: nn.Module) -> bool:
    """Whether the pipeline's transformers models are patched (``patch`` patches all of them or none); False for a
    pipeline with none hf_flexattn supports (a question, not a request to patch)."""
    try:
        modules = sentence_transformers.transformer_modules(model, "is_patched")
    except ValueError:
        return False
    return any(is_patched(hf_model) for _, _, hf_model in modules)


def _pipeline_from_pretrained(model_class: type, path, **kwargs) -> nn.Module:
    """Load a pipeline saved (``model.save(path)``) from a patched one, patched the same way, extra weights included.

    ``model_class`` is the sentence-transformers class (``SentenceTransformer``); ``kwargs`` go to its constructor
    (``device``, ``revision``, ``cache_folder``, ``token``, ``local_files_only``, ...). Each transformers model's
    variant and options are read from its saved ``config.hf_flexattn``.
    """
    model = model_class(str(path), **kwargs)
    hub = {"revision": kwargs.get("revision"), "token": kwargs.get("token"), "cache_dir": kwargs.get("cache_folder")}
    hub = {k: v for k, v in hub.items() if v is not None}
    if kwargs.get("local_files_only"):
        hub["local_files_only"] = True
    folders = sentence_transformers.module_folders(path, hub)
    patched = 0
    for name, _, hf_model in sentence_transformers.transformer_modules(model, "from_pretrained"):
        spec = hf_model.config.__dict__.pop(CONFIG_KEY, None)
        if spec is None:
            continue
        stock_keys = set(hf_model.state_dict())
        patch(hf_model, spec["variant"], **spec.get("options", {}))
        added = [k for k in hf_model.state_dict() if k not in stock_keys]
        if added:
            if name not in folders:
                raise ValueError(f"from_pretrained: {str(path)!r} has no folder for module {name!r} in modules.json")
            subfolder = {"subfolder": folders[name]} if folders[name] else {}
            _load_added_weights(hf_model, path, added, {**hub, **subfolder})
        patched += 1
    if not patched:
        raise ValueError(
            f"from_pretrained: {str(path)!r} has no transformers model with config.{CONFIG_KEY}; it was not "
            "saved from a patched model"
        )
    return model


# ------------------------------------------------------------------------------------------------ per-family functions


def _family_patch_function(family_name: str, default: str):
    family = FAMILIES[family_name]

    def patch_family(model: nn.Module, variant: str | VariantOptions = default, **options) -> nn.Module:
        _check_is_model(model, f"patch_{family_name}")
        if family_for(model.config).name != family_name:
            raise ValueError(
                f"patch_{family_name}: model_type={model.config.model_type!r} is not in the {family_name} family "
                f"({', '.join(family.model_types)}); use hf_flexattn.patch"
            )
        return patch(model, variant, **options)

    rows = []
    for name in family.variants():
        options = family.variant_class(name).Options.describe()
        rows.append(f"    {name}:")
        rows += [f"        {o['name']}={o['default']!r}: {o['help']}" for o in options]
    patch_family.__name__ = patch_family.__qualname__ = f"patch_{family_name}"
    patch_family.__doc__ = (
        f"``patch`` for the {family_name} family ({', '.join(family.model_types)}): the same call, restricted to "
        f"these model types.\n\nVariants and their options (defaults; each variant's Options dataclass is the "
        f"definition):\n\n" + "\n".join(rows)
    )
    patch_family.__signature__ = inspect.signature(patch_family)
    return patch_family


patch_bert = _family_patch_function("bert", "full")
patch_vit = _family_patch_function("vit", "full")
patch_swin = _family_patch_function("swin", "swin")
patch_distilbert = _family_patch_function("distilbert", "full")
patch_albert = _family_patch_function("albert", "full")
patch_dinov2 = _family_patch_function("dinov2", "full")
patch_beit = _family_patch_function("beit", "full")
patch_swinv2 = _family_patch_function("swinv2", "swin")
patch_general_text = _family_patch_function("general_text", "full")
patch_general_vision = _family_patch_function("general_vision", "full")
patch_longformer = _family_patch_function("longformer", "longformer")
patch_modernbert = _family_patch_function("modernbert", "full")
patch_clip_vision = _family_patch_function("clip_vision", "full")
patch_dinat = _family_patch_function("dinat", "neighborhood")

__all__ = [
    "VARIANTS",
    "from_pretrained",
    "is_patched",
    "load_dinat",
    "patch",
    "patch_albert",
    "patch_beit",
    "patch_bert",
    "patch_clip_vision",
    "patch_dinat",
    "patch_dinov2",
    "patch_distilbert",
    "patch_general_text",
    "patch_general_vision",
    "patch_longformer",
    "patch_modernbert",
    "patch_state",
    "patch_swin",
    "patch_swinv2",
    "patch_vit",
    "unpatch",
]
