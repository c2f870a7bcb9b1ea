"""DINOv2 family: ``dinov2`` and ``dinov2_with_registers`` (``*Model``, ``*ForImageClassification``, ``*Backbone``),
on the general path (families/interface.py).

Layers: ``base.encoder.layer[i].attention`` (q_proj/k_proj/v_proj/o_proj); tokens: CLS, then (with registers)
``config.num_register_tokens`` register tokens, then the patch grid, row-major (geometry from
:class:`~.vit.ViTFamily`). DINOv2 always interpolates its position embeddings, so the grid is read from
``pixel_values`` at forward time. Register tokens are neither CLS nor patches: like CLS they are prefix tokens,
global under the local variants (they see every token and every token sees them).
"""

from __future__ import annotations

from torch import nn

from .interface import InterfaceFamily
from .vit import ViTFamily


class Dinov2Family(InterfaceFamily, ViTFamily):
    name = "dinov2"
    model_types = ("dinov2", "dinov2_with_registers")

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in base.encoder.layer]

    def num_prefix_tokens(self, config) -> int:
        return 1 + getattr(config, "num_register_tokens", 0)
