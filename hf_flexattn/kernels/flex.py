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

import importlib.util
import logging
import math
import typing
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention import flex_attention as flex_module
from torch.nn.attention.flex_attention import AuxOutput, AuxRequest, BlockMask, flex_attention

from .. import compat

logger = logging.getLogger("hf_flexattn")

# Compiles one process may make before hf_flexattn stops (dynamo would otherwise silently run flex uncompiled,
# which builds the full N×N score matrix).
MAX_COMPILES = 64

# dtypes the flex templates compile for; anything else (float64 for gradient checks) runs the dense path
FLEX_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# CUDA's flex template needs head dims of at least 16 (tl.dot); smaller ones are zero-padded
MIN_CUDA_HEAD_DIM = 16

# FlexAttention's FlashAttention-4 backend (``backend="flash"``): the kernel option that selects it
FLASH_KERNEL_OPTIONS = {"BACKEND": "FLASH"}
FLASH_INSTALL = 'pip install --pre flash-attn-4 (torch\'s own install hint for BACKEND="FLASH")'

_compiled: dict[bool, Callable] = {}
compile_events: list[dict] = []


def compiled_flex_attention(dynamic: bool) -> Callable:
    """The process-wide ``torch.compile``-d flex_attention for dynamic or static shapes."""
    if dynamic not in _compiled:
        _compiled[dynamic] = torch.compile(flex_attention, dynamic=dynamic)
    return _compiled[dynamic]


def flex_backends() -> tuple[str, ...]:
    """The kernel backends this torch's FlexAttention offers: the values its public ``FlexKernelOptions`` admits for
    ``"BACKEND"`` (none where it has no such key)."""
    return typing.get_args(typing.get_type_hints(flex_module.FlexKernelOptions).get("BACKEND"))


def flash_missing() -> str:
    """Why FlexAttention's FLASH backend cannot run in this install ("" when it can): torch must offer
    ``kernel_options={"BACKEND": "FLASH"}`` (torch >= 2.11) and flash-attn-4's CuTe DSL kernels (``flash_attn.cute``)
    must be importable, which torch's FLASH lowering requires."""
    if "FLASH" not in flex_backends():
        return f"torch {torch.__version__} has no FLASH backend for FlexAttention (torch >= 2.11)"
    try:
        found = importlib.util.find_spec("flash_attn.cute") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return f"flash-attn-4 (flash_attn.cute), which FlexAttention's FLASH backend runs, is missing ({FLASH_INSTALL})"
    return ""


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
    return_lse: bool = False,
    kernel_options: dict | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Compiled flex on (B, H, N, D) tensors whose lengths match ``block_mask``; ``pad_small_heads`` (CUDA's
    policy) zero-pads head dims below ``MIN_CUDA_HEAD_DIM``. ``return_lse``: also the (B, H, N) log-sum-exp of each
    row's scores (differentiable; -inf for rows that see no key). ``kernel_options`` go to flex as they are
    (:data:`FLASH_KERNEL_OPTIONS` for ``backend="flash"``)."""
    head_dim = value.shape[-1]
    if pad_small_heads and min(query.shape[-1], head_dim) < MIN_CUDA_HEAD_DIM:
        query, key, value = (pad_head_dim(x, MIN_CUDA_HEAD_DIM) for x in (query, key, value))
    options = dict(score_mod=score_mod, block_mask=block_mask, scale=scale)
    if return_lse:
        options["return_aux"] = AuxRequest(lse=True)
    if kernel_options:
        options["kernel_options"] = kernel_options
    if torch.compiler.is_compiling():  # inside the user's torch.compile: flex is traced into their graph
        out = flex_attention(query, key, value, **options)
    else:
        graphs_before = compat.compiled_graph_count()
        with compat.recompile_limit(MAX_COMPILES + 1):
            try:
                out = compiled_flex_attention(dynamic)(query, key, value, **options)
            except compat.recompile_limit_hit() as err:
                raise _too_many_compiles() from err
        if compat.compiled_graph_count() != graphs_before:
            _record_compile(query, key, block_mask, dynamic)
    if return_lse:
        out, aux = out
        return out[..., :head_dim], aux.lse
    return out[..., :head_dim]


def flex_reference(query, key, value, score_mod=None, block_mask=None, scale=None, return_aux=None, **unused):
    """What compiled flex computes, written densely so that it also trains on CPU tensors (CPU flex has no
    backward): scores in float32, ``score_mod`` on the scaled scores, ``block_mask.mask_mod`` per element at the
    inputs' (batch, head) indices, as flex calls it (the block lists are not read), rows with no allowed key giving
    zeros, and the log-sum-exp when ``return_aux`` asks for it. O(N²) memory: the tests' and scripts/gpu_check.py's
    stand-in for the CUDA kernel when CUDA's policy runs on CPU tensors."""
    batch, heads, q_len, _ = query.shape
    scale = query.shape[-1] ** -0.5 if scale is None else scale

    def index(n: int, dim: int) -> Tensor:
        return torch.arange(n, device=query.device).view([-1 if d == dim else 1 for d in range(4)])

    b, h, q, kv = index(batch, 0), index(heads, 1), index(q_len, 2), index(key.shape[-2], 3)
    scores = (query.float() @ key.float().transpose(-1, -2)) * scale
    if score_mod is not None:
        scores = score_mod(scores, b, h, q, kv)
    if block_mask is not None and block_mask.mask_mod is not None:
        scores = scores.masked_fill(~block_mask.mask_mod(b, h, q, kv), -math.inf)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = (probs.to(value.dtype) @ value).to(query.dtype)
    if return_aux is not None and return_aux.lse:
        return out, AuxOutput(lse=torch.logsumexp(scores, dim=-1))
    return out


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
