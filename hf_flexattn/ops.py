"""Every variant as a function on plain ``(B, H, N, D)`` tensors, for models that are not HF models.

These build their masks with the same factories and run the same kernels (compiled flex; the block-sparse
autograd path when training on CPU) as the patched HF modules; Linformer and Performer are the very modules the
patched layers hold. Masks are built per call here; in a model, build them once per batch as ``patch`` does.

    q, k, v = (torch.randn(1, 8, 4096, 64) for _ in range(3))
    out = longformer_attention(q, k, v, window=512, global_mask=first_token)   # (1, 8, 4096, 64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import checks, kernels
from .masks import (
    BatchMask,
    Mask,
    generate_full,
    generate_global,
    generate_natten_1d_over_real_tokens,
    generate_natten_2d,
    generate_shifted_windows,
    generate_sliding_window,
    padded_length,
)
from .mods import generate_relative_position_bias
from .variants.linformer import LinformerProjection
from .variants.linformer import linformer_attention as _linformer
from .variants.performer import PerformerFeatures, favor_attention

__all__ = [
    "LinformerAttention",
    "PerformerAttention",
    "full_attention",
    "linformer_attention",
    "longformer_attention",
    "neighborhood_attention_1d",
    "neighborhood_attention_2d",
    "performer_attention",
    "swin_window_attention",
]

# the parametrised variants' modules, under the names their users know them by
LinformerAttention = LinformerProjection
PerformerAttention = PerformerFeatures


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected (batch, heads, seq_len, head_dim)")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q, k, v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)} do not match: expected "
            "(B, H, N, D) for q and k (same B, H, D) and v with k's (B, H, N)"
        )


def _check_padding(padding_mask: Tensor | None, q: Tensor) -> Tensor | None:
    if padding_mask is None:
        return None
    checks.sized_like("padding_mask", padding_mask.shape, (q.shape[0], q.shape[2]), "(batch, seq_len)")
    return padding_mask.bool()


def _attend_masked(
    q, k, v, mask: Mask, padding_mask, scale, dropout_p, score_mod=None, score_mod_params=(), per_sample=False
):
    real = _check_padding(padding_mask, q)
    batch = q.shape[0] if (real is not None or per_sample) else 1
    bound = BatchMask(mask, q.shape[2], batch=batch, key_is_real=real, device=q.device)
    return kernels.attend(
        q, k, v, bound, score_mod=score_mod, scale=scale, dropout_p=dropout_p, score_mod_params=score_mod_params
    )


def full_attention(q, k, v, padding_mask=None, scale=None, dropout_p=0.0) -> Tensor:
    """Softmax attention over all (real) keys."""
    _check_qkv(q, k, v)
    return _attend_masked(q, k, v, generate_full(), padding_mask, scale, dropout_p)


def longformer_attention(
    q, k, v, window: int, global_mask=None, padding_mask=None, scale=None, dropout_p=0.0
) -> Tensor:
    """Sliding window (``window/2`` each side, HF Longformer's meaning) + global tokens (``global_mask`` (B, N))."""
    _check_qkv(q, k, v)
    checks.positive_even_int("window", window, "longformer_attention")
    mask = generate_sliding_window(window // 2)
    if global_mask is not None:
        checks.sized_like("global_mask", global_mask.shape, (q.shape[0], q.shape[2]), "(batch, seq_len)")
        is_global = torch.zeros(q.shape[0], padded_length(q.shape[2]), dtype=torch.bool, device=q.device)
        is_global[:, : q.shape[2]] = global_mask.bool()
        if padding_mask is not None:  # a padded token is never global
            is_global[:, : q.shape[2]] &= padding_mask.bool()
        mask = mask | generate_global(is_global)
    return _attend_masked(q, k, v, mask, padding_mask, scale, dropout_p, per_sample=global_mask is not None)


def neighborhood_attention_1d(
    q, k, v, kernel_size: int, dilation: int = 1, padding_mask=None, scale=None, dropout_p=0.0
) -> Tensor:
    """NATTEN 1D: the clamped ``kernel_size`` window around each token (per dilation group); right padding."""
    _check_qkv(q, k, v)
    checks.positive_odd_int("kernel_size", kernel_size)
    checks.positive_int("dilation", dilation)
    real = _check_padding(padding_mask, q)
    mask = generate_natten_1d_over_real_tokens(kernel_size, dilation, q.shape[2], real, q.device)
    return _attend_masked(q, k, v, mask, padding_mask, scale, dropout_p)


def _grid_tensors(q, k, v, grid):
    """Accept (B, H, rows, cols, D) tensors, or (B, H, N, D) with ``grid=(rows, cols)``."""
    if q.dim() == 5:
        grid = q.shape[2:4]
        q, k, v = (t.flatten(2, 3) for t in (q, k, v))
        return q, k, v, tuple(grid), True
    if grid is None or len(grid) != 2 or grid[0] * grid[1] != q.shape[2]:
        raise ValueError(
            f"grid={grid!r}; give (rows, cols) with rows·cols = seq_len {q.shape[2]}, or pass (B, H, rows, cols, D) tensors"
        )
    return q, k, v, tuple(grid), False


def neighborhood_attention_2d(q, k, v, kernel_size, dilation=1, grid=None, scale=None, dropout_p=0.0) -> Tensor:
    """NATTEN 2D on a row-major grid: (B, H, rows, cols, D) in → same shape out (or (B, H, N, D) + ``grid``)."""
    q, k, v, grid, five_d = _grid_tensors(q, k, v, grid)
    _check_qkv(q, k, v)
    kernel = checks.int_or_pair("kernel_size", kernel_size)
    dil = checks.int_or_pair("dilation", dilation)
    for kk, d, g in zip(kernel, dil, grid):
        checks.positive_odd_int("kernel_size", kk)
        if kk * d > g:
            raise ValueError(f"kernel_size={kernel_size!r} with dilation={dilation!r} does not fit the grid {grid}")
    out = _attend_masked(q, k, v, generate_natten_2d(grid, kernel, dil, device=q.device), None, scale, dropout_p)
    return out.unflatten(2, grid) if five_d else out


def swin_window_attention(
    q, k, v, window_size: int, shift: int = 0, bias: Tensor | None = None, grid=None, scale=None, dropout_p=0.0
) -> Tensor:
    """Swin (shifted) window attention on a grid divisible by ``window_size``; ``bias`` is a Swin relative
    position table of shape ((2w−1)², H) added as a score_mod (and trained, if it requires grad)."""
    q, k, v, grid, five_d = _grid_tensors(q, k, v, grid)
    _check_qkv(q, k, v)
    checks.positive_int("window_size", window_size)
    if grid[0] % window_size or grid[1] % window_size:
        raise ValueError(f"window_size={window_size} does not divide the grid {grid}")
    if not 0 <= shift < window_size:
        raise ValueError(f"shift={shift!r}; expected 0 ≤ shift < window_size={window_size}")
    score_mod, params = None, ()
    if bias is not None:
        if bias.shape != ((2 * window_size - 1) ** 2, q.shape[1]):
            raise ValueError(
                f"bias has shape {tuple(bias.shape)}; expected ((2w-1)^2, heads) = {((2 * window_size - 1) ** 2, q.shape[1])}"
            )
        score_mod, params = generate_relative_position_bias(bias, grid[1], window_size), (bias,)
    mask = generate_shifted_windows(grid, window_size, shift, device=q.device)
    out = _attend_masked(q, k, v, mask, None, scale, dropout_p, score_mod, params)
    return out.unflatten(2, grid) if five_d else out


def linformer_attention(
    q, k, v, E: Tensor, F: Tensor | None = None, padding_mask=None, scale=None, dropout_p=0.0
) -> Tensor:
    """Linformer: keys projected by ``E`` and values by ``F`` (default ``E``), both (max_len, proj_len)."""
    _check_qkv(q, k, v)
    for name, m in (("E", E), ("F", F)):
        if m is not None and m.dim() != 2:
            raise ValueError(f"{name} has shape {tuple(m.shape)}; expected (max_len, proj_len)")
    return _linformer(q, k, v, E, F, _check_padding(padding_mask, q), scale, dropout_p)


def performer_attention(q, k, v, features: Tensor, padding_mask=None) -> Tensor:
    """FAVOR+ with the given random ``features`` (m, D), e.g. from ``orthogonal_random_features``."""
    _check_qkv(q, k, v)
    if features.dim() != 2 or features.shape[1] != q.shape[-1]:
        raise ValueError(f"features has shape {tuple(features.shape)}; expected (num_features, head_dim={q.shape[-1]})")
    return favor_attention(q, k, v, features, _check_padding(padding_mask, q))
