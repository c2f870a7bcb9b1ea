"""Swin family: SwinModel, SwinForImageClassification, SwinForMaskedImageModeling.

HF's ``SwinAttention`` only ever sees pre-partitioned windows, so the module patched here is the block,
``SwinLayer`` (``base.encoder.layers[stage].blocks[i]``), which owns the windowing. The patched block keeps every
parameter where it was (``attention.q_proj`` … ``relative_position_bias.relative_position_bias_table``) and hands
its whole (padded) feature map to the variant. Each stage has its own map, read from ``input_dimensions``.

The family also says what a block's attention is beyond the tokens it attends, for the variants that serve Swin and
Swin v2 alike (variants/swin.py, variants/neighborhood.py): HF's rule for a block's window and shift, its bias table
and its scores. Swin v2 overrides these (families/swinv2.py).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from ..variants.neighborhood import SwinBlockNeighborhoodVariant
from ..variants.swin import BlockScores, SwinBlockFullVariant, SwinBlockVariant
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
    windowed_blocks = True  # the hooks below
    required_attributes = ("q_proj", "k_proj", "v_proj", "o_proj", "relative_position_bias", "head_dim", "scaling")
    expected_design = "SwinLayer with SwinAttention (q_proj/k_proj/v_proj/o_proj and a relative position bias)"
    attention_mixin = FlexSwinLayerMixin
    # each block attends its own stage's map: these variants' block forms (Swin v2's too)
    variant_overrides: ClassVar[dict[str, type]] = {
        "full": SwinBlockFullVariant, "swin": SwinBlockVariant, "neighborhood": SwinBlockNeighborhoodVariant,
    }  # fmt: skip

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
        return module.attention.attention_dropout  # the block's SwinAttention

    # --- a block's attention beyond the tokens it attends ---------------------------------------------------------

    def check_window_size(self, window: int, config, where: str) -> None:
        """Raise ``ValueError`` for a window the block cannot score (Swin: its bias table covers the checkpoint's)."""
        if window > config.window_size:
            raise ValueError(
                f"{where}: window_size={window} is larger than the checkpoint's {config.window_size}: its relative "
                f"position bias table only covers offsets up to ±{config.window_size - 1}; use window_size ≤ "
                f"{config.window_size}"
            )

    def window_and_shift(self, layer: nn.Module, dims: tuple[int, int], window: int, shift: int) -> tuple[int, int]:
        """HF Swin's rule, on the map the block sees (``dims``): a map no larger than the window is one window,
        unshifted; odd blocks shift."""
        if min(dims) <= window:
            return min(dims), 0
        return window, (shift if layer.hfx_block_idx % 2 else 0)

    def bias_table(self, layer: nn.Module) -> tuple[Tensor, int] | None:
        """The block's fixed relative position table and the window it was built for (None where the bias is
        computed per forward); the structured CPU paths gather it once per geometry."""
        bias = layer.attention.relative_position_bias
        return bias.relative_position_bias_table, bias.window_size[0]

    def block_scores(self, layer: nn.Module, q: Tensor, k: Tensor, reach: int) -> BlockScores:
        """The block's scores for (B, H, N, D) ``q``/``k`` attending offsets up to ``reach``: Swin's scaled dot
        product and its checkpoint table (offsets it does not cover get no bias)."""
        table, table_window = self.bias_table(layer)
        return BlockScores(q, k, layer.attention.scaling, table, table_window)
