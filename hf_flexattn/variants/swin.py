"""``swin``: Swin's (shifted) window attention, on a flat patch grid and on Swin's own blocks.

* :class:`SwinVariant`, on flat tokens (ViT, DINOv2, BEiT, CLIP's vision tower): non-overlapping windows on the patch
  grid, shifted by ``shift`` on odd layers, the CLS (and distillation) token global; no bias (ViT has none). On CPU
  the windows are the tiles of one batched SDPA call (:func:`~hf_flexattn.kernels.windows.shifted_window_plan`).
* :class:`SwinBlockVariant`, on Swin's and Swin v2's blocks (a :class:`FeatureMapVariant`: each block attends its
  stage's feature map): HF's window size and shift, or your own; ``full`` on these families is
  :class:`SwinBlockFullVariant`, the checkpoint's own windows (exact). What a block's attention is beyond the tokens
  it attends (HF's rule for a block's window, its scores and bias) is its family's (families/swin.py; Swin v2's
  cosine attention and continuous position bias in families/swinv2.py).

  A Swin block (exact; a ``window_size`` smaller than the checkpoint's reads the centre of its larger table) runs, on
  CPU and whenever ``output_attentions`` asks for HF's per-window probabilities, HF Swin's own algorithm with the index
  work done once per geometry (kernels/windows.py): the roll and the window partition are one gather of the
  normalised map, q/k/v HF's own projections called on the windows, the bias + shift mask (HF's −100) one cached
  additive mask, the attention one SDPA call on (B·nW, H, w², D), and the inverse gather brings the windows back.
  Otherwise (CUDA, where it computes fewer scores: :func:`windows_pay`; Swin v2's blocks always) a block is one flex
  call over its whole (padded) map, tokens window-contiguous (masks/windows.py), the bias a ``score_mod`` reading the
  block's table (mods/relative_position.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import checks, compat, kernels, ops
from ..kernels.windows import hf_shift_mask, relative_position_index, rolled_partition_index
from ..masks import (
    BLOCK_SIZE,
    BatchMask,
    Mask,
    generate_shifted_windows,
    generate_window_contiguous_windows,
    padded_length,
    shifted_window_index,
    window_contiguous_order,
)
from ..mods import generate_relative_position_bias
from .base import (
    ChecksInputs,
    FeatureMapVariant,
    ForwardInputs,
    ForwardMasks,
    ForwardState,
    LayerCall,
    PerLayerMasks,
    Requirements,
    Variant,
    VariantOptions,
    option,
)
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


def check_shift(shift: int, window: int, where: str) -> None:
    if shift >= window:
        raise ValueError(f"{where}: shift={shift}; must be smaller than window_size={window}")


class SwinVariant(ChecksInputs, PerLayerMasks, Variant):
    """Swin's windows on a flat patch grid (ViT and the like): one mask per parity of the layer index (not a
    :class:`NativeAttention`: ViT's attention modules do not know their layer index, which picks the shift)."""

    name = "swin"
    requires = Requirements(tokens=("grid",))
    Options = SwinOptions

    def configure(self, config) -> None:
        options = self.options
        window = options.window_size
        if window is None:
            raise ValueError(f"{options.where} on ViT needs window_size=..., e.g. 7 for a 14x14 grid")
        grid = self.family.config_grid(config)
        if grid[0] % window or grid[1] % window:
            raise ValueError(
                f"{options.where}: window_size={window} does not divide the model's {grid[0]}x{grid[1]} patch "
                "grid (ViT has no padding to fill partial windows)"
            )
        shift = window // 2 if options.shift is None else options.shift
        check_shift(shift, window, options.where)
        self.window, self.shift = window, shift

    def layer_key(self, layer_idx: int) -> int:
        return layer_idx % 2

    def check_inputs(self, inputs: ForwardInputs) -> None:
        rows, cols = inputs.grid
        if rows % self.window or cols % self.window:
            raise ValueError(
                f"variant='swin': window_size={self.window} does not divide the input's {rows}x{cols} patch grid"
            )

    def layer_mask(self, inputs: ForwardInputs, prepared: ForwardState | None, layer_idx: int) -> Mask:
        shift = self.shift if layer_idx % 2 else 0
        return generate_shifted_windows(inputs.grid, self.window, shift, inputs.num_prefix_tokens, inputs.device)

    def attend(self, call: LayerCall) -> Tensor:
        q, masks, layer_idx, bias = call.q, call.masks, call.layer_idx, call.bias
        inputs = masks.inputs_on(q.device)
        plan = ops.shifted_window_tile_plan(
            q,
            inputs.grid,
            self.window,
            self.shift if layer_idx % 2 else 0,
            masks,
            num_prefix_tokens=inputs.num_prefix_tokens,
            key_is_real=inputs.key_is_real,
            score_mod=bias is not None,
            backend=self.options.backend,
        )
        if plan is None:
            return super().attend(call)
        return kernels.tiled_attention(q, call.k, call.v, plan, call.scale, call.dropout_p)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return window_repr(self)


