"""The functional layer: every attention pattern as a function on plain ``(B, H, N, D)`` tensors, and the one place
that chooses a pattern's path and builds or reuses its plan.

The public functions (``longformer_attention``, ``neighborhood_attention_2d``, …) check their arguments, then run
the same path as the patched HF modules, whose variants call the plan functions below: on CPU the structured plans
past their measured crossovers (band for the 1D patterns, halo for the 2D neighborhood, tiles for Swin's windows;
kernels/), the dense kernel with the exact mask below them; compiled flex on CUDA (the dense SDPA path for attention
dropout, which flex has not). Linformer's and Performer's math (kernels/linformer.py, kernels/performer.py) are the
very modules the patched layers hold.

Plans and masks that depend on the shape alone live in one bounded cache, :data:`PLANS` (least recently used out
first, at most :data:`PLAN_CACHE_SIZE` entries and :data:`PLAN_CACHE_BYTES` of tensors): the ops' plans, a patched
model's shape-only masks and plans (through its forward's ``ForwardMasks``) and Swin's block statistics. What depends
on more (padding, global tokens) is built per call, or once per forward.

    q, k, v = (torch.randn(1, 8, 4096, 64) for _ in range(3))
    out = longformer_attention(q, k, v, window=512, global_mask=first_token)   # (1, 8, 4096, 64)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from . import checks, compat, kernels
from .kernels import natten_backend
from .kernels.band import band_pays, natten_1d_plan, sliding_window_pays, sliding_window_plan
from .kernels.flex import FLEX_DTYPES, flash_missing
from .kernels.halo import halo_pays, natten_2d_plan
from .kernels.linformer import LinformerAttention
from .kernels.linformer import linformer_attention as _linformer
from .kernels.performer import PerformerAttention, favor_attention
from .kernels.windows import relative_position_index, shifted_window_plan
from .masks import (
    BatchMask,
    Mask,
    generate_full,
    generate_global,
    generate_natten_1d_over_real_tokens,
    generate_natten_2d,
    generate_shifted_windows,
    generate_sliding_window,
    global_token_flags,
    padded_length,
)
from .mods import generate_relative_position_bias

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


# ----------------------------------------------------------------------------------------------- the one plan cache


def caching_allowed() -> bool:
    """Whether what a call builds may be kept across calls: not inside ``torch.compile`` (or ``torch.export``), where
    the build is traced into the graph instead. A cache read there would be a Python side effect that dynamo guards on
    (a new graph each time the cache changes) and the inference-mode flag it is keyed on cannot be traced; the
    compiled graph builds masks, plans and biases itself, once per call."""
    return not torch.compiler.is_compiling()


def kept_tensors(value: Any, where: str = "") -> list[tuple[str, Tensor]]:
    """Every tensor reachable from ``value``, one per storage, with where it lies: through containers, dataclasses
    and other objects' attributes (a plan's index tables and kept masks, a BatchMask's materialised masks, a
    BlockMask's block lists), not into modules (their parameters are the model's) nor functions."""
    found, storages, visited = [], set(), set()

    def walk(item: Any, where: str) -> None:
        if isinstance(item, Tensor):
            storage = item.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in storages:
                storages.add(storage.data_ptr())
                found.append((where, item))
            return
        if id(item) in visited or isinstance(item, (str, bytes, int, float, type, nn.Module, torch.device)):
            return
        visited.add(id(item))
        if isinstance(item, dict):
            for key, entry in item.items():
                walk(entry, f"{where}[{key[0] if isinstance(key, tuple) and key else key}]")
        elif isinstance(item, (list, tuple, set, frozenset)):
            for entry in item:
                walk(entry, where)
        elif hasattr(item, "__dict__") and not callable(item):
            for name, entry in vars(item).items():
                walk(entry, f"{type(item).__name__}.{name}")

    walk(value, where)
    return found


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors :func:`kept_tensors` finds in ``value``."""
    return sum(tensor.untyped_storage().nbytes() for _, tensor in kept_tensors(value))


