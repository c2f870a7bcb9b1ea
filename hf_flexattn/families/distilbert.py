"""DistilBERT family: ``DistilBertModel`` and every ``DistilBertFor*`` head (general path, families/interface.py).

Layers: ``base.transformer.layer[i].attention`` (``DistilBertSelfAttention``: q_lin/k_lin/v_lin/out_lin); tokens: a
1D sequence, as BERT's.
"""

from __future__ import annotations

from torch import nn

from .interface import InterfaceFamily
from .tokens import TextTokens


class DistilBertFamily(InterfaceFamily):
    name = "distilbert"
    tokens = TextTokens(position_offset=False)  # positions count from 0 (no padding offset)
    projections = ("q_lin", "k_lin", "v_lin")

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in base.transformer.layer]

    def num_layers(self, config) -> int:
        return config.n_layers
