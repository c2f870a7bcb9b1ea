"""``neighborhood``: NATTEN's neighborhood attention, 1D for text and 2D for image grids (rule in masks/natten.py).

* Text: the window runs over each sample's real tokens, so outputs do not depend on padding, on either side; a
  sample shorter than the window sees all of its dilation group.
* ViT: the rule runs on the patch grid (read from ``pixel_values`` at forward time); the CLS (and distillation)
  tokens stay global.
* Swin and Swin v2 (:class:`SwinBlockNeighborhoodVariant`): the rule runs on each stage's feature map instead of the
  model's windows, with the block's own scores and bias (its family's ``block_scores``): Swin's relative position
  bias wherever the offset lies in the checkpoint's table (|offset| < its window size), Swin v2's continuous bias
  for every offset attended. Stages whose map is smaller than the kernel see the whole map.

On CPU, past the measured crossovers, the structured plans run: text the band plan over each sample's real tokens
(kernels/band.py), grids the halo plan (kernels/halo.py; Swin's fixed bias table gathered on the tiles' pairs); below
them the dense kernel with the exact mask. On CUDA compiled flex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import checks, kernels
from ..kernels.band import band_pays, natten_1d_plan
from ..kernels.halo import gather_tile_bias, halo_pays, natten_2d_plan, tile_relative_position_index
from ..masks import BatchMask, Mask, generate_natten_1d_over_real_tokens, generate_natten_2d
from ..mods import generate_relative_position_bias
from .base import FeatureMapVariant, ForwardInputs, ForwardMasks, Variant, VariantOptions, option
from .swin import BlockScores

ODD_WHY = "so that the window has a centre (NATTEN's rule)"


@dataclass(frozen=True, kw_only=True)
class NeighborhoodOptions(VariantOptions):
    variant: ClassVar[str] = "neighborhood"

    kernel_size: int | tuple[int, int] = option(7, "window size (odd, NATTEN); an int, or (rows, cols) on image grids")
    dilation: int | tuple[int, int] = option(
        1, "gap between the keys of a window (NATTEN's dilation); int or (rows, cols)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        kernel = checks.int_or_pair("kernel_size", self.kernel_size, self.where)
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"{self.where}: kernel_size={self.kernel_size!r}; must be odd {ODD_WHY}")
        checks.int_or_pair("dilation", self.dilation, self.where)
        for name in ("kernel_size", "dilation"):
            if isinstance(getattr(self, name), list):
                self._set(name, tuple(getattr(self, name)))

    @property
    def kernel(self) -> tuple[int, int]:
        return checks.int_or_pair("kernel_size", self.kernel_size)

    @property
    def dilations(self) -> tuple[int, int]:
        return checks.int_or_pair("dilation", self.dilation)


class NeighborhoodVariant(Variant):
    """NATTEN's rule on text and on flat patch grids: one mask per forward."""

    name = "neighborhood"
    families = (
        "bert",
        "vit",
        "distilbert",
        "albert",
        "dinov2",
        "beit",
        "general_text",
        "general_vision",
        "modernbert",
        "clip_vision",
    )
    Options = NeighborhoodOptions

    def configure(self, config) -> None:
        options = self.options
        if self.family.spatial_dims == 1:
            if isinstance(options.kernel_size, tuple) or isinstance(options.dilation, tuple):
                raise ValueError(
                    f"{options.where}: kernel_size={options.kernel_size!r}, dilation={options.dilation!r}; text is 1D, "
                    "give ints"
                )
            return
        grid = self.family.config_grid(config)
        checks.kernel_fits_grid(options.kernel_size, options.dilation, grid, options.where, "the model's")

    def check_inputs(self, inputs: ForwardInputs) -> None:
        if inputs.grid is not None:
            options = self.options
            checks.kernel_fits_grid(
                options.kernel_size, options.dilation, inputs.grid, "variant='neighborhood'", "the input's"
            )

    def layer_mask(self, inputs: ForwardInputs, prepared: dict[str, Any], layer_idx: int) -> Mask:
        kernel, dilation = self.options.kernel, self.options.dilations
        if inputs.grid is not None:
            return generate_natten_2d(inputs.grid, kernel, dilation, inputs.num_prefix_tokens, inputs.device)
        return generate_natten_1d_over_real_tokens(
            kernel[0], dilation[0], inputs.seq_len, inputs.key_is_real, inputs.device
        )

    def attend_tensors(
        self, q, k, v, masks: ForwardMasks, layer_idx: int, scale: float, dropout_p: float, bias=None
    ) -> Tensor:
        plan = None if bias is not None else self._plan(masks, q)  # the structured plans add no model bias
        if plan is None:
            return super().attend_tensors(q, k, v, masks, layer_idx, scale, dropout_p, bias)
        return kernels.tiled_attention(q, k, v, plan, scale, dropout_p)

    def _plan(self, masks: ForwardMasks, q: Tensor) -> kernels.TilePlan | None:
        """The forward's band (text) or halo (ViT) plan where it pays (CPU, past the crossover); else None."""
        if not kernels.uses_structured_paths(q):
            return None
        inputs, (kernel, dilation) = masks.inputs, (self.options.kernel, self.options.dilations)
        if inputs.grid is not None:
            if inputs.has_padding or not halo_pays(inputs.grid):
                return None
            build = lambda: natten_2d_plan(
                inputs.grid,
                kernel,
                dilation,
                inputs.num_prefix_tokens,
                batch=inputs.batch,
                device=q.device,
                dtype=q.dtype,
            )
        else:
            if not band_pays(-(-inputs.seq_len // dilation[0]), kernel[0]):  # a dilation group's length
                return None
            build = lambda: natten_1d_plan(
                inputs.seq_len,
                kernel[0],
                dilation[0],
                batch=inputs.batch,
                key_is_real=masks.inputs_on(q.device).key_is_real,
                device=q.device,
                dtype=q.dtype,
            )
        return masks.shared(("natten", q.device, q.dtype), build)


class SwinBlockNeighborhoodVariant(FeatureMapVariant):
    """NATTEN's rule on each Swin or Swin v2 block's feature map, with the block's own scores and bias: one mask per
    stage geometry."""

    name = "neighborhood"
    families = ("swin", "swinv2")
    Options = NeighborhoodOptions

    def configure(self, config) -> None:
        options = self.options
        grid = self.family.config_grid(config)
        checks.kernel_fits_grid(options.kernel_size, options.dilation, grid, options.where, "the model's")

    def check_inputs(self, inputs: ForwardInputs) -> None:
        """Each stage has its own map; a stage smaller than the kernel sees all of it (NATTEN's rule)."""

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks: ForwardMasks) -> Tensor:
        kernel, dilation = self.options.kernel, self.options.dilations
        # the farthest offset any query attends: (kernel - 1)·dilation, or the whole line where it is shorter
        reach = max(min(size - 1, (side - 1) * step) for size, side, step in zip(grid, kernel, dilation))
        scores = self.family.block_scores(layer, q, k, reach=reach)
        dropout_p = self.dropout_p(layer)
        if self.family.bias_table(layer) is not None and kernels.uses_structured_paths(q) and halo_pays(grid):
            return self._attend_halo(layer, scores, v, grid, dropout_p)
        # natten_axis sees a line shorter than the kernel whole: small late stages need no special case
        mask = self.cached(
            ("natten2d", grid, q.device),
            lambda: BatchMask(
                generate_natten_2d(grid, kernel, dilation, device=q.device), grid[0] * grid[1], device=q.device
            ),
        )
        bias = generate_relative_position_bias(scores.table, grid[1], scores.table_window)
        return kernels.attend(
            scores.q,
            scores.k,
            v,
            mask,
            score_mod=bias,
            scale=scores.scale,
            dropout_p=dropout_p,
            score_mod_params=[scores.table],
        )

    def _attend_halo(self, layer, scores: BlockScores, v: Tensor, grid, dropout_p: float) -> Tensor:
        """The halo plan (CPU, past its crossover) for a block whose bias is a fixed table (Swin's): the table is
        gathered onto the plan's tile pairs, and kept while it does not change."""
        table, table_window, q = scores.table, scores.table_window, scores.q
        plan = self.cached(
            ("halo", grid, q.shape[0], q.device, q.dtype),
            lambda: natten_2d_plan(
                grid, self.options.kernel, self.options.dilations, batch=q.shape[0], device=q.device, dtype=q.dtype
            ),
        )
        index = self.cached(
            ("halo_bias", grid, table_window, q.device),
            lambda: tile_relative_position_index(plan.cells, grid[1], table_window),
        )
        build = lambda: gather_tile_bias(table, index).to(q.dtype)
        if torch.is_grad_enabled() and table.requires_grad:
            bias = build()  # from the trainable table, with its gradient
        else:
            version = (table.data_ptr(), table._version, grid, q.dtype)
            bias = self.latest(("halo_bias", id(layer)), version, build)
        return kernels.tiled_attention(q, scores.k, v, plan, scores.scale, dropout_p, bias=bias)
