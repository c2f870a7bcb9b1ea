"""DiNAT family: ``dinat`` (``DinatModel``, ``DinatForImageClassification``, ``DinatBackbone``), revived without NATTEN.

transformers' DiNAT computes its attention with NATTEN's legacy ops ``natten2dqkrpb`` / ``natten2dav``, removed in
NATTEN 0.20: with a newer NATTEN installed ``modeling_dinat`` fails to import, and without NATTEN the models refuse
to be built (``requires_backends(self, ["natten"])``). :func:`dinat_modeling` imports the module with the legacy
import skipped and lets its models be built without NATTEN (documented, tested: tests/test_family_dinat.py); the
unpatched attention then raises NATTEN's missing-dependency error at its first forward, the patched one runs here.

Patched (``patch(model, "neighborhood")``, or ``hf_flexattn.load_dinat``, which loads and patches), every
``NeighborhoodAttention`` computes NATTEN's rule (masks/natten.py: the window clamped at the borders, dilation
groups) with the layer's own dilation, and adds the layer's relative position bias ``rpb`` (heads, 2k−1, 2k−1) as a
``score_mod`` that reads the trainable table: ``rpb[h, (kr − qr)/d + k − 1, (kc − qc)/d + k − 1]`` (NATTEN's bias
index is the key's offset from the query in dilated steps). Layers: every stage's ``layers[i].attention.self``;
tokens: the stage's feature map (DiNAT pads maps smaller than kernel × dilation before the attention, as NATTEN
requires, and so attends the padded positions; the patched module sees the same padded map). On CPU the generic
kernels (dense below the crossover), on CUDA compiled flex.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from torch import Tensor, nn

from .. import compat
from ..variants.base import head_merge
from ..variants.neighborhood import DinatNeighborhoodVariant
from .base import Family, PatchedModule
from .tokens import PatchGridTokens

MODELING = "transformers.models.dinat.modeling_dinat"


def dinat_modeling():
    """transformers' ``modeling_dinat``, importable whatever NATTEN is installed and its models buildable without
    NATTEN (the legacy ops are not imported; only hf_flexattn's patched attention can run them)."""
    module = sys.modules.get(MODELING)
    if module is None:
        module = compat.import_without_natten(MODELING)
    compat.build_without_natten(module)
    return module


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
        out = variant.attend_map(self, q, k, v, (rows, cols), (rows, cols), None)
        out = head_merge(out).view(batch, rows, cols, channels)
        if not output_attentions:
            return (out,)
        return out, variant.map_probabilities(self, q, k, (rows, cols), (rows, cols))


class DinatFamily(Family):
    name = "dinat"
    tokens = PatchGridTokens(prefix_tokens=lambda config: 0)  # the grid read from pixel_values at forward time
    hierarchical = True
    neighborhood_blocks = True
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
