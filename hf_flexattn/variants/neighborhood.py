"""``neighborhood``: NATTEN's neighborhood attention, 1D for text and 2D for image grids (rule in masks/natten.py).

* Text: the window runs over each sample's real tokens, so outputs do not depend on padding, on either side; a
  sample shorter than the window sees all of its dilation group.
* ViT: the rule runs on the patch grid (read from ``pixel_values`` at forward time); the CLS (and distillation)
  tokens stay global.
* Swin and Swin v2 (:class:`SwinBlockNeighborhoodVariant`): the rule runs on each stage's feature map instead of the
  model's windows, with the block's own scores and bias (its family's ``block_scores``): Swin's relative position
  bias wherever the offset lies in the checkpoint's table (|offset| < its window size), Swin v2's continuous bias
  for every offset attended. Stages whose map is smaller than the kernel see the whole map.
* DiNAT (:class:`DinatNeighborhoodVariant`, the DiNAT family's strategy): each layer's own dilation (or one given)
  and its bias table ``rpb`` as a ``score_mod`` (mods/natten_bias.py).

On CPU, past the measured crossovers, the structured plans run: text the band plan over each sample's real tokens
(kernels/band.py), grids the halo plan (kernels/halo.py; Swin's fixed bias table gathered on the tiles' pairs); below
them the dense kernel with the exact mask. On CUDA compiled flex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import checks, compat, kernels, ops
from ..kernels.halo import gather_tile_bias, tile_relative_position_index
from ..masks import BatchMask, Mask, generate_natten_1d_over_real_tokens, generate_natten_2d
from ..mods import generate_natten_bias, generate_relative_position_bias
from .base import (
    ChecksInputs,
    FeatureMapVariant,
    ForwardInputs,
    ForwardMasks,
    ForwardState,
    LayerCall,
    NativeAttention,
    Requirements,
    Variant,
    VariantOptions,
    option,
)
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


class NeighborhoodVariant(ChecksInputs, NativeAttention, Variant):
    """NATTEN's rule on text and on flat patch grids: one mask per forward."""

    name = "neighborhood"
    requires = Requirements(tokens=("sequence", "grid"))
    Options = NeighborhoodOptions
    kernel_backends = ("auto", "flex", "natten", "flash")

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

    def layer_mask(self, inputs: ForwardInputs, prepared: ForwardState | None, layer_idx: int) -> Mask:
        kernel, dilation = self.options.kernel, self.options.dilations
        if inputs.grid is not None:
            return generate_natten_2d(inputs.grid, kernel, dilation, inputs.num_prefix_tokens, inputs.device)
        return generate_natten_1d_over_real_tokens(
            kernel[0], dilation[0], inputs.seq_len, inputs.key_is_real, inputs.device
        )

    def attend(self, call: LayerCall) -> Tensor:
        q, masks, bias = call.q, call.masks, call.bias
        inputs, kernel, dilation = masks.inputs_on(q.device), self.options.kernel, self.options.dilations
        backend = self.options.backend
        if backend == "natten":
            out = ops.natten_attention(
                q,
                call.k,
                call.v,
                kernel,
                dilation,
                call.scale,
                call.dropout_p,
                grid=inputs.grid,
                num_prefix_tokens=inputs.num_prefix_tokens,
                key_is_real=inputs.key_is_real,
                has_bias=bias is not None,
            )
            if out is not None:
                return out
        if inputs.grid is not None:
            plan = ops.natten_2d_halo_plan(
                q,
                inputs.grid,
                kernel,
                dilation,
                masks,
                num_prefix_tokens=inputs.num_prefix_tokens,
                key_is_real=inputs.key_is_real,
                score_mod=bias is not None,
                backend=backend,
            )
        elif bias is None:  # a text family has no model bias; the band plan would not add one
            plan = ops.natten_1d_band_plan(
                q, inputs.seq_len, kernel[0], dilation[0], masks, key_is_real=inputs.key_is_real, backend=backend
            )
        else:
            plan = None
        if plan is None:
            return super().attend(call)
        return kernels.tiled_attention(q, call.k, call.v, plan, call.scale, call.dropout_p)


