"""``swin``: Swin's (shifted) window attention as one FlexAttention call over the whole feature map.

Instead of padding → rolling → partitioning into windows → attention → reversing, the window structure lives in the
``mask_mod`` (masks/windows.py) and the relative position bias is a ``score_mod`` that reads HF's own
``relative_position_bias_table`` (mods/relative_position.py; it stays a trainable parameter with gradients).

* Swin (exact): every block of the checkpoint, HF's window size and shift (``full`` is the same thing). HF pads
  the map to a multiple of the window and attends the padded tokens; so does this variant. HF's shift mask adds
  −100 across regions where this variant masks exactly (a difference below e^-100).
* ViT: non-overlapping windows on the patch grid, shifted by ``shift`` on odd layers, the CLS (and distillation)
  token global; no bias (ViT has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import checks, kernels
from ..masks import BatchMask, Mask, generate_permuted, generate_shifted_windows, padded_length, shifted_window_index
from ..mods import generate_relative_position_bias
from .base import ForwardInputs, ForwardMasks, Variant, VariantOptions, option
from .full import FullOptions


@dataclass(frozen=True, kw_only=True)
class SwinOptions(VariantOptions):
    variant: ClassVar[str] = "swin"

    window_size: int | None = option(None, "window side in patches (default: the Swin checkpoint's; required for ViT)")
    shift: int | None = option(None, "cyclic shift of the odd blocks in patches (default: window_size // 2; 0 = none)")
    token_order: str = option("window", "Swin only: attend tokens window-major ('window', faster) or row-major ('row')")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window_size is not None:
            checks.positive_int("window_size", self.window_size, self.where)
        if self.shift is not None:
            checks.non_negative_int("shift", self.shift, self.where)
        checks.one_of("token_order", self.token_order, ("window", "row"), self.where)


def window_major_order(grid: tuple[int, int], window: int, shift: int, device=None) -> Tensor:
    """Token permutation that makes each (shifted) window contiguous, padded with the identity to the block
    multiple: with windows contiguous, a 128-token block meets few windows, so far fewer key blocks are visited."""
    rows, cols = grid
    r = torch.arange(rows, device=device).view(-1, 1).expand(rows, cols)
    c = torch.arange(cols, device=device).view(1, -1).expand(rows, cols)
    win_r, win_c = shifted_window_index(r, window, shift), shifted_window_index(c, window, shift)
    key = ((win_r * (cols + window) + win_c) * rows + r) * cols + c
    order = torch.argsort(key.flatten())
    n, n_pad = rows * cols, padded_length(rows * cols)
    return torch.cat([order, torch.arange(n, n_pad, device=device)])


class SwinVariant(Variant):
    name = "swin"
    families = ("vit", "swin")
    Options = SwinOptions
    native = False  # ViT's attention modules do not know their layer index, which picks the shift

    def bind(self, config) -> None:
        options = self.options
        window, shift = options.window_size, options.shift
        if self.family.hierarchical:
            if window is not None and window > config.window_size:
                raise ValueError(
                    f"{options.where}: window_size={window} is larger than the checkpoint's {config.window_size}: its "
                    f"relative position bias table only covers offsets up to ±{config.window_size - 1}; use "
                    f"window_size ≤ {config.window_size}"
                )
            window = window or config.window_size
        else:
            if window is None:
                raise ValueError(f"{options.where} on ViT needs window_size=..., e.g. 7 for a 14x14 grid")
            grid = self.family.config_grid(config)
            if grid[0] % window or grid[1] % window:
                raise ValueError(
                    f"{options.where}: window_size={window} does not divide the model's {grid[0]}x{grid[1]} patch "
                    "grid (ViT has no padding to fill partial windows)"
                )
        shift = window // 2 if shift is None else shift
        if shift >= window:
            raise ValueError(f"{options.where}: shift={shift}; must be smaller than window_size={window}")
        self.window, self.shift, self.token_order = window, shift, options.token_order

    # --- ViT: windows on the patch grid, the shift alternating per layer -----------------------------------------

    def layer_key(self, layer_idx: int) -> int:
        return layer_idx % 2

    def check_inputs(self, inputs: ForwardInputs) -> None:
        if self.family.hierarchical:
            return
        rows, cols = inputs.grid
        if rows % self.window or cols % self.window:
            raise ValueError(
                f"variant='swin': window_size={self.window} does not divide the input's {rows}x{cols} patch grid"
            )

    def layer_mask(self, inputs: ForwardInputs, prepared: dict, layer_idx: int) -> Mask:
        shift = self.shift if layer_idx % 2 else 0
        return generate_shifted_windows(inputs.grid, self.window, shift, inputs.num_prefix_tokens, inputs.device)

    # --- Swin: one call per block over the padded feature map ------------------------------------------------------

    def _window_and_shift(self, layer, height: int, width: int) -> tuple[int, int]:
        """HF's rule: a map no larger than the window is one window, unshifted."""
        if min(height, width) <= self.window:
            return min(height, width), 0
        return self.window, (self.shift if layer.hfx_block_idx % 2 else 0)  # Swin shifts every odd block

    def map_shape(self, layer, height: int, width: int) -> tuple[int, int]:
        window, _ = self._window_and_shift(layer, height, width)
        return -(-height // window) * window, -(-width // window) * window

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, forward: ForwardMasks) -> Tensor:
        """Attention of one Swin block: ``dims`` is its feature map, ``grid`` the map padded by ``map_shape``."""
        window, shift = self._window_and_shift(layer, *dims)
        n = grid[0] * grid[1]
        key = (grid, window, shift, q.device, torch.is_inference_mode_enabled())
        order = None
        if self.token_order == "window":
            order = self.cached(("order", *key), lambda: window_major_order(grid, window, shift, q.device))

        def build() -> BatchMask:
            windows = generate_shifted_windows(grid, window, shift, device=q.device)
            self.mask_builds += 1
            return BatchMask(windows if order is None else generate_permuted(windows, order), n, device=q.device)

        mask = self.cached(("swin", order is None, *key), build)
        attention = layer.attention
        table = attention.relative_position_bias.relative_position_bias_table
        bias = generate_relative_position_bias(table, grid[1], attention.relative_position_bias.window_size[0])
        dropout_p = self.dropout_p(attention)
        if order is None:
            return kernels.attend(
                q, k, v, mask, score_mod=bias, scale=attention.scaling, dropout_p=dropout_p, score_mod_params=[table]
            )

        def permuted_bias(score, b, h, qi, kv):
            return bias(score, b, h, order[qi], order[kv])

        q, k, v = (x[:, :, order[:n]] for x in (q, k, v))
        out = kernels.attend(
            q,
            k,
            v,
            mask,
            score_mod=permuted_bias,
            scale=attention.scaling,
            dropout_p=dropout_p,
            score_mod_params=[table],
        )
        return out[:, :, torch.argsort(order[:n])]

    def extra_repr(self, layer_idx: int | None = None) -> str:
        values = self.options.to_dict()
        values.update(window_size=self.window, shift=self.shift)  # resolved, not None
        if not self.family.hierarchical:
            values.pop("token_order")
        return f"variant={self.name}, " + ", ".join(f"{k}={v!r}" for k, v in values.items())


class SwinFullVariant(SwinVariant):
    """For Swin, ``full`` is Swin's own attention: its shifted windows with the checkpoint's settings (exact)."""

    name = "full"
    families = ("swin",)
    Options = FullOptions

    def bind(self, config) -> None:
        self.window, self.shift, self.token_order = config.window_size, config.window_size // 2, "window"

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return Variant.extra_repr(self, layer_idx)
