"""HF Longformer family: ``longformer`` checkpoints (``LongformerModel`` and every ``LongformerFor*`` head).

Layers: ``base.encoder.layer[i].attention.self`` (``LongformerSelfAttention``: query/key/value and the checkpoint's
own query_global/key_global/value_global); tokens: a 1D sequence, RoBERTa's positions.

HF's ``LongformerSelfAttention`` has a forward of its own (sliding chunks, not transformers' attention interface),
and ``LongformerModel.forward`` pads the input to a multiple of the window and folds ``global_attention_mask`` into
``attention_mask == 2`` before the layers see it. Patched, the same function is computed by the ``longformer``
variant (window ± w/2 per layer, global rows from the global projections over every real key, every other row its
window plus the global keys), so:

* the base model's forward is :class:`FlexLongformerModelMixin`'s: embeddings, then the layers with the forward's
  masks in their ``attention_mask`` slot (HF's layers pass that slot to the self-attention unchanged), then the
  pooler. No padding to the window: the masks need none. ``global_attention_mask`` (and the heads' automatic
  globals: sequence classification's [CLS], question answering's question tokens, which the heads pass as
  ``global_attention_mask``) is read by the patched base model's forward (by name, however it was passed);
* ``patch(model, "longformer")`` with no options takes the checkpoint's per-layer ``config.attention_window``; a
  ``window`` option overrides it (an int, or one per layer). The global projections are the checkpoint's own.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from ..variants import ForwardInputs, ForwardMasks
from ..variants.longformer import CheckpointLongformerVariant
from .base import Family, PatchedModule, head_merge, head_split
from .tokens import TextTokens


class FlexLongformerSelfAttentionMixin(PatchedModule):
    """HF's ``LongformerSelfAttention`` with its attention computed by the ``longformer`` variant.

    Same parameters (query/key/value and query_global/key_global/value_global), same forward signature, same return
    value ``(output,)`` (+ the attention probabilities with ``output_attentions``). ``attention_mask`` carries the
    forward's :class:`ForwardMasks` (see :class:`FlexLongformerModelMixin`); HF's other mask arguments are unused.
    """

    @property
    def scaling(self) -> float:
        # HF divides the (local and global) queries by sqrt(head_dim)
        return self.head_dim**-0.5

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        is_index_masked=None,
        is_index_global_attn=None,
        is_global_attn=None,
        output_attentions=False,
    ):
        if not isinstance(attention_mask, ForwardMasks):
            raise RuntimeError(
                f"{type(self).__name__} was called without the masks that hf_flexattn builds in the base model's "
                "forward; call the patched model (or its base model), not a layer on its own"
            )
        q = head_split(self.query(hidden_states), self.head_dim)
        k = head_split(self.key(hidden_states), self.head_dim)
        v = head_split(self.value(hidden_states), self.head_dim)
        out, weights = self.hfx_attention(hidden_states, q, k, v, attention_mask)
        return (head_merge(out),) if weights is None else (head_merge(out), weights)


class FlexLongformerModelMixin:
    """HF's ``LongformerModel`` whose forward runs the layers with hf_flexattn's masks (see the module docstring).

    Same signature and outputs as HF's forward; ``attentions`` (with ``output_attentions``) are the variant's
    (batch, heads, N, N) probabilities (global rows included), and ``global_attentions`` is None.
    """

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        from transformers.models.longformer.modeling_longformer import LongformerBaseModelOutputWithPooling

        masks = kwargs.pop("hfx_masks", None)
        if masks is None:
            raise RuntimeError(
                f"{type(self).__name__}.forward was called without the masks hf_flexattn builds for a patched model"
            )
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict

        hidden_states = self.embeddings(
            input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds
        )
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.encoder.layer:
            layer_outputs = layer(hidden_states, attention_mask=masks, output_attentions=output_attentions)
            hidden_states = layer_outputs[0]
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (layer_outputs[1],)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        if not return_dict:
            return tuple(v for v in (hidden_states, pooled, all_hidden_states, all_attentions) if v is not None)
        return LongformerBaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            global_attentions=None,
        )


class LongformerFamily(Family):
    name = "longformer"
    global_projections = True  # query_global/key_global/value_global: every variant must compute global rows with them
    added_parameters = False
    required_attributes = ("query", "key", "value", "query_global", "key_global", "value_global", "head_dim")
    expected_design = "LongformerSelfAttention's design (query/key/value and query_global/key_global/value_global)"
    attention_mixin = FlexLongformerSelfAttentionMixin
    tokens = TextTokens()  # RoBERTa's positions, counted from pad_token_id + 1
    base_model_mixin = FlexLongformerModelMixin
    variant_overrides: ClassVar[dict[str, type]] = {"longformer": CheckpointLongformerVariant}
    native_refusal = "LongformerSelfAttention does not call transformers' attention interface"

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention.self for layer in base.encoder.layer]

    def dropout_p(self, module: nn.Module) -> float:
        return module.dropout  # HF keeps the rate as a float

    def forward_inputs(self, base: nn.Module, arguments: dict[str, Any]) -> ForwardInputs:
        if arguments.get("input_ids") is not None and arguments.get("inputs_embeds") is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        return self.tokens.forward_inputs(base, arguments)
