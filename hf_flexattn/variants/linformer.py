"""``linformer``: keys and values projected along the sequence to ``proj_len`` slots, then softmax attention.

``E`` and ``F`` have shape ``(max_len, proj_len)`` and are sliced to the input's length, so one checkpoint
serves every length up to ``max_len`` (``share_kv=True``: one matrix for both). Initialised
``U(-1/√k, 1/√k)`` (Linformer's reference code). Unlike lucidrains' and fairseq's versions, padding tokens are
zeroed *before* the projection, so outputs at real tokens do not depend on how much padding the batch has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from .. import checks, kernels
from ..kernels.linformer import LinformerAttention, project_sequence
from ..masks import Mask, generate_full
from .base import (
    AddsParameters,
    ForwardInputs,
    ForwardState,
    LayerCall,
    Requirements,
    ScoreFree,
    Variant,
    VariantOptions,
    option,
    remove_submodule,
)


@dataclass(frozen=True, kw_only=True)
class LinformerOptions(VariantOptions):
    variant: ClassVar[str] = "linformer"

    proj_len: int = option(256, "number of projected key/value slots (k)")
    share_kv: bool = option(False, "one projection for keys and values")

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.positive_int("proj_len", self.proj_len, self.where)
        checks.boolean("share_kv", self.share_kv, self.where)


class LinformerVariant(AddsParameters, ScoreFree, Variant):
    name = "linformer"
    requires = Requirements(tokens=("sequence", "grid"), added_parameters=True)
    Options = LinformerOptions
    kernel_backends = ("auto",)  # no mask pattern: no FlexAttention call to choose

    def configure(self, config) -> None:
        self.max_len = self.family.max_tokens(config)
        if self.options.proj_len > self.max_len:
            raise ValueError(
                f"{self.options.where}: proj_len={self.options.proj_len} is larger than the model's {self.max_len} "
                f"tokens; allowed: 1..{self.max_len}"
            )

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        projection = LinformerAttention(self.max_len, self.options.proj_len, self.options.share_kv)
        module.add_module("linformer", projection.to(next(module.parameters())))

    def detach(self, module: nn.Module) -> None:
        remove_submodule(module, "linformer")

    def layer_mask(self, inputs: ForwardInputs, prepared: ForwardState | None, layer_idx: int) -> Mask:
        """Every real key contributes (through the projections); what ``plot_mask`` draws."""
        return generate_full()

    def attend(self, call: LayerCall) -> Tensor:
        real = call.masks.inputs_on(call.q.device).key_is_real
        return call.module.linformer(call.q, call.k, call.v, real, scale=call.scale, dropout_p=call.dropout_p)

    def attention_probabilities(self, call: LayerCall) -> Tensor:
        """(B, H, N, proj_len): each query's weights over the projected slots (Linformer has no N×N matrix)."""
        real = call.masks.inputs_on(call.q.device).key_is_real
        keys = project_sequence(call.k, call.module.linformer.E, real)
        return kernels.attention_probabilities(call.q, keys, None, scale=call.scale)
