"""Tiled attention: a local pattern computed exactly, tile by tile, with PyTorch's fused SDPA kernel.

The structured CPU paths (:mod:`.band` for text, :mod:`.halo` for image grids, :mod:`.windows` for Swin's windows)
all run here. A pattern whose keys are local is cut into tiles of ``tq`` query slots; each tile gathers the ``K``
key slots its queries may need, and a mask ``M`` (0 where the pattern allows the pair, −inf where it does not, plus
a bias where the pattern has one) says exactly which:

    out[q] = Σ_j softmax_j(q · k_j · scale + M[t, q, j]) · v_j        over the K keys j of q's tile t

This is the pattern's attention exactly (the same softmax over the same keys) as long as every key a query may see
is among its tile's keys, and appears there once; the plan builders guarantee both, and their tests compare with
the dense rule. *Global rows*, which see every key, are one small dense SDPA whose rows replace the tiled ones.

*Strided runs.* Where consecutive tiles' slots are evenly spaced tokens of one sample (a band's interior: tile
``t`` holds queries ``t·tq …`` and keys ``t·tq − w/2 …``), the kernel reads the tiles as strided views of q/k/v
(overlapping for the keys) instead of gathered copies, with the run's one mask broadcast over its tiles; the plan
finds these runs itself (:class:`StridedRun`), including the tiles at a band's ends, whose windows are shifted
inward (their keys stay: a key step of 0) and whose rules differ tile by tile. Other tiles (padded rows, global key
columns, 2D halos) are gathered.

*Global keys apart.* Where every sample has the same global tokens (HF Longformer's [CLS]), the tiles leave the global
keys out (their band columns masked), so they stay strided views; the global keys are one fused-kernel call of every
query against them (a single global key needs none: its output is its value, ``g`` its score), and the two parts
are merged exactly by their log-sum-exps ``b`` and ``g``: with ``L = log(e^b + e^g)``, a row's output is
``e^(b−L)·out_tiles + e^(g−L)·out_global``. The backward gives each part
its share from the joint output and ``L`` (flash attention's split-key backward). So a layer is a handful of large
calls (each run's chunks, the global keys, the global rows) instead of one gathered chunk per few tiles.

Where the memory goes. The tiles run in chunks (:meth:`TilePlan.chunk_elements`): a chunk gathers its queries,
keys and values into buffers that every chunk reuses (head by head, or token rows; nothing for a strided run),
takes its additive mask from the plan's per-pattern masks (built once per dtype), calls the fused kernel and writes
its rows into the output. So at any time one chunk's copies live, not the whole plan's (the key and value copies of
all tiles were 6 × the size of the keys at window 512), and a forward's peak is about the output plus one chunk,
which the feed-forward's activations exceed (:data:`MIN_CHUNK_ELEMENTS`).
Training keeps what flash attention keeps: the inputs, the output and the kernel's log-sum-exp per query slot
(B·T·H·tq floats); the backward re-gathers each chunk, calls the kernel's own backward, which recomputes the
probabilities from the log-sum-exp, and adds the chunk's gradients into the token rows. A plan holds index tables
(int64, a few entries per token), ``allowed`` (one byte per score of the pattern's tiles) and, once used, its
patterns' additive masks. Dropout and a trainable bias (whose gradient the kernel's backward does not give) run the
same chunks through autograd instead, which keeps each chunk's copies for the backward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import compat

# A chunk of tiles (one kernel call) gathers a key copy of at most as many elements (heads × key slots × head dim)
# as the attention's output has, or for a strided run writes at most that much output (at least
# MIN_CHUNK_ELEMENTS). Its copies (keys, values, queries, output: at most about 2.5 × that) then stay below what the
# layer's feed-forward holds anyway (its intermediate activations, 4 × the hidden size per token, before and after
# the activation), so a patched model's peak memory is its feed-forward's, as sdpa's is; within that bound the chunks
# are as few and as large as they can be, because on a shared CPU every call is a parallel region that waits for
# every thread (docs/benchmarks.md, "Contention"; the measurements: model_cards/benchmark/contention/).
MIN_CHUNK_ELEMENTS = 1 << 16
# A plan keeps its patterns' additive masks (0 / −inf, per dtype) up to this many entries; past it each chunk builds
# its own from the boolean patterns
MASK_CACHE_ELEMENTS = 1 << 22
# A lone tile is gathered with its neighbours into one kernel call rather than run as a call of its own
MIN_RUN_TILES = 2
# The backward takes a strided run's tiles together, about this many queries at a time (see backward_chunks;
# where it measured fastest: docs/crossover.md)
BACKWARD_TILE_QUERIES = 128


@dataclass(frozen=True)
class StridedRun:
    """Flat tiles ``[first, end)`` of sample ``sample`` read as strided views: slot ``i`` of the run's ``r``-th tile
    holds query token ``query_start + (r·tq + i)·step`` and key token ``key_start + r·key_step + i·step`` (positions
    in the sample; keys overlap from tile to tile, or are the same keys where ``key_step`` is 0: the tiles at a band's
    ends, whose windows are shifted inward), every slot read by its own query token (or by a global row, whose output
    replaces it), no row without keys. Every tile sees its keys as ``pattern`` says, or, where ``pattern`` is −1, as
    its own rule (pattern and key columns) says."""

    first: int
    end: int
    sample: int
    query_start: int
    key_start: int
    step: int
    pattern: int
    key_step: int = -1  # −1: tq·step, keys advancing with the queries

    def key_advance(self, tile_queries: int) -> int:
        """Tokens the keys advance from one tile of the run to the next."""
        return tile_queries * self.step if self.key_step < 0 else self.key_step

    def merges(self, tile_queries: int) -> bool:
        """Whether consecutive tiles can be taken together as one (see :meth:`TilePlan.backward_chunks`)."""
        return self.pattern >= 0 and self.key_advance(tile_queries) == tile_queries * self.step


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
    """Everything :func:`tiled_attention` needs for one geometry and batch; built by :func:`build_plan`.

    Index tensors are flat, over the batch: ``key_index`` (B·T·K) and ``query_index`` (B·T·tq) the token (into the
    B·N tokens) of each key and query slot; ``slot_token`` (B·T·tq) the token whose output each query slot holds,
    −1 for a slot no token reads (padding, a duplicate, a global token's row, a row that sees no key: such a token's
    output is 0, as FlexAttention gives); ``extra_tokens``/``extra_slots``: further tokens that read a slot some
    token already holds (NATTEN's padded tokens read their sample's last real token), or None.

    Which of its tile's keys each slot sees, kept small: tile ``f`` (flat) follows pattern ``tile_pattern[f]`` of
    ``allowed`` (U, tq, K) bool, tiles of equal pattern sharing one (a shape-only plan keeps one per tile, however
    large the batch; the band keeps a handful), and sees only the key columns ``key_seen[f]`` (B·T, K) where
    that is not None (padding, per-sample globals); ``empty`` (B·T, tq): rows that see no key, let see key slot 0
    (SDPA's 0/0 would poison the backward; no token reads them), or None.
    """

    batch: int
    seq_len: int
    tiles: int
    tile_queries: int
    tile_keys: int
    key_index: Tensor
    query_index: Tensor
    slot_token: Tensor
    allowed: Tensor
    tile_pattern: Tensor
    key_seen: Tensor | None = None
    empty: Tensor | None = None
    extra_tokens: Tensor | None = None
    extra_slots: Tensor | None = None
    unwritten: Tensor | None = None
    global_rows: GlobalRows | None = None
    # 2D plans: the grid cell of each tile's query slots (T, tq) and key slots (T, K), −1 for a global key
    cells: tuple[Tensor, Tensor] | None = None
    runs: tuple[StridedRun, ...] = ()
    # tile t of every sample follows pattern t (the masks of a chunk of one sample's tiles are a slice of the table)
    tiles_are_patterns: bool = False
    # (B, G) positions of global keys that the tiles leave out (see "Global keys apart" in the module docstring), or
    # None; with ``token_slot`` (B·N) the slot each token reads
    global_keys: Tensor | None = None
    token_slot: Tensor | None = None
    _masks: dict = field(default_factory=dict, repr=False, compare=False)  # built on first use: see _derived

    def chunk_elements(self, heads: int, dim: int) -> int:
        """The most elements a chunk's key copy (a strided run chunk's output) holds: the output's (see
        :data:`MIN_CHUNK_ELEMENTS`)."""
        return max(MIN_CHUNK_ELEMENTS, self.batch * self.seq_len * heads * dim)

    def chunks(self, heads: int, dim: int, tiles_per_chunk: int | None = None):
        """``(first, end, run)``: the flat tiles (over B·T) one kernel call computes, in order, and the strided run
        they belong to (None: gathered tiles). A gathered chunk's key copy, or a run chunk's output, holds about
        :meth:`chunk_elements` elements."""
        budget = self.chunk_elements(heads, dim)
        gathered = tiles_per_chunk or max(1, budget // (self.tile_keys * heads * dim))
        strided = tiles_per_chunk or max(1, budget // (self.tile_queries * heads * dim))
        out, done = [], 0
        for run in (*self.runs, None):
            stop = self.batch * self.tiles if run is None else run.first
            out += [(first, min(first + gathered, stop), None) for first in range(done, stop, gathered)]
            if run is not None:
                out += [(first, min(first + strided, run.end), run) for first in range(run.first, run.end, strided)]
                done = run.end
        return out

    @property
    def slot_target(self) -> Tensor:
        """(B·T·tq): the output row each slot is written to, the scratch row B·N for a slot no token reads."""
        return self._derived(
            ("slot_target",), lambda: self.slot_token.where(self.slot_token >= 0, self.batch * self.seq_len)
        )

    def _derived(self, key: tuple, build, bound: int | None = None):
        """What ``build()`` returns, built once per plan and ``key``; tensors made under ``torch.inference_mode()``
        kept apart (autograd may not save them for a later training step). With ``bound``: kept only while the
        tensors kept under a bound hold at most ``bound`` elements in all; past it, built again at each call."""
        key = (*key, torch.is_inference_mode_enabled())
        if key in self._masks:
            return self._masks[key]
        value = build()
        if bound is None:
            self._masks[key] = value
        else:
            kept = self._masks.get("bounded elements", 0) + value.numel()
            if kept <= bound:
                self._masks["bounded elements"], self._masks[key] = kept, value
        return value

    def token_lse_index(self, heads: int) -> Tensor:
        """(B, H, N): where each token's log-sum-exp lies in the flat (B·T, H, tq) slot log-sum-exps."""

        def build() -> Tensor:
            tq = self.tile_queries
            slot = self.token_slot.view(self.batch, 1, self.seq_len)
            head = torch.arange(heads, device=slot.device).view(1, heads, 1)
            return slot // tq * (heads * tq) + head * tq + slot % tq

        return self._derived(("token_lse", heads), build)

    def global_key_rows(self) -> Tensor:
        """(B·G,): the global keys' rows into B·N."""
        return global_row_positions(GlobalRows(self.global_keys, None, None, None), self.seq_len)

    def extra_readers(self, first: int, end: int) -> tuple[Tensor, Tensor] | None:
        """The extra readers of the slots of flat tiles ``[first, end)``: their tokens and chunk-local slots."""
        if self.extra_tokens is None:
            return None
        low, high = first * self.tile_queries, end * self.tile_queries
        inside = (self.extra_slots >= low) & (self.extra_slots < high)
        return self.extra_tokens[inside], self.extra_slots[inside] - low

    def rule(self, first: int, end: int) -> Tensor:
        """Which keys the slots of flat tiles ``[first, end)`` see: (tiles, tq, K) bool."""
        return _rule(self.allowed, self.tile_pattern, self.key_seen, self.empty, first, end)

    def backward_chunks(self, heads: int, dim: int, tiles_per_chunk: int | None = None, merge_runs: bool = True):
        """``(first, end, run, merge)``: the forward's chunks, except that a strided run's tiles are taken
        ``merge`` at a time as one tile of ``merge·tq`` queries (about :data:`BACKWARD_TILE_QUERIES`): the backward
        returns each tile's own key gradients (K per tile, summed into the tokens), which small tiles would
        multiply (K / tq = 17 at window 512 with tiles of 32), while the forward is fastest on small tiles."""
        out = []
        for first, end, run in self.chunks(heads, dim, tiles_per_chunk):
            if run is None or self.extra_tokens is not None or tiles_per_chunk or not merge_runs:
                out.append((first, end, run, 1))
            elif not run.merges(self.tile_queries):
                out.append((first, end, run, 1))
            elif not out or out[-1][2] is not run:  # the run's first chunk: re-chunk the whole run
                merge = max(1, min(BACKWARD_TILE_QUERIES // self.tile_queries, run.end - run.first))
                merged_keys = self.tile_keys + (merge - 1) * self.tile_queries
                budget = self.chunk_elements(heads, dim)
                step = merge * max(1, budget // (merged_keys * heads * dim))
                whole = run.first + (run.end - run.first) // merge * merge
                out += [(f, min(f + step, whole), run, merge) for f in range(run.first, whole, step)]
                out += [(whole, run.end, run, 1)] if whole < run.end else []
        return out

    def merged_mask(self, pattern: int, merge: int, dtype: torch.dtype) -> Tensor:
        """(1, 1, merge·tq, K + (merge − 1)·tq) additive mask of ``merge`` consecutive tiles of a strided run of
        ``pattern`` taken as one: sub-tile ``i``'s rows see its own keys (columns ``i·tq …``) as the pattern says,
        nothing else (every key a query may see is in its own tile)."""

        def build() -> Tensor:
            tq, tk, device = self.tile_queries, self.tile_keys, self.allowed.device
            mask = torch.full((merge * tq, tk + (merge - 1) * tq), float("-inf"), dtype=dtype, device=device)
            own = torch.zeros(tq, tk, dtype=dtype, device=device).masked_fill_(~self.allowed[pattern], float("-inf"))
            for i in range(merge):
                mask[i * tq : (i + 1) * tq, i * tq : i * tq + tk] = own
            return mask[None, None]

        return self._derived(("merged", pattern, merge, dtype), build)

    def pattern_masks(self, dtype: torch.dtype) -> Tensor | None:
        """The additive masks (U, tq, K) of the patterns (0 where ``allowed``, −inf elsewhere), built once per dtype;
        None past :data:`MASK_CACHE_ELEMENTS`."""

        def build() -> Tensor | None:
            if self.allowed.numel() > MASK_CACHE_ELEMENTS:
                return None
            table = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
            return table.masked_fill_(~self.allowed, float("-inf"))

        return self._derived(("patterns", dtype), build)

    def mask(
        self, first: int, end: int, dtype: torch.dtype, bias: Tensor | None = None, run: StridedRun | None = None
    ) -> Tensor:
        """The additive mask of flat tiles ``[first, end)``: (tiles, 1, tq, K), or (tiles, H, tq, K) with a per-head
        ``bias`` (T, H, tq, K) shared by the samples; (1, 1, tq, K) for the tiles of a strided ``run`` (one
        pattern, nothing else masked)."""
        table = self.pattern_masks(dtype)
        if run is not None and run.pattern >= 0 and bias is None and table is not None:
            return table[run.pattern][None, None]
        mask = self._chunk_mask(first, end, dtype, table)
        if bias is None:
            return mask
        tiles = torch.arange(first, end, device=bias.device) % self.tiles
        return mask + bias.index_select(0, tiles).to(dtype)

    def _chunk_mask(self, first: int, end: int, dtype: torch.dtype, table: Tensor | None) -> Tensor:
        """:meth:`mask` without a bias: a view of the patterns' table where the chunk's tiles are its consecutive
        patterns, else a copy, kept with the plan (every layer's call asks for the same chunks) while the kept copies
        hold at most :data:`MASK_CACHE_ELEMENTS` entries in all (and not where the table itself is past that)."""
        plain = self.key_seen is None and self.empty is None
        if table is not None and plain and self._patterns_in_order(first, end):
            return table[first % self.tiles : (end - 1) % self.tiles + 1, None]
        build = functools.partial(self._build_chunk_mask, first, end, dtype, table)
        if table is None:
            return build()
        return self._derived(("chunk", first, end, dtype), build, bound=MASK_CACHE_ELEMENTS)

    def _patterns_in_order(self, first: int, end: int) -> bool:
        """Whether flat tiles ``[first, end)`` follow the table's patterns ``first % T …`` in order (one sample's)."""
        return self.tiles_are_patterns and first // self.tiles == (end - 1) // self.tiles

    def _build_chunk_mask(self, first: int, end: int, dtype: torch.dtype, table: Tensor | None) -> Tensor:
        if table is None:
            rule = self.rule(first, end)
            mask = torch.zeros(rule.shape, dtype=dtype, device=rule.device).masked_fill_(~rule, float("-inf"))
        elif self._patterns_in_order(first, end):
            mask = table[first % self.tiles : (end - 1) % self.tiles + 1].clone()
        else:
            mask = table.index_select(0, self.tile_pattern[first:end])
        if table is not None:
            if self.key_seen is not None:
                mask.masked_fill_(~self.key_seen[first:end, None, :], float("-inf"))
            if self.empty is not None:  # rows that see no key see key slot 0 (see build_plan)
                mask[..., 0].masked_fill_(self.empty[first:end], 0.0)
        return mask[:, None]


def with_prefix_globals(allowed: Tensor, key_tokens: Tensor, num_global: int, batch: int):
    """Append the ``num_global`` prefix tokens (ViT's CLS, DeiT's distillation token) to every tile's keys, seen by
    every slot: ``allowed`` (T, tq, K) and ``key_tokens`` (T, K) grown by ``num_global`` columns, and the global
    rows for :func:`build_plan` (``global_positions``, ``global_valid``; None without globals)."""
    if not num_global:
        return allowed, key_tokens, None, None
    tiles, device = key_tokens.shape[0], key_tokens.device
    globals_ = torch.arange(num_global, device=device)
    key_tokens = torch.cat([key_tokens, globals_.expand(tiles, num_global)], 1)
    allowed = torch.cat([allowed, allowed.new_ones(tiles, allowed.shape[1], num_global)], 2)
    valid = torch.ones(batch, num_global, dtype=torch.bool, device=device)
    return allowed, key_tokens, globals_.expand(batch, num_global), valid


def _rule(allowed: Tensor, tile_pattern: Tensor, key_seen, empty, first: int, end: int) -> Tensor:
    rows = allowed.index_select(0, tile_pattern[first:end])
    if key_seen is not None:
        rows &= key_seen[first:end, None, :]
    if empty is not None:
        rows[..., 0] |= empty[first:end]
    return rows


def build_plan(
    allowed: Tensor,
    key_tokens: Tensor,
    seq_len: int,
    dtype: torch.dtype,
    *,
    tile_pattern: Tensor | None = None,
    key_seen: Tensor | None = None,
    query_tokens: Tensor | None = None,
    output_slots: Tensor | None = None,
    global_positions: Tensor | None = None,
    global_valid: Tensor | None = None,
    key_is_real: Tensor | None = None,
    global_keys: Tensor | None = None,
) -> TilePlan:
    """A :class:`TilePlan` from per-sample tables (the plan builders' common tail).

    ``allowed`` (B, T, tq, K) bool: which of the tile's keys each query slot sees (a view expanded over the batch is
    kept once); or (U, tq, K) patterns with ``tile_pattern`` (B, T) the pattern of each tile. ``key_seen``
    (B, T, K) or None: the key columns each tile may see at all. ``key_tokens`` (B, T, K) the token of each key
    slot; ``query_tokens`` (B, T, tq) the token of each query slot (None: slots are the tokens in order, slots past
    the last token repeat it); ``output_slots`` (B, N) the slot (in 0..T·tq) each token reads (None: its own).
    Global rows: ``global_positions`` (B, G) with ``global_valid`` (B, G); ``key_is_real`` (B, N) masks their padded
    keys (additive, in ``dtype``). ``global_keys`` (B, G): global keys every query sees, left out of the tiles (see
    "Global keys apart"): a row without a tile key then still sees them.
    """
    device = allowed.device
    if tile_pattern is None:
        batch, tiles = allowed.shape[:2]
        if allowed.stride(0) == 0 or batch == 1:  # the same for every sample: kept once
            allowed, tile_pattern = allowed[0], torch.arange(tiles, device=device).expand(batch, tiles)
        else:
            allowed = allowed.reshape(batch * tiles, *allowed.shape[2:])
            tile_pattern = torch.arange(batch * tiles, device=device).view(batch, tiles)
    batch, tiles = tile_pattern.shape
    tile_queries, tile_keys = allowed.shape[1:]
    n, slots = seq_len, tiles * tile_queries
    tile_pattern = tile_pattern.reshape(-1)
    key_seen = None if key_seen is None else key_seen.reshape(batch * tiles, tile_keys)
    allowed = allowed.contiguous()
    # a slot row with no allowed key (a padding slot, a token far from every real key) would give SDPA 0/0 = NaN,
    # which poisons the backward even where the output is discarded: let it see key slot 0; no token reads it
    step = max(1, (1 << 22) // (tile_queries * tile_keys))  # the rows in pieces of ≤ 4 MB
    empty = torch.cat(
        [~_rule(allowed, tile_pattern, key_seen, None, f, f + step).any(-1) for f in range(0, batch * tiles, step)]
    )  # (B·T, tq)
    samples = torch.arange(batch, device=device).view(batch, 1)
    if query_tokens is None:
        query_tokens = torch.arange(slots, device=device).clamp(max=n - 1).expand(batch, slots)
    if output_slots is None:
        output_slots = torch.arange(n, device=device).expand(batch, n)
    flat = lambda tokens: (tokens.reshape(batch, -1) + samples * n).reshape(-1)

    # which tokens take their slot's row: not one that sees no key (output 0), not a global token (its own row)
    written = ~empty.reshape(batch, slots).gather(1, output_slots)  # (B, N)
    if global_keys is not None:  # every token sees the global keys
        written = torch.ones_like(written)
    global_rows = None
    if global_positions is not None and global_positions.shape[1] > 0:
        count = global_positions.shape[1]
        valid = global_valid.reshape(-1)
        source = torch.arange(batch * count, device=device)[valid]
        target = flat(global_positions)[valid]
        written = written.reshape(-1).index_fill(0, target, False).view(batch, n)
        key_mask = None
        if key_is_real is not None and not bool(key_is_real.all()):
            key_mask = torch.zeros(batch, 1, 1, n, dtype=dtype, device=device)
            key_mask.masked_fill_(~key_is_real.view(batch, 1, 1, n), float("-inf"))
        global_rows = GlobalRows(global_positions, source, target, key_mask)
    written = written.reshape(-1)
    slot_token = torch.full((batch * slots,), -1, dtype=torch.long, device=device)
    token_slot = (output_slots + samples * slots).reshape(-1)
    tokens = torch.arange(batch * n, device=device)
    slot_token[token_slot[written]] = tokens[written]
    extra = written & (slot_token[token_slot] != tokens)  # a token whose slot another token holds
    extra_tokens = extra_slots = None
    if bool(extra.any()):
        extra_tokens, extra_slots = tokens[extra], token_slot[extra]

    key_index, query_index = flat(key_tokens), flat(query_tokens)
    overwritten = None
    if global_keys is not None and global_rows is not None:
        overwritten = torch.zeros(batch * n, dtype=torch.bool, device=device).index_fill_(0, global_rows.target, True)
    runs = _strided_runs(
        query_index, key_index, slot_token, allowed, tile_pattern, key_seen, empty, tile_queries, n, overwritten
    )
    return TilePlan(
        batch=batch,
        seq_len=n,
        tiles=tiles,
        tile_queries=tile_queries,
        tile_keys=tile_keys,
        key_index=key_index,
        query_index=query_index,
        slot_token=slot_token,
        allowed=allowed,
        tile_pattern=tile_pattern,
        key_seen=key_seen,
        runs=runs,
        tiles_are_patterns=allowed.shape[0] == tiles
        and torch.equal(tile_pattern.view(batch, tiles), torch.arange(tiles, device=device).expand(batch, tiles)),
        empty=empty if bool(empty.any()) else None,
        extra_tokens=extra_tokens,
        extra_slots=extra_slots,
        unwritten=None if bool(written.all()) else tokens[~written],
        global_rows=global_rows,
        global_keys=global_keys,
        token_slot=token_slot,
    )


def _strided_runs(
    query_index: Tensor,
    key_index: Tensor,
    slot_token: Tensor,
    allowed: Tensor,
    tile_pattern: Tensor,
    key_seen: Tensor | None,
    empty: Tensor,
    tile_queries: int,
    seq_len: int,
    overwritten: Tensor | None = None,
) -> tuple[StridedRun, ...]:
    """The maximal runs of consecutive flat tiles that :class:`StridedRun` describes (see the module docstring)."""
    tq, n = tile_queries, seq_len
    queries, keys = query_index.view(-1, tq), key_index.view(query_index.shape[0] // tq, -1)
    if tq < 2 or keys.shape[1] < 2:
        return ()
    step = queries[:, 1] - queries[:, 0]
    spaced = (queries == queries[:, :1] + step[:, None] * torch.arange(tq, device=step.device)).all(1)
    spaced &= (keys == keys[:, :1] + step[:, None] * torch.arange(keys.shape[1], device=step.device)).all(1)
    sample = queries[:, 0] // n
    ok = spaced & (step > 0) & (keys[:, 0] >= sample * n) & (keys[:, -1] < (sample + 1) * n)
    read = slot_token.view(-1, tq) == queries
    if overwritten is not None:  # a slot whose token's row a global row replaces (plans with global keys apart)
        read |= (slot_token.view(-1, tq) < 0) & overwritten[queries]
    ok &= (queries[:, -1] < (sample + 1) * n) & read.all(1) & ~empty.any(1)
    # tile f + 1 continues tile f's run: both fit, same sample and step, its queries move by tq·step and its keys
    # by as many tokens as the run's keys move (tq·step, or 0 where the windows are shifted inward at an end)
    follows = ok[1:] & ok[:-1] & (sample[1:] == sample[:-1]) & (step[1:] == step[:-1])
    follows &= queries[1:, 0] - queries[:-1, 0] == tq * step[:-1]
    key_moves = keys[1:, 0] - keys[:-1, 0]
    follows &= (key_moves == tq * step[:-1]) | (key_moves == 0)
    # the tiles' rules: one pattern (or equal patterns, plans kept per tile) with every key column seen, or per tile
    uniform = torch.ones_like(follows) if key_seen is None else key_seen[1:].all(1) & key_seen[:-1].all(1)
    uniform &= tile_pattern[1:] == tile_pattern[:-1]
    differ = (follows & (tile_pattern[1:] != tile_pattern[:-1])).nonzero().flatten()
    piece = max(1, (1 << 22) // allowed[0].numel())
    for at in differ.split(piece):
        left, right = allowed.index_select(0, tile_pattern[at]), allowed.index_select(0, tile_pattern[at + 1])
        equal = (left == right).flatten(1).all(1)
        uniform[at] = equal if key_seen is None else equal & key_seen[at].all(1) & key_seen[at + 1].all(1)
    ok, follows, uniform, key_moves = ok.tolist(), follows.tolist(), uniform.tolist(), key_moves.tolist()
    runs, first = [], 0
    while first < len(ok):
        if not ok[first]:
            first += 1
            continue
        end, moves, same = first + 1, None, True
        while end < len(ok) and follows[end - 1] and moves in (None, key_moves[end - 1]):
            moves, same = key_moves[end - 1], same and uniform[end - 1]
            end += 1
        if end - first >= MIN_RUN_TILES:
            b = int(sample[first])
            query_start, key_start = int(queries[first, 0]) - b * n, int(keys[first, 0]) - b * n
            if key_seen is not None and not bool(key_seen[first].all()):
                same = False
            pattern = int(tile_pattern[first]) if same else -1
            runs.append(StridedRun(first, end, b, query_start, key_start, int(step[first]), pattern, moves))
        first = end
    return tuple(runs)


def _run_view(
    x: Tensor, run: StridedRun, first: int, end: int, slots: int, start: int, advance: int, merge: int = 1
) -> Tensor:
    """((end − first) / merge, H, slots, D) strided view of (B, H, N, D) ``x`` (no copy): the tiles ``[first, end)``
    of ``run``, ``merge`` consecutive tiles as one, whose slot ``i`` of its ``r``-th tile is token
    ``start + (first − run.first + r·merge)·advance + i·step`` (``advance``: tokens from one tile to the next)."""
    stride_b, stride_h, stride_n, stride_d = x.stride()
    offset = x.storage_offset() + run.sample * stride_b + (start + (first - run.first) * advance) * stride_n
    size = ((end - first) // merge, x.shape[1], slots, x.shape[3])
    return x.as_strided(size, (merge * advance * stride_n, stride_h, run.step * stride_n, stride_d), offset)


def _token_rows(x: Tensor) -> Tensor | None:
    """(B, H, N, D) → its (B·N, H, D) token rows as a view (HF's q/k/v are (B, N, H, D) in memory; any tensor with
    B = 1), or None where that would need a copy."""
    tokens = x.transpose(1, 2)
    if tokens.shape[0] == 1 or tokens.stride(0) == tokens.shape[1] * tokens.stride(1):
        return tokens.flatten(0, 1)
    return None


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (into B·N) of (B, H, N, D) ``x``: (len(index), H, D), copying only those rows."""
    rows = _token_rows(x)
    if rows is not None:
        return rows.index_select(0, index)
    n = x.shape[2]
    return x.transpose(1, 2)[index // n, index % n]


def _gather_tiles(x: Tensor, index: Tensor, tiles: int, out: Tensor | None = None) -> Tensor:
    """Rows ``index`` (into B·N) of (B, H, N, D) ``x`` as (tiles, H, S, D), copying only those rows: head by head
    where each head's tokens are contiguous (head-major inputs: gathering whole token rows there reads H scattered
    pieces per row, ~50× slower), else token rows. ``out``: a flat buffer to gather into (at least as large)."""
    batch, heads, n, dim = x.shape
    size = index.shape[0] * heads * dim
    buffer = lambda *shape: None if out is None else out[:size].view(shape)
    if x.stride(3) == 1 and x.stride(2) == dim and heads > 1 and (batch == 1 or x.is_contiguous()):
        if batch == 1:
            rows = torch.index_select(x[0], 1, index, out=buffer(heads, index.shape[0], dim))  # (H, L, D)
        else:
            heads_at = torch.arange(heads, device=x.device)[:, None] * n
            per_head = (index // n * (heads * n) + index % n)[None] + heads_at  # (H, L) rows of x.view(-1, D)
            rows = torch.index_select(x.view(-1, dim), 0, per_head.flatten(), out=buffer(heads * index.shape[0], dim))
        return rows.view(heads, tiles, -1, dim).transpose(0, 1)
    token_rows = _token_rows(x)
    if token_rows is not None:
        return _tiles(torch.index_select(token_rows, 0, index, out=buffer(index.shape[0], heads, dim)), tiles)
    return _tiles(_gather(x, index), tiles)


def _tiles(rows: Tensor, tiles: int) -> Tensor:
    """(tiles·S, H, D) gathered rows → (tiles, H, S, D), the kernel's layout (a view)."""
    return rows.view(tiles, -1, *rows.shape[1:]).transpose(1, 2)


def _chunk_buffers(plan: TilePlan, chunks, query: Tensor, key: Tensor, value: Tensor) -> list[Tensor | None]:
    """One flat buffer each for the gathered chunks' queries, keys and values, sized for the largest chunk and
    reused by every chunk (the allocator sees no chunk-by-chunk churn, which grew the resident memory)."""
    most = max((end - first for first, end, run in chunks if run is None), default=0)
    if not most:
        return [None, None, None]
    sizes = (plan.tile_queries * query.shape[-1], plan.tile_keys * key.shape[-1], plan.tile_keys * value.shape[-1])
    return [x.new_empty(most * size * x.shape[1]) for x, size in zip((query, key, value), sizes)]


def _chunk_inputs(
    plan: TilePlan, first: int, end: int, query: Tensor, key: Tensor, value: Tensor, run=None, buffers=(None,) * 3
):
    tq, tk, tiles = plan.tile_queries, plan.tile_keys, end - first
    if run is not None:
        advance = run.key_advance(tq)
        return (
            _run_view(query, run, first, end, tq, run.query_start, tq * run.step),
            _run_view(key, run, first, end, tk, run.key_start, advance),
            _run_view(value, run, first, end, tk, run.key_start, advance),
        )
    keys_at = plan.key_index[first * tk : end * tk]
    return (
        _gather_tiles(query, plan.query_index[first * tq : end * tq], tiles, buffers[0]),
        _gather_tiles(key, keys_at, tiles, buffers[1]),
        _gather_tiles(value, keys_at, tiles, buffers[2]),
    )


def _flat_rows(chunk: Tensor) -> Tensor:
    """(tiles, H, S, D) → its (tiles·S, H, D) slot rows."""
    return chunk.transpose(1, 2).reshape(-1, *chunk.shape[1:2], chunk.shape[3])


def _slot_rows(plan: TilePlan, first: int, end: int, token_rows: Tensor) -> Tensor:
    """The rows of ``token_rows`` (B·N, H, D) that the slots of flat tiles ``[first, end)`` hold, 0 where a slot
    holds no token's row: (tiles, H, tq, D)."""
    tq = plan.tile_queries
    tokens = plan.slot_token[first * tq : end * tq]
    rows = token_rows.index_select(0, tokens.clamp(min=0)) * (tokens >= 0).to(token_rows.dtype)[:, None, None]
    return _tiles(rows, end - first)


def _slot_grads(plan: TilePlan, first: int, end: int, grad_rows: Tensor) -> Tensor:
    """The output gradient of each slot of flat tiles ``[first, end)``: the sum over the tokens that read it."""
    grads = _slot_rows(plan, first, end, grad_rows)
    if plan.global_keys is not None and plan.empty is not None:  # rows that see no tile key: their share is 0
        grads.masked_fill_(plan.empty[first:end, None, :, None], 0.0)
    extra = plan.extra_readers(first, end)
    if extra is None:
        return grads
    flat = grads.transpose(1, 2).reshape(-1, *grad_rows.shape[1:])
    flat.index_add_(0, extra[1], grad_rows.index_select(0, extra[0]))
    return _tiles(flat, end - first)


def _bhnd(rows: Tensor, batch: int) -> Tensor:
    """(B·N, H, D) token rows → the (B, H, N, D) view."""
    return rows.view(batch, -1, *rows.shape[1:]).transpose(1, 2)


def _write_slots(plan: TilePlan, first: int, end: int, out_rows: Tensor, chunk_out: Tensor, run=None) -> None:
    """Copy the rows of ``chunk_out`` (tiles, H, tq, Dv) into ``out_rows`` (B·N + 1, H, Dv): each to the token
    that reads it, a slot no token reads to the last row (scratch)."""
    tq = plan.tile_queries
    rows = chunk_out.transpose(1, 2).reshape(-1, *out_rows.shape[1:])
    if run is not None:  # every slot's own token reads it
        tokens = _bhnd(out_rows[: plan.batch * plan.seq_len], plan.batch)
        _run_view(tokens, run, first, end, tq, run.query_start, tq * run.step).copy_(chunk_out)
    else:
        out_rows.index_put_((plan.slot_target[first * tq : end * tq],), rows)
    extra = plan.extra_readers(first, end)
    if extra is not None:
        out_rows.index_put_((extra[0],), rows.index_select(0, extra[1]))


_flash, _flash_backward = compat.cpu_flash_attention()


def _global_keys(x: Tensor, rows: Tensor) -> Tensor:
    """The global keys' rows (``rows`` into B·N) of (B, H, N, D) ``x``: (B, H, G, D)."""
    batch, heads, _, dim = x.shape
    return _gather(x, rows).view(batch, -1, heads, dim).transpose(1, 2)


def _merge_global_keys(plan: TilePlan, query, key, value, out_rows: Tensor, lse: Tensor, scale) -> None:
    """Add the global keys' share to the tiles' outputs (in place), one fused-kernel call over every query (for a
    single global key, its score and value: no output-sized tensor): with the
    tiles' log-sum-exp ``b`` and the global keys' ``g`` of a row, ``L = log(e^b + e^g)`` and the row's output is
    ``e^(b−L)·out_tiles + e^(g−L)·out_global``, the softmax over both key sets. ``lse`` then holds ``L`` at every
    token's slot (the backward's log-sum-exp: each part's backward from the joint output and ``L`` gives its share of
    the gradients), +inf at a global row's slot (its output is the global row's: no share) and at a slot that no
    token reads and sees no tile key (there −inf would give the backward inf · 0)."""
    batch, heads = query.shape[:2]
    if plan.empty is not None:  # rows that see no tile key (they saw key slot 0): no share
        lse.masked_fill_(plan.empty.view(-1, 1, plan.tile_queries), float("-inf"))
    index = plan.token_lse_index(heads)
    tiles_lse = lse.view(-1).take(index)  # (B, H, N)
    if plan.empty is not None:  # and no share in the backward (a slot no token reads keeps +inf below)
        lse.masked_fill_(plan.empty.view(-1, 1, plan.tile_queries), float("inf"))
    rows = plan.global_key_rows()
    global_key, global_value = _global_keys(key, rows), _global_keys(value, rows)
    if global_key.shape[2] == 1 and query.dtype in (torch.float32, torch.float64):
        # one global key: its softmax weight is 1, so its output is its value (broadcast below: no output-sized
        # tensor in every layer) and its log-sum-exp its score, one batched product (not for half dtypes, whose
        # scores would round the log-sum-exp that the kernel keeps in float32)
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        scores = torch.empty(batch * heads, query.shape[2], 1, dtype=query.dtype, device=query.device)
        keys = global_key.flatten(0, 1).transpose(1, 2)
        global_lse = torch.baddbmm(scores, query.flatten(0, 1), keys, beta=0, alpha=scale).view(batch, heads, -1)
        global_out = global_value
    else:
        global_out, global_lse = _flash(query, global_key, global_value, 0.0, False, scale=scale)
    joint = torch.logaddexp(global_lse, tiles_lse)
    out = _bhnd(out_rows[: batch * plan.seq_len], batch)
    out.mul_(tiles_lse.sub_(joint).exp_()[..., None]).addcmul_(global_out, global_lse.sub_(joint).exp_()[..., None])
    if plan.global_rows is not None:
        positions = plan.global_rows.positions[:, None, :].expand(batch, heads, -1)
        joint.scatter_(2, positions, float("inf"))
    lse.view(-1).put_(index, joint)


class _TiledAttention(torch.autograd.Function):
    """The tiles, chunk by chunk, keeping only the log-sum-exp for the backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, query, key, value, global_out, bias, plan, scale, tiles_per_chunk, needs_backward):
        batch, heads, n, dim = query.shape
        value_dim = value.shape[-1]
        chunks = plan.chunks(heads, max(dim, value_dim), tiles_per_chunk)
        # a last row, scratch for the slots no token reads, where gathered tiles write; strided runs write only their
        # own tokens' rows, and the output then is exactly an attention output's size (a freed one's memory fits it)
        scratch = any(run is None for _, _, run in chunks)
        out_rows = query.new_empty(batch * n + scratch, heads, value_dim)
        if plan.unwritten is not None:  # tokens no slot writes: zero (rows that see no key) or global (below)
            out_rows.index_fill_(0, plan.unwritten, 0.0)
        # allocated before the chunks, so that every chunk's buffers are freed whole: a small tensor kept from each
        # chunk would pin the allocator's heap between them and the resident memory would grow chunk by chunk
        lse_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        lse = query.new_empty(batch * plan.tiles, heads, plan.tile_queries, dtype=lse_dtype)
        keeps_lse = needs_backward or plan.global_keys is not None  # the backward's, or the global keys' merge
        buffers = _chunk_buffers(plan, chunks, query, key, value)
        for first, end, run in chunks:
            q, k, v = _chunk_inputs(plan, first, end, query, key, value, run, buffers)
            mask = plan.mask(first, end, query.dtype, bias, run)
            chunk_out, chunk_lse = _flash(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
            _write_slots(plan, first, end, out_rows, chunk_out, run)
            if keeps_lse:
                lse[first:end] = chunk_lse
            del q, k, v, mask, chunk_out, chunk_lse  # before the next chunk's: one chunk's buffers live at a time
        if plan.global_keys is not None:
            _merge_global_keys(plan, query, key, value, out_rows, lse, scale)
        if global_out is not None:
            out_rows.index_copy_(0, plan.global_rows.target, global_out)
        out_rows = out_rows[: batch * n]
        ctx.save_for_backward(query, key, value, out_rows, lse, bias)
        ctx.plan, ctx.scale, ctx.tiles_per_chunk = plan, scale, tiles_per_chunk
        return out_rows.view(batch, n, heads, value_dim).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out_rows, lse, bias = ctx.saved_tensors
        plan, batch = ctx.plan, query.shape[0]
        grad_rows = _token_rows(grad_out)
        if grad_rows is None:
            grad_rows = grad_out.transpose(1, 2).reshape(out_rows.shape)
        grads = [torch.zeros(x.shape[0] * x.shape[2], x.shape[1], x.shape[3], dtype=x.dtype) for x in (query, key)]
        grads.append(torch.zeros_like(grads[1][..., :1]).expand(-1, -1, value.shape[-1]).contiguous())
        tq, tk = plan.tile_queries, plan.tile_keys
        heads, dim = query.shape[1], max(query.shape[-1], value.shape[-1])
        chunks = plan.backward_chunks(heads, dim, ctx.tiles_per_chunk, merge_runs=bias is None)
        buffers = _chunk_buffers(plan, [c[:3] for c in chunks], query, key, value)
        for first, end, run, merge in chunks:
            if run is not None and plan.extra_readers(first, end) is None:  # every slot's row is its own token's
                merged_keys = tk + (merge - 1) * tq
                advance = run.key_advance(tq)
                view = functools.partial(_run_view, run=run, first=first, end=end, merge=merge)
                queries = functools.partial(view, slots=merge * tq, start=run.query_start, advance=tq * run.step)
                keys = functools.partial(view, slots=merged_keys, start=run.key_start, advance=advance)
                q, k, v = queries(query), keys(key), keys(value)
                if merge == 1:
                    mask = plan.mask(first, end, query.dtype, bias, run)
                else:
                    mask = plan.merged_mask(run.pattern, merge, query.dtype)
                grad_slots, out_slots = queries(grad_out), queries(_bhnd(out_rows, batch))
                tiles = (end - first) // merge
                chunk_lse = lse[first:end].view(tiles, merge, heads, tq).transpose(1, 2).reshape(tiles, heads, -1)
                grad_q, grad_k, grad_v = _flash_backward(
                    grad_slots, q, k, v, out_slots, chunk_lse, 0.0, False, attn_mask=mask, scale=ctx.scale
                )
                queries(_bhnd(grads[0], batch)).add_(grad_q)  # a run's queries are distinct tokens: in place
                slots = torch.arange(merged_keys, device=query.device)
                key_slots = torch.arange(tiles, device=query.device)[:, None] * (merge * advance) + slots * run.step
                keys_at = (run.sample * plan.seq_len + run.key_start + (first - run.first) * advance) + key_slots
                keys_at = keys_at.flatten()
            else:
                q, k, v = _chunk_inputs(plan, first, end, query, key, value, run, buffers)
                mask = plan.mask(first, end, query.dtype, bias, run)
                grad_slots = _slot_grads(plan, first, end, grad_rows)
                out_slots = _slot_rows(plan, first, end, out_rows)
                grad_q, grad_k, grad_v = _flash_backward(
                    grad_slots, q, k, v, out_slots, lse[first:end], 0.0, False, attn_mask=mask, scale=ctx.scale
                )
                grads[0].index_add_(0, plan.query_index[first * tq : end * tq], _flat_rows(grad_q))
                keys_at = plan.key_index[first * tk : end * tk]
            for total, grad in zip(grads[1:], (grad_k, grad_v)):
                total.index_add_(0, keys_at, _flat_rows(grad))
            del q, k, v, mask, grad_slots, out_slots, grad_q, grad_k, grad_v  # one chunk's copies live at a time
        if plan.global_keys is not None:  # the global keys' share, from the same output and log-sum-exp
            rows = plan.global_key_rows()
            global_key, global_value = (_global_keys(x, rows) for x in (key, value))
            token_lse = lse.view(-1).take(plan.token_lse_index(heads))
            grad_q, grad_k, grad_v = _flash_backward(
                grad_out, query, global_key, global_value, _bhnd(out_rows, batch), token_lse, 0.0, False,
                scale=ctx.scale,
            )  # fmt: skip
            _bhnd(grads[0], batch).add_(grad_q)
            grads[1].index_add_(0, rows, _flat_rows(grad_k))
            grads[2].index_add_(0, rows, _flat_rows(grad_v))
        grad_query, grad_key, grad_value = (_bhnd(g, batch) for g in grads)
        grad_global = None
        if ctx.needs_input_grad[3]:
            grad_global = grad_rows.index_select(0, plan.global_rows.target)
        return grad_query, grad_key, grad_value, grad_global, None, None, None, None, None


def _tiled_autograd(query, key, value, global_out, bias, plan, scale, dropout_p, tiles_per_chunk):
    """The same chunks through autograd: for dropout and a trainable bias (each chunk's copies kept for backward)."""
    batch, heads, n, dim = query.shape
    value_dim = value.shape[-1]
    outs = []
    if plan.global_keys is not None:  # here appended to every tile's keys (what the kernel path merges apart)
        rows = plan.global_key_rows()
        global_keys = [_gather(x, rows).view(batch, -1, heads, x.shape[-1]) for x in (key, value)]
    for first, end, _ in plan.chunks(heads, max(dim, value_dim), tiles_per_chunk):
        q, k, v = _chunk_inputs(plan, first, end, query, key, value)
        mask = plan.mask(first, end, query.dtype, bias)
        if plan.global_keys is not None:
            samples = torch.arange(first, end, device=query.device) // plan.tiles
            k, v = (torch.cat([x, g[samples].transpose(1, 2)], 2) for x, g in zip((k, v), global_keys))
            if plan.empty is not None:  # rows that see no tile key see only the global keys
                mask = mask.masked_fill(plan.empty[first:end, None, :, None], float("-inf"))
            mask = mask.expand(end - first, *mask.shape[1:])
            mask = torch.cat([mask, mask.new_zeros(*mask.shape[:3], k.shape[2] - mask.shape[3])], -1)
        chunk_out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale
        )
        outs.append(chunk_out.transpose(1, 2).reshape(-1, heads, value_dim))
    slots = torch.cat(outs)
    read = plan.slot_token >= 0
    out = query.new_zeros(batch * n, heads, value_dim).index_copy(0, plan.slot_token[read], slots[read])
    if plan.extra_tokens is not None:
        out = out.index_copy(0, plan.extra_tokens, slots.index_select(0, plan.extra_slots))
    if global_out is not None:
        out = out.index_copy(0, plan.global_rows.target, global_out)
    return out.view(batch, n, heads, value_dim).transpose(1, 2)


def global_row_positions(rows: GlobalRows, seq_len: int) -> Tensor:
    """The global rows' tokens as flat rows into B·N, (B·G,), padded rows included."""
    batch = rows.positions.shape[0]
    return (rows.positions + torch.arange(batch, device=rows.positions.device).view(-1, 1) * seq_len).reshape(-1)


def global_rows_attention(
    query: Tensor, key: Tensor, value: Tensor, rows: GlobalRows, scale: float | None, dropout_p: float
) -> Tensor:
    """The global rows attending every real key, densely (one small SDPA call): (B, H, G, Dv), G = ``rows.count``
    (a sample's padded rows included; ``rows.source`` picks the real ones)."""
    batch, heads, n, dim = query.shape
    global_queries = _gather(query, global_row_positions(rows, n)).view(batch, rows.count, heads, dim).transpose(1, 2)
    return torch.nn.functional.scaled_dot_product_attention(
        global_queries, key, value, attn_mask=rows.key_mask, dropout_p=dropout_p, scale=scale
    )


def tiled_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    plan: TilePlan,
    scale: float | None = None,
    dropout_p: float = 0.0,
    bias: Tensor | None = None,
    global_out: Tensor | None = None,
    tiles_per_chunk: int | None = None,
) -> Tensor:
    """Attention of (B, H, N, D) tensors over ``plan``'s tiles (see the module docstring); returns (B, H, N, D).

    ``bias`` (T, H, tq, K), optional: an additive per-head score bias on the tiles' pairs (a relative position
    bias gathered from a trainable table keeps its gradient). ``dropout_p``: attention-probability dropout.
    ``global_out`` (B, H, G, Dv): the outputs of the plan's global rows (``plan.global_rows``, G its count), where
    they are computed otherwise than from these q/k/v (HF Longformer's separate global projections); default
    :func:`global_rows_attention` of these. ``tiles_per_chunk``: tiles per kernel call (default: from
    :meth:`TilePlan.chunk_elements`).
    """
    batch, heads, n = query.shape[:3]
    if batch != plan.batch or n != plan.seq_len:
        raise ValueError(
            f"inputs are (B={batch}, N={n}); the tile plan was built for (B={plan.batch}, N={plan.seq_len})"
        )
    value_dim = value.shape[-1]
    rows = plan.global_rows
    if rows is None:
        global_out = None
    else:
        if global_out is None:
            global_out = global_rows_attention(query, key, value, rows, scale, dropout_p)
        global_out = global_out.transpose(1, 2).reshape(batch * rows.count, heads, value_dim)
        global_out = global_out.index_select(0, rows.source)  # the real ones: (rows, H, Dv)
    trains_bias = bias is not None and bias.requires_grad and torch.is_grad_enabled()
    if dropout_p > 0 or trains_bias or query.device.type != "cpu":
        return _tiled_autograd(query, key, value, global_out, bias, plan, scale, dropout_p, tiles_per_chunk)
    inputs = (query, key, value, global_out)
    needs_backward = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    bias = None if bias is None else bias.detach()
    return _TiledAttention.apply(*inputs, bias, plan, scale, tiles_per_chunk, needs_backward)
