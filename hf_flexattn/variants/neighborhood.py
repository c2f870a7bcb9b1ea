"""``neighborhood``: NATTEN's neighborhood attention, 1D for text.

Each query sees the ``kernel_size`` keys centred on it; at the ends the window is *clamped* (shifted inward,
not cut off), so every query sees exactly ``kernel_size`` keys. With ``dilation`` d, tokens are split into d
interleaved groups (position mod d) and the rule applies within each group. For text the window is clamped to
each sample's real length (right padding), so outputs do not depend on how much padding a batch has; a sample
shorter than the window sees all of its group (NATTEN itself would refuse such an input).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import Mask
from .base import LayerMasks, Option, Variant


def natten_window_start(index: Tensor, length: Tensor, kernel_size: Tensor) -> Tensor:
    """First key of the clamped window of query ``index`` in a line of ``length`` (NATTEN's rule)."""
    start = (index - kernel_size // 2).clamp(min=0)
    return torch.minimum(start, length - kernel_size)


def generate_natten_1d(lengths: Tensor, kernel_size: int, dilation: int = 1) -> Mask:
    """1D neighborhood mask; ``lengths[b]`` is sample b's real length (a 0-dim tensor: the same for all)."""
    per_sample = lengths.dim() == 1

    def natten_1d(b, h, q, kv):
        length = lengths[b] if per_sample else lengths
        group = q % dilation
        group_len = (length - group + dilation - 1) // dilation  # tokens in q's dilation group
        k_eff = torch.minimum(torch.full_like(group_len, kernel_size), group_len.clamp(min=1))
        qi, ki = q // dilation, kv // dilation
        start = natten_window_start(qi.clamp(max=group_len - 1), group_len, k_eff)
        return (kv % dilation == group) & (ki >= start) & (ki < start + k_eff)

    return Mask(natten_1d, name=f"natten1d_k{kernel_size}_d{dilation}")


def _positive_int(name: str, value, variant: str = "neighborhood") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"patch(variant={variant!r}): {name}={value!r}; expected a positive int")
    return value


class NeighborhoodVariant(Variant):
    name = "neighborhood"
    families = ("bert",)
    options = {
        "kernel_size": Option(7, "window size in tokens (odd, NATTEN); ints or (rows, cols) on image grids"),
        "dilation": Option(1, "gap between the keys of a window (NATTEN's dilation)"),
    }

    def validate(self) -> None:
        k = _positive_int("kernel_size", self.settings["kernel_size"])
        _positive_int("dilation", self.settings["dilation"])
        if k % 2 == 0:
            raise ValueError(
                f"patch(variant='neighborhood'): kernel_size={k}; must be odd so that the window has a centre"
            )

    def prepare(self, masks: LayerMasks) -> None:
        inputs = masks.inputs
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
        return generate_natten_1d(masks.extras["lengths"], self.settings["kernel_size"], self.settings["dilation"])
