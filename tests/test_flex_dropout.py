"""CUDA's path for attention dropout past ``DENSE_MAX_ENTRIES`` (kernels/flex_dropout.py), on CPU tensors under CUDA's
policy: the keep mask's statistics, the output and gradients against a dense reference given the same keep mask, and a
``torch.compile(fullgraph=True)`` training step that compiles as one graph (no host read, no data-dependent loop).

The compile tests count dynamo's graphs with ``backend="aot_eager"`` as tests/test_compile_graphs.py does. The default
suite lowers ``DENSE_MAX_ENTRIES`` so that a few hundred tokens take the path (the same code at any length); the
opt-in ``-m exhaustive`` runs it past 4,096 tokens at the real limit (minutes on CPU: the stand-ins are dense).
"""

import itertools
import math

import pytest
import torch
import torch.nn.attention.flex_attention as flex_api

from hf_flexattn import kernels, ops
from hf_flexattn.kernels import flex_dropout
from hf_flexattn.masks import BatchMask, generate_global, generate_sliding_window, padded_length

from helpers import DEVICE, DispatchRecorder, generator, use_cuda_policy

pytestmark = pytest.mark.cuda_policy


def _indices(batch, heads, q_len, kv_len, device=DEVICE):
    def index(n, dim):
        return torch.arange(n, device=device).view([-1 if d == dim else 1 for d in range(4)])

    return index(batch, 0), index(heads, 1), index(q_len, 2), index(kv_len, 3)


def _keep(seed, p, batch=2, heads=3, n=256):
    return flex_dropout.keep_mask(seed, heads, p, *_indices(batch, heads, n, n))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_keep_mask_keeps_each_entry_with_probability_1_minus_p(p):
    seed = torch.tensor(1234, dtype=torch.int32, device=DEVICE)
    keep = _keep(seed, p).float()  # 2 x 3 x 256 x 256 = 393,216 draws
    sigma = math.sqrt(p * (1 - p) / keep.numel())
    assert abs(keep.mean().item() - (1 - p)) < 5 * sigma
    # every row and every column keeps about the same fraction (no structure along either index)
    rows, cols = keep.mean(-1), keep.mean(-2)
    row_sigma = math.sqrt(p * (1 - p) / 256)
    assert (rows - (1 - p)).abs().max() < 6 * row_sigma and (cols - (1 - p)).abs().max() < 6 * row_sigma
    # samples, heads and neighbouring entries draw independently: two masks agree as often as independent draws do
    agree = (1 - p) ** 2 + p**2
    for a, b in [(keep[0], keep[1]), (keep[:, 0], keep[:, 1]), (keep[..., :-1], keep[..., 1:])]:
        assert abs((a == b).float().mean().item() - agree) < 6 * math.sqrt(agree * (1 - agree) / a.numel())
    # a function of the seed: the same seed draws the same mask, another seed another one
    assert torch.equal(_keep(seed.clone(), p), keep.bool())
    other = _keep(torch.tensor(1235, dtype=torch.int32, device=DEVICE), p)
    assert abs((other == keep.bool()).float().mean().item() - agree) < 0.01


def test_the_keep_scale_is_1_over_1_minus_the_applied_p():
    for p in (0.1, 0.25, 0.5):
        applied = flex_dropout.drop_threshold(p) / 2**flex_dropout.KEEP_BITS
        assert abs(applied - p) <= 2 ** -(flex_dropout.KEEP_BITS + 1)
        assert flex_dropout.keep_scale(p) == pytest.approx(1 / (1 - applied), rel=1e-12)
    assert flex_dropout.keep_scale(1.0) == 0.0


def test_the_keep_mask_computes_in_int32_on_0_dim_int32_indices():
    """As flex traces mods (tests/test_mod_int32.py): a GPU emulates int64 arithmetic."""
    seed = flex_dropout.draw_seed(DEVICE)
    indices = [torch.tensor(i, dtype=torch.int32, device=DEVICE) for i in (1, 2, 300, 7)]
    with DispatchRecorder() as recorder:
        keep = flex_dropout.keep_mask(seed, 4, 0.1, *indices)
    assert keep.dtype == torch.bool and recorder.int64_ops == []