class SwinBlockNeighborhoodVariant(FeatureMapVariant):
    """NATTEN's rule on each Swin or Swin v2 block's feature map, with the block's own scores and bias: one mask per
    stage geometry."""

    name = "neighborhood"
    requires = Requirements(tokens=("feature_map",), windowed_blocks=True)
    Options = NeighborhoodOptions

    # no check of the input's map: each stage has its own, and a stage smaller than the kernel sees all of it (NATTEN)
    def configure(self, config) -> None:
        options = self.options
        grid = self.family.config_grid(config)
        checks.kernel_fits_grid(options.kernel_size, options.dilation, grid, options.where, "the model's")

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks: ForwardMasks | None) -> Tensor:
        kernel, dilation = self.options.kernel, self.options.dilations
        # the farthest offset any query attends: (kernel - 1)·dilation, or the whole line where it is shorter
        reach = max(min(size - 1, (side - 1) * step) for size, side, step in zip(grid, kernel, dilation))
        scores = self.family.block_scores(layer, q, k, reach=reach)
        dropout_p = self.dropout_p(layer)
        # the halo plan gathers a fixed bias table onto its tiles; Swin v2's continuous bias is a score_mod
        plan = ops.natten_2d_halo_plan(
            q,
            grid,
            kernel,
            dilation,
            ops.CallPlans(shape_only=True),
            score_mod=self.family.bias_table(layer) is None,
            backend=self.options.backend,
        )
        if plan is not None:
            return self._attend_halo(layer, plan, scores, v, grid, dropout_p)
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
            backend=self.options.backend,
        )

    def _attend_halo(self, layer, plan: kernels.TilePlan, scores: BlockScores, v: Tensor, grid, dropout_p) -> Tensor:
        """The halo plan for a block whose bias is a fixed table (Swin's): the table is gathered onto the plan's tile
        pairs, and kept while it does not change."""
        table, table_window, q = scores.table, scores.table_window, scores.q
        index = self.cached(
            ("halo_bias", grid, table_window, q.device),
            lambda: tile_relative_position_index(plan.cells, grid[1], table_window),
        )
        build = lambda: gather_tile_bias(table, index).to(q.dtype)
        if torch.is_grad_enabled() and table.requires_grad:
            bias = build()  # from the trainable table, with its gradient
        else:
            version = (table.data_ptr(), compat.tensor_version(table), grid, q.dtype)
            bias = self.latest(("halo_bias", id(layer)), version, build)
        return kernels.tiled_attention(q, scores.k, v, plan, scores.scale, dropout_p, bias=bias)


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


class DinatNeighborhoodVariant(FeatureMapVariant):
    """DiNAT's own neighborhood attention (the DiNAT family's strategy for ``neighborhood``): the checkpoint's kernel
    and per-layer dilations by default, and each layer's bias table ``rpb``."""

    name = "neighborhood"
    requires = Requirements(tokens=("feature_map",), neighborhood_blocks=True)
    Options = DinatNeighborhoodOptions

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
        return generate_natten_bias(
            module.rpb, grid[1], self.kernel, self.dilations[module.hfx_layer_idx], self.table_kernel
        )

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks: ForwardMasks | None) -> Tensor:
        """DiNAT's module (``layer``) attends its stage's map as it is (``dims`` = ``grid``: DiNAT pads before the
        attention); its masks are per stage geometry (``masks``: None)."""
        self._check_fits(layer, grid)
        return kernels.attend(
            q,
            k,
            v,
            self._mask(layer, grid, q.device),
            score_mod=self._bias(layer, grid),
            scale=layer.scaling,
            dropout_p=self.dropout_p(layer),
            score_mod_params=[layer.rpb],
            backend=self.options.backend,
        )

    def map_probabilities(self, layer: nn.Module, q: Tensor, k: Tensor, dims, grid) -> Tensor:
        mask = self._mask(layer, grid, q.device)
        return kernels.attention_probabilities(q, k, mask, score_mod=self._bias(layer, grid), scale=layer.scaling)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        dilation = self.dilations if layer_idx is None else self.dilations[layer_idx]
        return f"variant=neighborhood, kernel_size={self.kernel}, dilation={dilation}"
