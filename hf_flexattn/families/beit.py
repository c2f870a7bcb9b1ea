"""BEiT family: ``BeitModel``, ``BeitForImageClassification``, ``BeitForMaskedImageModeling``,
``BeitForSemanticSegmentation``, ``BeitBackbone``, on the general path (families/interface.py).

Layers: ``base.layers[i].attention`` (q_proj/k_proj/v_proj/o_proj); tokens: CLS then the patch grid, row-major
(the grid read from ``pixel_values``). BEiT adds a relative position bias,
per layer (``layers[i].relative_position_bias``) or shared (``base.shared_position_bias``), with three extra entries
for the CLS token, and resamples the table for grids other than the checkpoint's. HF makes it a dense
(1, heads, N, N) tensor and hands it to the attention as its ``attention_mask``. Patched, the same modules (helper
modules, ``FlexBeitRelativePositionBias``) resample the table exactly as HF does and hand over a ``score_mod`` that
reads it instead, so the table keeps its gradient and no N×N bias is built.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..mods import generate_relative_position_bias_with_cls
from ..variants.base import ScoreFree
from ..warnings import warn_once
from .base import PatchedHelper
from .interface import InterfaceFamily, ModelBias
from .tokens import PatchGridTokens


class RelativePositionBiasWithCls(ModelBias):
    """BEiT's bias for one grid: a (num_entries, heads) table read by a ``score_mod``. Layer + shared biases add up
    (HF adds the two dense tensors; the same sums, entry by entry)."""

    def __init__(self, table: Tensor, grid: tuple[int, int]):
        self.table, self.grid = table, grid
        self.score_mod = generate_relative_position_bias_with_cls(table, grid)
        self.parameters = (table,)

    def __add__(self, other: RelativePositionBiasWithCls) -> RelativePositionBiasWithCls:
        if not isinstance(other, RelativePositionBiasWithCls) or other.grid != self.grid:
            return NotImplemented
        return RelativePositionBiasWithCls(self.table + other.table, self.grid)


class FlexBeitRelativePositionBiasMixin(PatchedHelper):
    """HF's ``BeitRelativePositionBias``, returning its table for the input's grid as a score_mod, not a dense bias."""

    def forward(
        self, window_size, interpolate_pos_encoding: bool = False, dim_size=None
    ) -> RelativePositionBiasWithCls:
        rows, cols = window_size
        if interpolate_pos_encoding and dim_size is not None and dim_size != rows * cols + 1:
            raise ValueError(
                f"BEiT relative position bias: dim_size={dim_size} but the {rows}x{cols} grid has {rows * cols + 1} "
                "tokens; hf_flexattn reads the bias per token pair and does not resample the N×N matrix"
            )
        # HF's resampling of the patch-pair entries to the input's grid, as written there (the same operations, so
        # the same numbers; for the checkpoint's own grid it is the identity); the CLS entries are kept
        old_height, old_width = 2 * self.window_size[0] - 1, 2 * self.window_size[1] - 1
        new_height, new_width = 2 * rows - 1, 2 * cols - 1
        table = self.relative_position_bias_table
        patch_pairs = table[: self.num_relative_distance - 3]
        patch_pairs = patch_pairs.reshape(1, old_width, old_height, -1).permute(0, 3, 1, 2)
        patch_pairs = nn.functional.interpolate(patch_pairs, size=(new_height, new_width), mode="bilinear")
        patch_pairs = patch_pairs.permute(0, 2, 3, 1).reshape(new_height * new_width, -1)
        table = torch.cat([patch_pairs, table[self.num_relative_distance - 3 :]])
        return RelativePositionBiasWithCls(table, (rows, cols))


class BeitFamily(InterfaceFamily):
    name = "beit"
    tokens = PatchGridTokens(prefix_tokens=lambda config: 1)
    helper_mixins: ClassVar[dict[str, type]] = {"BeitRelativePositionBias": FlexBeitRelativePositionBiasMixin}
    native_refusal = "BEiT's relative position bias reaches the attention as a dense tensor, not a score_mod"

    def attention_modules(self, base: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in base.layers]

    def helper_modules(self, base: nn.Module) -> list[nn.Module]:
        biases = [layer.relative_position_bias for layer in base.layers]
        return [b for b in [*biases, base.shared_position_bias] if b is not None]

    def check_variant(self, variant, config) -> None:
        if isinstance(variant, ScoreFree) and self._has_bias(config):
            warn_once(
                f"beit-bias-{variant.name}",
                f"hf_flexattn: variant {variant.name!r} has no attention score matrix, so BEiT's relative position "
                "bias is not applied (the model's other weights are used as they are)",
            )

    @staticmethod
    def _has_bias(config) -> bool:
        return bool(config.use_relative_position_bias or config.use_shared_relative_position_bias)
