"""DistilBERT family: ``DistilBertModel`` and every ``DistilBertFor*`` head (general path, families/interface.py).

Layers: ``base.transformer.layer[i].attention`` (``DistilBertSelfAttention``: q_lin/k_lin/v_lin/out_lin); tokens: a
1D sequence, as BERT's (token geometry from :class:`~.bert.BertFamily`).
"""

from __future__ import annotations

from torch import nn

from .bert import BertFamily
from .interface import InterfaceFamily


class DistilBertFamily(InterfaceFamily, BertFamily):
    name = "distilbert"
    model_types = ("distilbert",)
    projections = ("q_lin", "k_lin", "v_lin")

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in base.transformer.layer]

    def num_layers(self, config) -> int:
        return config.n_layers

    def max_tokens(self, config) -> int:
        return config.max_position_embeddings  # positions count from 0 (no padding offset)
