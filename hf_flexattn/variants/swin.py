"""``swin``: Swin's (shifted) window attention as one FlexAttention call over the whole feature map.

Instead of padding → rolling → partitioning into windows → attention → reversing, the window structure lives in
the ``mask_mod``: with a cyclic shift ``s``, Swin's windows (including the split wrap-around regions of its shift
mask) are, in the un-rolled map, the intervals ``[0, s), [s, s + w), …`` on each axis, i.e. window index
``(i + w - s) // w``. The relative position bias is a ``score_mod`` that reads HF's own
``relative_position_bias_table`` (it stays a trainable parameter with gradients).

* Swin (exact): every block of the checkpoint, HF's window size and shift (``full`` is the same thing). HF pads
  the map to a multiple of the window and attends the padded tokens; so does this variant. HF's shift mask adds
  −100 across regions where this variant masks exactly (a difference below e^-100).
* ViT: non-overlapping windows on the patch grid, shifted by ``shift`` on odd layers, the CLS (and distillation)
  token global; no bias (ViT has none).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import kernels
from ..masks import Mask
from .base import LayerMasks, Option, Variant


def shifted_window_index(position: Tensor, window: int, shift: int) -> Tensor:
    """Swin's window along one axis after a cyclic shift by ``shift``, expressed in un-rolled coordinates."""
    return (position + window - shift) // window


