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

from typing import Any, ClassVar

from torch import Tensor, nn

from .. import kernels
from ..masks import Mask, generate_full, generate_sliding_window
from ..variants import ForwardInputs, ForwardMasks
from ..variants.full import FullVariant
from ..variants.longformer import sliding_window_band_plan
from .interface import FlexInterfaceAttentionMixin, InterfaceFamily
from .tokens import TextTokens


class FlexModernBertAttentionMixin(FlexInterfaceAttentionMixin):
    """HF's ``ModernBertAttention`` (forward unchanged) with its attention computed by an hf_flexattn variant."""

    @property
    def scaling(self) -> float:
        return self.head_dim**-0.5  # what HF's forward passes as ``scaling``


class ModernBertFullVariant(FullVariant):
    """``full`` on ModernBERT: global layers attend every key, sliding layers ``config.sliding_window`` on each side
    (transformers' rule: ``|q - kv| <= sliding_window``)."""

    families = ("modernbert",)

    def configure(self, config) -> None:
        # one-sided width of each layer's window; None: a global layer
        self.half_windows = tuple(
            config.sliding_window if kind == "sliding_attention" else None for kind in config.layer_types
        )

    def layer_key(self, layer_idx: int) -> int | None:
        return self.half_windows[layer_idx]

    def layer_mask(self, inputs: ForwardInputs, prepared: dict[str, Any], layer_idx: int) -> Mask:
        half = self.half_windows[layer_idx]
        return generate_full() if half is None else generate_sliding_window(half)

    def attend_tensors(
        self, q, k, v, masks: ForwardMasks, layer_idx: int, scale: float, dropout_p: float, bias=None
    ) -> Tensor:
        half = self.half_windows[layer_idx]
        plan = None if half is None else sliding_window_band_plan(masks, half, q)
        if plan is None:
            return super().attend_tensors(q, k, v, masks, layer_idx, scale, dropout_p, bias)
        return kernels.tiled_attention(q, k, v, plan, scale, dropout_p)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        if layer_idx is None:
            return "variant=full (the model's own pattern)"
        half = self.half_windows[layer_idx]
        return "variant=full, " + ("global layer" if half is None else f"sliding layer, window={2 * half}")


class ModernBertFamily(InterfaceFamily):
    name = "modernbert"
    tokens = TextTokens(position_offset=False)  # rotary positions: no table, no offset
    attention_mixin = FlexModernBertAttentionMixin
    required_attributes = ("head_dim", "attention_dropout")
    projections: ClassVar[tuple[str, ...]] = ("Wqkv",)
    variant_overrides: ClassVar[dict[str, type]] = {"full": ModernBertFullVariant}

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
