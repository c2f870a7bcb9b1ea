"""``linformer``: keys and values projected along the sequence to ``proj_len`` slots, then softmax attention.

``E`` and ``F`` have shape ``(max_len, proj_len)`` and are sliced to the input's length, so one checkpoint
serves every length up to ``max_len`` (``share_kv=True``: one matrix for both). Initialised
``U(-1/√k, 1/√k)`` (Linformer's reference code). Unlike lucidrains' and fairseq's versions, padding tokens are
zeroed *before* the projection, so outputs at real tokens do not depend on how much padding the batch has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import checks, kernels
from ..masks import Mask, generate_full
from .base import ForwardInputs, ForwardMasks, Variant, VariantOptions, option


def project_sequence(x: Tensor, matrix: Tensor, padding_mask: Tensor | None) -> Tensor:
    """(B, H, N, D) → (B, H, proj_len, D): padding zeroed first, then ``matrix[:N]ᵀ · x``."""
    n = x.shape[-2]
    if n > matrix.shape[0]:
        raise ValueError(f"linformer: input length {n} exceeds max_len={matrix.shape[0]} of the E/F projections")
    if padding_mask is not None:
        x = x * padding_mask[:, None, :, None].to(x.dtype)
    return torch.einsum("nk,bhnd->bhkd", matrix[:n].to(x.dtype), x)


def linformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    E: Tensor,
    F: Tensor | None = None,
    padding_mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Attention of (B, H, N, D) queries over keys projected by ``E`` and values by ``F`` (default: ``E``)."""
    keys = project_sequence(k, E, padding_mask)
    values = project_sequence(v, E if F is None else F, padding_mask)
    return kernels.attend(q, keys, values, None, scale=scale, dropout_p=dropout_p)


class LinformerAttention(nn.Module):
    """Linformer's sequence projections ``E`` (keys) and ``F`` (values) and the attention over them.

    ``forward(q, k, v, padding_mask=None)`` takes ``(B, H, N, D)`` tensors (N ≤ max_len) and returns
    ``(B, H, N, D)``; ``padding_mask`` is ``(B, N)`` with True (or 1) for real tokens.
    """

    def __init__(self, max_len: int, proj_len: int, share_kv: bool = False):
        super().__init__()
        checks.positive_int("proj_len", proj_len, "linformer")
        if proj_len > max_len:
            raise ValueError(f"linformer: proj_len={proj_len!r}; expected an int in 1..max_len={max_len}")
        self.max_len, self.proj_len, self.share_kv = max_len, proj_len, share_kv
        bound = 1.0 / math.sqrt(proj_len)
        self.E = nn.Parameter(torch.empty(max_len, proj_len).uniform_(-bound, bound))
        self.F = None if share_kv else nn.Parameter(torch.empty(max_len, proj_len).uniform_(-bound, bound))

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, proj_len={self.proj_len}, share_kv={self.share_kv}"

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        padding_mask: Tensor | None = None,
        scale: float | None = None,
        dropout_p: float = 0.0,
    ) -> Tensor:
        return linformer_attention(q, k, v, self.E, self.F, padding_mask, scale, dropout_p)


@dataclass(frozen=True, kw_only=True)
class LinformerOptions(VariantOptions):
    variant: ClassVar[str] = "linformer"

    proj_len: int = option(256, "number of projected key/value slots (k)")
    share_kv: bool = option(False, "one projection for keys and values")

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.positive_int("proj_len", self.proj_len, self.where)
        checks.boolean("share_kv", self.share_kv, self.where)


class LinformerVariant(Variant):
    name = "linformer"
    families = ("bert", "vit", "distilbert", "albert", "dinov2", "beit", "general_text", "general_vision")
    Options = LinformerOptions
    adds_parameters = True
    native = False
    applies_model_bias = False  # no N×N score matrix to add a bias to

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
        module._modules.pop("linformer", None)

    def layer_mask(self, inputs: ForwardInputs, prepared: dict, layer_idx: int) -> Mask:
        """Every real key contributes (through the projections); what ``plot_mask`` draws."""
        return generate_full()

    def attend(
        self, module, hidden_states: Tensor, q: Tensor, k: Tensor, v: Tensor, masks: ForwardMasks, bias=None
    ) -> Tensor:
        real = masks.inputs_on(q.device).key_is_real
        return module.linformer(q, k, v, real, scale=module.scaling, dropout_p=self.dropout_p(module))

    def attention_probabilities(self, module, hidden_states, q, k, v, masks: ForwardMasks, bias=None) -> Tensor:
        """(B, H, N, proj_len): each query's weights over the projected slots (Linformer has no N×N matrix)."""
        real = masks.inputs_on(q.device).key_is_real
        keys = project_sequence(k, module.linformer.E, real)
        return kernels.attention_probabilities(q, keys, None, scale=module.scaling)
