"""DINOv2 family: ``dinov2`` and ``dinov2_with_registers`` (``*Model``, ``*ForImageClassification``, ``*Backbone``),
on the patching path of families/interface.py.

Layers: ``base.encoder.layer[i].attention`` (q_proj/k_proj/v_proj/o_proj); tokens: CLS, then (with registers)
``config.num_register_tokens`` register tokens, then the patch grid, row-major. DINOv2 always interpolates its
position embeddings, so the grid is read from ``pixel_values`` at forward time. Register tokens are neither CLS nor
patches: like CLS they are prefix tokens, global under the local variants (they see every token and every token
sees them).
"""

from __future__ import annotations

from torch import nn

from .interface import InterfaceFamily
from .tokens import PatchGridTokens


class Dinov2Family(InterfaceFamily):
    name = "dinov2"
    # CLS, then the registers (dinov2_with_registers)
    tokens = PatchGridTokens(prefix_tokens=lambda config: 1 + getattr(config, "num_register_tokens", 0))

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in base.encoder.layer]
