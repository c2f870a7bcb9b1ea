"""The attention kernels every variant runs on.

``attend`` picks one of two paths that compute the same function:

* **compiled FlexAttention** (one ``torch.compile``-d callable per process) for inference, and for training
  on CUDA where flex has a backward;
* a **block-sparse autograd path** for training on CPU, where flex has no backward. It walks the BlockMask's
  own key-block lists (so a wrong BlockMask gives wrong numbers, not hidden ones), keeps only the output and
  log-sum-exp for backward and recomputes the scores block by block there (flash-attention style), so its
  memory grows with N·window, not N². It honours attention-probability dropout.

``dense_attention`` is the plainly written reference (materialised mask + softmax) that tests compare with.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]

# Work on at most this many score entries at once in the block-sparse path (32 MiB in fp32: cache-friendlier
# and a small working set; measured faster than larger chunks on CPU).
_CHUNK_ELEMENTS = 1 << 23

_compiled_flex = None
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


# Distinct (batch, padded length, heads, ...) shapes one process may compile flex for. Past it, dynamo would
# silently run flex uncompiled, which materialises the full N×N score matrix: we raise instead.
MAX_COMPILED_SHAPES = 64


def compiled_flex_attention() -> Callable:
    """The process-wide compiled flex_attention (uncompiled flex materialises the full score matrix).

    Static shapes: on CPU, inductor's dynamic-shape flex template fails to build for batched block masks
    (torch 2.13), so lengths are bucketed to the block size instead and each bucket compiles once.
    """
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def _run_compiled(query, key, value, score_mod, block_mask, scale) -> Tensor:
    import torch._dynamo

    with torch._dynamo.config.patch(recompile_limit=MAX_COMPILED_SHAPES, fail_on_recompile_limit_hit=True):
        try:
            return compiled_flex_attention()(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale)
        except torch._dynamo.exc.FailOnRecompileLimitHit as err:
            raise RuntimeError(
                f"hf_flexattn: FlexAttention was compiled for {MAX_COMPILED_SHAPES} different input shapes in this "
                "process; instead of falling back to uncompiled flex (which builds the full N×N score matrix), "
                "hf_flexattn stops here. Batch inputs to fewer distinct (batch size, length) shapes, e.g. pad "
                "to a few fixed lengths, or raise hf_flexattn.kernels.MAX_COMPILED_SHAPES."
            ) from err


def _needs_autograd(tensors: Sequence[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attend(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    block_mask: BlockMask | None = None,
    score_mod: ScoreMod | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    score_mod_params: Sequence[Tensor] = (),
) -> Tensor:
    """Masked attention over ``(B, H, N, D)`` tensors; returns ``(B, H, N, D)``.

    ``score_mod_params`` lists the learnable tensors that ``score_mod`` reads (e.g. Swin's bias table), so
    the CPU training path can return their gradients. ``dropout_p`` is the attention-probability dropout
    (pass 0 in eval mode).
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if block_mask is None:
        block_mask = _full_block_mask(query.shape[-2], key.shape[-2], query.device)
    q_len = query.shape[-2]
    q_pad, kv_pad = block_mask.seq_lengths
    query, key, value = _pad_to(query, q_pad), _pad_to(key, kv_pad), _pad_to(value, kv_pad)
    if query.device.type == "cpu" and _needs_autograd([query, key, value, *score_mod_params]):
        if score_mod is None and block_density(block_mask) > DENSE_TRAINING_DENSITY:
            out = dense_masked_sdpa(query, key, value, block_mask, scale, dropout_p)
        else:
            out = block_sparse_attention(query, key, value, block_mask, score_mod, scale, dropout_p, score_mod_params)
        return out[:, :, :q_len]
    if query.device.type == "cpu":
        # flex refuses CPU inputs that require grad even under no_grad; no gradient is wanted here
        query, key, value = query.detach(), key.detach(), value.detach()
    if dropout_p > 0.0:
        warn_once(
            "flex-dropout",
            "hf_flexattn: FlexAttention has no attention-probability dropout; it is skipped on this path "
            f"(dropout_p={dropout_p}). The CPU training path applies it.",
        )
    if torch.compiler.is_compiling() or os.environ.get("HF_FLEXATTN_COMPILE", "1") == "0":
        out = flex_attention(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale)
    else:
        out = _run_compiled(query, key, value, score_mod, block_mask, scale)
    return out[:, :, :q_len]


def _pad_to(x: Tensor, length: int) -> Tensor:
    """Zero-pad the token dimension of (B, H, N, D) up to the BlockMask's (bucketed) length."""
    if x.shape[-2] == length:
        return x
    if x.shape[-2] > length:
        raise ValueError(f"inputs have {x.shape[-2]} tokens but the block mask was built for {length}")
    return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[-2]))


