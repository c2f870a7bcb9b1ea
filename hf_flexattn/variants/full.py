"""``full``: the model's own attention, computed by FlexAttention (or the fused dense kernel where that is faster).

Only padding is masked, so the patched model is numerically the original model. Where the model's own attention is
not full, ``full`` is the model's own pattern, the family's strategy (its ``variant_overrides``): on models whose
layers alternate global and sliding-window attention (ModernBERT) :class:`LayerTypesFullVariant`; on Swin and Swin v2,
whose blocks attend their own windows, :class:`~hf_flexattn.variants.swin.SwinBlockFullVariant`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .. import kernels, ops
from ..masks import Mask, generate_full, generate_sliding_window
from .base import (
    ForwardInputs,
    ForwardState,
    LayerCall,
    NativeAttention,
    PerLayerMasks,
    Requirements,
    Variant,
    VariantOptions,
)


@dataclass(frozen=True, kw_only=True)
class FullOptions(VariantOptions):
    """``full`` has no options of its own."""

    variant: ClassVar[str] = "full"


class FullVariant(NativeAttention, Variant):
    name = "full"
    requires = Requirements(tokens=("sequence", "grid"))
    Options = FullOptions

    def layer_mask(self, inputs: ForwardInputs, prepared: ForwardState | None, layer_idx: int) -> Mask:
        return generate_full()


class LayerTypesFullVariant(PerLayerMasks, FullVariant):
    """``full`` on a model whose ``config.layer_types`` alternates global and sliding-window layers (ModernBERT):
    global layers attend every key, sliding layers ``config.sliding_window`` on each side (transformers' rule:
    ``|q - kv| <= sliding_window``)."""

    requires = Requirements(tokens=("sequence",))

    def configure(self, config) -> None:
        # one-sided width of each layer's window; None: a global layer
        self.half_windows = tuple(
            config.sliding_window if kind == "sliding_attention" else None for kind in config.layer_types
        )

    def layer_key(self, layer_idx: int) -> int | None:
        return self.half_windows[layer_idx]

    def layer_mask(self, inputs: ForwardInputs, prepared: ForwardState | None, layer_idx: int) -> Mask:
        half = self.half_windows[layer_idx]
        return generate_full() if half is None else generate_sliding_window(half)

    def attend(self, call: LayerCall) -> Tensor:
        q, masks, layer_idx = call.q, call.masks, call.layer_idx
        half = self.half_windows[layer_idx]
        inputs = masks.inputs_on(q.device)
        plan = (
            None
            if half is None
            else ops.sliding_window_band_plan(
                q, inputs.seq_len, half, masks, key_is_real=inputs.key_is_real, backend=self.options.backend
            )
        )
        if plan is None:
            return super().attend(call)
        return kernels.tiled_attention(q, call.k, call.v, plan, call.scale, call.dropout_p)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        if layer_idx is None:
            return "variant=full (the model's own pattern)"
        half = self.half_windows[layer_idx]
        return "variant=full, " + ("global layer" if half is None else f"sliding layer, window={2 * half}")
