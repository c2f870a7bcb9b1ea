"""One file per variant: its options, its masks' use and its math. ``VARIANTS`` maps each name to its class."""

from .base import (
    AddsParameters,
    Capabilities,
    ChecksInputs,
    FeatureMapVariant,
    ForwardInputs,
    ForwardMasks,
    ForwardState,
    HasForwardState,
    LayerCall,
    LayerMasks,
    NativeAttention,
    OwnLayerMasks,
    PerLayerMasks,
    ProbabilitiesApart,
    Requirements,
    ScoreFree,
    TakesGlobalAttentionMask,
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
    "AddsParameters",
    "Capabilities",
    "ChecksInputs",
    "FeatureMapVariant",
    "ForwardInputs",
    "ForwardMasks",
    "ForwardState",
    "FullOptions",
    "FullVariant",
    "HasForwardState",
    "LayerCall",
    "LayerMasks",
    "LinformerOptions",
    "LinformerVariant",
    "LongformerOptions",
    "LongformerVariant",
    "NativeAttention",
    "NeighborhoodOptions",
    "NeighborhoodVariant",
    "OwnLayerMasks",
    "PerLayerMasks",
    "PerformerOptions",
    "PerformerVariant",
    "ProbabilitiesApart",
    "Requirements",
    "ScoreFree",
    "SwinBlockFullVariant",
    "SwinBlockNeighborhoodVariant",
    "SwinBlockVariant",
    "SwinOptions",
    "SwinVariant",
    "TakesGlobalAttentionMask",
    "Variant",
    "VariantOptions",
]