_full_masks: dict[tuple, BlockMask] = {}


def _full_block_mask(q_len: int, kv_len: int, device) -> BlockMask:
    """Unmasked attention at lengths bucketed to the block size (keys past ``kv_len`` masked), cached."""
    from .masks import build_padded_block_mask, generate_full

    key = (q_len, kv_len, str(device))
    if key not in _full_masks:
        _full_masks[key] = build_padded_block_mask(generate_full(), q_len, device, kv_len=kv_len)
    return _full_masks[key]


# ---------------------------------------------------------------------------------------------- CPU training

# Above this fraction of visited blocks, CPU training uses SDPA with the mask materialised: sparsity would save
# little and PyTorch's fused kernel beats the gathered path (e.g. `full` on short inputs).
DENSE_TRAINING_DENSITY = 0.5


def block_density(block_mask: BlockMask) -> float:
    """Fraction of (query block, key block) pairs the BlockMask visits."""
    visited = block_mask.kv_num_blocks.sum()
    if block_mask.full_kv_num_blocks is not None:
        visited = visited + block_mask.full_kv_num_blocks.sum()
    total = block_mask.kv_num_blocks.numel() * math.ceil(block_mask.seq_lengths[1] / block_mask.BLOCK_SIZE[1])
    return float(visited) / total


def dense_masked_sdpa(query: Tensor, key: Tensor, value: Tensor, block_mask: BlockMask, scale: float,
                      dropout_p: float = 0.0) -> Tensor:
    """The BlockMask's mask materialised (B or 1, H or 1, N, N) and handed to SDPA, which has autograd and
    dropout on CPU. Rows with no allowed key give zeros, as flex does."""
    q_len, kv_len = query.shape[-2], key.shape[-2]
    batch, heads = block_mask.kv_num_blocks.shape[:2]
    b = torch.arange(batch, device=query.device).view(-1, 1, 1, 1)
    h = torch.arange(heads, device=query.device).view(1, -1, 1, 1)
    q_idx = torch.arange(q_len, device=query.device).view(1, 1, -1, 1)
    kv_idx = torch.arange(kv_len, device=query.device).view(1, 1, 1, -1)
    allowed = block_mask.mask_mod(b, h, q_idx, kv_idx).expand(batch, heads, q_len, kv_len)
    has_key = allowed.any(-1, keepdim=True)
    allowed = allowed | ~has_key  # SDPA would return NaN for empty rows: let them attend, then zero them
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed, dropout_p=dropout_p,
                                                           scale=scale)
    return out * has_key.to(out.dtype)

