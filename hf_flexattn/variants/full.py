"""``full``: the model's own attention, computed by FlexAttention (only padding is masked)."""

from __future__ import annotations

from ..masks import Mask, generate_full
from .base import LayerMasks, Variant


class FullVariant(Variant):
    name = "full"
    families = ("bert", "vit", "swin")
    options = {}

    def layer_mask(self, masks: LayerMasks, layer_idx: int) -> Mask:
        return generate_full()
