"""``neighborhood``: NATTEN's neighborhood attention, 1D for text and 2D for image grids (rule in masks/natten.py).

* Text: the window runs over each sample's real tokens, so outputs do not depend on padding, on either side; a
  sample shorter than the window sees all of its dilation group.
* ViT: the rule runs on the patch grid (read from ``pixel_values`` at forward time); the CLS (and distillation)
  tokens stay global.
* Swin: the rule runs on each stage's feature map instead of Swin's windows; the checkpoint's relative position
  bias is added wherever the offset lies in the table (|offset| < the checkpoint's window size). Stages whose map
  is smaller than the kernel see the whole map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import checks, kernels
from ..masks import BatchMask, Mask, generate_natten_1d_over_real_tokens, generate_natten_2d
from ..mods import generate_relative_position_bias
from .base import ForwardInputs, ForwardMasks, Variant, VariantOptions, option

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
    name = "neighborhood"
    families = ("bert", "vit", "swin")
    Options = NeighborhoodOptions

    def bind(self, config) -> None:
        options = self.options
        if self.family.spatial_dims == 1:
            if isinstance(options.kernel_size, tuple) or isinstance(options.dilation, tuple):
                raise ValueError(
                    f"{options.where}: kernel_size={options.kernel_size!r}, dilation={options.dilation!r}; text is 1D, "
                    "give ints"
                )
            return
        grid = self.family.config_grid(config)
        self._check_fits(grid, "the model's", f"{options.where}:")

    def _check_fits(self, grid: tuple[int, int], whose: str, prefix: str) -> None:
        for axis, (g, k, d) in enumerate(zip(grid, self.options.kernel, self.options.dilations)):
            if k * d > g:
                raise ValueError(
                    f"{prefix} kernel_size={self.options.kernel_size!r} with dilation={self.options.dilation!r} spans "
                    f"{k * d} positions, more than the {'rows' if axis == 0 else 'columns'} of {whose} "
                    f"{grid[0]}x{grid[1]} patch grid"
                )

    def check_inputs(self, inputs: ForwardInputs) -> None:
        if inputs.grid is not None and not self.family.hierarchical:
            self._check_fits(inputs.grid, "the input's", "variant='neighborhood':")

    # --- text and ViT: one mask per forward ----------------------------------------------------------------------

    def layer_mask(self, inputs: ForwardInputs, prepared: dict[str, Any], layer_idx: int) -> Mask:
        kernel, dilation = self.options.kernel, self.options.dilations
        if inputs.grid is not None:
            return generate_natten_2d(inputs.grid, kernel, dilation, inputs.num_prefix_tokens, inputs.device)
        return generate_natten_1d_over_real_tokens(
            kernel[0], dilation[0], inputs.seq_len, inputs.key_is_real, inputs.device
        )

    # --- Swin: one mask per stage geometry, with the block's relative position bias --------------------------------

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, forward: ForwardMasks) -> Tensor:
        # natten_axis sees a line shorter than the kernel whole: small late stages need no special case
        mask = self.cached(
            ("natten2d", grid, q.device, torch.is_inference_mode_enabled()),
            lambda: BatchMask(
                generate_natten_2d(grid, self.options.kernel, self.options.dilations, device=q.device),
                grid[0] * grid[1],
                device=q.device,
            ),
        )
        attention = layer.attention
        table = attention.relative_position_bias.relative_position_bias_table
        bias = generate_relative_position_bias(table, grid[1], attention.relative_position_bias.window_size[0])
        return kernels.attend(
            q,
            k,
            v,
            mask,
            score_mod=bias,
            scale=attention.scaling,
            dropout_p=self.dropout_p(layer.attention),
            score_mod_params=[table],
        )

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return "variant=neighborhood, " + ", ".join(f"{k}={v!r}" for k, v in self.options.to_dict().items())
