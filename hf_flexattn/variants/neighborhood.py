"""``neighborhood``: NATTEN's neighborhood attention, 1D for text and 2D for image grids (rule in masks/natten.py).

* Text: the window runs over each sample's real tokens, so outputs do not depend on padding, on either side; a
  sample shorter than the window sees all of its dilation group.
* ViT: the rule runs on the patch grid (read from ``pixel_values`` at forward time); the CLS (and distillation)
  tokens stay global.
* Swin: the rule runs on each stage's feature map instead of Swin's windows; the checkpoint's relative position
  bias is added wherever the offset lies in the table (|offset| < the checkpoint's window size). Stages whose map
  is smaller than the kernel see the whole map.

On CPU, past the measured crossovers, the structured plans run: text the band plan over each sample's real tokens
(kernels/band.py), grids the halo plan (kernels/halo.py; Swin's bias gathered on the tiles' pairs); below them the
dense kernel with the exact mask. On CUDA compiled flex.
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
from .base import FeatureMapVariant, ForwardInputs, ForwardMasks, VariantOptions, option

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


class NeighborhoodVariant(FeatureMapVariant):
    name = "neighborhood"
    families = (
        "bert",
        "vit",
        "swin",
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
        if inputs.grid is not None and not self.family.hierarchical:
            options = self.options
            checks.kernel_fits_grid(
                options.kernel_size, options.dilation, inputs.grid, "variant='neighborhood'", "the input's"
            )

    # --- text and ViT: one mask per forward ----------------------------------------------------------------------

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

    # --- Swin: one mask per stage geometry, with the block's relative position bias --------------------------------

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks: ForwardMasks) -> Tensor:
        attention = layer.attention
        table = attention.relative_position_bias.relative_position_bias_table
        table_window = attention.relative_position_bias.window_size[0]
        dropout_p = self.dropout_p(attention)
        if kernels.uses_structured_paths(q) and halo_pays(grid):
            inference = torch.is_inference_mode_enabled()
            plan = self.cached(
                ("halo", grid, q.shape[0], q.device, q.dtype, inference),
                lambda: natten_2d_plan(
                    grid, self.options.kernel, self.options.dilations, batch=q.shape[0], device=q.device, dtype=q.dtype
                ),
            )
            index = self.cached(
                ("halo_bias", grid, table_window, q.device, inference),
                lambda: tile_relative_position_index(plan.cells, grid[1], table_window),
            )
            build = lambda: gather_tile_bias(table, index).to(q.dtype)
            if torch.is_grad_enabled() and table.requires_grad:
                bias = build()  # from the trainable table, with its gradient
            else:
                version = (table.data_ptr(), table._version, grid, q.dtype, inference)
                bias = self.latest(("halo_bias", id(attention)), version, build)
            return kernels.tiled_attention(q, k, v, plan, attention.scaling, dropout_p, bias=bias)
        # natten_axis sees a line shorter than the kernel whole: small late stages need no special case
        mask = self.cached(
            ("natten2d", grid, q.device, torch.is_inference_mode_enabled()),
            lambda: BatchMask(
                generate_natten_2d(grid, self.options.kernel, self.options.dilations, device=q.device),
                grid[0] * grid[1],
                device=q.device,
            ),
        )
        bias = generate_relative_position_bias(table, grid[1], table_window)
        return kernels.attend(
            q, k, v, mask, score_mod=bias, scale=attention.scaling, dropout_p=dropout_p, score_mod_params=[table]
        )

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return "variant=neighborhood, " + ", ".join(f"{k}={v!r}" for k, v in self.options.to_dict().items())
