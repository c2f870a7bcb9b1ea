"""Linformer's math: keys and values projected along the sequence (``E``, ``F``: ``(max_len, proj_len)``, sliced to
the input's length), then softmax attention over the ``proj_len`` slots. Padding tokens are zeroed *before* the
projection, so outputs at real tokens do not depend on how much padding the batch has. The ``linformer`` variant
(variants/linformer.py) holds one :class:`LinformerAttention` per layer; ``ops.linformer_attention`` checks its
arguments and calls :func:`linformer_attention`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import checks
from . import attend


def project_sequence(x: Tensor, matrix: Tensor, padding_mask: Tensor | None) -> Tensor:
    """(B, H, N, D) → (B, H, proj_len, D): padding zeroed first, then ``matrix[:N]ᵀ · x``."""
    n = x.shape[-2]
    if n > matrix.shape[0]:
        raise ValueError(f"linformer: input length {n} exceeds max_len={matrix.shape[0]} of the E/F projections")
    if padding_mask is not None:
        x = x * padding_mask[:, None, :, None].to(x.dtype)
    return torch.einsum("nk,bhnd->bhkd", matrix[:n].to(x.dtype), x)


def linformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    E: Tensor,
    F: Tensor | None = None,
    padding_mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Attention of (B, H, N, D) queries over keys projected by ``E`` and values by ``F`` (default: ``E``)."""
    keys = project_sequence(k, E, padding_mask)
    values = project_sequence(v, E if F is None else F, padding_mask)
    return attend(q, keys, values, None, scale=scale, dropout_p=dropout_p)


class LinformerAttention(nn.Module):
    """Linformer's sequence projections ``E`` (keys) and ``F`` (values) and the attention over them.

    ``forward(q, k, v, padding_mask=None)`` takes ``(B, H, N, D)`` tensors (N ≤ max_len) and returns
    ``(B, H, N, D)``; ``padding_mask`` is ``(B, N)`` with True (or 1) for real tokens.
    """

    def __init__(self, max_len: int, proj_len: int, share_kv: bool = False):
        super().__init__()
        checks.positive_int("proj_len", proj_len, "linformer")
        if proj_len > max_len:
            raise ValueError(f"linformer: proj_len={proj_len!r}; expected an int in 1..max_len={max_len}")
        self.max_len, self.proj_len, self.share_kv = max_len, proj_len, share_kv
        bound = 1.0 / math.sqrt(proj_len)
        self.E = nn.Parameter(torch.empty(max_len, proj_len).uniform_(-bound, bound))
        self.F = None if share_kv else nn.Parameter(torch.empty(max_len, proj_len).uniform_(-bound, bound))

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, proj_len={self.proj_len}, share_kv={self.share_kv}"

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        padding_mask: Tensor | None = None,
        scale: float | None = None,
        dropout_p: float = 0.0,
    ) -> Tensor:
        return linformer_attention(q, k, v, self.E, self.F, padding_mask, scale, dropout_p)
