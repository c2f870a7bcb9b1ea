"""BERT family: BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA (all share ``BertSelfAttention``'s design).

Layers: ``base.encoder.layer[i].attention.self`` (query/key/value), on the one patching path
(families/interface.py); tokens: a 1D sequence.
"""

from __future__ import annotations

from torch import nn

from .interface import InterfaceFamily
from .tokens import TextTokens


class BertFamily(InterfaceFamily):
    name = "bert"
    tokens = TextTokens()
    projections = ("query", "key", "value")

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention.self for layer in base.encoder.layer]
