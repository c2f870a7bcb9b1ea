"""The attention kernels every variant runs on, and the device policy that picks among them.

Generic paths, for any mask: :func:`attend` picks one of three that compute the same function (a masked softmax
attention with an optional ``score_mod``):

* ``flex``: compiled FlexAttention (:mod:`.flex`), block-sparse and fused. Inference everywhere; training on CUDA.
* ``dense``: the mask (and bias) materialised for PyTorch's fused SDPA (:mod:`.dense`). Faster than flex on CPU
  where the mask covers most of the matrix or the input is short, and for full attention (``full``: no mask, or the
  (B, 1, 1, N) padding mask) at any length; also the path for float64, and for deterministic bias-table gradients
  on CUDA.
* ``block_sparse``: a PyTorch autograd path over the BlockMask's blocks (:mod:`.block_sparse`). Training on CPU,
  where flex has no backward.
* ``flex_dropout``: attention-probability dropout on compiled flex (:mod:`.flex_dropout`: a hashed keep mask in the
  ``mask_mod`` and two flex calls merged by their log-sum-exps). CUDA's path for dropout beyond ``DENSE_MAX_ENTRIES``.

On CUDA the choice is made from Python facts only (dtype, sizes, whether gradients or dropout are needed), so a
forward never waits on the GPU; on CPU, where reading a tensor costs nothing, it also looks at the BlockMask's
density, except inside ``torch.compile`` (a traced graph may not branch on a value: there training takes the dense
path where it fits, inference flex past short inputs). Attention dropout on CUDA (FlexAttention has none) runs the
dense path up to ``DENSE_MAX_ENTRIES``: SDPA applies HF's dropout exactly, fused and without a host sync, at the price
of computing every score of the matrix (the mask is not skipped); past it, ``flex_dropout`` (static shapes, no host
sync, the pattern's sparsity kept).

Every device-dependent choice reads one seam, :func:`device_kind`: set it to ``"cuda"`` and CPU tensors take CUDA's
paths exactly (exact lengths, no value reads, head dims padded for flex), which is how the tests check the CUDA
policy without a GPU.

Structured paths, for the patterns whose keys are local (CPU; :func:`uses_structured_paths`): a
:class:`~.tiles.TilePlan` for the pattern (:mod:`.band`: sliding window + globals, NATTEN 1D; :mod:`.halo`:
NATTEN 2D; :mod:`.windows`: Swin's windows) run by :func:`~.tiles.tiled_attention`, one fused SDPA call over all
tiles, which also trains. Below the measured crossovers (:func:`.band.band_pays`, :func:`.halo.halo_pays`) the
dense path with the pattern's exact mask is faster, and :func:`attend` (which picks it) runs instead. Where each
pattern's plan pays is decided in one place, the plan functions of ``hf_flexattn.ops``, which the variants and the
plain-tensor ops call. On CUDA the
variants keep compiled flex, FlexAttention's home (fused forward and backward), except Swin's blocks, which run HF's
window algorithm (one SDPA call over the windows) where it computes fewer scores (``variants/swin.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import compat
from ..masks import BatchMask
from .block_sparse import block_sparse_attention
from .dense import attention_probabilities, dense_attention
from .flex import FLASH_KERNEL_OPTIONS, FLEX_DTYPES, run_flex, uses_dynamic_shapes
from .flex_dropout import flex_dropout_attention
from .tiles import TilePlan, tiled_attention

__all__ = [
    "BACKENDS",
    "TilePlan",
    "attend",
    "attention_probabilities",
    "block_density",
    "choose_path",
    "dense_attention",
    "tiled_attention",
    "uses_structured_paths",
]

# what ``patch(..., backend=...)`` may name (docs/gpu.md, "Choosing the kernel"): "auto" the policy below; "flex"
# and "flash" FlexAttention (the latter with its FlashAttention-4 backend) for every call flex can compute; "natten"
# NATTEN's own kernels for the calls of a neighborhood pattern they can compute (kernels/natten_backend.py)
BACKENDS = ("auto", "flex", "natten", "flash")

# CPU training: above this fraction of visited blocks SDPA on the materialised mask beats the gathered path.
DENSE_TRAINING_DENSITY = 0.5
# CPU inference: the dense fused kernel beats flex below this many score entries per sample, or above this density
# (measured by scripts/benchmark.py; see docs/crossover.md).
DENSE_INFERENCE_MAX_ENTRIES = 1024 * 1024
DENSE_INFERENCE_DENSITY = 0.6
# the dense path materialises a (B, 1, N, N) mask: never beyond this many entries per sample
DENSE_MAX_ENTRIES = 4096 * 4096


def device_kind(tensor: Tensor) -> str:
    """The device whose policy applies to ``tensor``: ``"cpu"``, or another device type (CUDA's policy).

    The one seam every device-dependent choice reads (tests return ``"cuda"`` to run CUDA's decisions on CPU)."""
    return tensor.device.type


def uses_structured_paths(tensor: Tensor) -> bool:
    """Whether the structured paths (tiled SDPA, the dense path below their crossovers) run for ``tensor``: on CPU,
    outside ``torch.compile`` (whose graph traces flex). Decided from Python facts only."""
    return device_kind(tensor) == "cpu" and not torch.compiler.is_compiling()


def _block_mask(query: Tensor, mask: BatchMask):
    """The form of ``mask`` flex runs on here: exact lengths with dynamic shapes, else bucketed lengths."""
    return mask.block_mask(bucketed=not uses_dynamic_shapes(device_kind(query), mask.dynamic_cpu_compile))


def block_density(query: Tensor, mask: BatchMask) -> float:
    """Fraction of (query block, key block) pairs the BlockMask visits (reads the tensor: CPU only)."""
    block_mask = _block_mask(query, mask)
    visited = block_mask.kv_num_blocks.sum()
    if block_mask.full_kv_num_blocks is not None:
        visited = visited + block_mask.full_kv_num_blocks.sum()
    total = block_mask.kv_num_blocks.numel() * block_mask.kv_indices.shape[-1]
    return float(visited) / total


def forces_flex(backend: str) -> bool:
    """Whether ``backend`` asks for FlexAttention wherever it can compute a call (no structured plan, no dense path
    chosen for speed)."""
    return backend in ("flex", "flash")


def flex_computes(query: Tensor, dropout_p: float, needs_grad: bool, deterministic_params: bool) -> bool:
    """Whether flex can compute this call the way the model asks: it has no dropout, no backward on CPU, and
    accumulates captured-tensor gradients non-deterministically."""
    if dropout_p > 0 or (needs_grad and device_kind(query) == "cpu"):
        return False
    return not (needs_grad and deterministic_params and torch.are_deterministic_algorithms_enabled())


def choose_path(
    query: Tensor,
    mask: BatchMask | None,
    dropout_p: float,
    needs_grad: bool,
    deterministic_params: bool,
    backend: str = "auto",
) -> str:
    """``"flex"``, ``"dense"``, ``"block_sparse"`` or ``"flex_dropout"`` for one call (see the module docstring);
    ``backend="flex"`` or ``"flash"``: flex wherever :func:`flex_computes` the call."""
    if compat.is_exporting():
        # torch.export traces one fixed shape and may not read tensor values (the density below): the exported
        # program runs the exact mask materialised for SDPA, at any length and on any device
        return "dense"
    if query.dtype not in FLEX_DTYPES or mask is None:
        return "dense"  # dtypes flex does not compile; unmasked attention (Linformer's projected keys)
    if forces_flex(backend) and flex_computes(query, dropout_p, needs_grad, deterministic_params):
        return "flex"
    entries = mask.q_len * mask.kv_len
    if device_kind(query) == "cpu":
        if mask.mask.sees_everything:
            # full attention: SDPA's own fused kernel at any length, as the model on sdpa runs it (no mask, or the
            # (B, 1, 1, N) padding mask: O(N) memory), with its fused backward; flex would only add a compile
            return "dense"
        compiling = torch.compiler.is_compiling()
        if needs_grad or dropout_p > 0:
            if entries > DENSE_MAX_ENTRIES:
                return "block_sparse"
            return "dense" if compiling or block_density(query, mask) > DENSE_TRAINING_DENSITY else "block_sparse"
        if entries <= DENSE_INFERENCE_MAX_ENTRIES:
            return "dense"
        dense = entries <= DENSE_MAX_ENTRIES and not compiling and block_density(query, mask) > DENSE_INFERENCE_DENSITY
        return "dense" if dense else "flex"
    if dropout_p > 0:  # flex has no dropout: SDPA applies HF's exactly; past its mask's size, flex_dropout
        return "dense" if entries <= DENSE_MAX_ENTRIES else "flex_dropout"
    if needs_grad and deterministic_params and torch.are_deterministic_algorithms_enabled():
        return "dense"  # flex accumulates captured-tensor gradients with atomic adds
    return "flex"


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: BatchMask | None = None,
    score_mod=None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    score_mod_params: Sequence[Tensor] = (),
    backend: str = "auto",
) -> Tensor:
    """Masked attention over ``(B, H, N, D)`` tensors; returns ``(B, H, N, D)``.

    ``score_mod_params`` lists the learnable tensors that ``score_mod`` reads (e.g. Swin's bias table), so the
    training paths can return their gradients. ``dropout_p`` is the attention-probability dropout (0 in eval).
    ``backend``: the patch's ``backend`` option (:data:`BACKENDS`; "natten" is decided before, in ``ops``).
    """
    if not query.is_floating_point() or query.dtype not in (*FLEX_DTYPES, torch.float64):
        raise ValueError(
            f"hf_flexattn: attention inputs have dtype={query.dtype}; supported: float32, float16, bfloat16 "
            "(FlexAttention) and float64 (the dense path)"
        )
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, *score_mod_params))
    trains_params = torch.is_grad_enabled() and any(p.requires_grad for p in score_mod_params)
    if backend == "flash":
        check_flash_call(query, trains_params)
    path = choose_path(query, mask, dropout_p, needs_grad, any(p.requires_grad for p in score_mod_params), backend)
    on_cpu = device_kind(query) == "cpu"
    if path == "dense":
        # a traced graph (torch.compile, torch.export) may not branch on tensor values; eager CPU reads them freely
        read_values = on_cpu and not torch.compiler.is_compiling()
        return dense_attention(query, key, value, mask, score_mod, scale, dropout_p, read_values=read_values)
    q_len = query.shape[-2]
    block_mask = _block_mask(query, mask)
    q_pad, kv_pad = block_mask.seq_lengths
    if path == "flex" and on_cpu:  # CPU flex refuses inputs that require grad, even under no_grad (it has no backward)
        query, key, value = query.detach(), key.detach(), value.detach()
    query, key, value = _pad_to(query, q_pad), _pad_to(key, kv_pad), _pad_to(value, kv_pad)
    dynamic = uses_dynamic_shapes(device_kind(query), mask.dynamic_cpu_compile)
    if path == "block_sparse":
        out = block_sparse_attention(query, key, value, block_mask, score_mod, scale, dropout_p, score_mod_params)
    elif path == "flex_dropout":
        out = flex_dropout_attention(
            query, key, value, block_mask, score_mod, scale, dropout_p, dynamic, pad_small_heads=not on_cpu
        )
    else:
        options = FLASH_KERNEL_OPTIONS if backend == "flash" else None
        out = run_flex(
            query, key, value, block_mask, score_mod, scale, dynamic, pad_small_heads=not on_cpu, kernel_options=options
        )
    return out[:, :, :q_len]


