"""Tiled attention: a local pattern computed exactly, tile by tile, in ONE call of PyTorch's fused SDPA.

The structured CPU paths (:mod:`.band` for text, :mod:`.halo` for image grids, :mod:`.windows` for Swin's windows)
all run here. A pattern whose keys are local is cut into tiles of ``tq`` query slots; each tile gathers the ``K``
key slots its queries may need, and an additive mask ``M`` (0 where the pattern allows the pair, −inf where it
does not, plus a bias where the pattern has one) says exactly which:

    out[q] = Σ_j softmax_j(q · k_j · scale + M[t, q, j]) · v_j        over the K keys j of q's tile t

This is the pattern's attention exactly (the same softmax over the same keys) as long as every key a query may see
is among its tile's keys, and appears there once; the plan builders guarantee both, and their tests compare with
the dense rule. All tiles of all samples go into one SDPA call on (B·T, H, tq, D) queries against (B·T, H, K, D)
keys; one ``index_select`` builds the key tiles (and one the query tiles, unless the query slots are simply the
tokens in order), one brings every token's output back. *Global rows*, which see every key, are one small dense
SDPA whose rows replace the tiled ones. Everything is PyTorch autograd, so the same code trains.

Layout: the gathers read the tokens as (B·N, H, D), which for HF's q/k/v (views of a (B, N, H·D) projection) is
free, and SDPA's CPU kernel reads the gathered (B·T, K, H, D) tiles through a transposed view, with no copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GlobalRows:
    """Rows that attend every (real) key, computed densely: ``positions`` (B, G) of each sample's global tokens
    (padded with 0 where a sample has fewer), ``source``/``target`` the flat rows (into B·G, into B·N) of the real
    ones, ``key_mask`` the additive (B, 1, 1, N) key padding (None: every key is real)."""

    positions: Tensor
    source: Tensor
    target: Tensor
    key_mask: Tensor | None

    @property
    def count(self) -> int:
        return self.positions.shape[1]


@dataclass
class TilePlan:
    """Everything :func:`tiled_attention` needs for one geometry and batch; built by the plan builders.

    Index tensors are flat: into the batch's B·N tokens (key and query slots), into its B·T·tq query slots (each
    token's output). ``mask`` is additive, in the inputs' dtype. ``query_index=None``: slot i of a sample is its
    token i (tokens zero-padded to T·tq); ``output_index=None``: token i reads slot i. ``zero_rows``: a (B, N, 1, 1)
    0/1 factor for tokens that see no key at all (their output is 0, as FlexAttention gives), or None.
    """

    batch: int
    seq_len: int
    tiles: int
    tile_queries: int
    tile_keys: int
    key_index: Tensor
    mask: Tensor
    query_index: Tensor | None = None
    output_index: Tensor | None = None
    zero_rows: Tensor | None = None
    global_rows: GlobalRows | None = None
    # 2D plans: the grid cell of each tile's query slots (T, tq) and key slots (T, K), −1 for a global key
    cells: tuple[Tensor, Tensor] | None = None

    def mask_with(self, bias: Tensor) -> Tensor:
        """``mask`` plus a per-head ``bias`` of shape (T, H, tq, K) shared by the samples: (B·T, H, tq, K)."""
        shape = (self.batch, self.tiles, *bias.shape[1:])
        return (self.mask.view(self.batch, self.tiles, 1, *self.mask.shape[2:]) + bias).reshape(-1, *shape[2:])


def build_plan(
    allowed: Tensor,
    key_tokens: Tensor,
    seq_len: int,
    dtype: torch.dtype,
    *,
    query_tokens: Tensor | None = None,
    output_slots: Tensor | None = None,
    global_positions: Tensor | None = None,
    global_valid: Tensor | None = None,
    key_is_real: Tensor | None = None,
) -> TilePlan:
    """A :class:`TilePlan` from per-sample tables (the plan builders' common tail).

    ``allowed`` (B, T, tq, K) bool: which of the tile's keys each query slot sees; ``key_tokens`` (B, T, K) the
    token of each key slot; ``query_tokens`` (B, T, tq) the token of each query slot (None: slots are the tokens
    in order); ``output_slots`` (B, N) the slot (in 0..T·tq) each token reads (None: its own). Global rows:
    ``global_positions`` (B, G) with ``global_valid`` (B, G); ``key_is_real`` (B, N) masks their padded keys.
    """
    batch, tiles, tile_queries, tile_keys = allowed.shape
    device = allowed.device
    # a slot row with no allowed key (a padding slot, a token far from every real key) would give SDPA 0/0 = NaN,
    # which poisons the backward even where the output is discarded: let it see key slot 0 and zero it afterwards
    empty = ~allowed.any(-1)  # (B, T, tq)
    if bool(empty.any()):
        allowed = allowed.clone()
        allowed[..., 0] |= empty
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    mask = mask.view(batch * tiles, 1, tile_queries, tile_keys)

    samples = torch.arange(batch, device=device).view(batch, 1)
    flat = lambda tokens: (tokens.reshape(batch, -1) + samples * seq_len).reshape(-1)
    slots = tiles * tile_queries
    query_index = None if query_tokens is None else flat(query_tokens)
    output_index = None if output_slots is None else (output_slots + samples * slots).reshape(-1)

    global_rows = None
    token_empty = empty.reshape(batch, slots)
    token_empty = token_empty[:, :seq_len] if output_slots is None else token_empty.gather(1, output_slots)
    if global_positions is not None and global_positions.shape[1] > 0:
        count = global_positions.shape[1]
        valid = global_valid.reshape(-1)
        source = torch.arange(batch * count, device=device)[valid]
        target = (global_positions + samples * seq_len).reshape(-1)[valid]
        token_empty = token_empty.reshape(-1).index_fill(0, target, False).view(batch, seq_len)  # rows recomputed
        key_mask = None
        if key_is_real is not None and not bool(key_is_real.all()):
            key_mask = torch.zeros(batch, 1, 1, seq_len, dtype=dtype, device=device)
            key_mask.masked_fill_(~key_is_real.view(batch, 1, 1, seq_len), float("-inf"))
        global_rows = GlobalRows(global_positions, source, target, key_mask)
    zero_rows = (~token_empty).to(dtype).view(batch, seq_len, 1, 1) if bool(token_empty.any()) else None

    return TilePlan(
        batch=batch,
        seq_len=seq_len,
        tiles=tiles,
        tile_queries=tile_queries,
        tile_keys=tile_keys,
        key_index=flat(key_tokens),
        mask=mask,
        query_index=query_index,
        output_index=output_index,
        zero_rows=zero_rows,
        global_rows=global_rows,
    )


def _tokens(x: Tensor) -> Tensor:
    """(B, H, N, D) → (B·N, H, D): a view for HF's q/k/v, which are (B, N, H, D) in memory."""
    batch, heads, n, dim = x.shape
    return x.transpose(1, 2).reshape(batch * n, heads, dim)


def tiled_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    plan: TilePlan,
    scale: float | None = None,
    dropout_p: float = 0.0,
    bias: Tensor | None = None,
    global_qkv: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Attention of (B, H, N, D) tensors over ``plan``'s tiles (see the module docstring); returns (B, H, N, D).

    ``bias`` (T, H, tq, K), optional: an additive per-head score bias on the tiles' pairs (a relative position
    bias gathered from a trainable table keeps its gradient). ``dropout_p``: attention-probability dropout.
    ``global_qkv``: the q/k/v the global rows are computed from, when they differ from the local ones (HF
    Longformer's separate global projections).
    """
    batch, heads, n, dim = query.shape
    if batch != plan.batch or n != plan.seq_len:
        raise ValueError(
            f"inputs are (B={batch}, N={n}); the tile plan was built for (B={plan.batch}, N={plan.seq_len})"
        )
    value_dim = value.shape[-1]
    tiles, tq, tk = plan.tiles, plan.tile_queries, plan.tile_keys
    keys = _tokens(key).index_select(0, plan.key_index).view(batch * tiles, tk, heads, dim).transpose(1, 2)
    values = _tokens(value).index_select(0, plan.key_index).view(batch * tiles, tk, heads, value_dim).transpose(1, 2)
    if plan.query_index is None:  # slots are the tokens in order: a view of the (zero-padded) queries
        q = query.transpose(1, 2)
        if tiles * tq != n:
            q = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, tiles * tq - n))
        queries = q.reshape(batch * tiles, tq, heads, dim).transpose(1, 2)
    else:
        queries = _tokens(query).index_select(0, plan.query_index).view(batch * tiles, tq, heads, dim).transpose(1, 2)
    mask = plan.mask if bias is None else plan.mask_with(bias)
    out = torch.nn.functional.scaled_dot_product_attention(
        queries, keys, values, attn_mask=mask, dropout_p=dropout_p, scale=scale
    )  # (B·T, H, tq, Dv)
    out = out.transpose(1, 2).reshape(batch * tiles * tq, heads, value_dim)
    if plan.output_index is None:
        out = out.view(batch, tiles * tq, heads, value_dim)[:, :n]
    else:
        out = out.index_select(0, plan.output_index).view(batch, n, heads, value_dim)
    if plan.zero_rows is not None:
        out = out * plan.zero_rows
    rows = plan.global_rows
    if rows is not None:
        query, key, value = global_qkv or (query, key, value)
        flat_positions = (rows.positions + torch.arange(batch, device=query.device).view(-1, 1) * n).reshape(-1)
        global_queries = _tokens(query).index_select(0, flat_positions).view(batch, rows.count, heads, dim)
        global_out = torch.nn.functional.scaled_dot_product_attention(
            global_queries.transpose(1, 2), key, value, attn_mask=rows.key_mask, dropout_p=dropout_p, scale=scale
        )  # (B, H, G, Dv)
        global_out = global_out.transpose(1, 2).reshape(batch * rows.count, heads, value_dim)
        out = out.reshape(batch * n, heads, value_dim).index_copy(
            0, rows.target, global_out.index_select(0, rows.source)
        )
        out = out.view(batch, n, heads, value_dim)
    return out.transpose(1, 2)
