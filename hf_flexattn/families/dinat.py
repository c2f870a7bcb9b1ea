"""DiNAT family: ``dinat`` (``DinatModel``, ``DinatForImageClassification``, ``DinatBackbone``), revived without NATTEN.

transformers' DiNAT computes its attention with NATTEN's legacy ops ``natten2dqkrpb`` / ``natten2dav``, removed in
NATTEN 0.20: with a newer NATTEN installed ``modeling_dinat`` fails to import, and without NATTEN the models refuse
to be built (``requires_backends(self, ["natten"])``). :func:`dinat_modeling` imports the module with the legacy
import skipped and lets its models be built without NATTEN (documented, tested: tests/test_family_dinat.py); the
unpatched attention then raises NATTEN's missing-dependency error at its first forward, the patched one runs here.

Patched (``patch(model, "neighborhood")``, or :func:`load_dinat`, which loads and patches), every
``NeighborhoodAttention`` computes NATTEN's rule (masks/natten.py: the window clamped at the borders, dilation
groups) with the layer's own dilation, and adds the layer's relative position bias ``rpb`` (heads, 2k−1, 2k−1) as a
``score_mod`` that reads the trainable table: ``rpb[h, (kr − qr)/d + k − 1, (kc − qc)/d + k − 1]`` (NATTEN's bias
index is the key's offset from the query in dilated steps). Layers: every stage's ``layers[i].attention.self``;
tokens: the stage's feature map (DiNAT pads maps smaller than kernel × dilation before the attention, as NATTEN
requires, and so attends the padded positions; the patched module sees the same padded map). On CPU the generic
kernels (dense below the crossover), on CUDA compiled flex.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import checks, kernels
from ..masks import BatchMask, generate_natten_2d
from ..variants import Variant, VariantOptions
from ..variants.base import head_merge, option
from .base import Family, PatchedModule
from .tokens import PatchGridTokens

MODELING = "transformers.models.dinat.modeling_dinat"


def _requires_backends_but_natten(obj, backends) -> None:
    from transformers.utils import requires_backends

    others = [b for b in backends if b != "natten"]
    if others:
        requires_backends(obj, others)


def dinat_modeling():
    """transformers' ``modeling_dinat``, importable whatever NATTEN is installed and its models buildable without
    NATTEN (the legacy ops are not imported; only hf_flexattn's patched attention can run them)."""
    module = sys.modules.get(MODELING)
    if module is None:
        import transformers.utils as utils

        available = utils.is_natten_available
        utils.is_natten_available = lambda: False  # modeling_dinat imports the legacy ops only when this says True
        try:
            module = importlib.import_module(MODELING)
        finally:
            utils.is_natten_available = available
    module.requires_backends = _requires_backends_but_natten
    return module


def load_dinat(head: str | type, path_or_config, **kwargs) -> nn.Module:
    """A DiNAT model (``head``: a class or its name, e.g. ``"DinatForImageClassification"``) loaded from
    ``path_or_config`` (a checkpoint path or hub id with ``from_pretrained``'s keywords, or a ``DinatConfig`` for a
    randomly initialised model), patched with DiNAT's own attention (``patch(model, "neighborhood")``)."""
    from ..patching import patch

    modeling = dinat_modeling()
    model_class = getattr(modeling, head) if isinstance(head, str) else head
    if isinstance(path_or_config, modeling.DinatConfig):
        model = model_class(path_or_config, **kwargs)
    else:
        model = model_class.from_pretrained(path_or_config, **kwargs)
    return patch(model, "neighborhood")


class FlexNeighborhoodAttentionMixin(PatchedModule):
    """HF's DiNAT ``NeighborhoodAttention`` computed by hf_flexattn: same parameters (query/key/value, ``rpb``), same
    forward signature; with ``output_attentions`` the probabilities are (batch, heads, N, N) over the map."""

    @property
    def scaling(self) -> float:
        return self.attention_head_size**-0.5  # HF divides the query by sqrt(head size)

    def forward(self, hidden_states: Tensor, output_attentions: bool | None = False):
        batch, rows, cols, channels = hidden_states.shape
        tokens = hidden_states.reshape(batch, rows * cols, channels)
        q, k, v = (
            p(tokens).view(batch, rows * cols, -1, self.attention_head_size).transpose(1, 2)
            for p in (self.query, self.key, self.value)
        )
        variant: DinatNeighborhoodVariant = self.hfx_variant
        out = variant.attend_map(self, q, k, v, (rows, cols))
        out = head_merge(out).view(batch, rows, cols, channels)
        if not output_attentions:
            return (out,)
        return out, variant.map_probabilities(self, q, k, (rows, cols))


def generate_dinat_bias(rpb: Tensor, cols: int, kernel_size: int, dilation: int, table_kernel: int):
    """``score_mod`` adding DiNAT's bias ``rpb[h, dr/d + K − 1, dc/d + K − 1]`` for the key's offset (dr, dc) from the
    query on a map with ``cols`` columns (K: the checkpoint's kernel, which sizes the table; a smaller
    ``kernel_size`` reads its centre). Offsets outside the window are masked, and clamped here only to stay in the
    table."""
    reach = table_kernel - 1
    cols_t, dilation_t = (torch.full((), v, dtype=torch.int32, device=rpb.device) for v in (cols, dilation))

    def dinat_bias(score, b, h, q, kv):
        dr = torch.div(kv // cols_t - q // cols_t, dilation_t, rounding_mode="floor")
        dc = torch.div(kv % cols_t - q % cols_t, dilation_t, rounding_mode="floor")
        return score + rpb[h, (dr + reach).clamp(0, 2 * reach), (dc + reach).clamp(0, 2 * reach)]

    return dinat_bias


@dataclass(frozen=True, kw_only=True)
class DinatNeighborhoodOptions(VariantOptions):
    variant: ClassVar[str] = "neighborhood"

    kernel_size: int | None = option(
        None, "window size (odd, at most the checkpoint's: its bias table covers that); None: the checkpoint's"
    )
    dilation: int | None = option(None, "one dilation for every layer; None: each layer's own (config.dilations)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_size is not None:
            checks.positive_odd_int("kernel_size", self.kernel_size, self.where)
        if self.dilation is not None:
            checks.positive_int("dilation", self.dilation, self.where)


class DinatNeighborhoodVariant(Variant):
    """DiNAT's own neighborhood attention (the checkpoint's kernel and per-layer dilations by default)."""

    name = "neighborhood"
    families = ("dinat",)
    Options = DinatNeighborhoodOptions
    native = False  # the attention modules are not on transformers' attention interface

    def configure(self, config) -> None:
        kernel = self.options.kernel_size
        if kernel is not None and kernel > config.kernel_size:
            raise ValueError(
                f"{self.options.where}: kernel_size={kernel} is larger than the checkpoint's {config.kernel_size}: its "
                f"relative position bias covers offsets up to ±{config.kernel_size - 1}; use kernel_size ≤ "
                f"{config.kernel_size}"
            )
        self.table_kernel = config.kernel_size
        self.kernel = kernel or config.kernel_size
        own = [d for stage in config.dilations for d in stage]
        self.dilations = tuple([self.options.dilation] * len(own) if self.options.dilation else own)

    def _check_fits(self, module: nn.Module, grid: tuple[int, int]) -> None:
        span = self.kernel * self.dilations[module.hfx_layer_idx]
        if span > min(grid):
            raise ValueError(
                f"{self.options.where}: layer {module.hfx_layer_idx}: kernel_size={self.kernel} with dilation="
                f"{self.dilations[module.hfx_layer_idx]} spans {span} positions, more than its stage's "
                f"{grid[0]}x{grid[1]} map; use a smaller dilation (or the checkpoint's own, dilation=None)"
            )

    def _mask(self, module: nn.Module, grid: tuple[int, int], device) -> BatchMask:
        dilation = self.dilations[module.hfx_layer_idx]
        key = ("natten2d", grid, dilation, device)
        return self.cached(
            key,
            lambda: BatchMask(
                generate_natten_2d(grid, (self.kernel,) * 2, (dilation,) * 2, device=device),
                grid[0] * grid[1],
                device=device,
            ),
        )

    def _bias(self, module: nn.Module, grid: tuple[int, int]):
        return generate_dinat_bias(
            module.rpb, grid[1], self.kernel, self.dilations[module.hfx_layer_idx], self.table_kernel
        )

    def attend_map(self, module: nn.Module, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        self._check_fits(module, grid)
        return kernels.attend(
            q,
            k,
            v,
            self._mask(module, grid, q.device),
            score_mod=self._bias(module, grid),
            scale=module.scaling,
            dropout_p=self.dropout_p(module),
            score_mod_params=[module.rpb],
        )

    def map_probabilities(self, module: nn.Module, q: Tensor, k: Tensor, grid: tuple[int, int]) -> Tensor:
        mask = self._mask(module, grid, q.device)
        return kernels.attention_probabilities(q, k, mask, score_mod=self._bias(module, grid), scale=module.scaling)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        dilation = self.dilations if layer_idx is None else self.dilations[layer_idx]
        return f"variant=neighborhood, kernel_size={self.kernel}, dilation={dilation}"


class DinatFamily(Family):
    name = "dinat"
    tokens = PatchGridTokens(prefix_tokens=lambda config: 0)  # the grid read from pixel_values at forward time
    hierarchical = True
    required_attributes = ("query", "key", "value", "rpb", "kernel_size", "attention_head_size")
    expected_design = "DiNAT's NeighborhoodAttention (query/key/value and a relative position bias rpb)"
    attention_mixin = FlexNeighborhoodAttentionMixin
    variant_overrides: ClassVar[dict[str, type]] = {"neighborhood": DinatNeighborhoodVariant}
    native_refusal = "DiNAT's NeighborhoodAttention does not call transformers' attention interface"

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention.self for stage in base.encoder.levels for layer in stage.layers]

    def num_layers(self, config) -> int:
        return sum(config.depths)

    def dropout_p(self, module: nn.Module) -> float:
        return module.dropout.p

    def head_dim(self, module: nn.Module) -> int:
        return module.attention_head_size

    def max_tokens(self, config) -> int:
        raise ValueError("DiNAT has no fixed input size (its maps follow the image)")
