"""sentence-transformers: a ``SentenceTransformer`` is patched, extended, saved and reloaded as a transformers model is.

A ``SentenceTransformer`` is a pipeline of modules; its ``Transformer`` module(s) hold a transformers model
(``module.auto_model``), which sentence-transformers calls as ``auto_model.forward(**features)``. Patching the
pipeline patches those models (a patched model builds its masks in its own forward, so that call works as written);
extending it grows their position tables and raises ``max_seq_length``, which is where sentence-transformers
truncates. sentence-transformers stays optional: nothing here imports it unless the caller already has.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from torch import nn


def is_sentence_transformer(model: Any) -> bool:
    """Whether ``model`` is a sentence-transformers model (``SentenceTransformer``, ``CrossEncoder``, ...).

    An object can only be one if sentence-transformers is imported already, so this never imports it."""
    return is_sentence_transformer_class(type(model))


def is_sentence_transformer_class(cls: type) -> bool:
    """Whether ``cls`` is a sentence-transformers model class (never imports the library)."""
    if sys.modules.get("sentence_transformers") is None:
        return False
    from sentence_transformers.base.model import BaseModel

    return issubclass(cls, BaseModel)


def transformer_modules(model: nn.Module, where: str) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, module, hf_model)`` for every module of the pipeline that holds a transformers model hf_flexattn
    supports (``module.auto_model``); ``ValueError`` naming the modules if there is none, or if one holds a model
    hf_flexattn cannot patch (so a pipeline is patched whole or not at all)."""
    from transformers import PreTrainedModel

    from .families import family_for

    found = []
    for name, module in model.named_modules():
        hf_model = getattr(module, "auto_model", None) if module is not model else None
        if not isinstance(hf_model, PreTrainedModel):
            continue
        try:
            family_for(hf_model.config)
        except ValueError as error:
            raise ValueError(f"{where}: model's module {name!r} ({type(module).__name__}): {error}") from None
        found.append((name, module, hf_model))
    if not found:
        modules = ", ".join(f"{name}: {type(module).__name__}" for name, module in model.named_children())
        raise ValueError(
            f"{where}: model is a {type(model).__name__} whose modules ({modules}) hold no transformers model "
            "(a module with .auto_model, such as sentence_transformers' Transformer); hf_flexattn patches those"
        )
    return found


def patch(model: nn.Module, variant, options: dict) -> nn.Module:
    """Patch every transformers model inside the pipeline with the same variant and options (all or none)."""
    from . import patching

    done = []
    try:
        for _, _, hf_model in transformer_modules(model, "patch"):
            patching.patch(hf_model, variant, **options)
            done.append(hf_model)
    except BaseException:
        for hf_model in done:
            patching.unpatch(hf_model)
        raise
    return model


def unpatch(model: nn.Module) -> nn.Module:
    from . import patching

    patched = [hf_model for _, _, hf_model in transformer_modules(model, "unpatch") if patching.is_patched(hf_model)]
    if not patched:
        raise ValueError("unpatch: model is not patched by hf_flexattn (nothing to undo)")
    for hf_model in patched:
        patching.unpatch(hf_model)
    return model


def is_patched(model: nn.Module) -> bool:
    """Whether the pipeline's transformers models are patched (``patch`` patches all of them or none); False for a
    pipeline with none hf_flexattn supports (a question, not a request to patch)."""
    from . import patching

    try:
        modules = transformer_modules(model, "is_patched")
    except ValueError:
        return False
    return any(patching.is_patched(hf_model) for _, _, hf_model in modules)


def extend_position_embeddings(model: nn.Module, max_len: int) -> nn.Module:
    """Let the pipeline read documents of ``max_len`` tokens whole: each transformers model's position table grows
    to ``max_len`` where it has fewer positions (tiled, as for a transformers model), and ``max_seq_length`` (the
    tokenizer's ``model_max_length``, where sentence-transformers truncates) becomes ``max_len``."""
    from .long_context import extend_position_embeddings as extend_model
    from .long_context import usable_positions

    modules = transformer_modules(model, "extend_position_embeddings")
    for name, module, _ in modules:
        current = module.max_seq_length
        if isinstance(max_len, bool) or not isinstance(max_len, int) or (current is not None and max_len < current):
            raise ValueError(
                f"extend_position_embeddings: max_len={max_len!r}; expected an int ≥ module {name!r}'s current "
                f"max_seq_length={current}"
            )
    for _, module, hf_model in modules:
        positions = usable_positions(hf_model)
        if positions is not None and max_len > positions:
            extend_model(hf_model, max_len)
        module.max_seq_length = max_len  # the tokenizer's model_max_length: sentence-transformers truncates there
    return model


def from_pretrained(model_class: type, path, **kwargs) -> nn.Module:
    """Load a pipeline saved (``model.save(path)``) from a patched one, patched the same way, extra weights included.

    ``model_class`` is the sentence-transformers class (``SentenceTransformer``); ``kwargs`` go to its constructor
    (``device``, ``revision``, ``cache_folder``, ``token``, ``local_files_only``, ...). Each transformers model's
    variant and options are read from its saved ``config.hf_flexattn``.
    """
    from . import patching

    model = model_class(str(path), **kwargs)
    hub = {"revision": kwargs.get("revision"), "token": kwargs.get("token"), "cache_dir": kwargs.get("cache_folder")}
    hub = {k: v for k, v in hub.items() if v is not None}
    if kwargs.get("local_files_only"):
        hub["local_files_only"] = True
    folders = _module_folders(path, hub)
    patched = 0
    for name, _, hf_model in transformer_modules(model, "from_pretrained"):
        spec = hf_model.config.__dict__.pop(patching.CONFIG_KEY, None)
        if spec is None:
            continue
        stock_keys = set(hf_model.state_dict())
        patching.patch(hf_model, spec["variant"], **spec.get("options", {}))
        added = [k for k in hf_model.state_dict() if k not in stock_keys]
        if added:
            if name not in folders:
                raise ValueError(f"from_pretrained: {str(path)!r} has no folder for module {name!r} in modules.json")
            subfolder = {"subfolder": folders[name]} if folders[name] else {}
            patching._load_added_weights(hf_model, path, added, {**hub, **subfolder})
        patched += 1
    if not patched:
        raise ValueError(
            f"from_pretrained: {str(path)!r} has no transformers model with config.{patching.CONFIG_KEY}; it was not "
            "saved from a patched model"
        )
    return model


def _module_folders(path, hub: dict) -> dict[str, str]:
    """Module name → its folder inside the saved pipeline (from its ``modules.json``)."""
    from transformers.utils import cached_file

    found = cached_file(str(path), "modules.json", _raise_exceptions_for_missing_entries=False, **hub)
    if not found:
        return {}
    with open(found) as f:
        return {entry["name"]: entry["path"] for entry in json.load(f)}
