"""The building blocks the scripts share, one module per concern:

- ``data``: documents and images as ``datasets`` objects (``DATA``, the shipped corpus)
- ``models``: the default checkpoint, patching from command-line options, the small vision models, the masked-LM head
- ``training``: masked-LM pieces for ``transformers.Trainer``
- ``evaluation``: masked-LM perplexity on the same masked tokens for every model, classification accuracy
- ``statistics``: paired bootstrap of two models' perplexities
- ``retrieval``: long-document retrieval sets and metrics (sentence-transformers)
- ``cards``: model cards and learning curves
- ``runs``: timing and recording a run (machine, load average), the studies' shared main
- ``cli``: argparse types (a bad value is refused naming what is allowed)

They stand on the libraries of the field: ``datasets`` for data, ``transformers.Trainer`` (and so ``accelerate``) for
training, sentence-transformers for retrieval, matplotlib for plots. Everything works offline on local files; hub
names work where there is a hub. The names below are the ones the scripts use, as ``recipes.<name>``.
"""

from .cards import describe_source, plot_learning_curve, write_model_card
from .data import (
    DATA,
    chunk_document,
    digits_dataset,
    image_transform,
    load_documents,
    load_image_dataset,
    tokenize_documents,
)
from .evaluation import (
    classification_accuracy,
    mask_document,
    masked_lm_nll,
    masked_lm_token_nll,
    summarise_nll,
    unigram_log_probability,
    unigram_token_nll,
)
from .models import (
    apply_variant,
    default_text_model,
    mlm_head,
    parse_variant_options,
    patch_sentence_transformer,
    small_vision_config,
)
from .retrieval import (
    deep_passage_queries,
    late_chunks,
    paired_retrieval_difference,
    ranks_of_relevant,
    retrieval_metrics,
    text_chunks,
    token_spans,
)
from .runs import LoadMonitor, Stopwatch, machine_description, study_main
from .statistics import bucket_sums, paired_bootstrap
from .training import MaskedPositionsLM, WindowCollator, warm_mlm_head

__all__ = [
    "DATA",
    "LoadMonitor",
    "MaskedPositionsLM",
    "Stopwatch",
    "WindowCollator",
    "apply_variant",
    "bucket_sums",
    "chunk_document",
    "classification_accuracy",
    "deep_passage_queries",
    "default_text_model",
    "describe_source",
    "digits_dataset",
    "image_transform",
    "late_chunks",
    "load_documents",
    "load_image_dataset",
    "machine_description",
    "mask_document",
    "masked_lm_nll",
    "masked_lm_token_nll",
    "mlm_head",
    "paired_bootstrap",
    "paired_retrieval_difference",
    "parse_variant_options",
    "patch_sentence_transformer",
    "plot_learning_curve",
    "ranks_of_relevant",
    "retrieval_metrics",
    "small_vision_config",
    "study_main",
    "summarise_nll",
    "text_chunks",
    "token_spans",
    "tokenize_documents",
    "unigram_log_probability",
    "unigram_token_nll",
    "warm_mlm_head",
    "write_model_card",
]