def _lowbias32(x: int) -> int:
    """lowbias32 (C. Wellons' hash prospector) on Python ints as unsigned 32-bit words: the keep mask's reference."""
    word = 0xFFFFFFFF
    x &= word
    x ^= x >> 16
    x = (x * 0x7FEB352D) & word
    x ^= x >> 15
    x = (x * 0x846CA68B) & word
    return x ^ (x >> 16)


def _hash_reference(seed: int, heads: int, b: int, h: int, q: int, kv: int) -> int:
    """The module docstring's keep hash of entry (b, h, q, kv): its top 24 bits."""
    return _lowbias32(_lowbias32(_lowbias32(seed + b * heads + h) ^ q) ^ kv) >> (32 - flex_dropout.KEEP_BITS)


def test_the_mix_is_lowbias32_on_every_int32_word():
    """Signed int32 words stand for unsigned ones (two's complement): the shifts must act as logical ones and the
    products wrap as unsigned ones do, for words with the sign bit set too."""
    words = torch.randint(-(2**31), 2**31, (2000,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    words = torch.cat(
        [words, torch.tensor([0, 1, -1, 2**31 - 1, -(2**31), 0x7FEB352D, 0xFFFF, 1 << 16], dtype=torch.int32)]
    )
    got = flex_dropout._mix(words)
    assert got.dtype == torch.int32
    assert [v & 0xFFFFFFFF for v in got.tolist()] == [_lowbias32(v) for v in words.tolist()]


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_the_keep_mask_is_the_documented_hash_and_keeps_entries_at_the_threshold(index_dtype):
    """Entry (b, h, q, kv) is kept iff the top 24 bits of its hash are at least round(p·2²⁴), computed in int32 for
    int64 indices too (as flex passes them on CPU)."""
    seed, heads = 1_234_567_891, 3
    b, h, q, kv = (i.to(index_dtype) for i in _indices(2, heads, 9, 11, device="cpu"))
    entries = itertools.product(range(2), range(heads), range(9), range(11))
    hashes = torch.tensor([_hash_reference(seed, heads, *entry) for entry in entries]).view(2, heads, 9, 11)
    seed_t = torch.tensor(seed, dtype=torch.int32)
    for p in (0.1, 0.5, 0.9):
        with DispatchRecorder() as recorder:  # int32 arithmetic whatever the indices' dtype (a GPU emulates int64)
            got = flex_dropout.keep_mask(seed_t, heads, p, b, h, q, kv)
        assert torch.equal(got, hashes >= flex_dropout.drop_threshold(p)) and recorder.int64_ops == []
    # at the threshold an entry is kept, one step above it dropped (an entry of odd hash and one of even hash: all 24
    # bits count)
    for parity in (0, 1):
        entry = next(
            e for e in itertools.product(range(2), range(heads), range(9), range(11)) if hashes[e] % 2 == parity
        )
        value = int(hashes[entry])
        at, above = (flex_dropout.keep_mask(seed_t, heads, t / 2**24, b, h, q, kv)[entry] for t in (value, value + 1))
        assert bool(at) and not bool(above)


def test_the_seed_is_an_int32_draw_on_the_device_asked_from_a_wide_range():
    """Made on the device passed (under a meta default device), 0-dim int32, and from a range wide enough that
    256 draws never repeat one another (a narrow range would repeat dropout masks across steps)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        seeds = [flex_dropout.draw_seed("cpu") for _ in range(256)]
    assert all(s.device.type == "cpu" and s.dtype == torch.int32 and s.shape == () for s in seeds)
    values = [int(s) for s in seeds]
    assert len(set(values)) == 256 and min(values) >= 0 and max(values) > 2**30


def test_the_kept_block_mask_keeps_the_patterns_blocks_lengths_and_heads():
    """Any pattern (here one that depends on the head, in blocks of 64, on lengths that are no block multiple): the
    same block size, lengths and listed blocks, every block partial, and the mask_mod the pattern's & the keep mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    def widening(b, h, q, kv):  # a band whose width grows with the head
        return (q - kv).abs() <= 20 * (h + 1)

    pattern = create_block_mask(widening, 2, 3, 200, 190, device="cpu", BLOCK_SIZE=64)
    seed = torch.tensor(99, dtype=torch.int32)
    kept = flex_dropout.kept_block_mask(pattern, seed, 3, 0.4)
    assert kept.BLOCK_SIZE == pattern.BLOCK_SIZE == (64, 64) and kept.seq_lengths == pattern.seq_lengths == (200, 190)
    assert torch.equal(kept.to_dense(), pattern.to_dense())
    assert kept.full_kv_num_blocks is None or not kept.full_kv_num_blocks.any()
    indices = _indices(2, 3, 200, 190, device="cpu")
    want = widening(*indices) & flex_dropout.keep_mask(seed, 3, 0.4, *indices)
    assert torch.equal(kept.mask_mod(*indices), want)


def _case(batch=2, heads=2, n=300, head_dim=8, device=DEVICE):
    """A padded sliding window with a global token, a learnable relative-position bias, and (B, H, N, D) inputs."""
    g = torch.Generator(device=device).manual_seed(0)
    real = torch.ones(batch, n, dtype=torch.bool, device=device)
    real[1, 211:] = False
    is_global = torch.zeros(1, padded_length(n), dtype=torch.bool, device=device)
    is_global[:, 0] = True
    mask = BatchMask(
        generate_sliding_window(40) | generate_global(is_global), n, batch=batch, key_is_real=real, device=device
    )
    table = (0.5 * torch.randn(2 * n - 1, generator=g, device=device)).requires_grad_()

    def relative_bias(score, b, h, q, kv):
        return score + table[q - kv + n - 1]

    qkv = [torch.randn(batch, heads, n, head_dim, generator=g, device=device).requires_grad_() for _ in range(3)]
    return mask, relative_bias, table, qkv


def _dropout_reference(qkv, mask, table, p, seed):
    """HF's eager attention with dropout, given the keep mask: softmax, then P ⊙ keep / (1 − p), then V."""
    q, k, v = qkv
    batch, heads, n, _ = q.shape
    b, h, qi, kv = _indices(batch, heads, n, n, q.device)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + table[qi - kv + n - 1]
    probs = torch.softmax(scores.masked_fill(~mask.dense(), -math.inf), -1).nan_to_num(0.0)
    keep = flex_dropout.keep_mask(seed, heads, p, b, h, qi, kv)
    return (probs * keep * flex_dropout.keep_scale(p)) @ v


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_output_and_gradients_match_the_dense_reference_given_the_same_keep_mask(p, monkeypatch):
    use_cuda_policy(monkeypatch)
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", 256 * 256)  # 300 tokens take the path
    mask, score_mod, table, qkv = _case()
    assert kernels.choose_path(qkv[0], mask, p, True, True) == "flex_dropout"
    torch.manual_seed(7)
    out = kernels.attend(*qkv, mask, score_mod, dropout_p=p, score_mod_params=[table])
    torch.manual_seed(7)  # the path's seed is torch's next draw: deterministic under a fixed torch seed
    want = _dropout_reference(qkv, mask, table, p, flex_dropout.draw_seed(DEVICE))
    torch.testing.assert_close(out, want, atol=2e-6, rtol=1e-5)
    grad_out = torch.randn(out.shape, generator=generator(1), device=DEVICE)
    got = torch.autograd.grad(out, [*qkv, table], grad_out)
    expected = torch.autograd.grad(want, [*qkv, table], grad_out)
    for name, a, b in zip(["q", "k", "v", "bias table"], got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    # the mask really drops: without dropout the output differs, with another seed too
    plain = kernels.attend(*qkv, mask, score_mod, score_mod_params=[table])
    other = kernels.attend(*qkv, mask, score_mod, dropout_p=p, score_mod_params=[table])
    assert (out - plain).abs().max() > 0.05 and (out - other).abs().max() > 0.05


def test_dropout_preserves_each_rows_probability_mass_in_expectation(monkeypatch):
    """With V = 1 each output is a row's kept mass Σ keep·P / (1 − p): 1 in expectation (the 1/(1 − p) scaling), with
    variance p/(1 − p)·ΣP², the mean over rows within 5σ of 1."""
    use_cuda_policy(monkeypatch)
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", 256 * 256)
    mask, _, _, (q, k, v) = _case(heads=4)
    p = 0.3
    torch.manual_seed(3)
    with torch.no_grad():
        mass = kernels.attend(q, k, torch.ones_like(v), mask, None, dropout_p=p)[..., 0]
        scores = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).masked_fill(~mask.dense(), -math.inf)
        probs = torch.softmax(scores, -1)
    variance = p / (1 - p) * probs.square().sum(-1)
    sigma = variance.sum().sqrt().item() / mass.numel()
    assert abs(mass.mean().item() - 1) < 5 * sigma
    # and spread as the draws spread it: the rows' squared deviations average to the variance
    assert ((mass - 1).square().mean() / variance.mean()).item() == pytest.approx(1, abs=0.2)


def test_flex_dropout_attention_uses_the_seed_given_the_query_dtype_and_the_callers_flex_options(monkeypatch):
    """A seed passed is the mask's (not a fresh draw); the output is in the query's dtype (float64 here); both flex
    calls get the caller's ``dynamic`` and ``pad_small_heads`` (False unless asked); a seed drawn is drawn on the
    query's device (under a meta default device)."""
    use_cuda_policy(monkeypatch)
    calls = []
    real_run_flex = flex_dropout.run_flex

    def recording_run_flex(*args, **kwargs):
        calls.append((args[6:], kwargs))
        return real_run_flex(*args, **kwargs)

    monkeypatch.setattr(flex_dropout, "run_flex", recording_run_flex)
    mask, score_mod, table, qkv = _case(n=256)
    q, k, v = (x.detach().double() for x in qkv)
    block_mask = mask.block_mask()
    seed = torch.tensor(4321, dtype=torch.int32)
    torch.manual_seed(0)
    out = flex_dropout.flex_dropout_attention(q, k, v, block_mask, score_mod, 8**-0.5, 0.3, True, seed=seed)
    assert out.dtype == torch.float64
    want = _dropout_reference((q, k, v), mask, table.detach().double(), 0.3, seed)
    torch.testing.assert_close(out, want, atol=2e-6, rtol=1e-5)
    assert calls == [((True, False), {"return_lse": True})] * 2
    calls.clear()
    with torch.device("meta"):
        drawn = flex_dropout.flex_dropout_attention(q, k, v, block_mask, score_mod, 8**-0.5, 0.3, False, True)
    assert drawn.device.type == "cpu" and (drawn - out).abs().max() > 0.05  # another seed's mask
    assert calls == [((False, True), {"return_lse": True})] * 2


def test_the_librarys_own_compile_of_the_dropout_path_compiles_once(monkeypatch):
    """Outside a user's ``torch.compile`` hf_flexattn compiles flex itself (kernels/flex.py), and each call joins a
    new keep-mask closure with a new seed to the pattern. Dynamo guards on the closure's code, not on the closure, and
    takes the captured seed as an input: the first training call compiles two graphs (the pattern's flex and the
    kept one's), later calls with new seeds and a second length none, and each call draws its own seed's mask."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    use_cuda_policy(monkeypatch)
    monkeypatch.setattr(flex_api, "_validate_device", lambda *tensors: None)
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", 256 * 256)
    compiled = {}

    def aot_eager_flex(dynamic):  # the library's compiled flex, traced by dynamo as on CUDA, run eagerly
        if dynamic not in compiled:
            compiled[dynamic] = torch.compile(flex_api.flex_attention, dynamic=dynamic, backend="aot_eager")
        return compiled[dynamic]

    torch._dynamo.reset()
    graphs = []
    for step, n in enumerate([300, 300, 310]):
        mask, score_mod, table, qkv = _case(n=n)
        assert kernels.choose_path(qkv[0], mask, 0.1, True, True) == "flex_dropout"
        results = []
        for flex_call in (aot_eager_flex, lambda dynamic: kernels.flex.flex_reference):
            monkeypatch.setattr(kernels.flex, "compiled_flex_attention", flex_call)
            before = counters["stats"]["unique_graphs"]
            torch.manual_seed(step)
            out = kernels.attend(*qkv, mask, score_mod, dropout_p=0.1, score_mod_params=[table])
            results.append((out, torch.autograd.grad(out.square().sum(), [*qkv, table])))
            if flex_call is aot_eager_flex:
                graphs.append(counters["stats"]["unique_graphs"] - before)
        (got, got_grads), (want, want_grads) = results
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        for name, a, b in zip(["q", "k", "v", "bias table"], got_grads, want_grads):
            # an entry of the table's gradient sums up to B·H·N = 1,200 float32 products, in an order that varies from
            # run to run (both sides: their error against float64 ranged 4e-5 to 1.8e-4 over identical runs): its
            # rounding scales with the largest entries (~115); a small entry missed 1e-5 by 2e-5 in ~1 run of 3 (2.11)
            atol = 1e-6 * b.abs().max().item() if name == "bias table" else 1e-5
            torch.testing.assert_close(a, b, atol=atol, rtol=1e-4, msg=name)
    assert graphs == [2, 0, 0]
    assert len(kernels.flex.compile_events) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_flex_dropout_on_cuda_matches_the_dense_reference_given_the_same_keep_mask():
    """On a GPU: the hash in Triton's int32 arithmetic, in the forward and the backward kernels, draws the mask that
    torch's int32 ops draw (head dim 8: zero-padded to 16 for flex)."""
    mask, score_mod, table, qkv = _case(device="cuda")
    seed = flex_dropout.draw_seed("cuda")
    out = flex_dropout.flex_dropout_attention(
        *qkv, mask.block_mask(), score_mod, 8**-0.5, 0.1, dynamic=True, pad_small_heads=True, seed=seed
    )
    want = _dropout_reference(qkv, mask, table, 0.1, seed)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-3)
    grad_out = torch.randn(out.shape, device="cuda")
    got = torch.autograd.grad(out, [*qkv, table], grad_out)
    expected = torch.autograd.grad(want, [*qkv, table], grad_out)
    for name, a, b in zip(["q", "k", "v", "bias table"], got, expected):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=name)


