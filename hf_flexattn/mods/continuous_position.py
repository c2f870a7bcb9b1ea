"""Swin v2's continuous position bias: a small MLP of log-spaced relative coordinates, read by a ``score_mod``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .relative_position import generate_relative_position_bias


def log_spaced_coordinates(reach: int, normaliser: tuple[int, int] | None, dtype, device=None) -> Tensor:
    """(2·reach + 1, 2·reach + 1, 2) relative coordinates (dr, dc) for offsets −reach…reach, divided by
    ``normaliser`` − 1 per axis (HF: the pretrained window, else the block's window; None: not divided), scaled to
    ±8 and log-spaced: ``sign(x)·log2(|x| + 1) / log2(8)``. The same operations as HF's
    ``Swinv2SelfAttention.create_coords_table_and_index``, so the same numbers for reach = window − 1."""
    offsets = torch.arange(-reach, reach + 1, dtype=torch.int64, device=device).float()
    coords = torch.stack(torch.meshgrid([offsets, offsets], indexing="ij")).permute(1, 2, 0).contiguous()
    if normaliser is not None:
        coords[:, :, 0] /= normaliser[0] - 1
        coords[:, :, 1] /= normaliser[1] - 1
    coords *= 8
    coords = torch.sign(coords) * torch.log2(torch.abs(coords) + 1.0) / math.log2(8)
    return coords.to(dtype)


def continuous_position_bias_table(
    mlp: nn.Module, heads: int, reach: int, normaliser: tuple[int, int] | None
) -> Tensor:
    """((2·reach + 1)², heads): Swin v2's bias ``16·sigmoid(mlp(coordinates))`` for every offset up to ±reach.
    Computed once per block forward; differentiable with respect to the MLP."""
    weight = next(mlp.parameters())
    coords = log_spaced_coordinates(reach, normaliser, weight.dtype, weight.device)
    return 16 * torch.sigmoid(mlp(coords.unsqueeze(0)).view(-1, heads))


def generate_continuous_position_bias(table: Tensor, cols: int, reach: int):
    """``score_mod`` adding ``table`` (from :func:`continuous_position_bias_table`) for the offset between query and
    key on a row-major grid with ``cols`` columns (offsets beyond ``reach`` get none; callers size ``reach`` so that
    every attended pair is covered)."""
    return generate_relative_position_bias(table, cols, reach + 1)
