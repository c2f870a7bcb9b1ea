"""sentence-transformers: a ``SentenceTransformer`` is patched, extended, saved and reloaded as a transformers model is.

A ``SentenceTransformer`` is a pipeline of modules; its ``Transformer`` module(s) hold a transformers model
(``module.auto_model``), which sentence-transformers calls as ``auto_model.forward(**features)``. Patching the
pipeline patches those models (a patched model builds its masks in its own forward, so that call works as written);
extending it grows their position tables and raises ``max_seq_length``, which is where sentence-transformers
truncates. This module recognises a pipeline and finds its models; the entry points that take one (``patch``,
``unpatch``, ``is_patched``, ``from_pretrained`` in patching.py, ``extend_position_embeddings`` in long_context.py)
call it. sentence-transformers stays optional: nothing here imports it unless the caller already has.
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


def module_folders(path, hub: dict) -> dict[str, str]:
    """Module name → its folder inside the saved pipeline (from its ``modules.json``)."""
    from transformers.utils import cached_file

    found = cached_file(str(path), "modules.json", _raise_exceptions_for_missing_entries=False, **hub)
    if not found:
        return {}
    with open(found) as f:
        return {entry["name"]: entry["path"] for entry in json.load(f)}
