"""ModernBERT family: ``modernbert`` (``ModernBertModel`` and its heads), on the general path (families/interface.py).

Layers: ``base.layers[i].attn`` (``ModernBertAttention``: one fused ``Wqkv`` projection, rotary positions applied to
q/k before the attention function, ``Wo``); tokens: a 1D sequence.

ModernBERT alternates global layers with sliding-window layers (``config.layer_types``; a sliding layer's token sees
``config.sliding_window = local_attention // 2`` tokens on each side). So its ``full`` is the model's own pattern:
global layers attend every key, sliding layers their window (on CPU past the crossover through the band plan,
kernels/band.py, instead of the dense N×N mask transformers builds for sdpa). ``longformer`` and ``neighborhood``
replace every layer's pattern, as on BERT; the rotary positions stay (q/k come from HF's forward). Longformer's
``global_projections`` are refused: separate global projections of the hidden states would have no rotary
positions.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..variants.full import LayerTypesFullVariant
from .interface import FlexInterfaceAttentionMixin, InterfaceFamily
from .tokens import TextTokens


class FlexModernBertAttentionMixin(FlexInterfaceAttentionMixin):
    """HF's ``ModernBertAttention`` (forward unchanged) with its attention computed by an hf_flexattn variant."""

    @property
    def scaling(self) -> float:
        return self.head_dim**-0.5  # what HF's forward passes as ``scaling``


class ModernBertFamily(InterfaceFamily):
    name = "modernbert"
    added_parameters = False  # Linformer's and Performer's parameters not verified on this family
    tokens = TextTokens(position_offset=False)  # rotary positions: no table, no offset
    attention_mixin = FlexModernBertAttentionMixin
    required_attributes = ("head_dim", "attention_dropout")
    projections: ClassVar[tuple[str, ...]] = ("Wqkv",)
    variant_overrides: ClassVar[dict[str, type]] = {"full": LayerTypesFullVariant}

    @property
    def expected_design(self) -> str:
        return "ModernBertAttention's design (a fused Wqkv projection) calling transformers' ALL_ATTENTION_FUNCTIONS"

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attn for layer in base.layers]

    def qkv_projections(self, module: nn.Module):
        raise ValueError(f"the {self.name} family has one fused Wqkv projection, not separate query/key/value")

    def check_variant(self, variant, config) -> None:
        if getattr(variant.options, "global_projections", False):
            raise ValueError(
                f"{variant.options.where}: global_projections=True on model_type='modernbert'; ModernBERT applies "
                "rotary positions to q/k inside its attention, which separate global projections of the hidden "
                "states would lack; use global_projections=False (global rows use the model's own q/k/v)"
            )
