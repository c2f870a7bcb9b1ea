"""``performer``: FAVOR+ linear attention with positive orthogonal random features (Choromanski et al.).

``softmax(q·k/√d)`` is approximated by ``φ(q)·φ(k)`` with ``φ(x) = exp(ω·x' − ‖x'‖²/2) / √m``, ``x' = x·d^-1/4``,
``ω`` the ``m = num_features`` rows of stacked random orthogonal blocks (rows rescaled to Gaussian norms), and a
stabilising max subtracted inside the exponential (per query row; one constant over all keys, so it cancels).
Output: ``φ(Q) (φ(K)ᵀ V) / (φ(Q) φ(K)ᵀ 1)``, linear in N. Padded keys are zeroed out of numerator and normaliser.

FlexAttention computes softmax attention over a (masked) score matrix; linear attention never forms one, so
this variant is plain PyTorch. Features are a persistent buffer (saved and reloaded with the checkpoint),
redrawn every ``redraw_interval`` training forwards (0: never) and fixed in eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import checks
from ..kernels.performer import PerformerAttention, favor_features
from ..masks import Mask, generate_full
from ..warnings import warn_once
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
class PerformerOptions(VariantOptions):
    variant: ClassVar[str] = "performer"

    num_features: int = option(256, "number of random features m")
    redraw_interval: int = option(1000, "redraw the features every this many training forwards (0: never)")

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.positive_int("num_features", self.num_features, self.where)
        checks.non_negative_int("redraw_interval", self.redraw_interval, self.where)


class PerformerVariant(AddsParameters, ScoreFree, Variant):
    name = "performer"
    requires = Requirements(tokens=("sequence", "grid"), added_parameters=True)
    Options = PerformerOptions
    kernel_backends = ("auto",)  # no mask pattern: no FlexAttention call to choose

    def attach(self, module: nn.Module, layer_idx: int) -> None:
        rate = self.family.dropout_p(module)  # the module's own rate, whatever its config calls it
        if rate > 0 and self.options.attention_dropout == "standard":
            warn_once(
                "performer-dropout",
                f"hf_flexattn: performer has no attention matrix, so the model's attention dropout ({rate}) cannot "
                "be applied; pass attention_dropout='off' to say so and silence this warning",
            )
        features = PerformerAttention(
            self.family.head_dim(module), self.options.num_features, self.options.redraw_interval
        )
        module.add_module("performer", features.to(next(module.parameters()).device))

    def detach(self, module: nn.Module) -> None:
        remove_submodule(module, "performer")

    def layer_mask(self, inputs: ForwardInputs, prepared: ForwardState | None, layer_idx: int) -> Mask:
        """Every real key contributes (through the random features); what ``plot_mask`` draws."""
        return generate_full()

    def attend(self, call: LayerCall) -> Tensor:
        module = call.module
        if module.training:
            module.performer.step()
        return module.performer(call.q, call.k, call.v, call.masks.inputs_on(call.q.device).key_is_real)

    def attention_probabilities(self, call: LayerCall) -> Tensor:
        """(B, H, N, N): the attention matrix FAVOR+ implies, φ(q)·φ(k)ᵀ normalised per row."""
        real = call.masks.inputs_on(call.q.device).key_is_real
        features = call.module.performer.features
        phi_q = favor_features(call.q, features, is_query=True)
        phi_k = favor_features(call.k, features, is_query=False, padding_mask=real)
        weights = phi_q @ phi_k.transpose(-1, -2)
        return weights / weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
