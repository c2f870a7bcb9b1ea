"""Swin family: SwinModel, SwinForImageClassification, SwinForMaskedImageModeling.

HF's ``SwinAttention`` only ever sees pre-partitioned windows, so the module patched here is the block,
``SwinLayer`` (``base.encoder.layers[stage].blocks[i]``), which owns the windowing. The patched block keeps every
parameter where it was (``attention.q_proj`` … ``relative_position_bias.relative_position_bias_table``) and hands
its whole (padded) feature map to the variant. Each stage has its own map, read from ``input_dimensions``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..variants import SwinFullVariant
from .base import Family, PatchedModule
from .tokens import PatchGridTokens


class FlexSwinLayerMixin(PatchedModule):
    """HF's Swin block with its attention computed by an hf_flexattn variant over the block's feature map.

    Same parameters, same forward signature, same return value ``(hidden_states, attention weights or None)``.
    """

    def forward(self, hidden_states, input_dimensions, always_partition=False, **kwargs):
        masks = self.hfx_forward_masks(kwargs)
        height, width = input_dimensions
        batch, _, channels = hidden_states.shape
        shortcut = hidden_states
        x = self.layernorm_before(hidden_states).view(batch, height, width, channels)
        grid = self.hfx_variant.map_shape(self, height, width)
        if grid != (height, width):  # like HF, pad the map with zeros (after the LayerNorm) to the variant's grid
            x = nn.functional.pad(x, (0, 0, 0, grid[1] - width, 0, grid[0] - height))
        out, weights = self.hfx_variant.attend_block(self, x, (height, width), masks)
        out = out[:, :height, :width].reshape(batch, height * width, channels)
        hidden_states = shortcut + self.drop_path(out)
        residual = hidden_states
        hidden_states = self.mlp(self.layernorm_after(hidden_states))
        return self.dropout(hidden_states) + residual, weights


class SwinFamily(Family):
    name = "swin"
    # no prefix tokens; HF pads the image to whole patches
    tokens = PatchGridTokens(prefix_tokens=lambda config: 0, pad_to_patch=True)
    hierarchical = True
    required_attributes = ("q_proj", "k_proj", "v_proj", "o_proj", "relative_position_bias", "head_dim", "scaling")
    expected_design = "SwinLayer with SwinAttention (q_proj/k_proj/v_proj/o_proj and a relative position bias)"
    attention_mixin = FlexSwinLayerMixin
    variant_overrides: ClassVar[dict] = {"full": SwinFullVariant}

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [block for stage in base.encoder.layers for block in stage.blocks]

    def num_layers(self, config) -> int:
        return sum(config.depths)

    def block_index(self, base: nn.Module, layer_idx: int) -> int:
        for stage in base.encoder.layers:
            if layer_idx < len(stage.blocks):
                return layer_idx
            layer_idx -= len(stage.blocks)
        raise IndexError(layer_idx)

    def checked_part(self, module: nn.Module):
        return getattr(module, "attention", None), f"{type(module).__name__}.attention"

    def dropout_p(self, module: nn.Module) -> float:
        return module.attention_dropout
