"""BERT family: BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA (all share ``BertSelfAttention``'s design).

Layers: ``base.encoder.layer[i].attention.self``; tokens: a 1D sequence.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..long_context import usable_positions
from ..variants import ForwardInputs
from .base import Family, PatchedModule, head_merge, head_split, key_padding_from_attention_mask


class FlexBertSelfAttentionMixin(PatchedModule):
    """HF's BERT-style self-attention with its attention computed by an hf_flexattn variant.

    Same parameters (query/key/value), same forward signature, same return value ``(output, weights)``.
    """

    def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
        forward = self.hfx_forward_masks(kwargs)
        q = head_split(self.query(hidden_states), self.attention_head_size)
        k = head_split(self.key(hidden_states), self.attention_head_size)
        v = head_split(self.value(hidden_states), self.attention_head_size)
        out, weights = self.hfx_attention(hidden_states, q, k, v, forward)
        return head_merge(out), weights


class BertFamily(Family):
    name = "bert"
    model_types = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
    required_attributes = ("query", "key", "value", "attention_head_size", "scaling")
    expected_design = "BertSelfAttention's design (query/key/value linear layers)"
    attention_mixin = FlexBertSelfAttentionMixin

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention.self for layer in base.encoder.layer]

    def check_model(self, model: nn.Module) -> None:
        if getattr(model.config, "is_decoder", False):
            raise ValueError(
                "hf_flexattn patches bidirectional encoders; this model has config.is_decoder=True "
                "(causal self-attention and cross-attention are not supported)"
            )

    def dropout_p(self, module: nn.Module) -> float:
        return module.dropout.p

    def head_dim(self, module: nn.Module) -> int:
        return module.attention_head_size

    def max_tokens(self, config) -> int:
        """The longest input the position table allows (RoBERTa's first padding_idx + 1 rows excluded)."""
        pad = getattr(config, "pad_token_id", None) if config.model_type != "bert" else None
        return config.max_position_embeddings - (0 if pad is None else pad + 1)

    def forward_inputs(self, base: nn.Module, arguments: dict[str, Any]) -> ForwardInputs:
        ids, embeds = arguments.get("input_ids"), arguments.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        batch, seq_len = ref.shape[:2]
        if arguments.get("position_ids") is None:
            _check_positions(base, seq_len)
        return ForwardInputs(
            batch=batch,
            seq_len=seq_len,
            device=ref.device,
            key_is_real=key_padding_from_attention_mask(arguments.get("attention_mask"), batch, seq_len),
        )


def _check_positions(base: nn.Module, seq_len: int) -> None:
    usable = usable_positions(base)
    if usable is not None and seq_len > usable:
        raise ValueError(
            f"input length {seq_len} exceeds the model's {usable} position embeddings; "
            f"call hf_flexattn.extend_position_embeddings(model, max_len) first"
        )
