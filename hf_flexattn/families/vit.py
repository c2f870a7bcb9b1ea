"""ViT family: ViT and DeiT (``ViTAttention`` with q_proj/k_proj/v_proj/o_proj), on the one patching path
(families/interface.py).

Layers: ``base.layers[i].attention``; tokens: CLS (+ DeiT's distillation token) then the patch grid, row-major.
The grid is read from ``pixel_values`` at forward time, so ``interpolate_pos_encoding=True`` works.
"""

from __future__ import annotations

from torch import nn

from .interface import InterfaceFamily
from .tokens import PatchGridTokens

# tokens in front of the patch grid
_PREFIX_TOKENS = {"vit": 1, "deit": 2}


class ViTFamily(InterfaceFamily):
    name = "vit"
    tokens = PatchGridTokens(prefix_tokens=lambda config: _PREFIX_TOKENS[config.model_type])

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in base.layers]
