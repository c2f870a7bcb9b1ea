"""``extend_position_embeddings``: the Longformer recipe for reading past a checkpoint's 512 positions."""

from __future__ import annotations

import torch
from torch import nn

from . import sentence_transformers
from .families.tokens import position_offset, usable_positions


def extend_position_embeddings(model: nn.Module, max_len: int, tokenizer=None) -> nn.Module:
    """Grow the absolute position table to ``max_len`` positions by tiling the pretrained rows.

    As in the Longformer paper's conversion, position ``p`` starts as a copy of pretrained row
    ``p mod n`` (n = the original number of positions), so the first n positions, and every output on
    inputs of at most n tokens, are unchanged. RoBERTa-style tables keep their first ``padding_idx + 1``
    rows, which positions count from. ``config.max_position_embeddings`` and the ``position_ids`` /
    ``token_type_ids`` buffers follow. With ``tokenizer``, its ``model_max_length`` becomes ``max_len`` too (so
    ``truncation=True`` cuts there, not at the old limit). Returns the same model.

    ``model`` may be a sentence-transformers model (``SentenceTransformer``): its transformers model(s) grow where
    they have fewer than ``max_len`` positions, and its ``max_seq_length`` (where it truncates) becomes ``max_len``.
    """
    if sentence_transformers.is_sentence_transformer(model):
        if tokenizer is not None:
            raise ValueError(
                "extend_position_embeddings: tokenizer= is for transformers models; a SentenceTransformer's own "
                "tokenizer follows max_len"
            )
        return _extend_pipeline(model, max_len)
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        raise ValueError(
            f"extend_position_embeddings: {type(model).__name__} has no absolute position table "
            "(base_model.embeddings.position_embeddings); supported: BERT/RoBERTa-family models"
        )
    offset = position_offset(embeddings)
    old_len = usable_positions(model)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < old_len:
        raise ValueError(
            f"extend_position_embeddings: max_len={max_len!r}; expected an int ≥ the current {old_len} positions"
        )
    if tokenizer is not None:
        tokenizer.model_max_length = max_len
    if max_len == old_len:
        return model
    old = table.weight.data
    new = nn.Embedding(
        max_len + offset, old.shape[1], padding_idx=table.padding_idx, device=old.device, dtype=old.dtype
    )
    with torch.no_grad():
        new.weight[:offset] = old[:offset]
        reps = -(-max_len // old_len)
        new.weight[offset:] = old[offset:].repeat(reps, 1)[:max_len]
    new.weight.requires_grad_(table.weight.requires_grad)
    embeddings.position_embeddings = new
    total = max_len + offset
    if hasattr(embeddings, "position_ids"):
        embeddings.position_ids = torch.arange(total, device=old.device).expand((1, -1))
    if hasattr(embeddings, "token_type_ids"):
        embeddings.token_type_ids = torch.zeros((1, total), dtype=torch.long, device=old.device)
    model.config.max_position_embeddings = total
    return model


def _extend_pipeline(model: nn.Module, max_len: int) -> nn.Module:
    """Let a sentence-transformers pipeline read documents of ``max_len`` tokens whole: each transformers model's
    position table grows to ``max_len`` where it has fewer positions (tiled, as for a transformers model), and
    ``max_seq_length`` (the tokenizer's ``model_max_length``, where sentence-transformers truncates) becomes
    ``max_len``."""
    modules = sentence_transformers.transformer_modules(model, "extend_position_embeddings")
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
            extend_position_embeddings(hf_model, max_len)
        module.max_seq_length = max_len  # the tokenizer's model_max_length: sentence-transformers truncates there
    return model
