"""One file per variant: its options, its masks' use and its math. ``VARIANTS`` maps each name to its class."""

from .base import (
    Capabilities,
    FeatureMapVariant,
    ForwardInputs,
    ForwardMasks,
    ForwardState,
    LayerCall,
    Requirements,
    Variant,
    VariantOptions,
)
from .full import FullOptions, FullVariant
from .linformer import LinformerOptions, LinformerVariant
from .longformer import LongformerOptions, LongformerVariant
from .neighborhood import NeighborhoodOptions, NeighborhoodVariant, SwinBlockNeighborhoodVariant
from .performer import PerformerOptions, PerformerVariant
from .swin import SwinBlockFullVariant, SwinBlockVariant, SwinOptions, SwinVariant

VARIANTS: dict[str, type[Variant]] = {
    v.name: v
    for v in (FullVariant, LongformerVariant, NeighborhoodVariant, SwinVariant, LinformerVariant, PerformerVariant)
}

__all__ = [
    "VARIANTS",
    "Capabilities",
    "FeatureMapVariant",
    "ForwardInputs",
    "ForwardMasks",
    "ForwardState",
    "FullOptions",
    "FullVariant",
    "LayerCall",
    "LinformerOptions",
    "LinformerVariant",
    "LongformerOptions",
    "LongformerVariant",
    "NeighborhoodOptions",
    "NeighborhoodVariant",
    "PerformerOptions",
    "PerformerVariant",
    "Requirements",
    "SwinBlockFullVariant",
    "SwinBlockNeighborhoodVariant",
    "SwinBlockVariant",
    "SwinOptions",
    "SwinVariant",
    "Variant",
    "VariantOptions",
]