def generate_shifted_windows(grid: tuple[int, int], window: int, shift: int, num_global: int = 0, device=None) -> Mask:
    """Tokens see the tokens of their (shifted) window; ``num_global`` leading tokens are global.

    The sizes are captured as tensors, not ints, so one compiled kernel serves every window, shift and stage
    of the same length (a captured int is a compile-time constant).
    """
    name = f"swin_w{window}_s{shift}"
    cols, window, shift = (torch.tensor(v, device=device) for v in (grid[1], window, shift))

    def shifted_windows(b, h, q, kv):
        qg, kg = (q - num_global).clamp(min=0), (kv - num_global).clamp(min=0)
        same_row = shifted_window_index(qg // cols, window, shift) == shifted_window_index(kg // cols, window, shift)
        same_col = shifted_window_index(qg % cols, window, shift) == shifted_window_index(kg % cols, window, shift)
        return (same_row & same_col) | (q < num_global) | (kv < num_global)

    return Mask(shifted_windows, name=name)


def generate_relative_position_bias(table: Tensor, cols: int, table_window: int):
    """``score_mod`` adding Swin's bias ``table[(dr + w - 1)·(2w - 1) + dc + w - 1, head]`` for offsets
    (dr, dc) = query − key on a grid with ``cols`` columns; offsets the table does not cover get no bias."""
    reach = torch.tensor(table_window - 1, device=table.device)
    span = torch.tensor(2 * table_window - 1, device=table.device)
    cols = torch.tensor(cols, device=table.device)

    def relative_position_bias(score, b, h, q, kv):
        dr = q // cols - kv // cols
        dc = q % cols - kv % cols
        covered = (dr.abs() <= reach) & (dc.abs() <= reach)
        index = (torch.clamp(dr, -reach, reach) + reach) * span + torch.clamp(dc, -reach, reach) + reach
        return score + torch.where(covered, table[index, h], torch.zeros_like(score))

    return relative_position_bias


def attend_with_swin_bias(layer, q: Tensor, k: Tensor, v: Tensor, block_mask, grid, dropout_p: float,
                          order: Tensor | None = None) -> Tensor:
    """One Swin block's attention over its map with the block's own (trainable) relative position bias.

    With ``order`` (a permutation of the map's tokens, e.g. window-major), the tokens are attended in that order
    (``block_mask`` must be built for it) and the output is returned in row-major order.
    """
    attention = layer.attention
    table = attention.relative_position_bias.relative_position_bias_table
    bias = generate_relative_position_bias(table, grid[1], attention.relative_position_bias.window_size[0])
    if order is None:
        return kernels.attend(q, k, v, block_mask, score_mod=bias, scale=attention.scaling, dropout_p=dropout_p,
                              score_mod_params=[table])
    n = q.shape[2]

    def permuted_bias(score, b, h, qi, kv):
        return bias(score, b, h, order[qi], order[kv])

    q, k, v = (x[:, :, order[:n]] for x in (q, k, v))
    out = kernels.attend(q, k, v, block_mask, score_mod=permuted_bias, scale=attention.scaling, dropout_p=dropout_p,
                         score_mod_params=[table])
    return out[:, :, torch.argsort(order[:n])]


def window_major_order(grid: tuple[int, int], window: int, shift: int, device=None) -> Tensor:
    """Token permutation that makes each (shifted) window contiguous, padded with the identity to the block
    multiple: with windows contiguous, a 128-token block meets few windows, so far fewer key blocks are visited."""
    from ..masks import padded_length

    rows, cols = grid
    r = torch.arange(rows, device=device).view(-1, 1).expand(rows, cols)
    c = torch.arange(cols, device=device).view(1, -1).expand(rows, cols)
    win_r, win_c = shifted_window_index(r, window, shift), shifted_window_index(c, window, shift)
    key = ((win_r * (cols + window) + win_c) * rows + r) * cols + c
    order = torch.argsort(key.flatten())
    n, n_pad = rows * cols, padded_length(rows * cols)
    return torch.cat([order, torch.arange(n, n_pad, device=device)])


def generate_permuted(mask: Mask, order: Tensor) -> Mask:
    """``mask`` seen through a token permutation: position i of the sequence is token ``order[i]``."""
    base = mask.mask_mod

    def permuted(b, h, q, kv):
        return base(b, h, order[q], order[kv])

    return Mask(permuted, name=f"{mask.name}_permuted")


class SwinVariant(Variant):
    name = "swin"
    families = ("vit", "swin")
    options = {
        "window_size": Option(None, "window side in patches (default: the Swin checkpoint's; required for ViT)"),
        "shift": Option(None, "cyclic shift of the odd blocks in patches (default: window_size // 2; 0 = none)"),
        "token_order": Option("window", "Swin only: attend tokens window-major ('window', faster) or row-major ('row')"),
    }

    def validate(self) -> None:
        window, shift = self.settings.get("window_size"), self.settings.get("shift")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"patch(variant='swin'): window_size={window!r}; expected a positive int")
        if shift is not None and (isinstance(shift, bool) or not isinstance(shift, int) or shift < 0):
            raise ValueError(f"patch(variant='swin'): shift={shift!r}; expected a non-negative int")
        order = self.settings.get("token_order", "window")
        if order not in ("window", "row"):
            raise ValueError(f"patch(variant='swin'): token_order={order!r}; expected 'window' or 'row'")

    def validate_model(self, model) -> None:
        config = model.config
        window, shift = self.settings.get("window_size"), self.settings.get("shift")
        if self.family.name == "swin":
            if window is not None and window > config.window_size:
                raise ValueError(
                    f"patch(variant='swin'): window_size={window} is larger than the checkpoint's "
                    f"{config.window_size}: its relative position bias table only covers offsets up to "
                    f"±{config.window_size - 1}; use window_size ≤ {config.window_size}"
                )
            window = window or config.window_size
        else:
            if window is None:
                raise ValueError("patch(variant='swin') on ViT needs window_size=..., e.g. 7 for a 14x14 grid")
            grid = self.family.config_grid(config)
            if grid[0] % window or grid[1] % window:
                raise ValueError(
                    f"patch(variant='swin'): window_size={window} does not divide the model's "
                    f"{grid[0]}x{grid[1]} patch grid (ViT has no padding to fill partial windows)"
                )
        shift = window // 2 if shift is None else shift
        if shift >= window:
            raise ValueError(f"patch(variant='swin'): shift={shift}; must be smaller than window_size={window}")
        self.window, self.shift = window, shift

    # --- ViT: windows on the patch grid, the shift alternating per layer --------------------------------------

    def layer_key(self, layer_idx: int) -> Any:
        return layer_idx % 2

    def prepare(self, masks: LayerMasks) -> None:
        rows, cols = masks.inputs.grid
        if rows % self.window or cols % self.window:
            raise ValueError(
                f"variant='swin': window_size={self.window} does not divide the input's {rows}x{cols} patch grid"
            )

    def layer_mask(self, masks: LayerMasks, layer_idx: int) -> Mask:
        inputs = masks.inputs
        shift = self.shift if layer_idx % 2 else 0
        return generate_shifted_windows(inputs.grid, self.window, shift, inputs.num_prefix_tokens, inputs.device)

    # --- Swin: one call per block over the padded feature map --------------------------------------------------

    def _window_and_shift(self, layer, height: int, width: int) -> tuple[int, int]:
        """HF's rule: a map no larger than the window is one window, unshifted."""
        if min(height, width) <= self.window:
            return min(height, width), 0
        return self.window, (self.shift if layer.hfx_block_idx % 2 else 0)  # Swin shifts every odd block

    def grid_shape(self, layer, height: int, width: int) -> tuple[int, int]:
        window, _ = self._window_and_shift(layer, height, width)
        return -(-height // window) * window, -(-width // window) * window

    def attend_grid(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks: LayerMasks) -> Tensor:
        """Attention of one Swin block: ``dims`` is its feature map, ``grid`` the map padded by ``grid_shape``."""
        height, width = dims
        window, shift = self._window_and_shift(layer, height, width)
        n = grid[0] * grid[1]
        order = None
        if self.settings.get("token_order", "window") == "window":
            order = self.cached_block_mask(("swin-order", grid, window, shift, str(q.device)),
                                           lambda: window_major_order(grid, window, shift, q.device))

        def build():
            windows = generate_shifted_windows(grid, window, shift, device=q.device)
            return self.build_padded(windows if order is None else generate_permuted(windows, order), n, q.device)

        block_mask = self.cached_block_mask(("swin", grid, window, shift, order is None, str(q.device)), build)
        return attend_with_swin_bias(layer, q, k, v, block_mask, grid, self.family.dropout_p(layer.attention), order)
