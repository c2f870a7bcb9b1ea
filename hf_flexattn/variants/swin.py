"""``swin``: Swin's (shifted) window attention.

* Swin (exact): every block of the checkpoint, HF's window size and shift (``full`` is the same thing), or a
  ``window_size`` smaller than the checkpoint's (its bias then reads the centre of the checkpoint's larger table).
  On CPU (and whenever ``output_attentions`` asks for HF's per-window probabilities) a block runs HF Swin's own
  algorithm with the index work done once per geometry (kernels/windows.py): the roll and the window partition
  are one gather of the normalised map, q/k/v one linear with the three weights concatenated, the bias + shift
  mask (HF's −100) one cached additive mask, the attention one SDPA call on (B·nW, H, w², D), and the inverse
  gather brings the windows back. On CUDA the block is one compiled flex call over the whole (padded) map, tokens
  window-major (each shifted window contiguous, so a 128-token block meets few windows), the window structure in the
  ``mask_mod`` (masks/windows.py) and the bias a ``score_mod`` reading the trainable table (mods/relative_position.py).
* ViT: non-overlapping windows on the patch grid, shifted by ``shift`` on odd layers, the CLS (and distillation)
  token global; no bias (ViT has none). On CPU the windows are the tiles of one batched SDPA call
  (:func:`~hf_flexattn.kernels.windows.shifted_window_plan`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import checks, kernels
from ..kernels.windows import hf_shift_mask, relative_position_index, shifted_window_plan, window_order
from ..masks import (
    BLOCK_SIZE,
    BatchMask,
    Mask,
    generate_permuted,
    generate_shifted_windows,
    padded_length,
    shifted_window_index,
)
from ..mods import generate_relative_position_bias
from .base import FeatureMapVariant, ForwardInputs, ForwardMasks, Variant, VariantOptions, option
from .full import FullOptions


@dataclass(frozen=True, kw_only=True)
class SwinOptions(VariantOptions):
    variant: ClassVar[str] = "swin"

    window_size: int | None = option(None, "window side in patches (default: the Swin checkpoint's; required for ViT)")
    shift: int | None = option(None, "cyclic shift of the odd blocks in patches (default: window_size // 2; 0 = none)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window_size is not None:
            checks.positive_int("window_size", self.window_size, self.where)
        if self.shift is not None:
            checks.non_negative_int("shift", self.shift, self.where)


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


# CUDA's fused SDPA kernels (flash, memory-efficient) tile a window's w² tokens in steps of 64: a 7×7 window's 49
# tokens take a 64-token tile (conservative: the smallest tiles, 32 or 16, pad less)
WINDOW_KERNEL_TILE = 64


@dataclass(frozen=True)
class BlockStatistics:
    """What the two algorithms of one Swin block compute, in scores per (sample, head)."""

    visited_blocks: int  # (query block, key block) pairs the whole-map flex call visits
    total_blocks: int
    used_scores: int  # scores inside the windows (what attention needs)
    flex_scores: int  # visited_blocks · 128²
    window_scores: int  # windows · (w² rounded up to WINDOW_KERNEL_TILE)²

    @property
    def flex_use(self) -> float:
        return self.used_scores / self.flex_scores


@functools.lru_cache(maxsize=256)
def block_statistics(grid: tuple[int, int], window: int, shift: int) -> BlockStatistics:
    """The block statistics of one block's geometry, computed on the host from the window-major order (no tensor
    of the device is read: the policy stays sync-free), once per geometry and process."""
    rows, cols = grid
    n = rows * cols
    order = window_major_order(grid, window, shift, device="cpu")[:n]  # on the host, whatever the default device
    r, c = order // cols, order % cols
    win_r, win_c = shifted_window_index(r, window, shift), shifted_window_index(c, window, shift)
    window_id = torch.unique(win_r * (cols + window) + win_c, return_inverse=True)[1]  # per window-major position
    incidence = torch.zeros(padded_length(n) // BLOCK_SIZE, int(window_id.max()) + 1, device="cpu")
    incidence[torch.arange(n, device="cpu") // BLOCK_SIZE, window_id] = 1.0  # block b holds tokens of window w
    visited = int(((incidence @ incidence.T) > 0).sum())
    used = int((torch.bincount(window_id).double() ** 2).sum())
    tile = -(-window * window // WINDOW_KERNEL_TILE) * WINDOW_KERNEL_TILE
    windows = (-(-rows // window)) * (-(-cols // window))
    return BlockStatistics(visited, incidence.shape[0] ** 2, used, visited * BLOCK_SIZE**2, windows * tile**2)


def windows_pay(grid: tuple[int, int], window: int, shift: int) -> bool:
    """CUDA's choice for one block: HF's window algorithm (one SDPA call over the windows) unless the whole-map flex
    call computes fewer scores. Flex also evaluates its mask_mod and score_mod per score, so a tie goes to windows."""
    stats = block_statistics(grid, window, shift)
    return stats.window_scores <= stats.flex_scores


@dataclass
class WindowGeometry:
    """One Swin block's windows on its padded map: the window-major ``order`` of the rolled map and its
    ``inverse``, the bias ``index`` into the checkpoint's table, HF's ``shift_mask`` (None when unshifted)."""

    window: int
    order: Tensor
    inverse: Tensor
    index: Tensor
    shift_mask: Tensor | None


class SwinVariant(FeatureMapVariant):
    name = "swin"
    families = ("vit", "swin", "dinov2", "beit", "general_vision", "clip_vision")
    Options = SwinOptions
    native = False  # ViT's attention modules do not know their layer index, which picks the shift

    def configure(self, config) -> None:
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
        self.window, self.shift = window, shift

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

    def attend_tensors(
        self, q, k, v, masks: ForwardMasks, layer_idx: int, scale: float, dropout_p: float, bias=None
    ) -> Tensor:
        inputs = masks.inputs
        if not kernels.uses_structured_paths(q) or inputs.has_padding or bias is not None:
            return super().attend_tensors(q, k, v, masks, layer_idx, scale, dropout_p, bias)
        shift = self.shift if layer_idx % 2 else 0
        plan = masks.shared(
            ("windows", shift, q.device, q.dtype),
            lambda: shifted_window_plan(
                inputs.grid,
                self.window,
                shift,
                inputs.num_prefix_tokens,
                batch=inputs.batch,
                device=q.device,
                dtype=q.dtype,
            ),
        )
        return kernels.tiled_attention(q, k, v, plan, scale, dropout_p)

    # --- Swin: one block at a time ---------------------------------------------------------------------------------

    def _window_and_shift(self, layer, height: int, width: int) -> tuple[int, int]:
        """HF's rule: a map no larger than the window is one window, unshifted."""
        if min(height, width) <= self.window:
            return min(height, width), 0
        return self.window, (self.shift if layer.hfx_block_idx % 2 else 0)  # Swin shifts every odd block

    def map_shape(self, layer, height: int, width: int) -> tuple[int, int]:
        window, _ = self._window_and_shift(layer, height, width)
        return -(-height // window) * window, -(-width // window) * window

    def attend_block(self, layer, x: Tensor, dims, masks: ForwardMasks) -> tuple[Tensor, Tensor | None]:
        if masks.want_weights or kernels.uses_structured_paths(x) or self._windows_pay(layer, x, dims):
            return self._attend_windows(layer, x, dims, masks)
        return super().attend_block(layer, x, dims, masks)

    def _windows_pay(self, layer, x: Tensor, dims) -> bool:
        """CUDA's choice between the window algorithm and whole-map flex (:func:`windows_pay`).
        Inside the user's ``torch.compile`` flex is traced into their graph, as everywhere."""
        if torch.compiler.is_compiling():
            return False
        window, shift = self._window_and_shift(layer, *dims)
        return windows_pay((x.shape[1], x.shape[2]), window, shift)

    def _geometry(self, layer, rows: int, cols: int, dims, dtype, device) -> WindowGeometry:
        window, shift = self._window_and_shift(layer, *dims)
        table_window = layer.attention.relative_position_bias.window_size[0]

        def build() -> WindowGeometry:
            order = window_order(rows, cols, window, shift, device)
            shift_mask = hf_shift_mask(rows, cols, window, shift, dtype, device)
            index = relative_position_index(window, table_window, device)
            return WindowGeometry(window, order, torch.argsort(order), index, shift_mask)

        key = ("windows", rows, cols, window, shift, table_window, dtype, device, torch.is_inference_mode_enabled())
        return self.cached(key, build)

    def _attend_windows(self, layer, x: Tensor, dims, masks: ForwardMasks) -> tuple[Tensor, Tensor | None]:
        """HF Swin's window attention of one block (see the module docstring); (B, rows, cols, C) → same."""
        batch, rows, cols, channels = x.shape
        geometry = self._geometry(layer, rows, cols, dims, x.dtype, x.device)
        attention = layer.attention
        heads, head_dim, window_area = attention.num_attention_heads, attention.head_dim, geometry.window**2
        windows = x.reshape(batch, rows * cols, channels).index_select(1, geometry.order)  # roll + partition
        weight, bias = self._fused_qkv(attention)
        qkv = torch.nn.functional.linear(windows, weight, bias).view(-1, window_area, 3, heads, head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B·nW, H, w², D) views, no copy
        mask = self._window_mask(attention, geometry, batch, x.dtype)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p(attention), scale=attention.scaling
        )
        weights = None
        if masks.want_weights:  # HF's eager attention: softmax in float32, per window
            scores = q @ k.transpose(-1, -2) * attention.scaling + mask
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = attention.o_proj(out.transpose(1, 2).reshape(batch, rows * cols, channels))
        out = layer.dropout(out)  # as HF: on the windows, before they go back
        return out.index_select(1, geometry.inverse).view(batch, rows, cols, channels), weights

    def _fused_qkv(self, attention) -> tuple[Tensor, Tensor | None]:
        """q/k/v as one linear: the three weights (and biases) concatenated; kept while the parameters do not
        change (their ``_version``) and no gradient is needed, rebuilt (differentiably) otherwise."""
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        params = [p.weight for p in projections] + [p.bias for p in projections if p.bias is not None]
        build = lambda: (
            torch.cat([p.weight for p in projections]),
            torch.cat([p.bias for p in projections]) if projections[0].bias is not None else None,
        )
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return build()
        version = (*((p.data_ptr(), p._version) for p in params), torch.is_inference_mode_enabled())
        return self.latest(("qkv", id(attention)), version, build)

    def _window_mask(self, attention, geometry: WindowGeometry, batch: int, dtype) -> Tensor:
        """HF's additive mask on the (B·nW, H, w², w²) scores: the relative position bias + the shift mask; cached
        while the table does not change, rebuilt (differentiably, from the trainable table) when it trains."""
        table = attention.relative_position_bias.relative_position_bias_table

        def build() -> Tensor:
            bias = table[geometry.index].permute(2, 0, 1).unsqueeze(0).to(dtype)  # (1, H, w², w²)
            if geometry.shift_mask is None:
                return bias.contiguous()  # SDPA broadcasts it over windows and batch (and would copy a strided one)
            return (bias + geometry.shift_mask).repeat(batch, 1, 1, 1)  # (B·nW, H, w², w²), HF's order

        if torch.is_grad_enabled() and table.requires_grad:
            return build()
        version = (table.data_ptr(), table._version, id(geometry), batch, dtype, torch.is_inference_mode_enabled())
        return self.latest(("window_mask", id(attention)), version, build)

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks: ForwardMasks) -> Tensor:
        """One block as one compiled flex call over its whole (padded) map, in window-major token order."""
        window, shift = self._window_and_shift(layer, *dims)
        n = grid[0] * grid[1]
        key = (grid, window, shift, q.device, torch.is_inference_mode_enabled())
        order = self.cached(("order", *key), lambda: window_major_order(grid, window, shift, q.device))

        def build() -> BatchMask:
            windows = generate_shifted_windows(grid, window, shift, device=q.device)
            return BatchMask(generate_permuted(windows, order), n, device=q.device)

        mask = self.cached(("swin", *key), build)
        attention = layer.attention
        table = attention.relative_position_bias.relative_position_bias_table
        bias = generate_relative_position_bias(table, grid[1], attention.relative_position_bias.window_size[0])

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
            dropout_p=self.dropout_p(attention),
            score_mod_params=[table],
        )
        return out[:, :, torch.argsort(order[:n])]

    def extra_repr(self, layer_idx: int | None = None) -> str:
        values = self.options.to_dict()
        values.update(window_size=self.window, shift=self.shift)  # resolved, not None
        return f"variant={self.name}, " + ", ".join(f"{k}={v!r}" for k, v in values.items())


class SwinFullVariant(SwinVariant):
    """For Swin, ``full`` is Swin's own attention: its shifted windows with the checkpoint's settings (exact)."""

    name = "full"
    families = ("swin",)
    Options = FullOptions

    def configure(self, config) -> None:
        self.window, self.shift = config.window_size, config.window_size // 2

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return Variant.extra_repr(self, layer_idx)
