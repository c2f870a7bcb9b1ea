"""Compiled FlexAttention: one process-wide compiled callable per shape mode, and a guard on how often it compiles.

Uncompiled flex materialises the full N×N score matrix, so hf_flexattn always runs it compiled:

* **dynamic shapes** (one compile serves every length and batch size) on CUDA, and on CPU for the masks inductor's
  dynamic CPU template is known to compile (full, sliding window, 1D neighborhood without padding);
* **static shapes, lengths bucketed to the block size** on CPU for the others (per-token tables such as padding or
  global flags, the 2D neighborhood's index arithmetic fail to compile there in torch 2.13): one compile per
  (batch size, bucket).

Every compile is counted (``compile_events``) and logged at debug level. Past ``MAX_COMPILES`` hf_flexattn raises
instead of letting dynamo fall back to uncompiled flex.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

logger = logging.getLogger("hf_flexattn")

# Compiles one process may make before hf_flexattn stops (dynamo would otherwise silently run flex uncompiled,
# which builds the full N×N score matrix).
MAX_COMPILES = 64

# dtypes the flex templates compile for; anything else (float64 for gradient checks) runs the dense path
FLEX_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# CUDA's flex template needs head dims of at least 16 (tl.dot); smaller ones are zero-padded
MIN_CUDA_HEAD_DIM = 16

_compiled: dict[bool, Callable] = {}
compile_events: list[dict] = []


def compiled_flex_attention(dynamic: bool) -> Callable:
    """The process-wide ``torch.compile``-d flex_attention for dynamic or static shapes."""
    if dynamic not in _compiled:
        _compiled[dynamic] = torch.compile(flex_attention, dynamic=dynamic)
    return _compiled[dynamic]


def reset() -> None:
    """Forget the compiled callables and the compile count (tests; after ``torch._dynamo.reset()``)."""
    _compiled.clear()
    compile_events.clear()


def uses_dynamic_shapes(device_kind: str, dynamic_cpu_compile: bool) -> bool:
    """Whether flex runs with dynamic shapes under ``device_kind``'s policy (else: static shapes on bucketed
    lengths)."""
    return device_kind != "cpu" or dynamic_cpu_compile


def pad_head_dim(x: Tensor, size: int) -> Tensor:
    """Zero-pad the last (head) dimension to ``size``: q·k and the attention weights are unchanged."""
    return x if x.shape[-1] >= size else torch.nn.functional.pad(x, (0, size - x.shape[-1]))


def run_flex(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    block_mask: BlockMask,
    score_mod,
    scale: float,
    dynamic: bool,
    pad_small_heads: bool = False,
) -> Tensor:
    """Compiled flex on (B, H, N, D) tensors whose lengths match ``block_mask``; ``pad_small_heads`` (CUDA's
    policy) zero-pads head dims below ``MIN_CUDA_HEAD_DIM``."""
    import torch._dynamo
    import torch._dynamo.utils

    head_dim = value.shape[-1]
    if pad_small_heads and min(query.shape[-1], head_dim) < MIN_CUDA_HEAD_DIM:
        query, key, value = (pad_head_dim(x, MIN_CUDA_HEAD_DIM) for x in (query, key, value))
    if torch.compiler.is_compiling():  # inside the user's torch.compile: flex is traced into their graph
        return flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale)[
            ..., :head_dim
        ]
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(recompile_limit=MAX_COMPILES + 1, fail_on_recompile_limit_hit=True):
        try:
            out = compiled_flex_attention(dynamic)(
                query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale
            )
        except torch._dynamo.exc.FailOnRecompileLimitHit as err:
            raise _too_many_compiles() from err
    if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs_before:
        _record_compile(query, key, block_mask, dynamic)
    return out[..., :head_dim]


def _record_compile(query: Tensor, key: Tensor, block_mask: BlockMask, dynamic: bool) -> None:
    event = {
        "shape": tuple(query.shape),
        "kv_len": key.shape[-2],
        "dtype": str(query.dtype),
        "device": str(query.device),
        "dynamic": dynamic,
        "mask": getattr(block_mask.mask_mod, "__name__", "mask"),
    }
    compile_events.append(event)
    logger.debug("hf_flexattn: compiled FlexAttention (#%d) for %s", len(compile_events), event)
    if len(compile_events) > MAX_COMPILES:
        raise _too_many_compiles()


def _too_many_compiles() -> RuntimeError:
    shapes = sorted({(e["shape"], e["dynamic"]) for e in compile_events})[:8]
    return RuntimeError(
        f"hf_flexattn: FlexAttention was compiled {len(compile_events)} times in this process (limit "
        f"hf_flexattn.kernels.flex.MAX_COMPILES={MAX_COMPILES}; first shapes: {shapes}). Instead of falling back to "
        "uncompiled flex (which builds the full N×N score matrix), hf_flexattn stops here. Pad inputs to a few "
        "fixed (batch size, length) shapes, or raise MAX_COMPILES."
    )