def _kv_slots(block_mask: BlockMask) -> tuple[Tensor, Tensor, Tensor]:
    """Key-block indices of each query block (partial and full blocks together, listed ones first), their
    validity, and their count: (Bm, Hm, nq, K), (Bm, Hm, nq, K), (Bm, Hm, nq), at the BlockMask's own batch/head
    sizes (1 when it is shared by all samples or heads)."""
    lists = [(block_mask.kv_num_blocks, block_mask.kv_indices)]
    if block_mask.full_kv_num_blocks is not None:
        lists.append((block_mask.full_kv_num_blocks, block_mask.full_kv_indices))
    indices, valid = [], []
    for num, idx in lists:
        width = max(int(num.max()), 1)
        indices.append(idx[..., :width])
        valid.append(torch.arange(width, device=idx.device) < num[..., None])
    indices, valid = torch.cat(indices, -1).long(), torch.cat(valid, -1)
    order = torch.sort(valid.to(torch.int8), dim=-1, descending=True, stable=True).indices
    return indices.gather(-1, order), valid.gather(-1, order), valid.sum(-1)


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, opts, *score_mod_params):
        plan = _Plan(query, key, opts)
        out = torch.zeros_like(query)
        lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
        for c in plan.chunks():
            keys, values = plan.gather(key, c), plan.gather(value, c)
            scores, allowed = plan.scores(query, keys, c)
            probs, chunk_lse = _softmax_with_lse(scores, allowed)
            probs = plan.dropout(probs, plan.keep_mask(probs, c))
            plan.write_rows(out, probs @ values, c.rows)
            plan.write_rows(lse, chunk_lse, c.rows)
        ctx.save_for_backward(query, key, value, out, lse, *score_mod_params)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse, *params = ctx.saved_tensors
        query, key, value = query.detach(), key.detach(), value.detach()
        plan: _Plan = ctx.plan
        grad_q, grad_k, grad_v = torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
        grad_params = [torch.zeros_like(p) for p in params]
        delta = (grad_out * out).sum(-1)  # rowsum(P ∘ dP), the softmax backward's correction term
        for c in plan.chunks():
            keys, values = plan.gather(key, c), plan.gather(value, c)
            raw = plan.raw_scores(query, keys, c).requires_grad_(plan.score_mod is not None)
            with torch.enable_grad():
                scores, allowed = plan.modified_scores(raw, c)
            probs = _probs_from_lse(scores.detach().masked_fill(~allowed, -math.inf), plan.rows(lse, c.rows))
            keep = plan.keep_mask(probs, c)  # the forward's dropout mask, regenerated once for both uses
            dropped = plan.dropout(probs, keep)
            grad_out_c = plan.rows(grad_out, c.rows)
            plan.scatter_add(grad_v, dropped.transpose(-1, -2) @ grad_out_c, c)
            grad_probs = plan.dropout(grad_out_c @ values.transpose(-1, -2), keep)
            grad_scores = probs * (grad_probs - plan.rows(delta, c.rows)[..., None])
            if plan.score_mod is not None:
                grads = torch.autograd.grad(scores, [raw, *params], grad_scores, allow_unused=True)
                grad_scores = grads[0]
                for acc, g in zip(grad_params, grads[1:]):
                    if g is not None:
                        acc += g
            # the scale is applied on the (…, D) products, not on the (…, L) score gradients: fewer flops
            plan.write_rows(grad_q, (grad_scores @ keys) * plan.scale, c.rows, accumulate=True)
            plan.scatter_add(grad_k, (grad_scores.transpose(-1, -2) @ plan.rows(query, c.rows)) * plan.scale, c)
        return (grad_q, grad_k, grad_v, None, *grad_params)


