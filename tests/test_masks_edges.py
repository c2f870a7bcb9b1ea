"""The masks of ``hf_flexattn.masks`` at their edges: every factory against its rule written entry by entry, with
its BlockMask checked against the dense mask (safe everywhere, exact where the summary claims it), the flags each
mask carries, and :class:`BatchMask`'s forms (padding, buckets, SDPA's additive mask). Fast (no model): the mutation
job (scripts/mutation.py) runs these first."""

import functools
import itertools

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from hf_flexattn.masks import (
    BatchMask,
    BlockGrid,
    Mask,
    build_block_mask,
    generate_full,
    generate_global,
    generate_global_keys,
    generate_global_queries,
    generate_key_padding,
    generate_natten_1d,
    generate_natten_1d_over_real_tokens,
    generate_natten_2d,
    generate_permuted,
    generate_shifted_windows,
    generate_sliding_window,
    generate_window_contiguous_windows,
    global_token_flags,
    padded_length,
    shifted_window_index,
    window_contiguous_order,
)
from hf_flexattn.masks.core import block_mask_to_dense_blocks
from hf_flexattn.masks.natten import natten_window

from helpers import DispatchRecorder, check_block_structure, hf_shift_rule, natten_1d_reference, natten_2d_reference


def _exact_blocks(mask, q_len, kv_len, batch, block):
    """Build the BlockMask and check it against the dense mask: (partial, full, any_true, all_true)."""
    dense = mask.dense(batch, 1, q_len, kv_len)
    block_mask = build_block_mask(mask, q_len, kv_len, batch=batch, heads=1, block_size=block)
    return check_block_structure(block_mask, dense)


# ------------------------------------------------------------------------------ core: grid, block lists, Mask


