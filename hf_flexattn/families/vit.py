"""ViT family: ViT and DeiT (``ViTAttention`` with q_proj/k_proj/v_proj/o_proj).

Layers: ``base.layers[i].attention``; tokens: CLS (+ DeiT's distillation token) then the patch grid, row-major.
The grid is read from ``pixel_values`` at forward time, so ``interpolate_pos_encoding=True`` works.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import checks
from ..variants import ForwardInputs
from .base import Family, PatchedModule, head_merge, head_split, key_padding_from_attention_mask


class FlexViTAttentionMixin(PatchedModule):
    """HF's ViT attention with its attention computed by an hf_flexattn variant.

    Same parameters (q_proj/k_proj/v_proj/o_proj), same forward signature, same return value ``(output, weights)``.
    """

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        forward = self.hfx_forward_masks(kwargs)
        q = head_split(self.q_proj(hidden_states), self.head_dim)
        k = head_split(self.k_proj(hidden_states), self.head_dim)
        v = head_split(self.v_proj(hidden_states), self.head_dim)
        out, weights = self.hfx_attention(hidden_states, q, k, v, forward)
        return self.o_proj(head_merge(out)), weights


# tokens in front of the patch grid
_PREFIX_TOKENS = {"vit": 1, "deit": 2}


class ViTFamily(Family):
    name = "vit"
    model_types = tuple(_PREFIX_TOKENS)
    spatial_dims = 2
    required_attributes = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
    expected_design = "ViTAttention's design (q_proj/k_proj/v_proj/o_proj)"
    attention_mixin = FlexViTAttentionMixin

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in base.layers]

    def dropout_p(self, module: nn.Module) -> float:
        return module.attention_dropout

    def num_prefix_tokens(self, config) -> int:
        return _PREFIX_TOKENS[config.model_type]

    def grid_shape(self, config, height: int, width: int) -> tuple[int, int]:
        patch = checks.int_or_pair("patch_size", config.patch_size)
        return height // patch[0], width // patch[1]

    def config_grid(self, config) -> tuple[int, int]:
        return self.grid_shape(config, *checks.int_or_pair("image_size", config.image_size))

    def max_tokens(self, config) -> int:
        rows, cols = self.config_grid(config)
        return self.num_prefix_tokens(config) + rows * cols

    def forward_inputs(self, base: nn.Module, arguments: dict[str, Any]) -> ForwardInputs:
        pixels = arguments.get("pixel_values")
        if pixels is None:
            raise ValueError("You have to specify pixel_values")
        batch, _, height, width = pixels.shape
        grid = self.grid_shape(base.config, height, width)
        prefix = self.num_prefix_tokens(base.config)
        seq_len = prefix + grid[0] * grid[1]
        return ForwardInputs(
            batch=batch,
            seq_len=seq_len,
            device=pixels.device,
            key_is_real=key_padding_from_attention_mask(arguments.get("attention_mask"), batch, seq_len),
            grid=grid,
            num_prefix_tokens=prefix,
        )

    def native_inputs(self, config, batch, seq_len, key_is_real, device) -> ForwardInputs:
        """transformers passes lengths only: the grid is the config's, and any other token count is refused
        (an interpolated image of another size would need ``hf_flexattn.patch``, which reads the pixels)."""
        grid, prefix = self.config_grid(config), self.num_prefix_tokens(config)
        if seq_len != prefix + grid[0] * grid[1]:
            raise ValueError(
                f"attn_implementation='hf_flexattn_*' on {config.model_type}: the input has {seq_len} tokens, but the "
                f"config's {grid[0]}x{grid[1]} patch grid has {prefix + grid[0] * grid[1]}; transformers hands "
                "attention implementations lengths only, so other image sizes need hf_flexattn.patch(model, ...), "
                "which reads the grid from pixel_values"
            )
        return ForwardInputs(batch, seq_len, device, key_is_real=key_is_real, grid=grid, num_prefix_tokens=prefix)
