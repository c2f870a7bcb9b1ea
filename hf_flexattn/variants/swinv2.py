"""Swin v2's meaning of ``full``, ``swin`` and ``neighborhood`` (the swinv2 family's ``variant_overrides``).

Swin v2's attention differs from Swin's in its scores, not its windows: cosine similarity of queries and keys
times a learnable per-head logit scale (clamped at log 100), plus a *continuous* position bias, ``16·sigmoid`` of a
small MLP of log-spaced relative coordinates. Here the scale is folded into the normalised queries (so the kernel
runs with scale 1) and the MLP's table is computed once per block forward and read by a ``score_mod``
(mods/continuous_position.py), so gradients reach the logit scale and the MLP. The coordinates are divided by the
block's pretrained window size where the checkpoint has one (``config.pretrained_window_sizes``), else by its window.

* ``full``: HF's own windows and shifts, as each block holds them (exact).
* ``swin``: ``window_size`` / ``shift`` of your choice. The bias is continuous, so unlike Swin a window larger than
  the checkpoint's is allowed: offsets beyond it are new inputs to the same MLP, as in Swin v2's window transfer.
  HF's rules apply per block: the window is capped at the stage's (configured) map, which is then unshifted.
* ``neighborhood``: NATTEN's rule on each stage's feature map, with the continuous bias for every offset it attends.

Swin v2 blocks see the map padded like HF (zeros, bottom/right, to a multiple of the window) and attend the padded
tokens as HF does; its shift mask adds −100 twice where this variant masks exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import checks, kernels
from ..masks import BatchMask, generate_natten_2d, generate_permuted, generate_shifted_windows
from ..mods import continuous_position_bias_table, generate_continuous_position_bias
from .base import FeatureMapVariant, ForwardInputs, Variant
from .full import FullOptions
from .neighborhood import NeighborhoodOptions
from .swin import SwinOptions, window_major_order

# HF's clamp on the logit scale: at most 1 / 0.01
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)


def cosine_queries_and_keys(attention: nn.Module, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Unit queries times each head's clamped logit scale, and unit keys: their dot products are HF's scores."""
    logit_scale = torch.clamp(attention.logit_scale, max=MAX_LOGIT_SCALE).exp()  # (heads, 1, 1)
    return nn.functional.normalize(q, dim=-1) * logit_scale, nn.functional.normalize(k, dim=-1)


def bias_normaliser(attention: nn.Module) -> tuple[int, int] | None:
    """What HF divides the relative coordinates by (minus one): the pretrained window, else the block's window."""
    pretrained, window = attention.pretrained_window_size, attention.window_size
    if pretrained[0] > 0:
        return tuple(pretrained)
    return tuple(window) if window[0] > 1 else None


def attend_with_continuous_bias(
    variant: Variant,
    layer: nn.Module,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: BatchMask,
    grid: tuple[int, int],
    reach: int,
    order: Tensor | None,
) -> Tensor:
    """One Swin v2 block's attention over its (padded) map ``grid`` under ``mask``, with the continuous bias for
    offsets up to ``reach``; ``order`` (or None) is the token permutation ``mask`` was built for."""
    attention = layer.attention.self
    q, k = cosine_queries_and_keys(attention, q, k)
    table = continuous_position_bias_table(
        attention.continuous_position_bias_mlp, attention.num_attention_heads, reach, bias_normaliser(attention)
    )
    bias = generate_continuous_position_bias(table, grid[1], reach)
    dropout_p = variant.dropout_p(layer)
    if order is None:
        return kernels.attend(q, k, v, mask, score_mod=bias, scale=1.0, dropout_p=dropout_p, score_mod_params=[table])
    n = grid[0] * grid[1]

    def permuted_bias(score, b, h, qi, kv):
        return bias(score, b, h, order[qi], order[kv])

    q, k, v = (x[:, :, order[:n]] for x in (q, k, v))
    out = kernels.attend(
        q, k, v, mask, score_mod=permuted_bias, scale=1.0, dropout_p=dropout_p, score_mod_params=[table]
    )
    return out[:, :, torch.argsort(order[:n])]


