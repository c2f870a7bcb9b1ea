"""``neighborhood``: NATTEN's neighborhood attention, 1D for text and 2D for image grids.

Each query sees the ``kernel_size`` keys centred on it; at the borders the window is *clamped* (shifted inward,
not cut off), so every query sees exactly ``kernel_size`` keys per axis. With ``dilation`` d, positions are split
into d interleaved groups (position mod d) and the rule applies within each group (NATTEN's dilation).

* Text (bert): the window is clamped to each sample's real length (right padding), so outputs do not depend on
  how much padding a batch has; a sample shorter than the window sees all of its group.
* ViT: the rule runs on the patch grid; the CLS (and DeiT's distillation) token stays global.
* Swin: the rule runs on each stage's feature map instead of Swin's windows; the checkpoint's relative position
  bias is added wherever the offset lies in the table (|offset| < the checkpoint's window size). Stages whose map
  is smaller than the kernel see the whole map.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import Mask
from .base import LayerMasks, Option, Variant


def natten_axis(query: Tensor, key: Tensor, length, kernel_size: int, dilation: int) -> Tensor:
    """NATTEN's rule along one axis: does ``query`` see ``key`` on a line of ``length`` positions?"""
    group = query % dilation
    group_len = ((length - group + dilation - 1) // dilation).clamp(min=1)  # positions in query's group
    k_eff = group_len.clamp(max=kernel_size)  # a line shorter than the kernel is seen whole
    qi, ki = (query // dilation).clamp(max=group_len - 1), key // dilation
    start = torch.minimum((qi - kernel_size // 2).clamp(min=0), group_len - k_eff)  # clamped, not cut off
    return (key % dilation == group) & (ki >= start) & (ki < start + k_eff)


def generate_natten_1d(lengths: Tensor, kernel_size: int, dilation: int = 1) -> Mask:
    """1D neighborhood mask; ``lengths[b]`` is sample b's real length (a 0-dim tensor: the same for all)."""
    per_sample = lengths.dim() == 1

    def natten_1d(b, h, q, kv):
        length = lengths[b] if per_sample else lengths
        return natten_axis(q, kv, length, kernel_size, dilation)

    return Mask(natten_1d, name=f"natten1d_k{kernel_size}_d{dilation}")


def generate_natten_2d(
    grid: tuple[int, int],
    kernel_size: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    num_global: int = 0,
    device=None,
) -> Mask:
    """2D neighborhood mask over ``num_global`` global tokens followed by a row-major ``grid``.

    The grid is captured as tensors so that stages of the same length share one compiled kernel.
    """
    rows, cols = (torch.tensor(v, device=device) for v in grid)

    def natten_2d(b, h, q, kv):
        qg, kg = (q - num_global).clamp(min=0), (kv - num_global).clamp(min=0)
        seen = natten_axis(qg // cols, kg // cols, rows, kernel_size[0], dilation[0])
        seen = seen & natten_axis(qg % cols, kg % cols, cols, kernel_size[1], dilation[1])
        return seen | (q < num_global) | (kv < num_global)

    name = f"natten2d_k{kernel_size[0]}x{kernel_size[1]}_d{dilation[0]}x{dilation[1]}"
    return Mask(natten_2d, name=name)


def _pair(name: str, value, variant: str = "neighborhood") -> tuple[int, int]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(
            f"patch(variant={variant!r}): {name}={value!r}; expected a positive int or a (rows, cols) pair of them"
        )
    return values


class NeighborhoodVariant(Variant):
    name = "neighborhood"
    families = ("bert", "vit", "swin")
    options = {
        "kernel_size": Option(7, "window size (odd, NATTEN); an int, or (rows, cols) on image grids"),
        "dilation": Option(1, "gap between the keys of a window (NATTEN's dilation); int or (rows, cols)"),
    }

    def validate(self) -> None:
        k, d = self.settings["kernel_size"], self.settings["dilation"]
        if self.family.name == "bert":
            if isinstance(k, (list, tuple)) or isinstance(d, (list, tuple)):
                raise ValueError(
                    f"patch(variant='neighborhood'): kernel_size={k!r}, dilation={d!r}; text is 1D, give ints"
                )
            k, d = (_pair("kernel_size", k)[0],), (_pair("dilation", d)[0],)
        else:
            k, d = _pair("kernel_size", k), _pair("dilation", d)
        if any(v % 2 == 0 for v in k):
            raise ValueError(
                f"patch(variant='neighborhood'): kernel_size={self.settings['kernel_size']!r}; must be odd so that "
                "the window has a centre (NATTEN's rule)"
            )
        self.kernel, self.dilation = k, d

    def validate_model(self, model) -> None:
        if self.family.name == "bert":
            return
        grid = self.family.config_grid(model.config)
        for axis, (g, k, d) in enumerate(zip(grid, self.kernel, self.dilation)):
            if k * d > g:
                raise ValueError(
                    f"patch(variant='neighborhood'): kernel_size={self.settings['kernel_size']!r} with "
                    f"dilation={self.settings['dilation']!r} spans {k * d} positions, more than the "
                    f"{'rows' if axis == 0 else 'columns'} of the model's {grid[0]}x{grid[1]} patch grid"
                )

    # --- text and ViT: one mask per forward ----------------------------------------------------------------

    def prepare(self, masks: LayerMasks) -> None:
        inputs = masks.inputs
        if inputs.grid is not None:
            for g, k, d in zip(inputs.grid, self.kernel, self.dilation):
                if k * d > g:
                    raise ValueError(
                        f"variant='neighborhood': kernel_size={self.settings['kernel_size']!r} × dilation "
                        f"{self.settings['dilation']!r} does not fit the input's {inputs.grid[0]}x{inputs.grid[1]} grid"
                    )
            return
        if inputs.key_is_real is None:
            lengths = torch.tensor(inputs.seq_len, device=inputs.device)
        else:
            real = inputs.key_is_real
            lengths = real.sum(-1)
            right_padded = real == (torch.arange(inputs.seq_len, device=real.device)[None] < lengths[:, None])
            if not bool(right_padded.all()):
                raise ValueError(
                    "variant='neighborhood' needs right-padded batches (attention_mask of the form 1…1 0…0); "
                    "tokenize with padding_side='right'"
                )
        masks.extras["lengths"] = lengths

    def layer_mask(self, masks: LayerMasks, layer_idx: int) -> Mask:
        inputs = masks.inputs
        if inputs.grid is not None:
            return generate_natten_2d(inputs.grid, self.kernel, self.dilation, inputs.num_prefix_tokens, inputs.device)
        return generate_natten_1d(masks.extras["lengths"], self.kernel[0], self.dilation[0])

    # --- Swin: one mask per stage geometry ---------------------------------------------------------------

    def grid_shape(self, layer, height: int, width: int) -> tuple[int, int]:
        return height, width  # no window padding: the neighborhood runs on the feature map itself

    def attend_grid(self, layer, q: Tensor, k: Tensor, v: Tensor, dims, grid, masks: LayerMasks) -> Tensor:
        from .swin import attend_with_swin_bias

        # natten_axis sees a line shorter than the kernel whole: small late stages need no special case
        n = grid[0] * grid[1]
        block_mask = self.cached_block_mask(
            ("natten2d", grid, str(q.device)),
            lambda: self.build_padded(generate_natten_2d(grid, self.kernel, self.dilation, device=q.device), n, q.device),
        )
        return attend_with_swin_bias(layer, q, k, v, block_mask, grid, self.family.dropout_p(layer.attention))
