"""``full``: the model's own attention, computed by FlexAttention (or the fused dense kernel where that is faster).

Only padding is masked, so the patched model is numerically the original model. On Swin and Swin v2, whose blocks
attend their own windows, ``full`` is :class:`~hf_flexattn.variants.swin.SwinBlockFullVariant`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..masks import Mask, generate_full
from .base import ForwardInputs, Variant, VariantOptions


@dataclass(frozen=True, kw_only=True)
class FullOptions(VariantOptions):
    """``full`` has no options of its own."""

    variant: ClassVar[str] = "full"


class FullVariant(Variant):
    name = "full"
    families = (
        "bert",
        "vit",
        "distilbert",
        "albert",
        "dinov2",
        "beit",
        "general_text",
        "general_vision",
        "clip_vision",
    )
    Options = FullOptions

    def layer_mask(self, inputs: ForwardInputs, prepared: dict, layer_idx: int) -> Mask:
        return generate_full()
