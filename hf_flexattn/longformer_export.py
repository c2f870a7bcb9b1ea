"""Back out to plain transformers: a BERT/RoBERTa model patched with ``longformer`` as a native HF Longformer.

The Longformer paper's conversion (a RoBERTa checkpoint, positions extended by tiling, global projections copied
from the local ones) is what ``extend_position_embeddings`` + ``patch(model, "longformer", global_projections=True)``
set up; once trained, :func:`to_longformer` writes the same function as a ``Longformer*`` model that transformers
loads without hf_flexattn:

    model = hf_flexattn.to_longformer(patched)          # LongformerForMaskedLM, ...ForSequenceClassification, ...
    model.save_pretrained("my-longformer")               # or hf_flexattn.save_as_longformer(patched, path)

Same weights, per-layer ``attention_window`` from ``window``, the global projections (copies of the local ones when
the model was patched with ``global_projections=False``: that is what those rows compute). What maps:

* heads: ``*Model`` → ``LongformerModel``; ``*ForMaskedLM`` → ``LongformerForMaskedLM`` (HF's Longformer LM head
  applies GELU: BERT's transform must use ``hidden_act="gelu"``); ``*ForSequenceClassification`` (BERT's pooler +
  classifier, RoBERTa's classification head: both dense → tanh → projection of [CLS]);
  ``*ForTokenClassification``; ``*ForQuestionAnswering``;
* globals: HF Longformer has no fixed global positions, only ``global_attention_mask`` per call and its heads'
  automatic ones. So ``global_tokens`` must be ``[0]`` exactly for sequence classification (whose HF head always
  makes [CLS] global when it is given no ``global_attention_mask``: a mask passed to it must mark [CLS] too) and
  empty otherwise (pass ``global_attention_mask=`` to the exported model instead). HF's
  question-answering head makes the question tokens global when no ``global_attention_mask`` is given: pass one
  to get the patched model's outputs;
* positions: Longformer counts positions RoBERTa's way (from ``pad_token_id + 1``, padding tokens skipped). A
  BERT table is shifted accordingly, so outputs agree on right-padded inputs whose padding is ``pad_token_id``.

Anything else (another variant, ELECTRA's embedding projection, relative positions, another head) raises
``ValueError`` naming it.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from .patching import patch_state

# source model types whose encoder is BERT's layer for layer; their position tables count from
_SOURCES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
_HEADS = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
# configuration fields that are the source model's own, not Longformer's
_NOT_COPIED = ("model_type", "architectures", "hf_flexattn", "position_embedding_type", "transformers_version")


def to_longformer(model: nn.Module) -> nn.Module:
    """A native transformers ``Longformer*`` model computing what the patched ``model`` computes (see the module
    docstring for what maps). ``model`` is left as it is."""
    import transformers

    state = patch_state(model)
    where = "to_longformer"
    if state is None or state.variant.name != "longformer":
        variant = None if state is None else state.variant.name
        raise ValueError(
            f"{where}: model is patched with variant={variant!r}; only variant='longformer' has a native Longformer "
            "equivalent (sliding window + global tokens)"
        )
    config = model.config
    kind = _SOURCES.get(config.model_type)
    if kind is None or state.family.name != "bert":
        raise ValueError(
            f"{where}: model_type={config.model_type!r}; a native Longformer holds BERT's layers with absolute "
            f"positions: {', '.join(_SOURCES)}"
        )
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{where}: position_embedding_type={config.position_embedding_type!r}; Longformer has absolute positions"
        )
    head = type(model).__name__
    suffix = next((s for s in _HEADS if head.endswith(s) and head[: -len(s)] in _PREFIXES), None)
    if suffix is None:
        raise ValueError(
            f"{where}: {head} has no Longformer head; supported: "
            + ", ".join(f"<model>{s}" for s in _HEADS)
            + " (e.g. BertForMaskedLM, RobertaForSequenceClassification)"
        )
    options = state.variant.options
    wanted_globals = (0,) if suffix == "ForSequenceClassification" else ()
    if tuple(options.global_tokens) != wanted_globals:
        raise ValueError(
            f"{where}: global_tokens={list(options.global_tokens)} on {head}; HF Longformer has no fixed global "
            "positions: "
            + (
                "its sequence-classification head always makes [CLS] global, so patch with global_tokens=[0]"
                if wanted_globals
                else "patch without global_tokens and pass global_attention_mask= to the exported model's forward"
            )
        )
    if suffix == "ForMaskedLM" and kind == "bert" and config.hidden_act != "gelu":
        raise ValueError(
            f"{where}: hidden_act={config.hidden_act!r}; HF Longformer's LM head applies 'gelu' in its transform"
        )

    offset = config.pad_token_id + 1 if kind == "bert" else 0  # a BERT table moves up to RoBERTa's positions
    values = {k: v for k, v in config.to_dict().items() if k not in _NOT_COPIED and not k.startswith("_")}
    values["max_position_embeddings"] = config.max_position_embeddings + offset
    values["attention_window"] = list(state.variant.windows)
    if options.attention_dropout == "off":
        values["attention_probs_dropout_prob"] = 0.0
    longformer_config = transformers.LongformerConfig(**values)
    target_class = getattr(transformers, "Longformer" + suffix)
    weights = _longformer_weights(model, suffix, kind, offset, options.global_projections)
    target = target_class(longformer_config)
    missing, unexpected = target.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in _TIED]
    if missing or unexpected:
        raise ValueError(f"{where}: {head}'s weights do not fill {target_class.__name__}: {missing or unexpected}")
    target.tie_weights()
    return target.to(next(model.parameters()).dtype).train(model.training)


def save_as_longformer(model: nn.Module, save_directory: str | os.PathLike, tokenizer=None) -> nn.Module:
    """:func:`to_longformer`, saved with ``save_pretrained`` (and ``tokenizer``, if given); returns the model."""
    longformer = to_longformer(model)
    longformer.save_pretrained(save_directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
    return longformer


# the Longformer heads' own names for what a BERT/RoBERTa head calls otherwise
_PREFIXES = ("Bert", "Roberta", "XLMRoberta", "Camembert")
_TIED = ("lm_head.decoder.weight", "lm_head.decoder.bias")
_BERT_HEAD = {
    "ForMaskedLM": {
        "cls.predictions.transform.dense.": "lm_head.dense.",
        "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
        "cls.predictions.decoder.": "lm_head.decoder.",
        "cls.predictions.bias": "lm_head.bias",
    },
    "ForSequenceClassification": {"bert.pooler.dense.": "classifier.dense.", "classifier.": "classifier.out_proj."},
}
_DROPPED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _longformer_weights(model: nn.Module, suffix: str, kind: str, offset: int, global_projections: bool) -> dict:
    """The patched model's state dict under Longformer's names."""
    source = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prefix = model.base_model_prefix + "."
    head_names = _BERT_HEAD.get(suffix, {}) if kind == "bert" else {}
    weights = {}
    for key, value in source.items():
        renamed = next((new + key[len(old) :] for old, new in head_names.items() if key.startswith(old)), None)
        if renamed is not None:
            weights[renamed] = value
            continue
        inner = key[len(prefix) :] if key.startswith(prefix) else key
        if inner in _DROPPED_BUFFERS or (inner.startswith("pooler.") and suffix != "Model"):
            continue
        if key.startswith(prefix) or suffix == "Model":
            weights[inner if suffix == "Model" else "longformer." + inner] = value
        else:
            weights[key] = value  # a head whose names Longformer shares (classifier, qa_outputs, lm_head)
    base = "" if suffix == "Model" else "longformer."
    if offset:
        table = weights[base + "embeddings.position_embeddings.weight"]
        shifted = torch.zeros(table.shape[0] + offset, table.shape[1], dtype=table.dtype)
        shifted[offset:] = table
        weights[base + "embeddings.position_embeddings.weight"] = shifted
    if not global_projections:  # global rows used the local projections: the global ones are their copies
        for key in [k for k in weights if ".attention.self." in k]:
            for part in ("query", "key", "value"):
                marker = f".attention.self.{part}."
                if marker in key:
                    weights[key.replace(marker, f".attention.self.{part}_global.")] = copy.deepcopy(weights[key])
    return weights
