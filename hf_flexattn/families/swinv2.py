"""Swin v2 family: ``Swinv2Model``, ``Swinv2ForImageClassification``, ``Swinv2ForMaskedImageModeling``,
``Swinv2Backbone``.

As for Swin, HF's attention only sees pre-partitioned windows, so the patched module is the block,
``Swinv2Layer`` (``base.encoder.layers[stage].blocks[i]``), which hands its (padded) feature map to the variant; the
variants are Swin v2's own (variants/swinv2.py: cosine attention, continuous position bias). Every parameter stays
where it was (``attention.self.query`` … ``attention.self.continuous_position_bias_mlp``, ``logit_scale``). HF's
Swin v2 layers take no keyword arguments, and nothing a block attends depends on more than its map, so blocks build
(and cache) their masks themselves.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..variants.swinv2 import Swinv2FullVariant, Swinv2NeighborhoodVariant, Swinv2WindowVariant
from ..warnings import warn_once
from .base import PatchedModule, head_merge, head_split
from .swin import SwinFamily


class FlexSwinv2LayerMixin(PatchedModule):
    """HF's Swin v2 block with its attention computed by an hf_flexattn variant over the whole feature map.

    Same parameters, same forward signature, same return value (``(hidden_states,)``, plus ``None`` for the
    attention weights when ``output_attentions``).
    """

    def forward(self, hidden_states, input_dimensions, output_attentions=False):
        if output_attentions:
            warn_once(
                "swinv2-attentions",
                "hf_flexattn: patched Swin v2 blocks do not return attention weights (their attentions are None); "
                "hf_flexattn.unpatch(model) gives HF's own, with the same weights",
            )
        height, width = input_dimensions
        batch, _, channels = hidden_states.shape
        shortcut = hidden_states
        grid = self.hfx_variant.map_shape(self, height, width)
        # like HF, pad the map with zeros to the grid the variant works on (Swin v2 normalises after attention)
        x = hidden_states.view(batch, height, width, channels)
        x = nn.functional.pad(x, (0, 0, 0, grid[1] - width, 0, grid[0] - height)).view(batch, -1, channels)
        attention = self.attention.self
        q = head_split(attention.query(x), attention.attention_head_size)
        k = head_split(attention.key(x), attention.attention_head_size)
        v = head_split(attention.value(x), attention.attention_head_size)
        out = self.hfx_variant.attend_map(self, q, k, v, (height, width), grid, None)
        out = self.attention.output(head_merge(out), x).view(batch, grid[0], grid[1], channels)
        out = out[:, :height, :width].reshape(batch, height * width, channels)
        # Swin v2's residual post-norm: LayerNorm after attention and after the MLP
        hidden_states = shortcut + self.drop_path(self.layernorm_before(out))
        layer_output = self.output(self.intermediate(hidden_states))
        layer_output = hidden_states + self.drop_path(self.layernorm_after(layer_output))
        return (layer_output, None) if output_attentions else (layer_output,)


class Swinv2Family(SwinFamily):
    name = "swinv2"
    required_attributes = (
        "query", "key", "value", "logit_scale", "continuous_position_bias_mlp", "window_size",
        "pretrained_window_size", "attention_head_size", "num_attention_heads",
    )  # fmt: skip
    expected_design = (
        "Swinv2Layer with Swinv2SelfAttention (query/key/value, logit_scale, continuous_position_bias_mlp)"
    )
    attention_mixin = FlexSwinv2LayerMixin
    variant_overrides: ClassVar[dict[str, type]] = {
        "full": Swinv2FullVariant, "swin": Swinv2WindowVariant, "neighborhood": Swinv2NeighborhoodVariant,
    }  # fmt: skip

    def checked_part(self, module: nn.Module):
        attention = getattr(module, "attention", None)
        return getattr(attention, "self", None), f"{type(module).__name__}.attention.self"

    def dropout_p(self, module: nn.Module) -> float:
        return module.attention.self.dropout.p