def check_flash_call(query: Tensor, trains_params: bool) -> None:
    """What FlexAttention's FLASH backend cannot run, refused at the call that meets it (the install was checked at
    patch time): a CPU device (FlashAttention-4 is a CUDA kernel) and gradients into tensors a ``score_mod`` reads
    (a trained bias table: FLASH's forward and backward refuse captured buffers that require grad)."""
    if device_kind(query) == "cpu":
        raise ValueError(
            "patch(backend='flash'): the attention runs on 'cpu', and FlexAttention's FLASH backend (FlashAttention-4) "
            "runs on CUDA only; move the model to a CUDA device, or use backend='auto' or 'flex'"
        )
    if trains_params:
        raise ValueError(
            "patch(backend='flash'): this call trains a tensor its score_mod reads (the model's relative position bias "
            "table), and FlexAttention's FLASH backend computes no gradient for captured tensors; freeze it "
            "(requires_grad=False), run it under torch.no_grad(), or use backend='auto' or 'flex'"
        )


def _pad_to(x: Tensor, length: int) -> Tensor:
    """Zero-pad the token dimension of (B, H, N, D) up to the BlockMask's (bucketed) length."""
    if x.shape[-2] == length:
        return x
    if x.shape[-2] > length:
        raise ValueError(f"inputs have {x.shape[-2]} tokens but the block mask was built for {length}")
    return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[-2]))
