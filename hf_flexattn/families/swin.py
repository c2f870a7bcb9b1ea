"""Swin family: SwinModel, SwinForImageClassification, SwinForMaskedImageModeling.

HF's ``SwinAttention`` only ever sees pre-partitioned windows, so the module patched here is the block,
``SwinLayer`` (``base.encoder.layers[stage].blocks[i]``), which owns the windowing. The patched block keeps every
parameter where it was (``attention.q_proj`` … ``relative_position_bias.relative_position_bias_table``) and
computes its attention as one flex call over the (padded) feature map, with no partition/roll round trip.
Each stage has its own grid, read from ``input_dimensions`` at forward time.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..variants.base import ForwardInputs
from ..variants.swin import SwinVariant
from .base import Family, head_merge, head_split, masks_from_kwargs


class FlexSwinLayerMixin:
    """HF's Swin block with its attention computed by an hf_flexattn variant over the whole feature map.

    Same parameters, same forward signature, same return value ``(hidden_states, None)``.
    """

    def forward(self, hidden_states, input_dimensions, always_partition=False, **kwargs):
        masks = masks_from_kwargs(self, kwargs)
        height, width = input_dimensions
        batch, _, channels = hidden_states.shape
        shortcut = hidden_states
        x = self.layernorm_before(hidden_states).view(batch, height, width, channels)
        grid = self.hfx_variant.grid_shape(self, height, width)
        # like HF, pad the map with zeros (after the LayerNorm) to the grid the variant works on
        x = nn.functional.pad(x, (0, 0, 0, grid[1] - width, 0, grid[0] - height)).view(batch, -1, channels)
        attention = self.attention
        q = head_split(attention.q_proj(x), attention.head_dim)
        k = head_split(attention.k_proj(x), attention.head_dim)
        v = head_split(attention.v_proj(x), attention.head_dim)
        out = self.hfx_variant.attend_grid(self, q, k, v, (height, width), grid, masks)
        out = self.dropout(attention.o_proj(head_merge(out))).view(batch, grid[0], grid[1], channels)
        out = out[:, :height, :width].reshape(batch, height * width, channels)
        hidden_states = shortcut + self.drop_path(out)
        residual = hidden_states
        hidden_states = self.mlp(self.layernorm_after(hidden_states))
        return self.dropout(hidden_states) + residual, None

    def extra_repr(self) -> str:
        return self.hfx_variant.extra_repr()


class SwinFullVariant(SwinVariant):
    """Swin's own attention is its shifted-window attention: for Swin, ``full`` is ``swin`` with its defaults."""

    name = "full"
    families = ("swin",)
    options = {}


class SwinFamily(Family):
    name = "swin"
    model_types = ("swin",)
    required_attributes = ("q_proj", "k_proj", "v_proj", "o_proj", "relative_position_bias", "head_dim", "scaling")
    expected_design = "SwinLayer with SwinAttention (q_proj/k_proj/v_proj/o_proj and a relative position bias)"
    attention_mixin = FlexSwinLayerMixin
    masks_per_layer = False
    variant_overrides = {"full": SwinFullVariant}

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [block for stage in base.encoder.layers for block in stage.blocks]

    def block_index(self, base: nn.Module, layer_idx: int) -> int:
        for stage in base.encoder.layers:
            if layer_idx < len(stage.blocks):
                return layer_idx
            layer_idx -= len(stage.blocks)
        raise IndexError(layer_idx)

    def checked_part(self, module: nn.Module):
        return getattr(module, "attention", None), f"{type(module).__name__}.attention"

    def dropout_p(self, module: nn.Module) -> float:
        return module.attention_dropout if module.training else 0.0

    def config_grid(self, config) -> tuple[int, int]:
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        return -(-size // patch), -(-size // patch)

    def forward_inputs(self, base: nn.Module, arguments: dict[str, Any]) -> ForwardInputs:
        pixels = arguments.get("pixel_values")
        if pixels is None:
            raise ValueError("You have to specify pixel_values")
        patch = base.config.patch_size if isinstance(base.config.patch_size, int) else base.config.patch_size[0]
        grid = (-(-pixels.shape[2] // patch), -(-pixels.shape[3] // patch))
        return ForwardInputs(batch=pixels.shape[0], seq_len=grid[0] * grid[1], device=pixels.device, grid=grid)