class PlanCache:
    """A least-recently-used map of plans and masks that depend on shapes only: at most ``size`` entries holding at
    most ``max_bytes`` of tensors (counted with :func:`tensor_bytes` when an entry is added; a plan grows the masks it
    keeps as it is used). An entry larger than the whole budget is not kept: the forward that built it holds it while
    it runs."""

    def __init__(self, size: int, max_bytes: int):
        self.size = size
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        sizes = {key: tensor_bytes(entry) for key, entry in self._entries.items()}
        kept = sum(sizes.values())
        for oldest in list(self._entries):
            if kept <= self.max_bytes:
                break
            kept -= sizes[oldest]
            del self._entries[oldest]

    def kept_bytes(self) -> int:
        """The bytes of the tensors the entries hold now."""
        return sum(tensor_bytes(entry) for entry in self._entries.values())

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()``, once per key; tensors made under ``torch.inference_mode()`` are kept apart (autograd cannot
        save them for a later training step); inside ``torch.compile`` built every time (:func:`caching_allowed`)."""
        if not caching_allowed():
            return build()
        key = (key, torch.is_inference_mode_enabled())
        if key in self._entries:
            return self.get(key)
        value = build()
        self.put(key, value)
        return value

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# a plan holds index tables of a few entries per token and the masks its chunks use (MiniLM's band at 32,768 tokens:
# 11 MB); a mask its BlockMask and, on the dense path, the materialised mask. A process that sees many lengths (each
# a shape-only entry) keeps the most recent ones within both bounds; set ``PLANS.max_bytes`` to keep more or less
PLAN_CACHE_SIZE = 64
PLAN_CACHE_BYTES = 64 * 2**20
PLANS = PlanCache(PLAN_CACHE_SIZE, PLAN_CACHE_BYTES)


class Plans(Protocol):
    """Where a call's plans come from: ``shared(key, build)`` builds or reuses the plan ``key`` names. A patched
    model's forward passes its ``ForwardMasks`` (plans built once per forward, kept in :data:`PLANS` when they depend
    on the shape alone); an op call a :class:`CallPlans`."""

    def shared(self, key: Hashable, build: Callable[[], Any]) -> Any: ...


class CallPlans:
    """The plans of one op call: kept in :data:`PLANS` when they depend on the shape alone (the key names the whole
    shape), else built for the call."""

    def __init__(self, shape_only: bool):
        self.shape_only = shape_only

    def shared(self, key: Hashable, build: Callable[[], Any]) -> Any:
        return PLANS.get_or_build(key, build) if self.shape_only else build()


# ------------------------------------------------------------------------------------------------- the backend option


def structured_paths(q: Tensor, backend: str = "auto") -> bool:
    """Whether a call may take a pattern's structured plan (or the dense path the policy picks for speed): the CPU
    policy outside torch.compile, unless ``backend`` asks for flex ('flex', 'flash')."""
    return not kernels.forces_flex(backend) and kernels.uses_structured_paths(q)


def check_backend(variant) -> None:
    """Patch time: refuse a ``backend`` that the variant's pattern or this install rules out, with a ``ValueError``
    naming what is missing (the model is not touched yet). What only a call can tell (its device, whether it trains
    a bias) is checked at the call (``kernels.check_flash_call``, :func:`natten_attention`)."""
    backend, where = variant.options.backend, variant.options.where
    family = variant.family.name
    if backend not in variant.kernel_backends:
        if backend == "natten":
            why = (
                "NATTEN's kernels compute variant='neighborhood' without a bias of the model's, on a token sequence or "
                f"on prefix tokens and a patch grid; {variant.name!r} on the {family} family is not that"
            )
        else:
            why = f"{variant.name!r} computes its attention without a mask pattern: there is no FlexAttention call"
        allowed = ", ".join(repr(b) for b in variant.kernel_backends)
        raise ValueError(f"{where}: backend={backend!r} is not available here: {why}; backends here: {allowed}")
    missing = {"natten": natten_backend.natten_missing, "flash": flash_missing}.get(backend, lambda: "")()
    if missing:
        raise ValueError(f"{where}: backend={backend!r} needs what this install lacks: {missing}; or use 'auto'")


def natten_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel: tuple[int, int],
    dilation: tuple[int, int],
    scale: float | None,
    dropout_p: float,
    *,
    grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 0,
    key_is_real: Tensor | None = None,
    has_bias: bool = False,
) -> Tensor | None:
    """``backend="natten"``: NATTEN's own kernels for one neighborhood call (1D on the sequence, or 2D on ``grid``
    after ``num_prefix_tokens`` global tokens), or None where they cannot compute it and the call takes the path
    ``"auto"`` would (the same function): key padding (NATTEN's neighborhood kernels have no per-sample lengths),
    attention dropout (NATTEN has none), a line shorter than kernel × dilation (NATTEN refuses it; the rule sees it
    whole), gradients on CPU (NATTEN's CPU backend has none), dtypes flex does not compile, and inside
    ``torch.compile`` or ``torch.export`` (flex is traced into the graph). A model bias is refused: NATTEN adds none."""
    if has_bias:
        raise ValueError(
            "patch(variant='neighborhood', backend='natten'): this model adds a relative position bias to its "
            "attention scores, which NATTEN's kernels do not apply; use backend='auto' or 'flex'"
        )
    on_cpu = kernels.device_kind(q) == "cpu"
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    seq_len = q.shape[2]
    too_short = grid is None and seq_len < kernel[0] * dilation[0]
    if (
        key_is_real is not None
        or dropout_p > 0
        or too_short
        or (needs_grad and on_cpu)
        or q.dtype not in FLEX_DTYPES
        or torch.compiler.is_compiling()
        or compat.is_exporting()
    ):
        return None
    natten_backend.check_device(q, on_cpu)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if on_cpu:  # NATTEN's CPU backend (uncompiled flex) refuses inputs that require grad, even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    if grid is None:
        return natten_backend.natten_1d_attention(q, k, v, kernel[0], dilation[0], scale)
    return natten_backend.natten_2d_attention(q, k, v, grid, kernel, dilation, scale, num_prefix_tokens)


# ----------------------------------------------------------------------------------------- the path of each pattern
# Each returns the pattern's structured plan where it pays (CPU, outside torch.compile, past its measured crossover),
# built or reused through ``plans``; None: the generic kernels (kernels.attend) with the pattern's exact mask.


def sliding_window_band_plan(
    q: Tensor,
    seq_len: int,
    half_width: int,
    plans: Plans,
    *,
    key_is_real: Tensor | None = None,
    is_global: Tensor | None = None,
    backend: str = "auto",
) -> kernels.TilePlan | None:
    """The band plan of a sliding window of ``half_width`` on each side (plus the global tokens ``is_global`` (B, N'),
    N' ≥ ``seq_len``, and the key padding ``key_is_real``)."""
    if not structured_paths(q, backend) or not sliding_window_pays(seq_len, 2 * half_width):
        return None
    return plans.shared(
        ("band", seq_len, half_width, q.shape[0], q.device, q.dtype),
        lambda: sliding_window_plan(
            seq_len,
            half_width,
            batch=q.shape[0],
            key_is_real=key_is_real,
            is_global=None if is_global is None else is_global[:, :seq_len],
            device=q.device,
            dtype=q.dtype,
        ),
    )


def natten_1d_band_plan(
    q: Tensor,
    seq_len: int,
    kernel_size: int,
    dilation: int,
    plans: Plans,
    *,
    key_is_real: Tensor | None = None,
    backend: str = "auto",
) -> kernels.TilePlan | None:
    """The band plan of NATTEN 1D over each sample's real tokens."""
    if not structured_paths(q, backend) or not band_pays(-(-seq_len // dilation), kernel_size):  # a group's length
        return None
    return plans.shared(
        ("natten_1d", seq_len, kernel_size, dilation, q.shape[0], q.device, q.dtype),
        lambda: natten_1d_plan(
            seq_len, kernel_size, dilation, batch=q.shape[0], key_is_real=key_is_real, device=q.device, dtype=q.dtype
        ),
    )


def natten_2d_halo_plan(
    q: Tensor,
    grid: tuple[int, int],
    kernel: tuple[int, int],
    dilation: tuple[int, int],
    plans: Plans,
    *,
    num_prefix_tokens: int = 0,
    key_is_real: Tensor | None = None,
    score_mod: bool = False,
    backend: str = "auto",
) -> kernels.TilePlan | None:
    """The halo plan of NATTEN 2D on a grid after ``num_prefix_tokens`` global tokens; none with key padding or a
    ``score_mod`` (a model's bias), which the plan does not apply."""
    if key_is_real is not None or score_mod or not structured_paths(q, backend) or not halo_pays(grid):
        return None
    return plans.shared(
        ("natten_2d", grid, tuple(kernel), tuple(dilation), num_prefix_tokens, q.shape[0], q.device, q.dtype),
        lambda: natten_2d_plan(
            grid, tuple(kernel), tuple(dilation), num_prefix_tokens, batch=q.shape[0], device=q.device, dtype=q.dtype
        ),
    )


def shifted_window_tile_plan(
    q: Tensor,
    grid: tuple[int, int],
    window: int,
    shift: int,
    plans: Plans,
    *,
    num_prefix_tokens: int = 0,
    key_is_real: Tensor | None = None,
    score_mod: bool = False,
    backend: str = "auto",
) -> kernels.TilePlan | None:
    """Swin's (shifted) windows on a flat grid as the tiles of one SDPA call; none with key padding or a
    ``score_mod`` (a model's bias; a Swin table is gathered onto the tiles instead)."""
    if key_is_real is not None or score_mod or not structured_paths(q, backend):
        return None
    return plans.shared(
        ("windows", grid, window, shift, num_prefix_tokens, q.shape[0], q.device, q.dtype),
        lambda: shifted_window_plan(
            grid, window, shift, num_prefix_tokens, batch=q.shape[0], device=q.device, dtype=q.dtype
        ),
    )


# ------------------------------------------------------------------------------------------------ the functions


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
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask,
    padding_mask: Tensor | None,
    scale: float | None,
    dropout_p: float,
    score_mod=None,
    score_mod_params=(),
    per_sample: bool = False,
) -> Tensor:
    real = _check_padding(padding_mask, q)
    batch = q.shape[0] if (real is not None or per_sample) else 1
    bound = BatchMask(mask, q.shape[2], batch=batch, key_is_real=real, device=q.device)
    return kernels.attend(
        q, k, v, bound, score_mod=score_mod, scale=scale, dropout_p=dropout_p, score_mod_params=score_mod_params
    )


def full_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    padding_mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Softmax attention over all (real) keys.

    Args:
        q, k, v: (B, H, N, D) queries, keys and values.
        padding_mask: (B, N), True (or 1) for real tokens; padded keys are never attended.
        scale: the score scale (default ``D**-0.5``).
        dropout_p: attention-probability dropout (apply only in training).

    Returns:
        (B, H, N, D).
    """
    _check_qkv(q, k, v)
    return _attend_masked(q, k, v, generate_full(), padding_mask, scale, dropout_p)


def longformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    global_mask: Tensor | None = None,
    padding_mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """HF Longformer's sliding window + global tokens.

    Args:
        q, k, v: (B, H, N, D).
        window: a positive even int; each token sees ``window // 2`` tokens on each side.
        global_mask: (B, N), True (or 1) for global tokens (they see every real key and every query sees them).
        padding_mask: (B, N), True (or 1) for real tokens; a padded token is never global.
        scale: the score scale (default ``D**-0.5``).
        dropout_p: attention-probability dropout (apply only in training).

    Returns:
        (B, H, N, D).
    """
    _check_qkv(q, k, v)
    checks.positive_even_int("window", window, "longformer_attention")
    real = _check_padding(padding_mask, q)
    is_global = None
    if global_mask is not None:
        checks.sized_like("global_mask", global_mask.shape, (q.shape[0], q.shape[2]), "(batch, seq_len)")
        is_global = global_token_flags(
            q.shape[0], q.shape[2], global_attention_mask=global_mask, key_is_real=real, device=q.device
        )
    plans = CallPlans(shape_only=real is None and is_global is None)
    plan = sliding_window_band_plan(q, q.shape[2], window // 2, plans, key_is_real=real, is_global=is_global)
    if plan is not None:
        return kernels.tiled_attention(q, k, v, plan, scale, dropout_p)
    mask = generate_sliding_window(window // 2)
    if is_global is not None:
        mask = mask | generate_global(nn.functional.pad(is_global, (0, padded_length(q.shape[2]) - q.shape[2])))
    return _attend_masked(q, k, v, mask, padding_mask, scale, dropout_p, per_sample=is_global is not None)


def neighborhood_attention_1d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int,
    dilation: int = 1,
    padding_mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """NATTEN 1D: the clamped ``kernel_size`` window around each token (per dilation group), over each sample's
    real tokens (padding on either side, or in between, moves no window).

    Args:
        q, k, v: (B, H, N, D).
        kernel_size: a positive odd int, the window's length.
        dilation: a positive int; tokens attend within their group of ``i mod dilation``.
        padding_mask: (B, N), True (or 1) for real tokens.
        scale: the score scale (default ``D**-0.5``).
        dropout_p: attention-probability dropout (apply only in training).

    Returns:
        (B, H, N, D).
    """
    _check_qkv(q, k, v)
    checks.positive_odd_int("kernel_size", kernel_size)
    checks.positive_int("dilation", dilation)
    real = _check_padding(padding_mask, q)
    plan = natten_1d_band_plan(q, q.shape[2], kernel_size, dilation, CallPlans(real is None), key_is_real=real)
    if plan is not None:
        return kernels.tiled_attention(q, k, v, plan, scale, dropout_p)
    mask = generate_natten_1d_over_real_tokens(kernel_size, dilation, q.shape[2], real, q.device)
    return _attend_masked(q, k, v, mask, padding_mask, scale, dropout_p)


def _grid_tensors(
    q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int] | None
) -> tuple[Tensor, Tensor, Tensor, tuple[int, int], bool]:
    """Accept (B, H, rows, cols, D) tensors, or (B, H, N, D) with ``grid=(rows, cols)``."""
    if q.dim() == 5:
        grid = q.shape[2:4]
        q, k, v = (t.flatten(2, 3) for t in (q, k, v))
        return q, k, v, tuple(grid), True
    if grid is None or len(grid) != 2 or grid[0] * grid[1] != q.shape[2]:
        raise ValueError(
            f"grid={grid!r}; give (rows, cols) with rows·cols = seq_len {q.shape[2]}, "
            "or pass (B, H, rows, cols, D) tensors"
        )
    return q, k, v, tuple(grid), False


def neighborhood_attention_2d(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    grid: tuple[int, int] | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """NATTEN 2D on a row-major grid.

    Args:
        q, k, v: (B, H, rows, cols, D), or (B, H, N, D) with ``grid``.
        kernel_size: odd, an int or (rows, cols); the dilated kernel must fit the grid.
        dilation: a positive int or (rows, cols).
        grid: (rows, cols) for (B, H, N, D) inputs.
        scale: the score scale (default ``D**-0.5``).
        dropout_p: attention-probability dropout (apply only in training).

    Returns:
        The inputs' shape.
    """
    q, k, v, grid, five_d = _grid_tensors(q, k, v, grid)
    _check_qkv(q, k, v)
    kernel, dil = checks.kernel_fits_grid(kernel_size, dilation, grid, "neighborhood_attention_2d")
    plan = natten_2d_halo_plan(q, grid, kernel, dil, CallPlans(shape_only=True))
    if plan is not None:
        out = kernels.tiled_attention(q, k, v, plan, scale, dropout_p)
    else:
        out = _attend_masked(q, k, v, generate_natten_2d(grid, kernel, dil, device=q.device), None, scale, dropout_p)
    return out.unflatten(2, grid) if five_d else out


def swin_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window_size: int,
    shift: int = 0,
    bias: Tensor | None = None,
    grid: tuple[int, int] | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Swin's (shifted) window attention.

    Args:
        q, k, v: (B, H, rows, cols, D), or (B, H, N, D) with ``grid``; ``window_size`` must divide the grid.
        window_size: the window side.
        shift: the cyclic shift, 0 ≤ shift < window_size.
        bias: a Swin relative position table ((2w−1)², H), added to the scores (trained if it requires grad).
        grid: (rows, cols) for (B, H, N, D) inputs.
        scale: the score scale (default ``D**-0.5``).
        dropout_p: attention-probability dropout (apply only in training).

    Returns:
        The inputs' shape.
    """
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
                f"bias has shape {tuple(bias.shape)}; expected ((2w-1)^2, heads) = "
                f"{((2 * window_size - 1) ** 2, q.shape[1])}"
            )
        score_mod, params = generate_relative_position_bias(bias, grid[1], window_size), (bias,)
    plan = shifted_window_tile_plan(q, grid, window_size, shift, CallPlans(shape_only=True))
    if plan is not None:
        tile_bias = None
        if bias is not None:  # within a window (and region) the offsets are those of the grid: one table gather
            pairs = bias[relative_position_index(window_size, window_size, q.device)].permute(2, 0, 1)
            tile_bias = pairs.to(q.dtype).expand(plan.tiles, *pairs.shape)
        out = kernels.tiled_attention(q, k, v, plan, scale, dropout_p, bias=tile_bias)
    else:
        mask = generate_shifted_windows(grid, window_size, shift, device=q.device)
        out = _attend_masked(q, k, v, mask, None, scale, dropout_p, score_mod, params)
    return out.unflatten(2, grid) if five_d else out


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
    """Linformer: attention over keys and values projected along the sequence.

    Args:
        q, k, v: (B, H, N, D).
        E: (max_len, proj_len) key projection, N ≤ max_len (its first N rows are used).
        F: the value projection, same shape (default: ``E``).
        padding_mask: (B, N), True (or 1) for real tokens (padded keys are projected as zeros).
        scale: the score scale (default ``D**-0.5``).
        dropout_p: attention-probability dropout (apply only in training).

    Returns:
        (B, H, N, D).
    """
    _check_qkv(q, k, v)
    for name, m in (("E", E), ("F", F)):
        if m is not None and m.dim() != 2:
            raise ValueError(f"{name} has shape {tuple(m.shape)}; expected (max_len, proj_len)")
    return _linformer(q, k, v, E, F, _check_padding(padding_mask, q), scale, dropout_p)


def performer_attention(
    q: Tensor, k: Tensor, v: Tensor, features: Tensor, padding_mask: Tensor | None = None
) -> Tensor:
    """FAVOR+ linear attention.

    Args:
        q, k, v: (B, H, N, D).
        features: (m, D) random features, e.g. from ``orthogonal_random_features``.
        padding_mask: (B, N), True (or 1) for real tokens.

    Returns:
        (B, H, N, D).
    """
    _check_qkv(q, k, v)
    if features.dim() != 2 or features.shape[1] != q.shape[-1]:
        raise ValueError(f"features has shape {tuple(features.shape)}; expected (num_features, head_dim={q.shape[-1]})")
    return favor_attention(q, k, v, features, _check_padding(padding_mask, q))
