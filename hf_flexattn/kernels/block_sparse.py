"""The block-sparse autograd path: attention that trains where flex cannot (CPU), over a BlockMask's own blocks.

It walks the BlockMask's key-block lists (so a wrong BlockMask gives wrong numbers, not hidden ones), keeps only
the output and the log-sum-exp for backward and recomputes the scores block by block there (flash-attention
style), so its memory grows with N·window, not N². It honours attention-probability dropout (regenerating the
forward's mask in backward) and returns gradients for the tensors a ``score_mod`` reads (a bias table).
Pure PyTorch: it runs on any device.

Half-precision inputs (bf16, fp16, and what ``torch.autocast`` hands over) are computed in float32 (scores, softmax,
products and accumulators) and the results cast back, as flash-attention accumulates in float32; autocast is
turned off inside, so it cannot recast those float32 products to half precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

# At most this many score entries at once (32 MiB in fp32: cache-friendly; measured faster than larger chunks on CPU)
CHUNK_ELEMENTS = 1 << 23


def _all_keys(b, h, q, kv):
    return q >= 0


def block_sparse_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    block_mask: BlockMask,
    score_mod=None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    score_mod_params: Sequence[Tensor] = (),
) -> Tensor:
    """Autograd-capable attention of (B, H, N, D) tensors over the blocks ``block_mask`` lists."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0
    plan = SparsePlan.build(query, key, block_mask, score_mod, scale, float(dropout_p), seed)
    return _BlockSparseAttention.apply(query, key, value, plan, *score_mod_params)


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, plan: SparsePlan, *score_mod_params):
        with torch.autocast(query.device.type, enabled=False):
            out, lse = _forward(*_computed(query, key, value), plan)
        ctx.save_for_backward(query, key, value, out, lse, *score_mod_params)
        ctx.plan = plan
        return out.to(query.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse, *params = ctx.saved_tensors
        with torch.autocast(query.device.type, enabled=False):
            grads = _backward(
                *_computed(query.detach(), key.detach(), value.detach(), grad_out), out, lse, params, ctx.plan
            )
        grad_q, grad_k, grad_v, *grad_params = grads
        grad_q, grad_k, grad_v = grad_q.to(query.dtype), grad_k.to(key.dtype), grad_v.to(value.dtype)
        return (grad_q, grad_k, grad_v, None, *grad_params)


def _computed(*tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` in the dtype the path computes in: float32 for half-precision inputs, else their own."""
    return tuple(t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors)


def _forward(query: Tensor, key: Tensor, value: Tensor, plan: SparsePlan) -> tuple[Tensor, Tensor]:
    out = torch.zeros_like(query)
    lse = torch.empty(query.shape[:-1], dtype=query.dtype, device=query.device)
    for c in plan.chunks():
        keys, values = plan.gather(key, c), plan.gather(value, c)
        scores, allowed = plan.scores(query, keys, c)
        probs, chunk_lse = _softmax_with_lse(scores, allowed)
        probs = plan.dropout(probs, plan.keep_mask(probs, c))
        plan.write_rows(out, probs @ values, c.rows)
        plan.write_rows(lse, chunk_lse, c.rows)
    return out, lse


def _backward(query, key, value, grad_out, out, lse, params, plan: SparsePlan) -> list[Tensor]:
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
    return [grad_q, grad_k, grad_v, *grad_params]


def _softmax_with_lse(scores: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over allowed entries and its log-sum-exp; fully masked rows give zero probabilities (as flex)."""
    scores = scores.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    return _probs_from_lse(scores, lse), lse


def _probs_from_lse(masked_scores: Tensor, lse: Tensor) -> Tensor:
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # empty rows: exp(-inf - 0) = 0
    return torch.exp(masked_scores - safe[..., None])


@dataclass(frozen=True)
class Chunk:
    """Consecutive query blocks processed together, with the key tokens they gather: (Bm, Hm, blocks, L)."""

    rows: slice
    tokens: Tensor
    valid: Tensor


def _kv_slots(block_mask: BlockMask) -> tuple[Tensor, Tensor, Tensor]:
    """Key-block indices of each query block (partial and full blocks together, listed ones first), their
    validity, and their count: (Bm, Hm, nq, K), (Bm, Hm, nq, K), (Bm, Hm, nq), at the BlockMask's own batch/head
    sizes (1 when it is shared by all samples or heads). K spans the lists' whole capacity: trimming it to the
    widest row would read the counts on the host (the plan does that once, for all its widths)."""
    lists = [(block_mask.kv_num_blocks, block_mask.kv_indices)]
    if block_mask.full_kv_num_blocks is not None:
        lists.append((block_mask.full_kv_num_blocks, block_mask.full_kv_indices))
    indices = torch.cat([idx for _, idx in lists], -1).long()
    valid = torch.cat([torch.arange(idx.shape[-1], device=idx.device) < num[..., None] for num, idx in lists], -1)
    order = torch.sort(valid.to(torch.int8), dim=-1, descending=True, stable=True).indices
    return indices.gather(-1, order), valid.gather(-1, order), valid.sum(-1)


@dataclass(frozen=True)
class SparsePlan:
    """Index bookkeeping of the block-sparse path: which key tokens each query block gathers.

    Query blocks are grouped into chunks of similar key-list length, so one wide row (a global token that sees
    every key) does not make every other row gather as many keys.
    """

    mask_mod: object
    score_mod: object
    scale: float
    dropout_p: float
    seed: int
    batch: int
    heads: int
    q_len: int
    kv_len: int
    q_block: int
    kv_block: int
    slots: Tensor  # (Bm, Hm, nq, K) key-block indices
    slot_valid: Tensor  # (Bm, Hm, nq, K)
    groups: tuple[tuple[slice, int], ...]  # (query blocks, key blocks gathered) per chunk
    shared: bool  # one key list for every sample and head
    # index tensors: the mask is evaluated at the BlockMask's own (batch, heads), the score_mod at the inputs'
    mask_b: Tensor
    mask_h: Tensor
    b_idx: Tensor
    h_idx: Tensor
    offsets: Tensor

    @classmethod
    def build(
        cls, query: Tensor, key: Tensor, block_mask: BlockMask, score_mod, scale: float, dropout_p: float, seed: int
    ) -> SparsePlan:
        batch, heads, q_len, _ = query.shape
        q_block, kv_block = block_mask.BLOCK_SIZE
        slots, slot_valid, counts = _kv_slots(block_mask)
        mask_batch, mask_heads = slots.shape[:2]
        # key blocks each query block needs: the path's one read of a tensor on the host (a sync on CUDA)
        widths = counts.amax(dim=(0, 1)).clamp(min=1).tolist()

        def arange(n, dim):
            shape = [1] * 5
            shape[dim] = -1
            return torch.arange(n, device=query.device).view(shape)

        return cls(
            mask_mod=block_mask.mask_mod if block_mask.mask_mod is not None else _all_keys,
            score_mod=score_mod,
            scale=scale,
            dropout_p=dropout_p,
            seed=seed,
            batch=batch,
            heads=heads,
            q_len=q_len,
            kv_len=key.shape[-2],
            q_block=q_block,
            kv_block=kv_block,
            slots=slots,
            slot_valid=slot_valid,
            groups=tuple(_group(widths, batch * heads * q_block * kv_block)),
            shared=mask_batch == 1 and mask_heads == 1,
            mask_b=arange(mask_batch, 0),
            mask_h=arange(mask_heads, 1),
            b_idx=arange(batch, 0),
            h_idx=arange(heads, 1),
            offsets=torch.arange(kv_block, device=query.device),
        )

    def chunks(self) -> Iterator[Chunk]:
        for rows, width in self.groups:
            slots = self.slots[:, :, rows, :width]
            tokens = (slots[..., None] * self.kv_block + self.offsets).flatten(-2)
            valid = self.slot_valid[:, :, rows, :width, None].expand(*slots.shape, self.kv_block).flatten(-2)
            valid = valid & (tokens < self.kv_len)
            yield Chunk(rows, tokens.clamp(max=self.kv_len - 1), valid)

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

    def gather(self, x: Tensor, c: Chunk) -> Tensor:
        """Keys or values of chunk ``c``: (B, H, blocks, L, D)."""
        shape = (self.batch, self.heads, *c.tokens.shape[2:], x.shape[-1])
        if self.shared:  # one key list for every sample and head: a plain index_select
            return x.index_select(2, c.tokens.reshape(-1)).view(shape)
        flat = c.tokens.expand(self.batch, self.heads, -1, -1).reshape(self.batch, self.heads, -1, 1)
        return x.gather(2, flat.expand(-1, -1, -1, x.shape[-1])).view(shape)

    def scatter_add(self, target: Tensor, value: Tensor, c: Chunk) -> None:
        value = value.reshape(self.batch, self.heads, -1, value.shape[-1])
        if self.shared:
            target.index_add_(2, c.tokens.reshape(-1), value)
            return
        flat = c.tokens.expand(self.batch, self.heads, -1, -1).reshape(self.batch, self.heads, -1, 1)
        target.scatter_add_(2, flat.expand(-1, -1, -1, value.shape[-1]), value)

    def raw_scores(self, query: Tensor, keys: Tensor, c: Chunk) -> Tensor:
        return (self.rows(query, c.rows) * self.scale) @ keys.transpose(-1, -2)  # scaling q: N·D, not N·L, products

    def modified_scores(self, raw: Tensor, c: Chunk) -> tuple[Tensor, Tensor]:
        q_tok = torch.arange(c.rows.start * self.q_block, c.rows.stop * self.q_block, device=raw.device)
        q_in = (q_tok < self.q_len).view(1, 1, -1, self.q_block, 1)
        q_tok = q_tok.clamp(max=self.q_len - 1).view(1, 1, -1, self.q_block, 1)
        kv_tok = c.tokens[:, :, :, None, :]
        allowed = c.valid[:, :, :, None, :] & q_in & self.mask_mod(self.mask_b, self.mask_h, q_tok, kv_tok)
        scores = raw
        if self.score_mod is not None:
            # score_mod sees scores after scaling, as in flex: score = q·k * scale
            scores = self.score_mod(raw, self.b_idx, self.h_idx, q_tok, kv_tok)
        return scores, allowed

    def scores(self, query: Tensor, keys: Tensor, c: Chunk) -> tuple[Tensor, Tensor]:
        return self.modified_scores(self.raw_scores(query, keys, c), c)

    def keep_mask(self, like: Tensor, c: Chunk) -> Tensor | None:
        """Dropout's keep mask for chunk ``c``, drawn from a per-call seed so backward regenerates it exactly.

        Drawn as bytes (faster than floats on CPU): p is rounded to a multiple of 1/256 and the kept entries are
        scaled by 1/(1 − that p), so the expectation is exactly preserved.
        """
        if self.dropout_p == 0.0:
            return None
        gen = torch.Generator(device=like.device).manual_seed(self.seed + c.rows.start)
        noise = torch.empty(like.shape, dtype=torch.uint8, device=like.device).random_(generator=gen)
        return noise >= self.drop_threshold

    @property
    def drop_threshold(self) -> int:
        return round(self.dropout_p * 256)

    def dropout(self, x: Tensor, keep: Tensor | None) -> Tensor:
        if keep is None:
            return x
        keep_scale = 256 / (256 - self.drop_threshold) if self.drop_threshold < 256 else 0.0
        return x.masked_fill(~keep, 0.0) * keep_scale


def _group(widths: list[int], per_slot: int) -> Iterator[tuple[slice, int]]:
    """Greedy runs of query blocks whose widths stay within 1.5× of each other and within the chunk budget."""
    start = 0
    while start < len(widths):
        low = high = widths[start]
        stop = start + 1
        while stop < len(widths):
            lo, hi = min(low, widths[stop]), max(high, widths[stop])
            if hi > 1.5 * lo or hi * per_slot * (stop + 1 - start) > CHUNK_ELEMENTS:
                break
            low, high, stop = lo, hi, stop + 1
        yield slice(start, stop), high
        start = stop