class Swinv2WindowVariant(FeatureMapVariant):
    name = "swin"
    families = ("swinv2",)
    Options = SwinOptions
    native = False

    def configure(self, config) -> None:
        window = self.options.window_size or config.window_size
        shift = window // 2 if self.options.shift is None else self.options.shift
        if shift >= window:
            raise ValueError(f"{self.options.where}: shift={shift}; must be smaller than window_size={window}")
        self.window, self.shift = window, shift

    def window_and_shift(self, layer: nn.Module) -> tuple[int, int]:
        """HF's rule (``Swinv2Layer._compute_window_shift``), on the map size the block was built for: the window
        is capped at the map, and a map no larger than the window is not shifted; odd blocks shift."""
        resolution = layer.input_resolution[0]
        window = min(resolution, self.window)
        shift = self.shift if layer.hfx_block_idx % 2 else 0
        return window, 0 if resolution <= window else shift

    def map_shape(self, layer, height: int, width: int) -> tuple[int, int]:
        window, _ = self.window_and_shift(layer)
        return -(-height // window) * window, -(-width // window) * window

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks) -> Tensor:
        window, shift = self.window_and_shift(layer)
        key = (grid, window, shift, q.device, torch.is_inference_mode_enabled())
        # each (shifted) window contiguous, so that a 128-token block meets few windows
        order = self.cached(("order", *key), lambda: window_major_order(grid, window, shift, q.device))

        def build() -> BatchMask:
            windows = generate_shifted_windows(grid, window, shift, device=q.device)
            return BatchMask(generate_permuted(windows, order), grid[0] * grid[1], device=q.device)

        mask = self.cached(("swin", *key), build)
        return attend_with_continuous_bias(self, layer, q, k, v, mask, grid, window - 1, order)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        values = self.options.to_dict()
        values.update(window_size=self.window, shift=self.shift)  # resolved, not None
        return f"variant={self.name}, " + ", ".join(f"{k}={v!r}" for k, v in values.items())


class Swinv2FullVariant(Swinv2WindowVariant):
    """For Swin v2, ``full`` is its own attention: each block's windows and shift as HF built them (exact)."""

    name = "full"
    Options = FullOptions

    def configure(self, config) -> None:
        pass  # the windows and shifts are the ones HF built each block with

    def window_and_shift(self, layer: nn.Module) -> tuple[int, int]:
        return layer.window_size, layer.shift_size

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return Variant.extra_repr(self, layer_idx)


class Swinv2NeighborhoodVariant(FeatureMapVariant):
    name = "neighborhood"
    families = ("swinv2",)
    Options = NeighborhoodOptions
    native = False

    def configure(self, config) -> None:
        options = self.options
        grid = self.family.config_grid(config)
        checks.kernel_fits_grid(options.kernel_size, options.dilation, grid, options.where, "the model's")

    def check_inputs(self, inputs: ForwardInputs) -> None:
        """Each stage has its own map; a stage smaller than the kernel sees all of it (NATTEN's rule)."""

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks) -> Tensor:
        kernel, dilation = self.options.kernel, self.options.dilations
        mask = self.cached(
            ("natten2d", grid, q.device, torch.is_inference_mode_enabled()),
            lambda: BatchMask(
                generate_natten_2d(grid, kernel, dilation, device=q.device), grid[0] * grid[1], device=q.device
            ),
        )
        # the farthest offset any query attends: (kernel - 1)·dilation, or the whole line where it is shorter
        reach = max(min(size - 1, (k - 1) * d) for size, k, d in zip(grid, kernel, dilation))
        return attend_with_continuous_bias(self, layer, q, k, v, mask, grid, reach, None)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return "variant=neighborhood, " + ", ".join(f"{k}={v!r}" for k, v in self.options.to_dict().items())