def _compiled_training_step(n, dense_max_entries, monkeypatch):
    """A compiled (fullgraph, dynamic, aot_eager) longformer forward with dropout at ``n`` and ``n + 10`` tokens on a
    padded batch with a global token, each followed by its backward; the graphs each call made, and the compiled step
    against the eager one drawn from the same torch seed."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    use_cuda_policy(monkeypatch)
    monkeypatch.setattr(flex_api, "_validate_device", lambda *tensors: None)
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", dense_max_entries)
    paths = []
    choose = kernels.choose_path

    def recorded_choice(*args):
        path = choose(*args)
        if not torch.compiler.is_compiling():  # the eager runs' choices (a list written in the graph is guarded on)
            paths.append(path)
        return path

    monkeypatch.setattr(kernels, "choose_path", recorded_choice)

    def forward(q, k, v, is_global, real):
        return ops.longformer_attention(q, k, v, window=64, global_mask=is_global, padding_mask=real, dropout_p=0.1)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(forward, fullgraph=True, dynamic=True, backend="aot_eager")
    graphs = []
    for length in (n, n + 10):
        g = generator(length)
        qkv = [torch.randn(2, 1, length, 8, generator=g, device=DEVICE).requires_grad_() for _ in range(3)]
        is_global = torch.zeros(2, length, dtype=torch.bool, device=DEVICE)
        is_global[:, 0] = True
        real = torch.ones(2, length, dtype=torch.bool, device=DEVICE)
        real[1, length - 37 :] = False
        results = []
        for run in (compiled, forward):
            before = counters["stats"]["unique_graphs"]
            torch.manual_seed(11)
            out = run(*qkv, is_global, real)
            grads = torch.autograd.grad(out.square().sum(), qkv)
            results.append((out.detach(), grads))
            if run is compiled:
                graphs.append(counters["stats"]["unique_graphs"] - before)
        (got, got_grads), (want, want_grads) = results
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert set(paths) == {"flex_dropout"}
    assert not counters["graph_break"], dict(counters["graph_break"])
    return graphs


def test_a_compiled_training_step_with_dropout_is_one_graph(monkeypatch):
    """No ``.item()``/``.tolist()`` and no loop over data: fullgraph compiles, one graph, and a second length adds
    none (the path's shapes follow the length symbolically)."""
    assert _compiled_training_step(300, 256 * 256, monkeypatch) == [1, 0]


@pytest.mark.exhaustive
def test_a_compiled_training_step_with_dropout_past_4096_tokens_is_one_graph(monkeypatch):
    assert _compiled_training_step(4160, kernels.DENSE_MAX_ENTRIES, monkeypatch) == [1, 0]
