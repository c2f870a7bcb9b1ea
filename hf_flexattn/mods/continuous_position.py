"""Swin v2's continuous position bias: a small MLP of log-spaced relative coordinates, as a table that Swin's
``score_mod`` (:mod:`.relative_position`) reads."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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
    """((2·reach + 1)², heads): Swin v2's bias ``16·sigmoid(mlp(coordinates))`` for every offset up to ±reach, laid
    out as a Swin table for windows of ``reach + 1`` (read by
    :func:`~hf_flexattn.mods.relative_position.generate_relative_position_bias`). Computed once
    per block forward; differentiable with respect to the MLP."""
    weight = next(mlp.parameters())
    coords = log_spaced_coordinates(reach, normaliser, weight.dtype, weight.device)
    return 16 * torch.sigmoid(mlp(coords.unsqueeze(0)).view(-1, heads))
