"""ViT family: ViT and DeiT (``ViTAttention`` with q_proj/k_proj/v_proj/o_proj).

Layers: ``base.layers[i].attention``; tokens: CLS (+ DeiT's distillation token) then the patch grid, row-major.
The grid is read from ``pixel_values`` at forward time, so ``interpolate_pos_encoding=True`` works.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..variants.base import ForwardInputs
from .base import Family, head_merge, head_split, key_padding_from_attention_mask, masks_from_kwargs


class FlexViTAttentionMixin:
    """HF's ViT attention with its attention computed by an hf_flexattn variant.

    Same parameters (q_proj/k_proj/v_proj/o_proj), same forward signature, same return value ``(output, None)``.
    """

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        masks = masks_from_kwargs(self, kwargs)
        q = head_split(self.q_proj(hidden_states), self.head_dim)
        k = head_split(self.k_proj(hidden_states), self.head_dim)
        v = head_split(self.v_proj(hidden_states), self.head_dim)
        out = self.hfx_variant.attend(self, hidden_states, q, k, v, masks)
        return self.o_proj(head_merge(out)), None

    def extra_repr(self) -> str:
        return self.hfx_variant.extra_repr()


# tokens in front of the patch grid
_PREFIX_TOKENS = {"vit": 1, "deit": 2}


class ViTFamily(Family):
    name = "vit"
    model_types = tuple(_PREFIX_TOKENS)
    required_attributes = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
    expected_design = "ViTAttention's design (q_proj/k_proj/v_proj/o_proj)"
    attention_mixin = FlexViTAttentionMixin

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in base.layers]

    def dropout_p(self, module: nn.Module) -> float:
        return module.attention_dropout if module.training else 0.0

    def num_prefix_tokens(self, config) -> int:
        return _PREFIX_TOKENS[config.model_type]

    def grid_shape(self, config, height: int, width: int) -> tuple[int, int]:
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        return height // patch, width // patch

    def config_grid(self, config) -> tuple[int, int]:
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return self.grid_shape(config, size, size)

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