def _softmax_with_lse(scores: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over allowed entries and its log-sum-exp; fully masked rows give zero probabilities (as flex)."""
    scores = scores.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    return _probs_from_lse(scores, lse), lse


def _probs_from_lse(masked_scores: Tensor, lse: Tensor) -> Tensor:
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # empty rows: exp(-inf - 0) = 0
    return torch.exp(masked_scores - safe[..., None])


class _Chunk:
    """Consecutive query blocks processed together, with the key tokens they gather: (Bm, Hm, blocks, L)."""

    def __init__(self, rows: slice, tokens: Tensor, valid: Tensor):
        self.rows, self.tokens, self.valid = rows, tokens, valid


class _Plan:
    """Index bookkeeping of the block-sparse path: which key tokens each query block gathers.

    Query blocks are grouped into chunks of similar key-list length, so one wide row (a global token that
    sees every key) does not make every other row gather as many keys.
    """

    def __init__(self, query: Tensor, key: Tensor, opts: dict):
        self.__dict__.update(opts)
        block_mask: BlockMask = opts["block_mask"]
        self.batch, self.heads, self.q_len, self.dim = query.shape
        self.kv_len = key.shape[-2]
        self.q_block, self.kv_block = block_mask.BLOCK_SIZE
        self.slots, self.slot_valid, counts = _kv_slots(block_mask)
        self.mask_batch, self.mask_heads, self.num_q_blocks = self.slots.shape[:3]
        self.widths = counts.amax(dim=(0, 1)).clamp(min=1).tolist()  # key blocks each query block needs
        # the mask is evaluated at the BlockMask's own (batch, heads), the score_mod at the inputs'
        arange = lambda n: torch.arange(n, device=query.device)  # noqa: E731
        self.offsets = arange(self.kv_block)
        self.mask_b, self.mask_h = arange(self.mask_batch).view(-1, 1, 1, 1, 1), arange(self.mask_heads).view(1, -1, 1, 1, 1)
        self.b_idx, self.h_idx = arange(self.batch).view(-1, 1, 1, 1, 1), arange(self.heads).view(1, -1, 1, 1, 1)
        self.shared = self.mask_batch == 1 and self.mask_heads == 1
        self.drop_threshold = round(self.dropout_p * 256)
        self.keep_scale = 256 / (256 - self.drop_threshold) if self.drop_threshold < 256 else 0.0
        self._chunks = self._group()

    def _group(self) -> list[tuple[slice, int]]:
        """Greedy runs of query blocks whose widths stay within 1.5× of each other and within the budget."""
        per_slot = self.batch * self.heads * self.q_block * self.kv_block
        groups, start = [], 0
        while start < self.num_q_blocks:
            low = high = self.widths[start]
            stop = start + 1
            while stop < self.num_q_blocks:
                lo, hi = min(low, self.widths[stop]), max(high, self.widths[stop])
                if hi > 1.5 * lo or hi * per_slot * (stop + 1 - start) > _CHUNK_ELEMENTS:
                    break
                low, high, stop = lo, hi, stop + 1
            groups.append((slice(start, stop), high))
            start = stop
        return groups

    def chunks(self):
        for rows, width in self._chunks:
            slots = self.slots[:, :, rows, :width]
            tokens = (slots[..., None] * self.kv_block + self.offsets).flatten(-2)
            valid = self.slot_valid[:, :, rows, :width, None].expand(*slots.shape, self.kv_block).flatten(-2)
            valid = valid & (tokens < self.kv_len)
            yield _Chunk(rows, tokens.clamp(max=self.kv_len - 1), valid)

    def rows(self, x: Tensor, c: slice) -> Tensor:
        """Query rows of chunk ``c`` as (B, H, blocks, q_block, ...), zero-padded past q_len."""
        lo, hi = c.start * self.q_block, c.stop * self.q_block
        part = x[:, :, lo:hi]
        missing = hi - lo - part.shape[2]
        if missing:
            part = torch.cat([part, part.new_zeros(*part.shape[:2], missing, *part.shape[3:])], 2)
        return part.reshape(*part.shape[:2], c.stop - c.start, self.q_block, *part.shape[3:])

    def write_rows(self, x: Tensor, value: Tensor, c: slice, accumulate: bool = False) -> None:
        lo = c.start * self.q_block
        hi = min(c.stop * self.q_block, self.q_len)
        value = value.reshape(*value.shape[:2], -1, *value.shape[4:])[:, :, : hi - lo]
        if accumulate:
            x[:, :, lo:hi] += value
        else:
            x[:, :, lo:hi] = value

    def gather(self, x: Tensor, c: _Chunk) -> Tensor:
        """Keys or values of chunk ``c``: (B, H, blocks, L, D)."""
        tokens = c.tokens
        shape = (self.batch, self.heads, *tokens.shape[2:], x.shape[-1])
        if self.shared:  # one key list for every sample and head: a plain index_select
            return x.index_select(2, tokens.reshape(-1)).view(shape)
        flat = tokens.expand(self.batch, self.heads, -1, -1).reshape(self.batch, self.heads, -1, 1)
        return x.gather(2, flat.expand(-1, -1, -1, x.shape[-1])).view(shape)

    def scatter_add(self, target: Tensor, value: Tensor, c: _Chunk) -> None:
        tokens = c.tokens
        value = value.reshape(self.batch, self.heads, -1, value.shape[-1])
        if self.shared:
            target.index_add_(2, tokens.reshape(-1), value)
            return
        flat = tokens.expand(self.batch, self.heads, -1, -1).reshape(self.batch, self.heads, -1, 1)
        target.scatter_add_(2, flat.expand(-1, -1, -1, value.shape[-1]), value)

    def raw_scores(self, query: Tensor, keys: Tensor, c: _Chunk) -> Tensor:
        return (self.rows(query, c.rows) * self.scale) @ keys.transpose(-1, -2)  # scaling q: N·D, not N·L, products

    def modified_scores(self, raw: Tensor, c: _Chunk) -> tuple[Tensor, Tensor]:
        q_tok = torch.arange(c.rows.start * self.q_block, c.rows.stop * self.q_block, device=raw.device)
        q_in = (q_tok < self.q_len).view(1, 1, -1, self.q_block, 1)
        q_tok = q_tok.clamp(max=self.q_len - 1).view(1, 1, -1, self.q_block, 1)
        kv_tok = c.tokens[:, :, :, None, :]
        allowed = c.valid[:, :, :, None, :] & q_in & self.mask_mod(self.mask_b, self.mask_h, q_tok, kv_tok)
        scores = raw
        if self.score_mod is not None:
            # score_mod sees scores before scaling-out, as in flex: score = q·k * scale
            scores = self.score_mod(raw, self.b_idx, self.h_idx, q_tok, kv_tok)
        return scores, allowed

    def scores(self, query: Tensor, keys: Tensor, c: _Chunk) -> tuple[Tensor, Tensor]:
        return self.modified_scores(self.raw_scores(query, keys, c), c)

    def keep_mask(self, like: Tensor, c: _Chunk) -> Tensor | None:
        """Dropout's keep mask for chunk ``c``, drawn from a per-call seed so backward regenerates it exactly.

        Drawn as bytes (faster than floats on CPU): p is rounded to a multiple of 1/256 and the kept
        entries are scaled by 1/(1 − that p), so the expectation is exactly preserved.
        """
        if self.dropout_p == 0.0:
            return None
        gen = torch.Generator(device=like.device).manual_seed(self.seed + c.rows.start)
        noise = torch.empty(like.shape, dtype=torch.uint8, device=like.device).random_(generator=gen)
        return noise >= self.drop_threshold

    def dropout(self, x: Tensor, keep: Tensor | None) -> Tensor:
        return x if keep is None else x.masked_fill(~keep, 0.0) * self.keep_scale


def _noop_mask(b, h, q, kv):
    return q >= 0


def block_sparse_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    block_mask: BlockMask,
    score_mod: ScoreMod | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    score_mod_params: Sequence[Tensor] = (),
) -> Tensor:
    """Autograd-capable attention over the blocks a BlockMask lists (any device; used for CPU training)."""
    opts = dict(
        block_mask=block_mask,
        mask_mod=block_mask.mask_mod if block_mask.mask_mod is not None else _noop_mask,
        score_mod=score_mod,
        scale=query.shape[-1] ** -0.5 if scale is None else scale,
        dropout_p=float(dropout_p),
        seed=int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0,
    )
    return _BlockSparseAttention.apply(query, key, value, opts, *score_mod_params)


# ---------------------------------------------------------------------------------------------- reference


def dense_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Plain softmax attention with a materialised boolean ``mask`` and additive ``bias``.

    Rows with no allowed key give zeros, as FlexAttention does. This is the reference the tests use.
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = query @ key.transpose(-1, -2) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ value