def test_block_grid_ranges_and_per_block_flags():
    grid = BlockGrid(q_len=10, kv_len=7, batch=2, heads=1, device=torch.device("cpu"), block_size=4)
    assert (grid.num_q_blocks, grid.num_kv_blocks) == (3, 2)
    q_lo, q_hi = grid.q_ranges()
    assert q_lo.flatten().tolist() == [0, 4, 8] and q_hi.flatten().tolist() == [3, 7, 9]
    assert q_lo.shape == (3, 1)
    kv_lo, kv_hi = grid.kv_ranges()
    assert kv_lo.flatten().tolist() == [0, 4] and kv_hi.flatten().tolist() == [3, 6]
    assert kv_lo.shape == (1, 2)
    flags = torch.tensor([[1, 1, 1, 1, 0, 1, 1], [0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    any_, all_ = grid.per_block(flags, "kv")
    assert any_.shape == (2, 1, 1, 2)
    assert any_[:, 0, 0].tolist() == [[True, True], [False, True]]
    # the last block holds 3 tokens: all of them set is 'all'
    assert all_[:, 0, 0].tolist() == [[True, False], [False, False]]
    full_last = torch.tensor([[0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert grid.per_block(full_last, "kv")[1][0, 0, 0].tolist() == [False, True]
    q_flags = torch.zeros(1, 10, dtype=torch.bool)
    q_flags[0, 8:] = True
    any_q, all_q = grid.per_block(q_flags, "q")
    assert any_q.shape == (1, 1, 3, 1)
    assert any_q.flatten().tolist() == [False, False, True] and all_q.flatten().tolist() == [False, False, True]


@pytest.mark.parametrize("length,block,expected", [(1, 128, 128), (128, 128, 128), (129, 128, 256), (10, 4, 12)])
def test_padded_length(length, block, expected):
    assert padded_length(length, block) == expected


def test_padded_length_defaults_to_the_block_size():
    assert padded_length(200) == 256


def test_mask_names_flags_and_renaming():
    full = generate_full()
    assert full.name == "full" and repr(full) == "Mask(full)"
    assert full.sees_everything and full.dynamic_cpu_compile and not full.reads_token_tables
    flags = torch.ones(1, 8, dtype=torch.bool)
    padding = generate_key_padding(flags)
    assert padding.reads_token_tables and not padding.dynamic_cpu_compile and not padding.sees_everything
    window = generate_sliding_window(3)
    assert window.name == "sliding_w6" and window.dynamic_cpu_compile and not window.sees_everything
    both = window & padding
    assert both.name == "sliding_w6&padding" and both.reads_token_tables and not both.dynamic_cpu_compile
    either = window | full
    assert either.name == "(sliding_w6|full)" and either.dynamic_cpu_compile and not either.reads_token_tables
    assert not either.sees_everything  # combining never claims 'sees everything'
    renamed = padding.renamed("keys")
    assert renamed.name == "keys" and renamed.mask_mod.__name__ == "keys"
    assert renamed.reads_token_tables and renamed.block_summary is padding.block_summary
    assert generate_full().renamed("all").sees_everything and generate_full().renamed("all").dynamic_cpu_compile
    # a mask that reads per-token tables is never marked dynamic-compilable
    assert not Mask(lambda b, h, q, kv: q >= kv, dynamic_cpu_compile=True, reads_token_tables=True).dynamic_cpu_compile
    assert Mask(lambda b, h, q, kv: q >= kv, dynamic_cpu_compile=True).dynamic_cpu_compile
    assert generate_global(flags).name == "global"


def test_unnamed_mask_takes_its_function_name():
    def causal(b, h, q, kv):
        return q >= kv

    assert Mask(causal).name == "causal"
    assert Mask(lambda b, h, q, kv: q >= kv, name="mine").mask_mod.__name__ == "mine"


def test_a_rule_without_a_name_is_named_mask():
    """A rule that has no ``__name__`` (a ``functools.partial``, a callable object) is named "mask"."""

    def within(b, h, q, kv, reach):
        return (q - kv).abs() <= reach

    class Causal:
        def __call__(self, b, h, q, kv):
            return q >= kv

    for rule in (functools.partial(within, reach=2), Causal()):
        mask = Mask(rule)
        assert mask.name == "mask" and repr(mask) == "Mask(mask)" and rule.__name__ == "mask"


def test_unknown_rules_compile_with_static_shapes():
    """A rule of the user's own is not known to compile with dynamic shapes on CPU (the default is the safe static
    path), and a combination is dynamic only where both sides are."""
    own = Mask(lambda b, h, q, kv: (q // 3) == (kv // 3))
    window = generate_sliding_window(2)
    assert not own.dynamic_cpu_compile and window.dynamic_cpu_compile
    for combined in (window & own, own & window, window | own, own | window):
        assert not combined.dynamic_cpu_compile
    assert (window & generate_full()).dynamic_cpu_compile and (window | generate_full()).dynamic_cpu_compile


@pytest.mark.parametrize("q_len,kv_len,block", [(20, 20, 4), (19, 13, 4), (7, 30, 8), (33, 33, 16)])
def test_dense_fallback_summary_is_exact(q_len, kv_len, block):
    """A mask without a summary is evaluated block by block: exactly the blocks with an allowed entry are listed,
    exactly the all-allowed ones are full, with lengths that are not block multiples on either axis."""
    mask = Mask(lambda b, h, q, kv: ((q // 3) == (kv // 5)) | (kv == b + h))
    dense = mask.dense(2, 2, q_len, kv_len)
    block_mask = build_block_mask(mask, q_len, kv_len, batch=2, heads=2, block_size=block)
    partial, full, any_true, all_true = check_block_structure(block_mask, dense)
    assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)
    assert block_mask.seq_lengths == (q_len, kv_len)


def test_block_mask_defaults_kv_len_to_q_len():
    block_mask = build_block_mask(generate_sliding_window(2), 24, block_size=8)
    assert block_mask.seq_lengths == (24, 24)
    assert block_mask.BLOCK_SIZE == (8, 8)
    # batch and heads default to 1: one block list that broadcasts over every sample and head
    assert block_mask.kv_num_blocks.shape == (1, 1, 3) and block_mask.kv_indices.shape == (1, 1, 3, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: generate_sliding_window(9),
        lambda: generate_global_queries(torch.arange(200)[None] % 9 < 5),
        lambda: Mask(lambda b, h, q, kv: ((q // 7) + (kv // 11)) % 3 == 0),
    ],
    ids=["sliding_window", "global_queries", "dense_fallback"],
)
def test_block_lists_are_flex_attentions_own(make):
    """Where a summary is exact, the BlockMask built from it holds the tensors FlexAttention's ``create_block_mask``
    builds from the dense mask: the same counts and block lists, int32, listed blocks first in ascending order, then
    the others in ascending order (a stable sort: more key blocks than a small-array sort keeps in order by chance).
    """
    mask = make()
    ours = build_block_mask(mask, 200, 200, block_size=4)
    theirs = create_block_mask(mask.mask_mod, None, None, 200, 200, device="cpu", BLOCK_SIZE=4)
    names = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")
    for name in names:
        got, want = getattr(ours, name), getattr(theirs, name)
        assert got.dtype == want.dtype == torch.int32, name
        assert torch.equal(got, want), name
    assert ours.kv_indices.shape[-1] == 50  # rows longer than the 16 an unstable sort keeps in order anyway


def test_dense_blocks_of_a_block_mask_without_full_blocks():
    """A BlockMask that lists no full blocks (``from_kv_blocks`` without them): every listed block is partial, none
    full."""
    listed = torch.tensor([[[[1, 0, 0], [1, 1, 0], [0, 0, 0]]]], dtype=torch.bool)
    counts = listed.sum(-1, dtype=torch.int32)
    indices = torch.sort(listed.to(torch.int8), dim=-1, descending=True, stable=True).indices.to(torch.int32)
    block_mask = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=4, seq_lengths=(12, 10))
    assert block_mask.full_kv_num_blocks is None
    partial, full = block_mask_to_dense_blocks(block_mask)
    assert torch.equal(partial, listed) and full.shape == listed.shape and not full.any()


@pytest.mark.parametrize("q_len,kv_len,half,block", [(40, 40, 3, 8), (37, 21, 5, 8), (16, 48, 0, 8), (50, 50, 49, 8)])
def test_sliding_window_rule_and_tight_blocks(q_len, kv_len, half, block):
    mask = generate_sliding_window(half)
    q, kv = torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :]
    assert torch.equal(mask.dense(1, 1, q_len, kv_len)[0, 0], (q - kv).abs() <= half)
    partial, full, any_true, all_true = _exact_blocks(mask, q_len, kv_len, 1, block)
    assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)


@pytest.mark.parametrize("combine", ["and", "or"])
def test_combined_summaries(combine):
    """& keeps 'all' exact and 'any' safe; | keeps 'any' exact and 'all' safe: check both against the dense mask,
    with per-sample flags so that the batch axis of the summaries matters."""
    n, block = 40, 8
    flags = torch.zeros(2, n, dtype=torch.bool)
    flags[0, 3] = True
    flags[1, 17:25] = True
    real = torch.ones(2, n, dtype=torch.bool)
    real[1, 30:] = False
    a, b = generate_sliding_window(4), generate_global(flags)
    mask = (a & b) if combine == "and" else (a | b)
    mask = mask & generate_key_padding(real)
    partial, full, any_true, all_true = _exact_blocks(mask, n, n, 2, block)
    if combine == "or":
        assert torch.equal(partial | full, any_true)
    else:
        assert torch.equal(full, all_true)


def test_or_keeps_either_full_block_and_passes_heads():
    """|: a block full in either mask is full; both masks see the batch and head indices."""
    mask = generate_full() | generate_sliding_window(1)
    partial, full, _, _ = _exact_blocks(mask, 24, 24, 1, 8)
    assert full.all() and not partial.any()
    by_head = Mask(lambda b, h, q, kv: (q + h) % 2 == kv % 2)
    by_batch = Mask(lambda b, h, q, kv: (q + b) % 3 == kv % 3)
    for combined in (by_head | by_batch, by_batch | by_head, by_head & by_batch, by_batch & by_head):
        dense = combined.dense(2, 2, 6, 6)
        want_or = by_head.dense(2, 2, 6, 6) | by_batch.dense(2, 2, 6, 6)
        want_and = by_head.dense(2, 2, 6, 6) & by_batch.dense(2, 2, 6, 6)
        assert torch.equal(dense, want_or if "|" in combined.name else want_and)


def test_dense_fallback_reads_no_position_past_the_lengths():
    """The block-by-block evaluation of a mask without a summary never calls it past q_len or kv_len (a mask that
    indexes per-token tables of those lengths would fail)."""
    table = torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    mask = Mask(lambda b, h, q, kv: table[kv] & (q >= 0))
    partial, full, any_true, all_true = _exact_blocks(mask, 7, 7, 1, 4)
    assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)


def test_global_pieces_rule():
    n = 12
    flags = torch.zeros(2, n, dtype=torch.bool)
    flags[0, 2] = True
    flags[1, [0, 7]] = True
    q, kv = flags[:, :, None], flags[:, None, :]
    assert torch.equal(generate_global_keys(flags).dense(2, 1, n, n)[:, 0], kv.expand(2, n, n))
    assert torch.equal(generate_global_queries(flags).dense(2, 1, n, n)[:, 0], q.expand(2, n, n))
    assert torch.equal(generate_global(flags).dense(2, 1, n, n)[:, 0], q | kv)
    shared = flags[:1]  # batch 1: one table shared by every sample
    assert torch.equal(generate_global(shared).dense(3, 1, n, n)[:, 0], (q[:1] | kv[:1]).expand(3, n, n))
    for piece, name in (
        (generate_global_keys(flags), "global_keys"),
        (generate_global_queries(flags), "global_queries"),
    ):
        assert piece.name == name and piece.reads_token_tables and not piece.dynamic_cpu_compile
    for piece in (generate_global_keys(flags), generate_global_queries(flags), generate_global(flags)):
        partial, full, any_true, all_true = _exact_blocks(piece, n, n, 2, 4)
        assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)


def test_global_token_flags_without_padding():
    """Positions mark the same tokens of every sample, those past the input are dropped (the length itself
    included); a global_attention_mask adds its own ones per sample."""
    flags = global_token_flags(2, 6, positions=(0, 3, 6, 9))
    want = torch.zeros(2, 6, dtype=torch.bool)
    want[:, [0, 3]] = True
    assert flags.dtype == torch.bool and torch.equal(flags, want)
    assert not global_token_flags(3, 4).any() and global_token_flags(3, 4).shape == (3, 4)
    mask = torch.tensor([[0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0]])
    want[0, 5] = want[1, 1] = True
    assert torch.equal(global_token_flags(2, 6, positions=(0, 3), global_attention_mask=mask), want)


def test_global_token_flags_count_from_the_first_real_token():
    """With padding, position t is each sample's t-th real token (left padding shifts it); a padded token is never
    global, not even when the global_attention_mask marks it or it repeats the last real token's rank."""
    real = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    flags = global_token_flags(3, 6, positions=(0, 3), key_is_real=real)
    want = torch.tensor([[0, 0, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert flags.dtype == torch.bool and torch.equal(flags, want)
    mask = torch.tensor([[1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 0]])
    want |= mask.bool() & real
    assert torch.equal(global_token_flags(3, 6, positions=(0, 3), global_attention_mask=mask, key_is_real=real), want)


def test_key_padding_rule_and_blocks():
    real = torch.tensor([[1] * 10 + [0] * 3, [0] * 4 + [1] * 9], dtype=torch.bool)
    mask = generate_key_padding(real)
    assert torch.equal(mask.dense(2, 1, 5, 13)[:, 0], real[:, None, :].expand(2, 5, 13))
    partial, full, any_true, all_true = _exact_blocks(mask, 5, 13, 2, 4)
    assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)


def test_full_rule_and_blocks():
    mask = generate_full()
    assert mask.dense(2, 2, 5, 9).all() and mask.dense(2, 2, 5, 9).shape == (2, 2, 5, 9)
    partial, full, _, _ = _exact_blocks(mask, 9, 20, 1, 8)
    assert full.all() and not partial.any()


_FLAGS = torch.tensor(
    [[1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0] * 8 + [1] * 12], dtype=torch.bool
)


@pytest.mark.parametrize(
    "make",
    [
        generate_full,
        lambda: generate_key_padding(_FLAGS),
        lambda: generate_global_keys(_FLAGS),
        lambda: generate_global_queries(_FLAGS),
        lambda: generate_sliding_window(3),
    ],
    ids=["full", "key_padding", "global_keys", "global_queries", "sliding_window"],
)
def test_summaries_never_evaluate_the_rule(make):
    """These masks' blocks come from their analytic summaries (per-token flags or index ranges), never from
    evaluating the rule block by block (the fallback, whose cost grows with N × block size): the same blocks with a
    rule that cannot be called."""
    want = block_mask_to_dense_blocks(build_block_mask(make(), 20, 20, batch=2, block_size=8))
    mask = make()

    def no_rule(b, h, q, kv):
        raise AssertionError(f"the {mask.name} mask's summary evaluated the rule")

    mask.mask_mod = no_rule
    got = block_mask_to_dense_blocks(build_block_mask(mask, 20, 20, batch=2, block_size=8))
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert got[0].shape == (2, 1, 3, 3)


# ------------------------------------------------------------------------------ NATTEN


@pytest.mark.parametrize(
    "length,kernel,dilation",
    [(20, 5, 1), (20, 3, 2), (23, 5, 3), (4, 7, 1), (9, 3, 4), (10, 9, 2), (1, 3, 1), (12, 1, 1), (12, 1, 3)],
)
def test_natten_1d_rule_and_safe_blocks(length, kernel, dilation):
    mask = generate_natten_1d(kernel, dilation, torch.tensor(length))
    want = natten_1d_reference(length, kernel, dilation)
    assert torch.equal(mask.dense(1, 1, length, length)[0, 0], want)
    assert mask.dynamic_cpu_compile and not mask.reads_token_tables
    assert mask.name == f"natten1d_k{kernel}_d{dilation}"
    _, full, _, _ = _exact_blocks(mask, length, length, 1, 4)
    assert not full.any()  # the reach summary never claims a block full


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 2), (5, 1), (2, 3), (3, 3)])
@pytest.mark.parametrize("block", [1, 4])
def test_natten_1d_reach_summary(kernel, dilation, block):
    """The summary lists a block pair exactly when its nearest query and key lie within (kernel − 1)·dilation, plus
    in a padded sample its padding and dilation − 1 (a padded query sees the last window of its dilation group,
    which may end dilation − 1 tokens before the last real one); never a full block. Safe: every block with an
    allowed entry, padded queries' included (it missed some of theirs before the dilation − 1)."""
    n, lengths = 24, torch.tensor([24, 17, 23])  # padding of 7 and of a single token
    mask = generate_natten_1d(kernel, dilation, lengths)
    grid = BlockGrid(n, n, 3, 1, torch.device("cpu"), block)
    any_, all_ = mask.block_summary(grid)
    i, j = torch.arange(grid.num_q_blocks)[:, None], torch.arange(grid.num_kv_blocks)[None, :]
    nearest = ((j - i).abs() * block - (block - 1)).clamp(min=0)
    padding = (n - lengths).view(3, 1, 1, 1)
    padding = padding + (dilation - 1) * (padding > 0)
    assert torch.equal(any_.expand(3, 1, -1, -1), (nearest <= (kernel - 1) * dilation + padding).expand(3, 1, -1, -1))
    assert not all_.any()
    _exact_blocks(mask, n, n, 3, block)


@pytest.mark.parametrize("kernel,dilation,short", [(5, 1, 6), (3, 2, 3), (3, 2, 6), (1, 2, 5), (3, 3, 4)])
def test_natten_1d_per_sample_lengths(kernel, dilation, short):
    """(B,) lengths: each sample's rule over its own length; its real queries see no key past it, and a query past
    it (padding) sees the last window of its dilation group."""
    n = 10
    lengths = torch.tensor([n, short])
    mask = generate_natten_1d(kernel, dilation, lengths)
    assert not mask.dynamic_cpu_compile
    dense = mask.dense(2, 1, n, n)[:, 0]
    assert torch.equal(dense[0], natten_1d_reference(n, kernel, dilation))
    assert torch.equal(dense[1, :short, :short], natten_1d_reference(short, kernel, dilation))
    assert not dense[1, :short, short:].any()
    for q in range(short, n):
        last = max(p for p in range(short) if p % dilation == q % dilation) if q % dilation < short else None
        if last is not None:
            assert torch.equal(dense[1, q], dense[1, last]), q
    _exact_blocks(mask, n, n, 2, 4)


def test_natten_1d_ranked_with_a_shared_length():
    """Ranks with one length for every sample (a 0-dim tensor): the rule over the ranked positions."""
    n = 12
    ranks = torch.stack([torch.arange(n), torch.arange(n)])
    mask = generate_natten_1d(3, 2, torch.tensor(n), ranks)
    assert mask.reads_token_tables and not mask.dynamic_cpu_compile and mask.name == "natten1d_k3_d2"
    dense = mask.dense(2, 1, n, n)[:, 0]
    assert torch.equal(dense, natten_1d_reference(n, 3, 2).expand(2, n, n))
    # the reach summary, not the block-by-block evaluation: it never claims a block full
    _, full, _, _ = _exact_blocks(generate_natten_1d(5, 1, torch.tensor(n), ranks), n, n, 2, 4)
    assert not full.any()


@pytest.mark.parametrize("side", ["right", "left", "between"])
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 2)])
def test_natten_1d_over_real_tokens(side, kernel, dilation):
    """Padding on either side or in between moves no window: on real tokens the rule is NATTEN's over the real
    tokens alone; with the key padding the BlockMask is safe for every query, padded ones too."""
    n = 19
    lengths = [19, 12, 7]
    real = torch.zeros(3, n, dtype=torch.bool)
    for b, length in enumerate(lengths):
        if side == "right":
            real[b, :length] = True
        elif side == "left":
            real[b, n - length :] = True
        else:
            real[b, : length // 2] = True
            real[b, n - (length - length // 2) :] = True
    natten = generate_natten_1d_over_real_tokens(kernel, dilation, n, real)
    assert natten.reads_token_tables and not natten.dynamic_cpu_compile
    assert natten.name == f"natten1d_k{kernel}_d{dilation}"
    mask = natten & generate_key_padding(real)
    dense = mask.dense(3, 1, n, n)[:, 0]
    for b, length in enumerate(lengths):
        positions = real[b].nonzero().flatten()
        on_real = dense[b][positions][:, positions]
        assert torch.equal(on_real, natten_1d_reference(length, kernel, dilation)), b
        assert not dense[b][:, ~real[b]].any()
    _exact_blocks(mask, n, n, 3, 4)
    # bound to the batch: the rank table covers the bucketed length, and the bucket's extra keys are hidden
    bucketed = BatchMask(natten, n, key_is_real=real).block_mask(bucketed=True)
    dense_bucket = torch.zeros(3, 1, 128, 128, dtype=torch.bool)
    dense_bucket[:, 0, :n, :n] = dense
    check_block_structure(bucketed, dense_bucket)


def test_natten_1d_over_real_tokens_without_padding():
    mask = generate_natten_1d_over_real_tokens(5, 2, 17, None)
    assert torch.equal(mask.dense(1, 1, 17, 17)[0, 0], natten_1d_reference(17, 5, 2))
    assert mask.dynamic_cpu_compile


def test_natten_window_int_and_tensor_lengths():
    position = torch.arange(8)
    start, size = natten_window(position, 5, 8)
    assert size == 5 and start.tolist() == [0, 0, 0, 1, 2, 3, 3, 3]
    start_t, size_t = natten_window(position, 5, torch.tensor(8))
    assert int(size_t) == 5 and start_t.tolist() == start.tolist()
    start, size = natten_window(torch.arange(3), 5, 3)
    assert size == 3 and start.tolist() == [0, 0, 0]
    start_t, size_t = natten_window(torch.arange(3), 5, torch.tensor(3))
    assert int(size_t) == 3 and start_t.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "grid,kernel,dilation,num_global",
    [
        ((5, 6), (3, 3), (1, 1), 0),
        ((4, 7), (3, 5), (1, 2), 1),
        ((6, 3), (5, 3), (2, 1), 2),
        ((2, 2), (3, 3), (1, 1), 0),
    ],
)
def test_natten_2d_rule_and_exact_blocks(grid, kernel, dilation, num_global):
    mask = generate_natten_2d(grid, kernel, dilation, num_global)
    n = num_global + grid[0] * grid[1]
    want = natten_2d_reference(*grid, kernel, dilation, num_global)
    assert torch.equal(mask.dense(1, 1, n, n)[0, 0], want)
    assert mask.name == f"natten2d_k{kernel[0]}x{kernel[1]}_d{dilation[0]}x{dilation[1]}"
    partial, full, any_true, all_true = _exact_blocks(mask, n, n, 1, 4)
    assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)


def test_natten_2d_keeps_int32_indices_int32():
    """Flex hands a mask_mod int32 indices on CUDA: the 2D rule's captured sizes are int32, so no step of its
    arithmetic is widened to int64 (emulated on GPUs)."""
    mask = generate_natten_2d((6, 7), (3, 5), (2, 1), num_global=1)
    index = torch.arange(43, dtype=torch.int32)
    zero = torch.zeros((), dtype=torch.int32)
    with DispatchRecorder() as seen:
        allowed = mask.mask_mod(zero, zero, index[:, None], index[None, :])
    assert seen.integer_dtypes == {torch.int32}
    assert torch.equal(allowed, natten_2d_reference(6, 7, (3, 5), (2, 1), 1))


def _int32_masks():
    """(mask, rule as int64 indices give it, length): every factory whose docstring promises int32 captures/tables."""
    real = torch.ones(2, 21, dtype=torch.bool)
    real[1, :5] = False
    real[1, 17:] = False
    masks = [
        generate_natten_1d_over_real_tokens(5, 2, 21, None),
        generate_natten_1d_over_real_tokens(3, 2, 21, real),
        generate_natten_2d((4, 5), (3, 3), (2, 1), num_global=1),
        generate_shifted_windows((4, 5), 2, 1, num_global=1),
        generate_window_contiguous_windows((4, 5), 2, 1)[0],
    ]
    return [(mask, mask.dense(2, 1, 21, 21)) for mask in masks]


@pytest.mark.parametrize("index", [(0, 0), (1, 3), (1, 6), (0, 20), (1, 20), (1, 15)])
def test_masks_keep_0_dim_int32_indices_int32(index):
    """Flex traces a mask_mod on 0-dim int32 indices (b, h, q, kv): NATTEN's sizes and rank tables, Swin's window
    sizes and the window order are int32, so nothing widens them to int64 (a 0-dim int64 capture would; a 1-dim
    index hides it), and each entry is the one int64 indices give."""
    for mask, dense in _int32_masks():
        for b in (0, 1):
            q, kv = index
            with DispatchRecorder() as seen:
                allowed = mask.mask_mod(*(torch.tensor(v, dtype=torch.int32) for v in (b, 0, q, kv)))
            assert seen.integer_dtypes == {torch.int32}, (mask.name, b, q, kv, seen.integer_dtypes)
            assert bool(allowed) == bool(dense[b, 0, q, kv]), (mask.name, b, q, kv)


def test_window_contiguous_order_is_int32():
    assert window_contiguous_order((4, 5), 2, 1).dtype == torch.int32


# ------------------------------------------------------------------------------ Swin's windows


@pytest.mark.parametrize("grid,window,shift", [((8, 8), 4, 0), ((8, 8), 4, 2), ((6, 9), 3, 1), ((4, 4), 2, 1)])
def test_shifted_windows_are_hf_swin(grid, window, shift):
    mask = generate_shifted_windows(grid, window, shift)
    n = grid[0] * grid[1]
    want = hf_shift_rule(*grid, window, shift)
    assert torch.equal(mask.dense(1, 1, n, n)[0, 0], want)
    assert mask.name == f"swin_w{window}_s{shift}"
    partial, full, any_true, all_true = _exact_blocks(mask, n, n, 1, 8)
    assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)


def test_shifted_windows_with_global_tokens():
    grid, window, shift, num_global = (4, 4), 2, 1, 2
    mask = generate_shifted_windows(grid, window, shift, num_global)
    n = num_global + 16
    dense = mask.dense(1, 1, n, n)[0, 0]
    assert dense[:num_global].all() and dense[:, :num_global].all()
    assert torch.equal(dense[num_global:, num_global:], hf_shift_rule(*grid, window, shift))


def test_shifted_window_index():
    assert shifted_window_index(torch.arange(8), 4, 0).tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert shifted_window_index(torch.arange(8), 4, 2).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("grid,window,shift", [((8, 8), 4, 2), ((6, 10), 3, 1), ((16, 16), 4, 0)])
def test_window_contiguous_order_lists_each_window_together(grid, window, shift):
    rows, cols = grid
    order = window_contiguous_order(grid, window, shift)
    n = rows * cols
    assert order.shape == (padded_length(n),)
    assert torch.equal(order.sort().values, torch.arange(padded_length(n)))  # a permutation, identity past n
    assert torch.equal(order[n:], torch.arange(n, padded_length(n)))
    win = shifted_window_index(order[:n] // cols, window, shift) * (cols + window) + shifted_window_index(
        order[:n] % cols, window, shift
    )
    changes = (win[1:] != win[:-1]).sum()
    assert changes + 1 == win.unique().numel()  # each window's tokens form one run
    # row-major inside a window
    for w in win.unique():
        tokens = order[:n][win == w]
        assert torch.equal(tokens, tokens.sort().values)


@pytest.mark.parametrize("shift", [2, 0])
def test_window_contiguous_windows_are_the_permuted_rule(shift):
    grid, window = (8, 8), 4
    mask, order = generate_window_contiguous_windows(grid, window, shift)
    assert mask.reads_token_tables and mask.name == f"swin_w{window}_s{shift}_permuted"
    n = 64
    want = hf_shift_rule(*grid, window, shift)
    dense = mask.dense(1, 1, n, n)[0, 0]
    assert torch.equal(dense, want[order[:n]][:, order[:n]])
    partial, full, any_true, all_true = _exact_blocks(mask, n, n, 1, 16)
    assert torch.equal(partial | full, any_true) and torch.equal(full, all_true)
    if shift == 0:  # 16-token windows, one block each: every diagonal block full, nothing else
        assert torch.equal(full[0, 0], torch.eye(4, dtype=torch.bool)) and not partial.any()


def test_permuted_mask():
    """The permutation applies to queries and keys; the batch and head indices pass through unchanged."""
    base = Mask(lambda b, h, q, kv: (q + b + 2 * h) % 3 <= kv % 3, name="upper")
    order = torch.tensor([2, 0, 1, 3])
    permuted = generate_permuted(base, order)
    assert permuted.name == "upper_permuted" and permuted.reads_token_tables
    dense = permuted.dense(2, 2, 4, 4)
    for b, h, i, j in itertools.product(range(2), range(2), range(4), range(4)):
        assert bool(dense[b, h, i, j]) == ((int(order[i]) + b + 2 * h) % 3 <= int(order[j]) % 3)


# ------------------------------------------------------------------------------ BatchMask


def test_batch_mask_dense_and_buckets():
    real = torch.tensor([[1] * 20, [1] * 13 + [0] * 7], dtype=torch.bool)
    batch_mask = BatchMask(generate_sliding_window(3), 20, key_is_real=real)
    assert batch_mask.batch == 2 and batch_mask.kv_len == 20
    want = (generate_sliding_window(3) & generate_key_padding(real)).dense(2, 1, 20, 20)
    assert torch.equal(batch_mask.dense(), want)
    assert batch_mask.dense() is batch_mask.dense()  # built once
    exact = batch_mask.block_mask()
    assert exact.seq_lengths == (20, 20) and batch_mask.block_mask() is exact
    bucketed = batch_mask.block_mask(bucketed=True)
    assert bucketed.seq_lengths == (128, 128) and bucketed is not exact
    # keys past the real length (the bucket's extra tokens) are hidden; the real ones are the exact mask's
    padded = torch.zeros(2, 1, 128, 128, dtype=torch.bool)
    padded[..., :20, :20] = want
    check_block_structure(bucketed, padded)
    check_block_structure(exact, want)
    assert repr(batch_mask) == "BatchMask(sliding_w6, 20x20, batch=2, padded)"


def test_batch_mask_without_padding_hides_the_bucket_tail():
    batch_mask = BatchMask(generate_full(), 10, 12, batch=3)
    assert batch_mask.batch == 3 and batch_mask.kv_len == 12
    assert batch_mask.dense().shape == (3, 1, 10, 12) and batch_mask.dense().all()
    bucketed = batch_mask.block_mask(bucketed=True)
    dense_bucket = torch.zeros(3, 1, 128, 128, dtype=torch.bool)
    dense_bucket[..., :12] = True
    _, full, _, _ = check_block_structure(bucketed, dense_bucket)
    assert not full.any()  # the one key block holds the tail: partial, so the mask_mod hides keys 12…127
    queries = torch.arange(128).view(1, 1, 128, 1)
    keys = torch.arange(128).view(1, 1, 1, 128)
    seen = bucketed.mask_mod(
        torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, 1, dtype=torch.long), queries, keys
    )
    assert torch.equal(seen.expand(1, 1, 128, 128)[0, 0], dense_bucket[0, 0])
    assert repr(batch_mask) == "BatchMask(full, 10x12, batch=3)"


@pytest.mark.parametrize("q_len,kv_len", [(20, 37), (37, 20)])
@pytest.mark.parametrize("padded", [False, True])
def test_batch_mask_with_other_key_and_query_lengths(q_len, kv_len, padded):
    """Queries and keys of different lengths (a cross pattern): both BlockMasks span q_len × kv_len (rounded up to
    the block size when bucketed), their blocks safe and exact against the dense mask."""
    real = torch.ones(2, kv_len, dtype=torch.bool)
    real[1, kv_len - 6 :] = False
    mask = Mask(lambda b, h, q, kv: (q - kv).abs() <= 4)
    batch_mask = BatchMask(mask, q_len, kv_len, batch=2, key_is_real=real if padded else None)
    want = (mask & generate_key_padding(real)).dense(2, 1, q_len, kv_len) if padded else mask.dense(2, 1, q_len, kv_len)
    assert torch.equal(batch_mask.dense(), want)
    exact = batch_mask.block_mask()
    assert exact.seq_lengths == (q_len, kv_len)
    partial, full, any_true, _ = check_block_structure(exact, want)
    assert partial.shape[-2:] == (1, 1) and torch.equal(partial | full, any_true)
    bucketed = batch_mask.block_mask(bucketed=True)
    assert bucketed.seq_lengths == (128, 128)
    padded_want = torch.zeros(2, 1, 128, 128, dtype=torch.bool)
    padded_want[..., :q_len, :kv_len] = want
    check_block_structure(bucketed, padded_want)


def test_batch_mask_batch_follows_the_padding():
    real = torch.ones(4, 6, dtype=torch.bool)
    assert BatchMask(generate_full(), 6, batch=1, key_is_real=real).batch == 4
    assert BatchMask(generate_full(), 6, batch=5).batch == 5


def test_batch_mask_dynamic_compile_only_without_padding():
    window = generate_sliding_window(2)
    assert BatchMask(window, 8).dynamic_cpu_compile
    assert not BatchMask(window, 8, key_is_real=torch.ones(1, 8)).dynamic_cpu_compile
    assert not BatchMask(generate_key_padding(torch.ones(1, 8)), 8).dynamic_cpu_compile


def test_sdpa_mask_full_without_padding_is_none():
    assert BatchMask(generate_full(), 8).sdpa_mask(torch.float32, read_values=True) == (None, None)
    assert BatchMask(generate_full(), 8).sdpa_mask(torch.float32, read_values=False) == (None, None)


@pytest.mark.parametrize("read_values", [True, False])
def test_sdpa_mask_key_padding_alone_is_one_row(read_values):
    real = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    additive, has_key = BatchMask(generate_full(), 4, key_is_real=real).sdpa_mask(torch.float64, read_values)
    assert additive.shape == (2, 1, 1, 4) and additive.dtype == torch.float64
    assert torch.equal(additive[:, 0, 0] == 0, real) and torch.isneginf(additive[0, 0, 0, 3])
    if read_values:
        assert has_key is None
    else:
        assert has_key.dtype == torch.float64 and torch.equal(has_key, torch.ones(2, 1, 1, 1, dtype=torch.float64))


@pytest.mark.parametrize("read_values", [True, False])
def test_sdpa_mask_rows_without_keys(read_values):
    """A sample with no real key: its rows see every key (no NaN in SDPA) and has_key zeroes them."""
    real = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    batch_mask = BatchMask(generate_sliding_window(1), 5, key_is_real=real)
    additive, has_key = batch_mask.sdpa_mask(torch.float32, read_values)
    allowed = batch_mask.dense()
    rows_with_keys = allowed.any(-1, keepdim=True)
    assert additive.shape == (2, 1, 5, 5)
    assert torch.equal(additive == 0, allowed | ~rows_with_keys)
    assert has_key.dtype == torch.float32 and torch.equal(has_key, rows_with_keys.float())
    assert batch_mask.sdpa_mask(torch.float32, read_values)[0] is additive  # built once per dtype
    assert batch_mask.sdpa_mask(torch.float64, read_values)[0].dtype == torch.float64


def test_sdpa_mask_pattern_with_every_row_seeing_a_key():
    batch_mask = BatchMask(generate_sliding_window(1), 6)
    additive, has_key = batch_mask.sdpa_mask(torch.float32, read_values=True)
    assert has_key is None
    assert torch.equal(additive == 0, batch_mask.dense())
    assert torch.isneginf(additive[0, 0, 0, 2])
    _, has_key = batch_mask.sdpa_mask(torch.float16, read_values=False)
    assert has_key.dtype == torch.float16 and torch.equal(has_key, torch.ones(1, 1, 6, 1, dtype=torch.float16))


# ------------------------------------------------------------------------------ devices


def _every_form(device):
    """Every mask in every form a kernel asks for, built from inputs on ``device`` and each factory given it: a list
    of tensors."""
    real = torch.ones(2, 20, dtype=torch.bool, device=device)
    flags = global_token_flags(2, 20, positions=(1,), device=device)
    masks = [
        generate_full(),
        generate_sliding_window(3) | generate_global(flags),
        generate_sliding_window(2) & generate_global_keys(flags),
        generate_key_padding(real),
        generate_natten_1d(5, 2, torch.tensor([20, 13], device=device)),
        generate_natten_1d_over_real_tokens(3, 2, 20, real, device=device),
        generate_natten_1d_over_real_tokens(3, 1, 20, None, device=device),
        generate_natten_2d((4, 5), (3, 3), (1, 2), device=device),
        generate_shifted_windows((4, 5), 2, 1, num_global=1, device=device),
        generate_window_contiguous_windows((4, 5), 2, 1, device=device)[0],
        Mask(lambda b, h, q, kv: (q // 3) == (kv // 4)),
    ]
    forms = [window_contiguous_order((4, 5), 2, 1, device=device)]
    grid = BlockGrid(20, 20, 2, 1, torch.device(device), 8)
    forms += [*grid.q_ranges(), *grid.kv_ranges(), *grid.per_block(real, "kv"), *grid.per_block(real, "q")]
    for mask in masks:
        forms.append(mask.dense(2, 1, 20, 20, device=device))
        block_mask = build_block_mask(mask, 20, 20, batch=2, device=device, block_size=8)
        forms += [*block_mask_to_dense_blocks(block_mask), *mask.block_summary(grid)]
        for key_is_real in (None, real):
            batch_mask = BatchMask(mask, 20, batch=2, key_is_real=key_is_real, device=device)
            forms += [batch_mask.dense(), *block_mask_to_dense_blocks(batch_mask.block_mask(bucketed=True))]
            forms += [*block_mask_to_dense_blocks(batch_mask.block_mask())]
            forms += [t for t in batch_mask.sdpa_mask(torch.float32, read_values=False) if t is not None]
    return forms


def test_masks_follow_the_device_they_are_given():
    """A batch on another device than torch's default (meta here, under the CPU default): every mask, in every form,
    is built there (a tensor made on the default device instead fails to mix with the others, or comes out on it)."""
    # every tensor an operation reads or makes, too: a 0-dim CPU capture mixes with meta (or CUDA) tensors as a
    # scalar in eager mode, so only the operations show it (compiled on a GPU, flex cannot read a host tensor)
    with DispatchRecorder() as seen:
        forms = _every_form("meta")
    assert seen.devices == {"meta"}
    assert len(forms) == len(_every_form("cpu"))
    assert all(form.device.type == "meta" for form in forms)
