"""NATTEN's own kernels for neighborhood attention (``backend="natten"``): ``natten.na1d`` / ``natten.na2d`` on
hf_flexattn's (B, H, N, D) tensors.

NATTEN (https://github.com/SHI-Labs/NATTEN, the ``bench`` extra's version) is the reference hf_flexattn's
neighborhood rule (masks/natten.py) is tested against; where it is installed its fused CUDA kernels (CUTLASS FNA,
Hopper, Blackwell) can run the pattern instead of flex. NATTEN picks its kernel itself; on CPU it has only its
uncompiled flex backend, which computes no gradient. The prefix tokens of a ViT (CLS, distillation) stay global:
the grid's queries attend their neighborhood plus the prefix keys (NATTEN's ``additional_keys``, merged by its
log-sum-exp), and the prefix queries attend every key (SDPA).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools

import torch
from torch import Tensor

# the functional API used here (heads-last na1d/na2d with additional_keys/values) is NATTEN's since 0.21
MIN_NATTEN_VERSION = (0, 21)
NATTEN_INSTALL = 'pip install "natten==0.21.7" (the bench extra: pip install -e ".[bench]")'


def natten_version() -> tuple[int, ...] | None:
    """NATTEN's installed version as a tuple of ints (None: not importable)."""
    if importlib.util.find_spec("natten") is None:
        return None
    try:
        natten = importlib.import_module("natten")
    except ImportError:
        return None
    numbers = []
    # the release's leading numbers: "0.21.0+torch280cu128" is (0, 21, 0), "1.0rc1" is (1, 0)
    for part in str(natten.__version__).split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def natten_missing() -> str:
    """Why NATTEN's kernels cannot run in this install ("" when they can)."""
    version = natten_version()
    if version is None:
        return f"NATTEN is not installed ({NATTEN_INSTALL})"
    if version[:2] < MIN_NATTEN_VERSION:
        found = ".".join(map(str, version))
        wanted = ".".join(map(str, MIN_NATTEN_VERSION))
        return f"NATTEN {found} is installed; its na1d/na2d API used here needs NATTEN >= {wanted} ({NATTEN_INSTALL})"
    return ""


def check_device(query: Tensor, on_cpu: bool) -> None:
    """NATTEN's fused kernels on a GPU need its compiled library (libnatten); without it NATTEN would run its
    uncompiled flex backend, which materialises every score: refused there, at the first call."""
    import natten

    if not on_cpu and not natten.HAS_LIBNATTEN:
        raise ValueError(
            f"patch(backend='natten'): the attention runs on {query.device.type!r} but this NATTEN install has no "
            "compiled kernels (natten.HAS_LIBNATTEN is False: built without its CUDA library); install a NATTEN "
            "wheel built for your CUDA and torch, or use backend='auto' or 'flex'"
        )


def _heads_last(x: Tensor) -> Tensor:
    return x.transpose(1, 2).contiguous()  # (B, H, N, D) -> (B, N, H, D); NATTEN's kernels and merge want it dense


def natten_1d_attention(q: Tensor, k: Tensor, v: Tensor, kernel_size: int, dilation: int, scale: float) -> Tensor:
    """NATTEN 1D over every position (no padding): ``natten.na1d``; (B, H, N, D) in and out."""
    import natten

    out = natten.na1d(
        _heads_last(q), _heads_last(k), _heads_last(v), kernel_size=kernel_size, dilation=dilation, scale=scale
    )
    return out.transpose(1, 2)


def natten_2d_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grid: tuple[int, int],
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    scale: float,
    num_prefix_tokens: int = 0,
) -> Tensor:
    """NATTEN 2D on ``num_prefix_tokens`` global tokens followed by a row-major ``grid``: ``natten.na2d`` for the
    grid's queries (the prefix keys as its ``additional_keys``), SDPA over every key for the prefix queries;
    (B, H, N, D) in and out."""
    import natten

    batch, heads = q.shape[:2]
    prefix = num_prefix_tokens

    def grid_part(x: Tensor) -> Tensor:  # (B, H, P + rows·cols, D) -> (B, rows, cols, H, D)
        return x[:, :, prefix:].transpose(1, 2).reshape(batch, *grid, heads, x.shape[-1]).contiguous()

    extra_k = _heads_last(k[:, :, :prefix]) if prefix else None
    extra_v = _heads_last(v[:, :, :prefix]) if prefix else None
    grid_out = natten.na2d(
        grid_part(q),
        grid_part(k),
        grid_part(v),
        kernel_size=tuple(kernel_size),
        dilation=tuple(dilation),
        scale=scale,
        additional_keys=extra_k,
        additional_values=extra_v,
    )
    grid_out = grid_out.reshape(batch, grid[0] * grid[1], heads, v.shape[-1]).transpose(1, 2)
    if not prefix:
        return grid_out
    prefix_out = torch.nn.functional.scaled_dot_product_attention(q[:, :, :prefix], k, v, scale=scale)
    return torch.cat([prefix_out.to(grid_out.dtype), grid_out], dim=2)