def window_repr(variant: Variant) -> str:
    """The variant's options with the window and shift resolved (not None)."""
    values = variant.options.to_dict()
    values.update(window_size=variant.window, shift=variant.shift)
    return f"variant={variant.name}, " + ", ".join(f"{k}={v!r}" for k, v in values.items())


@dataclass(frozen=True)
class BlockScores:
    """How a Swin block scores a query against a key: ``(q · k)·scale + table[offset]``, ``table`` a relative
    position table ((2W − 1)² rows, W = ``table_window``, read by mods/relative_position.py). Its family builds it
    (``block_scores``): Swin's checkpoint table and scale, Swin v2's cosine queries and keys and continuous bias."""

    q: Tensor
    k: Tensor
    scale: float
    table: Tensor
    table_window: int


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


def block_statistics(grid: tuple[int, int], window: int, shift: int) -> BlockStatistics:
    """The block statistics of one block's geometry, computed on the host from the window-contiguous order (no tensor
    of the device is read: the policy stays sync-free), once per geometry (kept in ``ops.PLANS``)."""
    return ops.PLANS.get_or_build(
        ("block_statistics", tuple(grid), window, shift), lambda: _block_statistics(tuple(grid), window, shift)
    )


def _block_statistics(grid: tuple[int, int], window: int, shift: int) -> BlockStatistics:
    rows, cols = grid
    n = rows * cols
    order = window_contiguous_order(grid, window, shift, device="cpu")[:n]  # on the host, whatever the default device
    r, c = order // cols, order % cols
    win_r, win_c = shifted_window_index(r, window, shift), shifted_window_index(c, window, shift)
    window_id = torch.unique(win_r * (cols + window) + win_c, return_inverse=True)[1]  # per position of the order
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
    """One Swin block's windows on its padded map for HF's window algorithm: the gather ``partition`` of the rolled
    map into windows and its ``inverse``, the bias ``index`` into the checkpoint's table, HF's ``shift_mask`` (None
    when unshifted)."""

    window: int
    partition: Tensor
    inverse: Tensor
    index: Tensor
    shift_mask: Tensor | None


