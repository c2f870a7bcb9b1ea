"""Randomized differential tests of ``hf_flexattn.ops``: every op, under every path the device policies can pick,
against plain softmax attention with the dense rule (outputs on real rows and the gradients of every input).

Drawn: batch, heads, head dim, lengths, padding (either side, in between), fixed and per-sample global tokens,
windows, kernel sizes, dilations, non-square grids, scales, dtypes, and whether the call runs in training,
``no_grad`` or ``inference_mode``. float64 is compared to 1e-9 (the dense and structured paths claim exactness),
float32 to float32 rounding, bfloat16 forwards to its precision.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hf_flexattn import ops

from .rules import (
    POLICIES,
    can_train,
    examples,
    grad_context,
    grid_offsets_bias,
    key_padding,
    longformer_rule,
    natten_1d_rule,
    natten_2d_rule,
    policy,
    shifted_window_rule,
)
from helpers import reference_attention, rel_err

pytestmark = pytest.mark.cpu_only  # the policies are switched through CPU seams

# bounds on |out − ref| relative to max(1, max |ref|)
OUTPUT_BOUND = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 5e-2}
GRAD_BOUND = {torch.float64: 1e-8, torch.float32: 2e-4}
# gradients that are 0 in exact arithmetic (q's, where a row sees one key) are rounding noise: ‖g − w‖ is compared
# with at least this norm
GRAD_FLOOR = {torch.float64: 1e-4, torch.float32: 1e-2}


@st.composite
def run_settings(draw):
    """(policy, dtype, grad mode): the combinations that can run here."""
    name = draw(st.sampled_from(POLICIES))
    if name in ("flex", "block_sparse"):
        dtype = torch.float32  # the block-sparse path keeps float32 row statistics; flex has no float64 template
    else:
        dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
    modes = ["no_grad", "inference_mode"]
    if can_train(name, dtype) and dtype != torch.bfloat16:
        modes.append("train")
    return name, dtype, draw(st.sampled_from(modes))


def _tensors(seed, shapes, dtype):
    """Normal float64 tensors rounded to ``dtype`` (the reference then sees exactly the op's inputs)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def check(run, op, reference, inputs, real_rows=None, seed=0):
    """``op(*inputs)`` under ``run`` = (policy, dtype, grad mode) equals ``reference(*inputs in float64)`` on the
    real rows (``real_rows`` (B, N), None: all), and in training so do the gradients of every input."""
    name, dtype, mode = run
    train = mode == "train"
    inputs = [x.detach().requires_grad_(train) for x in inputs]
    with policy(name), grad_context(mode):
        out = op(*inputs)
    assert out.dtype == dtype
    wide = [x.detach().double().requires_grad_(train) for x in inputs]
    ref = reference(*wide)
    rows = torch.ones(out.shape[0], out.shape[2], dtype=torch.bool) if real_rows is None else real_rows
    diff = (out.double() - ref.detach()).transpose(1, 2)[rows]
    if diff.numel():
        bound = OUTPUT_BOUND[dtype] * max(1.0, ref.detach().transpose(1, 2)[rows].abs().max().item())
        assert diff.abs().max() <= bound, (run, diff.abs().max(), bound)
    if train:
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        weights = weights * rows[:, None, :, None]  # padded rows are no one's output
        got = torch.autograd.grad((out.double() * weights).sum(), inputs, allow_unused=True)
        want = torch.autograd.grad((ref * weights).sum(), wide, allow_unused=True)
        for i, (g, w) in enumerate(zip(got, want)):
            if g is None and w is None:  # an input neither side reads (a bias table left out)
                continue
            g = torch.zeros_like(w) if g is None else g.double()
            w = torch.zeros_like(g) if w is None else w
            error = rel_err(g, w, floor=GRAD_FLOOR[dtype])
            assert error <= GRAD_BOUND[dtype], (run, i, error)


scales = st.one_of(st.none(), st.floats(0.05, 2.0))


@settings(max_examples=examples(8))
@given(
    run=run_settings(),
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    dim=st.integers(1, 8),
    n=st.integers(1, 70),
    scale=scales,
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_full_attention(run, batch, heads, dim, n, scale, seed, data):
    real = data.draw(key_padding(batch, n))
    q, k, v = _tensors(seed, [(batch, heads, n, dim)] * 3, run[1])
    check(
        run,
        lambda q, k, v: ops.full_attention(q, k, v, padding_mask=real, scale=scale),
        lambda q, k, v: reference_attention(q, k, v, real[:, None, None, :], scale=scale),
        (q, k, v),
        real,
        seed,
    )


@settings(max_examples=examples(16))
@given(
    run=run_settings(),
    batch=st.integers(1, 3),
    heads=st.integers(1, 2),
    dim=st.integers(1, 6),
    n=st.integers(1, 110),
    half=st.integers(1, 12),
    globals_kind=st.sampled_from(["none", "fixed", "per_sample"]),
    padded=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
@example(  # the band plan (the structured policy: past its crossover), padding and globals
    run=("structured", torch.float64, "train"),
    batch=2,
    heads=1,
    dim=3,
    n=100,
    half=4,
    globals_kind="per_sample",
    padded=True,
    seed=0,
    data=None,
)
def test_longformer_attention(run, batch, heads, dim, n, half, globals_kind, padded, seed, data):
    if data is None:  # the explicit example: right padding on sample 1, globals 0 and 50 (sample 0 also 99)
        real = torch.ones(batch, n, dtype=torch.bool)
        real[1, 80:] = False
        flags = torch.zeros(batch, n, dtype=torch.bool)
        flags[:, [0, 50]] = True
        flags[0, 99] = True
    else:
        real = data.draw(key_padding(batch, n)) if padded else None
        flags = None
        if globals_kind == "fixed":
            positions = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
            flags = torch.zeros(batch, n, dtype=torch.bool)
            flags[:, positions] = True
        elif globals_kind == "per_sample":
            flags = torch.rand(batch, n, generator=torch.Generator().manual_seed(seed)) < 0.1
    q, k, v = _tensors(seed, [(batch, heads, n, dim)] * 3, run[1])
    everything = torch.ones(batch, n, dtype=torch.bool)
    is_global = torch.zeros(batch, n, dtype=torch.bool) if flags is None else flags
    is_global = is_global & (everything if real is None else real)  # a padded token is never global
    rule = longformer_rule(everything if real is None else real, half, is_global)
    check(
        run,
        lambda q, k, v: ops.longformer_attention(q, k, v, 2 * half, global_mask=flags, padding_mask=real),
        lambda q, k, v: reference_attention(q, k, v, rule),
        (q, k, v),
        real,
        seed,
    )


@settings(max_examples=examples(16))
@given(
    run=run_settings(),
    batch=st.integers(1, 3),
    heads=st.integers(1, 2),
    dim=st.integers(1, 6),
    n=st.integers(1, 110),
    kernel=st.sampled_from([1, 3, 5, 7, 9]),
    dilation=st.integers(1, 4),
    padded=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_neighborhood_attention_1d(run, batch, heads, dim, n, kernel, dilation, padded, seed, data):
    real = data.draw(key_padding(batch, n)) if padded else None
    q, k, v = _tensors(seed, [(batch, heads, n, dim)] * 3, run[1])
    rule = natten_1d_rule(torch.ones(batch, n, dtype=torch.bool) if real is None else real, kernel, dilation)
    check(
        run,
        lambda q, k, v: ops.neighborhood_attention_1d(q, k, v, kernel, dilation, padding_mask=real),
        lambda q, k, v: reference_attention(q, k, v, rule),
        (q, k, v),
        real,
        seed,
    )


@st.composite
def grid_kernel_dilation(draw, max_side=24):
    """A non-square grid and, per axis, an odd kernel and a dilation with kernel·dilation ≤ the side."""
    grid, kernel, dilation = [], [], []
    for _ in range(2):
        side = draw(st.integers(1, max_side))
        k = draw(st.sampled_from([k for k in (1, 3, 5, 7) if k <= side]))
        d = draw(st.integers(1, side // k))
        grid.append(side)
        kernel.append(k)
        dilation.append(d)
    return tuple(grid), tuple(kernel), tuple(dilation)


@settings(max_examples=examples(12))
@given(
    run=run_settings(),
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    dim=st.integers(1, 4),
    geometry=grid_kernel_dilation(),
    five_d=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(  # the halo plan (forced: its crossover is far larger), unequal dilation sub-grids
    run=("structured", torch.float64, "train"),
    batch=1,
    heads=1,
    dim=2,
    geometry=((24, 23), (5, 3), (1, 2)),
    five_d=False,
    seed=0,
)
def test_neighborhood_attention_2d(run, batch, heads, dim, geometry, five_d, seed):
    grid, kernel, dilation = geometry
    n = grid[0] * grid[1]
    q, k, v = _tensors(seed, [(batch, heads, n, dim)] * 3, run[1])
    rule = natten_2d_rule(grid, kernel, dilation)

    def op(q, k, v):
        if five_d:
            out = ops.neighborhood_attention_2d(*(x.unflatten(2, grid) for x in (q, k, v)), kernel, dilation)
            return out.flatten(2, 3)
        return ops.neighborhood_attention_2d(q, k, v, kernel, dilation, grid=grid)

    check(run, op, lambda q, k, v: reference_attention(q, k, v, rule), (q, k, v), seed=seed)


@settings(max_examples=examples(12))
@given(
    run=run_settings(),
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    dim=st.integers(1, 4),
    window=st.integers(1, 5),
    tiles=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    with_bias=st.booleans(),
    scale=scales,
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_swin_window_attention(run, batch, heads, dim, window, tiles, with_bias, scale, seed, data):
    grid = (window * tiles[0], window * tiles[1])
    shift = data.draw(st.integers(0, window - 1))
    n = grid[0] * grid[1]
    q, k, v, table = _tensors(seed, [(batch, heads, n, dim)] * 3 + [((2 * window - 1) ** 2, heads)], run[1])
    rule = shifted_window_rule(grid, window, shift)
    # offsets within a window are below the window size: the table covers every allowed pair
    reference = lambda q, k, v, table: reference_attention(
        q, k, v, rule, grid_offsets_bias(table, grid, window) if with_bias else None, scale
    )
    check(
        run,
        lambda q, k, v, table: ops.swin_window_attention(
            q, k, v, window, shift, table if with_bias else None, grid=grid, scale=scale
        ),
        reference,
        (q, k, v, table),
        seed=seed,
    )


@settings(max_examples=examples(6))
@given(
    run=run_settings(),
    batch=st.integers(1, 3),
    heads=st.integers(1, 2),
    dim=st.integers(1, 6),
    n=st.integers(1, 40),
    proj_len=st.integers(1, 12),
    share=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_linformer_attention(run, batch, heads, dim, n, proj_len, share, seed, data):
    real = data.draw(key_padding(batch, n))
    max_len = n + data.draw(st.integers(0, 8))
    q, k, v, E, F = _tensors(seed, [(batch, heads, n, dim)] * 3 + [(max_len, proj_len)] * 2, run[1])

    def reference(q, k, v, E, F):
        zeroed = real[:, None, :, None].to(q.dtype)  # padded keys and values take no part in the projection
        keys = torch.einsum("nk,bhnd->bhkd", E[:n], k * zeroed)
        values = torch.einsum("nk,bhnd->bhkd", (E if share else F)[:n], v * zeroed)
        return reference_attention(q, keys, values)

    op = lambda q, k, v, E, F: ops.linformer_attention(q, k, v, E, None if share else F, padding_mask=real)
    check(run, op, reference, (q, k, v, E, F), real, seed)


@settings(max_examples=examples(6))
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 2),
    dim=st.integers(1, 8),
    n=st.integers(1, 40),
    num_features=st.integers(1, 24),
    mode=st.sampled_from(["train", "no_grad", "inference_mode"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_performer_attention(batch, heads, dim, n, num_features, mode, seed, data):
    """FAVOR+ written out: φ(x) = exp(ω·x' − ‖x'‖²/2)/√m, x' = x·d^(−1/4), attention weights φ(q)·φ(k) over the
    real keys, normalised per row (the library's stabilising maxima cancel)."""
    real = data.draw(key_padding(batch, n))
    q, k, v, features = _tensors(seed, [(batch, heads, n, dim)] * 3 + [(num_features, dim)], torch.float64)
    q, k = q * 0.5, k * 0.5  # keeps exp() of the unstabilised reference in range

    def phi(x, features):
        x = x * dim**-0.25
        return torch.exp(x @ features.T - (x * x).sum(-1, keepdim=True) / 2) / num_features**0.5

    def reference(q, k, v, features):
        weights = (phi(q, features) @ phi(k, features).transpose(-1, -2)) * real[:, None, None, :]
        return (weights @ v) / weights.sum(-1, keepdim=True)

    op = lambda q, k, v, features: ops.performer_attention(q, k, v, features, padding_mask=real)
    check(("cpu", torch.float64, mode), op, reference, (q, k, v, features), real, seed)