class SwinBlockVariant(FeatureMapVariant):
    """Swin's (shifted) windows on each block's feature map, Swin and Swin v2: the window and shift of your choice
    (default the checkpoint's), under HF's rule for each block (its family's ``window_and_shift``)."""

    name = "swin"
    requires = Requirements(tokens=("feature_map",), windowed_blocks=True)
    Options = SwinOptions

    def configure(self, config) -> None:
        options = self.options
        window = options.window_size or config.window_size
        self.family.check_window_size(window, config, options.where)
        shift = window // 2 if options.shift is None else options.shift
        check_shift(shift, window, options.where)
        self.window, self.shift = window, shift

    def window_and_shift(self, layer: nn.Module, dims: tuple[int, int]) -> tuple[int, int]:
        return self.family.window_and_shift(layer, dims, self.window, self.shift)

    def map_shape(self, layer, height: int, width: int) -> tuple[int, int]:
        window, _ = self.window_and_shift(layer, (height, width))
        return -(-height // window) * window, -(-width // window) * window

    def attend_map(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks: ForwardMasks | None) -> Tensor:
        """One block as one flex call over its whole (padded) map, its tokens window-contiguous; Swin v2's blocks
        (which hand their q/k/v here, with no fixed bias table) take HF's window algorithm where CUDA's policy
        chooses it, as Swin's do in :meth:`attend_block`."""
        window, shift = self.window_and_shift(layer, dims)
        if self.family.bias_table(layer) is None and not ops.structured_paths(q, self.options.backend):
            if self._windows_pay(layer, grid, dims):
                return self._attend_map_windows(layer, q, k, v, dims, grid)
        n = grid[0] * grid[1]

        def build() -> tuple[BatchMask, Tensor]:
            mask, order = generate_window_contiguous_windows(grid, window, shift, device=q.device)
            return BatchMask(mask, n, device=q.device), order

        key = ("windows_mask", grid, window, shift, q.device)
        mask, order = self.cached(key, build)
        scores = self.family.block_scores(layer, q, k, reach=window - 1)
        bias = generate_relative_position_bias(scores.table, grid[1], scores.table_window)

        def permuted_bias(score, b, h, qi, kv):
            return bias(score, b, h, order[qi], order[kv])

        q, k, v = (x[:, :, order[:n]] for x in (scores.q, scores.k, v))
        out = kernels.attend(
            q,
            k,
            v,
            mask,
            score_mod=permuted_bias,
            scale=scores.scale,
            dropout_p=self.dropout_p(layer),
            score_mod_params=[scores.table],
            backend=self.options.backend,
        )
        return out[:, :, torch.argsort(order[:n])]

    # --- Swin's blocks (their patched forward calls attend_block; Swin v2's project q/k/v themselves, post-norm) ----

    def attend_block(self, layer, x: Tensor, dims, masks: ForwardMasks) -> tuple[Tensor, Tensor | None]:
        if masks.want_weights or (
            not kernels.forces_flex(self.options.backend)
            and (kernels.uses_structured_paths(x) or self._windows_pay(layer, x.shape[1:3], dims))
        ):
            return self._attend_windows(layer, x, dims, masks)
        return super().attend_block(layer, x, dims, masks)

    def _windows_pay(self, layer, grid: tuple[int, int], dims) -> bool:
        """CUDA's choice between the window algorithm and whole-map flex (:func:`windows_pay`) for a block whose
        padded map is ``grid``. Inside the user's ``torch.compile`` flex is traced into their graph, as everywhere."""
        if torch.compiler.is_compiling():
            return False
        window, shift = self.window_and_shift(layer, dims)
        return windows_pay((grid[0], grid[1]), window, shift)

    def _attend_map_windows(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid) -> Tensor:
        """HF's window algorithm on (B, H, N, D) q/k/v of the padded map: the block's scores (Swin v2: cosine, its
        continuous bias as a table) gathered into (B·nW, H, w², D) windows, one SDPA call, scattered back."""
        window, _ = self.window_and_shift(layer, dims)
        scores = self.family.block_scores(layer, q, k, reach=window - 1)
        geometry = self._geometry(layer, grid[0], grid[1], dims, q.dtype, q.device, table_window=scores.table_window)
        batch, heads, n, head_dim = v.shape
        area = window * window

        def windows(x: Tensor) -> Tensor:  # (B, H, N, D) → (B·nW, H, w², D), HF's window order
            x = x.index_select(2, geometry.partition).view(batch, heads, -1, area, x.shape[-1])
            return x.transpose(1, 2).reshape(-1, heads, area, x.shape[-1])

        mask = scores.table[geometry.index].permute(2, 0, 1).unsqueeze(0).to(q.dtype)  # (1, H, w², w²)
        if geometry.shift_mask is not None:  # HF's Swin v2 adds its shift mask twice
            mask = (mask + 2 * geometry.shift_mask).repeat(batch, 1, 1, 1)  # (B·nW, H, w², w²)
        out = torch.nn.functional.scaled_dot_product_attention(
            windows(scores.q),
            windows(scores.k),
            windows(v),
            attn_mask=mask,
            dropout_p=self.dropout_p(layer),
            scale=scores.scale,
        )
        out = out.view(batch, -1, heads, area, head_dim).transpose(1, 2).reshape(batch, heads, n, head_dim)
        return out.index_select(2, geometry.inverse)

    def _geometry(self, layer, rows: int, cols: int, dims, dtype, device, table_window=None) -> WindowGeometry:
        window, shift = self.window_and_shift(layer, dims)
        if table_window is None:
            _, table_window = self.family.bias_table(layer)

        def build() -> WindowGeometry:
            partition = rolled_partition_index(rows, cols, window, shift, device)
            shift_mask = hf_shift_mask(rows, cols, window, shift, dtype, device)
            index = relative_position_index(window, table_window, device)
            return WindowGeometry(window, partition, torch.argsort(partition), index, shift_mask)

        key = ("windows", rows, cols, window, shift, table_window, dtype, device)
        return self.cached(key, build)

    def _attend_windows(self, layer, x: Tensor, dims, masks: ForwardMasks) -> tuple[Tensor, Tensor | None]:
        """HF Swin's window attention of one block (see the module docstring); (B, rows, cols, C) → same."""
        batch, rows, cols, channels = x.shape
        geometry = self._geometry(layer, rows, cols, dims, x.dtype, x.device)
        attention = layer.attention
        heads, head_dim, window_area = attention.num_attention_heads, attention.head_dim, geometry.window**2
        windows = x.reshape(batch, rows * cols, channels).index_select(1, geometry.partition)  # roll + partition
        # the projections are called as modules, as HF calls them: a wrapped one (a PEFT adapter, a quantised or
        # hooked linear) computes what it computes, and nothing is kept from their weights that a write through
        # ``.data`` (PEFT's merge) could leave stale
        q, k, v = (
            projection(windows).view(-1, window_area, heads, head_dim).transpose(1, 2)  # (B·nW, H, w², D)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        mask = self._window_mask(layer, geometry, batch, x.dtype)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p(layer), scale=attention.scaling
        )
        weights = None
        if masks.want_weights:  # HF's eager attention: softmax in float32, per window
            scores = q @ k.transpose(-1, -2) * attention.scaling + mask
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = attention.o_proj(out.transpose(1, 2).reshape(batch, rows * cols, channels))
        out = layer.dropout(out)  # as HF: on the windows, before they go back
        return out.index_select(1, geometry.inverse).view(batch, rows, cols, channels), weights

    def _window_mask(self, layer, geometry: WindowGeometry, batch: int, dtype) -> Tensor:
        """HF's additive mask on the (B·nW, H, w², w²) scores: the relative position bias + the shift mask; cached
        while the table does not change, rebuilt (differentiably, from the trainable table) when it trains."""
        table, _ = self.family.bias_table(layer)

        def build() -> Tensor:
            bias = table[geometry.index].permute(2, 0, 1).unsqueeze(0).to(dtype)  # (1, H, w², w²)
            if geometry.shift_mask is None:
                return bias.contiguous()  # SDPA broadcasts it over windows and batch (and would copy a strided one)
            return (bias + geometry.shift_mask).repeat(batch, 1, 1, 1)  # (B·nW, H, w², w²), HF's order

        if torch.is_grad_enabled() and table.requires_grad:
            return build()
        version = (table.data_ptr(), compat.tensor_version(table), id(geometry), batch, dtype)
        return self.latest(("window_mask", id(layer.attention)), version, build)

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return window_repr(self)


class SwinBlockFullVariant(SwinBlockVariant):
    """``full`` on Swin and Swin v2 is the model's own attention: each block's windows and shift as HF builds them
    from the checkpoint's window size (exact)."""

    name = "full"
    Options = FullOptions

    def configure(self, config) -> None:
        self.window, self.shift = config.window_size, config.window_size // 2

    def extra_repr(self, layer_idx: int | None = None) -> str:
        return Variant.extra_repr(self, layer_idx)
