"""kernels: compiled flex, the dense path and the block-sparse autograd path against the dense reference, and the
choice among them."""

import pytest
import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask
from torch.utils._python_dispatch import TorchDispatchMode

from hf_flexattn import compat, kernels
from hf_flexattn.kernels import attend
from hf_flexattn.kernels.block_sparse import block_sparse_attention
from hf_flexattn.kernels.dense import attention_probabilities, dense_attention, materialise_bias
from hf_flexattn.masks import (
    BatchMask,
    Mask,
    build_block_mask,
    generate_full,
    generate_global,
    generate_key_padding,
    generate_sliding_window,
    padded_length,
)

from helpers import DispatchRecorder, reference_attention, rel_err, tol, use_cuda_policy


def _case(seed=0, B=2, H=3, N=300, D=16, block=64):
    torch.manual_seed(seed)
    real = torch.ones(B, N, dtype=torch.bool)
    real[1, 200:] = False
    glob = torch.zeros(B, N, dtype=torch.bool)
    glob[:, 0] = True
    glob[1, 150] = True
    mask = (generate_sliding_window(40) | generate_global(glob)) & generate_key_padding(real)
    block_mask = build_block_mask(mask, N, N, batch=B, device="cpu", block_size=block)
    qkv = [torch.randn(B, H, N, D, requires_grad=True) for _ in range(3)]
    return mask, block_mask, qkv, mask.dense(B, 1, N, N)


def _bias_mod(score, b, h, q, kv):
    return score + 0.01 * (q - kv).float() + 0.1 * h.float()


def _bias(N, H):
    pos = torch.arange(N)
    return 0.01 * (pos[:, None] - pos[None, :]).float() + 0.1 * torch.arange(H).float().view(H, 1, 1)


@pytest.mark.parametrize("with_score_mod", [False, True])
def test_block_sparse_forward_and_backward_match_dense(with_score_mod):
    _, block_mask, (q, k, v), dense = _case()
    score_mod = _bias_mod if with_score_mod else None
    bias = _bias(q.shape[2], q.shape[1]) if with_score_mod else None
    out = block_sparse_attention(q, k, v, block_mask, score_mod=score_mod)
    ref = reference_attention(q, k, v, dense, bias=bias)
    assert (out - ref).abs().max() < tol(1e-5)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want):
        assert rel_err(g, w) < tol(1e-5)


def test_learnable_score_mod_tensor_gets_gradient():
    _, block_mask, (q, k, v), dense = _case(N=200)
    table = torch.randn(401, requires_grad=True)

    def rel_bias(score, b, h, qi, kv):
        return score + table[qi - kv + 200]

    out = block_sparse_attention(q, k, v, block_mask, score_mod=rel_bias, score_mod_params=[table])
    pos = torch.arange(200)
    ref = reference_attention(q, k, v, dense, bias=table[pos[:, None] - pos[None, :] + 200])
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, table), grad)
    want = torch.autograd.grad(ref, (q, table), grad)
    assert rel_err(got[1], want[1]) < tol(1e-5)
    assert rel_err(got[0], want[0]) < tol(1e-5)


def test_block_sparse_without_a_mask_mod_attends_to_every_key_of_its_listed_blocks():
    """A BlockMask with no ``mask_mod`` (torch's constructor takes ``None``) is its block lists alone: every key
    token of a listed block, row 0 included, against the dense reference of those blocks."""
    _, listed, (q, k, v), _ = _case(N=200)
    bare = BlockMask(listed.seq_lengths, listed.kv_num_blocks, listed.kv_indices, *[None] * 6, listed.BLOCK_SIZE, None)
    blocks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    for b in range(2):
        for row, (count, indices) in enumerate(zip(listed.kv_num_blocks[b, 0], listed.kv_indices[b, 0])):
            blocks[b, 0, row, indices[:count]] = True
    dense = blocks.repeat_interleave(64, 2).repeat_interleave(64, 3)[..., :200, :200]
    with torch.no_grad():
        out = block_sparse_attention(q, k, v, bare)
    assert (out - reference_attention(q, k, v, dense)).abs().max() < tol(1e-5)


def test_block_sparse_value_gradient_passes_through_the_forwards_dropout():
    """The output is linear in the values, out = dropout(P) @ v, so ⟨g, out⟩ = ⟨v, ∂⟨g, out⟩/∂v⟩ exactly when
    backward applies the forward's dropout mask to P (one call: one seed)."""
    _, block_mask, (q, k, v), _ = _case(N=200)
    out = block_sparse_attention(q, k, v, block_mask, dropout_p=0.5)
    grad = torch.randn_like(out)
    (grad_v,) = torch.autograd.grad(out, v, grad)
    assert abs((grad * out).sum() - (v * grad_v).sum()) < tol(1e-4) * (grad * out).abs().sum()


def test_block_sparse_in_float64_with_a_scale_matches_the_reference_to_float64_precision():
    """float64 stays float64 throughout (the saved log-sum-exp included: backward rebuilds the probabilities from it),
    and a given scale is the one used."""
    _, block_mask, (q, k, v), dense = _case(N=200)
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(q, k, v, block_mask, scale=0.3)
    ref = reference_attention(q, k, v, dense, scale=0.3)
    assert out.dtype == torch.float64 and (out - ref).abs().max() < 1e-12
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert rel_err(g, w) < 1e-10


def test_block_sparse_computes_bfloat16_in_float32_and_returns_bfloat16():
    """bf16 inputs give a bf16 output within a rounding of the float32 result on the same (rounded) inputs; computed
    in bf16 throughout, the error is several times that."""
    _, block_mask, (q, k, v), dense = _case(N=200)
    q, k, v = (t.detach().bfloat16() for t in (q, k, v))
    out = block_sparse_attention(q, k, v, block_mask)
    ref = reference_attention(q.float(), k.float(), v.float(), dense)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).abs() <= 2**-8 * ref.abs() + 1e-6).all()


def test_block_sparse_without_dropout_leaves_the_global_generator_alone():
    """No dropout, no draw: a forward without dropout does not move torch's global random stream (so a patched
    model in eval mode leaves the caller's random numbers as the unpatched one does)."""
    _, block_mask, (q, k, v), _ = _case(N=200)
    state = torch.get_rng_state()
    with torch.no_grad():
        block_sparse_attention(q, k, v, block_mask)
    assert torch.equal(torch.get_rng_state(), state)


def test_block_sparse_per_head_mask_shared_by_the_samples_and_a_score_mod_per_sample():
    """A BlockMask with one list per head shared by the samples (batch 1, heads 2) and a score_mod that reads the
    sample: each head gathers its own keys, against the dense reference."""
    torch.manual_seed(0)
    per_head = Mask(lambda b, h, qi, kv: (qi - kv).abs() <= 20 + 60 * h)
    block_mask = build_block_mask(per_head, 200, batch=1, heads=2, block_size=64)
    q, k, v = (torch.randn(2, 2, 200, 16) for _ in range(3))

    def sample_bias(score, b, h, qi, kv):
        return score + 0.5 * b.float() * (qi > kv).float()

    with torch.no_grad():
        out = block_sparse_attention(q, k, v, block_mask, score_mod=sample_bias)
    pos = torch.arange(200)
    dense = (pos[:, None] - pos[None, :]).abs() <= 20 + 60 * torch.arange(2).view(1, 2, 1, 1)
    bias = 0.5 * torch.arange(2).view(2, 1, 1, 1) * (pos[:, None] > pos[None, :]).float()
    assert (out - reference_attention(q, k, v, dense, bias=bias)).abs().max() < tol(1e-5)


def test_block_sparse_score_mod_parameter_it_does_not_read_gets_a_zero_gradient():
    """``score_mod_params`` may list a tensor the score_mod does not read: its gradient is zero, not an error."""
    _, block_mask, (q, k, v), dense = _case(N=200)
    table, unused = torch.randn(401, requires_grad=True), torch.randn(3, requires_grad=True)

    def rel_bias(score, b, h, qi, kv):
        return score + table[qi - kv + 200]

    out = block_sparse_attention(q, k, v, block_mask, score_mod=rel_bias, score_mod_params=[unused, table])
    pos = torch.arange(200)
    ref = reference_attention(q, k, v, dense, bias=table[pos[:, None] - pos[None, :] + 200])
    grad = torch.randn_like(out)
    got_unused, got_table = torch.autograd.grad(out, (unused, table), grad)
    assert torch.equal(got_unused, torch.zeros(3))
    assert rel_err(got_table, torch.autograd.grad(ref, table, grad)[0]) < tol(1e-5)


def test_block_sparse_gradients_stay_finite_under_a_large_score_shift():
    """A score_mod adding 100 to every score (softmax is shift-invariant) at a length that is no block multiple:
    the padding rows of the last query block stay masked in backward, so exp(100) never meets their zero gradient
    (inf · 0 = nan), and the gradients equal the reference's."""
    _, block_mask, (q, k, v), dense = _case(N=200)
    out = block_sparse_attention(q, k, v, block_mask, score_mod=lambda score, b, h, qi, kv: score + 100.0)
    ref = reference_attention(q, k, v, dense)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert torch.isfinite(g).all() and rel_err(g, w) < tol(1e-4)


def test_block_sparse_plan_makes_its_index_tensors_on_the_inputs_device():
    """The sample, head and key-offset indices the plan hands to the mask and the score_mod are made on the inputs'
    device (on CUDA, CPU indices would meet CUDA tensors). CPU tensors cannot tell devices apart: meta inputs stand in
    for the accelerator, beside a CPU BlockMask (whose own lists stay on its device)."""
    from hf_flexattn.kernels.block_sparse import SparsePlan

    block_mask = build_block_mask(generate_sliding_window(10), 200, block_size=64)
    query = torch.empty(2, 3, 200, 8, device="meta")
    plan = SparsePlan.build(query, query, block_mask, None, 0.3, 0.0, 0)
    for index in (plan.mask_b, plan.mask_h, plan.b_idx, plan.h_idx, plan.offsets):
        assert index.device.type == "meta"


def _empty_row_mask(dense):
    """``dense`` (B, 1, N, N) with sample 0's row 5 fully masked; its tables cover the bucketed length, as the
    tables a mask reads must (masks/batch.py)."""
    size = padded_length(dense.shape[-1])
    table = torch.nn.functional.pad(dense, (0, size - dense.shape[-1], 0, size - dense.shape[-1]))
    rows = torch.ones(size, dtype=torch.bool)
    rows[5] = False
    return Mask(lambda b, h, qi, kv: table[b, 0, qi, kv] & (rows[qi] | (b > 0)), reads_token_tables=True)


@pytest.mark.parametrize("path", ["flex", "dense", "block_sparse"])
def test_every_path_matches_the_reference_and_zeroes_empty_rows(path, monkeypatch):
    _, _, (q, k, v), dense = _case()
    mask = _empty_row_mask(dense.clone())
    monkeypatch.setattr(kernels, "choose_path", lambda *a, **kw: path)
    bound = BatchMask(mask, 300, batch=2)
    ref = reference_attention(q, k, v, mask.dense(2, 1, 300, 300))
    with torch.no_grad():
        out = attend(q, k, v, bound)
    assert (out - ref).abs().max() < tol(1e-5)
    assert torch.isfinite(out).all() and out[0, :, 5].abs().max() == 0
    if path != "flex":  # flex has no CPU backward
        grad = torch.randn_like(ref)
        got = torch.autograd.grad(attend(q, k, v, bound), (q, k, v), grad)
        want = torch.autograd.grad(ref, (q, k, v), grad)
        for g, w in zip(got, want):
            assert rel_err(g, w) < tol(1e-5) and torch.isfinite(g).all()


def test_dense_path_materialises_the_bias_with_its_gradient():
    q, k, v = (torch.randn(1, 2, 50, 8, requires_grad=True) for _ in range(3))
    table = torch.randn(99, 2, requires_grad=True)

    def rel_bias(score, b, h, qi, kv):
        return score + table[qi - kv + 49, h]

    window = generate_sliding_window(6)
    out = dense_attention(q, k, v, BatchMask(window, 50), rel_bias, 8**-0.5)
    pos = torch.arange(50)
    bias = table[pos[:, None] - pos[None] + 49].permute(2, 0, 1)
    ref = reference_attention(q, k, v, window.dense(1, 1, 50, 50), bias)
    assert (out - ref).abs().max() < tol(1e-5)
    grad = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, table), grad), torch.autograd.grad(ref, (q, table), grad)):
        assert rel_err(g, w) < tol(1e-5)


@pytest.mark.parametrize(
    "reads,shape", [("b", (2, 1, 1, 1)), ("h", (1, 3, 1, 1)), ("q", (1, 1, 5, 1)), ("kv", (1, 1, 1, 7))]
)
def test_materialised_bias_keeps_each_index_on_its_axis(reads, shape):
    """A ``score_mod``'s bias evaluated on index tensors shaped (B, 1, 1, 1), (1, H, 1, 1), (1, 1, N, 1) and
    (1, 1, 1, M): 4-D, each index on its own axis, in the dtype asked for (float64 here, not the default)."""

    def mod(score, b, h, q, kv):
        return score + {"b": b, "h": h, "q": q, "kv": kv}[reads]

    bias = materialise_bias(mod, 2, 3, 5, 7, "cpu", torch.float64)
    assert bias.shape == shape and bias.dtype == torch.float64
    assert torch.equal(bias.flatten(), torch.arange(max(shape), dtype=torch.float64))


def test_materialised_bias_reads_every_index_and_follows_the_device():
    def mod(score, b, h, q, kv):
        return score + 1000 * b + 100 * h + 10 * q + kv

    b, h, q, kv = torch.meshgrid(*(torch.arange(n) for n in (2, 3, 5, 7)), indexing="ij")
    assert torch.equal(
        materialise_bias(mod, 2, 3, 5, 7, "cpu", torch.float32), (1000 * b + 100 * h + 10 * q + kv).float()
    )
    with DispatchRecorder() as seen:  # built where it is asked for (meta here), not on torch's default device
        bias = materialise_bias(mod, 2, 3, 5, 7, "meta", torch.float32)
    assert seen.devices == {"meta"} and bias.device.type == "meta" and bias.shape == (2, 3, 5, 7)


class _HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (a sync on CUDA)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_dense_path_reads_values_only_when_allowed():
    """By default the dense path never reads a value (on CUDA a read waits for the GPU); with ``read_values`` it
    may look whether every row has a key and drop the zeroing, for the same output."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    quiet, reading = BatchMask(generate_sliding_window(2), 9), BatchMask(generate_sliding_window(2), 9)
    with _HostReads() as by_default:
        out = dense_attention(q, k, v, quiet)
    with _HostReads() as allowed:
        out_read = dense_attention(q, k, v, reading, read_values=True)
    assert by_default.reads == 0 and allowed.reads > 0
    assert quiet.sdpa_mask(torch.float32, False)[1] is not None and reading.sdpa_mask(torch.float32, True)[1] is None
    assert torch.allclose(out, out_read, atol=1e-6)
    assert torch.allclose(out, reference_attention(q, k, v, quiet.dense()), atol=1e-5)


def _probabilities(q, k, mask=None, bias=None, scale=None):
    """The reference's probabilities: softmax of the scaled, biased, masked scores; rows without a key are zeros."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale + (0 if bias is None else bias)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0)


@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_probabilities_are_the_references(scale):
    """The weights ``output_attentions`` returns: per sample and head, over queries and keys of different lengths,
    with the default scale or one given, a ``score_mod``'s bias, the mask with padding, and a row with no key."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 7, 8, dtype=torch.float64), torch.randn(2, 3, 11, 8, dtype=torch.float64)
    real = torch.ones(2, 11, dtype=torch.bool)
    real[1, 4:] = False
    rule = Mask(lambda b, h, qi, kv: (kv <= qi + 2) & ((qi != 6) | (b == 0)))  # sample 1's row 6 sees no key
    mask = BatchMask(rule, 7, 11, key_is_real=real)
    want_mask = (rule & generate_key_padding(real)).dense(2, 1, 7, 11)
    assert not want_mask[1, 0, 6].any()

    def bias_mod(score, b, h, qi, kv):
        return score + 0.1 * (qi - kv).to(score.dtype) + 0.2 * h.to(score.dtype) - 0.3 * b.to(score.dtype)

    bias = 0.1 * (torch.arange(7)[:, None] - torch.arange(11)[None]).double()
    bias = bias + 0.2 * torch.arange(3).double().view(1, 3, 1, 1) - 0.3 * torch.arange(2).double().view(2, 1, 1, 1)
    got = attention_probabilities(q, k, mask, bias_mod, scale)
    assert got.shape == (2, 3, 7, 11) and got.dtype == torch.float64
    assert torch.allclose(got, _probabilities(q, k, want_mask, bias, scale), atol=1e-12)
    assert torch.equal(got[1, :, 6], torch.zeros(3, 11, dtype=torch.float64))
    assert torch.allclose(attention_probabilities(q, k, None, scale=scale), _probabilities(q, k, scale=scale))


def test_dense_path_hands_sdpa_the_smallest_exact_mask_once_per_batch_mask():
    from hf_flexattn.masks import generate_full

    assert BatchMask(generate_full(), 50).sdpa_mask(torch.float32, True) == (None, None)  # plain SDPA
    real = torch.ones(2, 50, dtype=torch.bool)
    real[1, 30:] = False
    padding, has_key = BatchMask(generate_full(), 50, batch=2, key_is_real=real).sdpa_mask(torch.float32, True)
    assert padding.shape == (2, 1, 1, 50) and has_key is None
    assert torch.isinf(padding[1, 0, 0, 30:]).all() and (padding[1, 0, 0, :30] == 0).all() and (padding[0] == 0).all()
    window = BatchMask(generate_sliding_window(4), 50)
    additive, _ = window.sdpa_mask(torch.float64, True)
    assert additive.shape == (1, 1, 50, 50) and additive.dtype == torch.float64
    assert torch.equal(additive == 0, window.dense()) and window.sdpa_mask(torch.float64, True)[0] is additive


@pytest.mark.parametrize("attention", ["dense", "block_sparse"])
def test_dropout_is_applied_with_the_expected_mean_and_consistent_backward(attention, monkeypatch):
    monkeypatch.setattr(kernels, "choose_path", lambda *a, **kw: attention)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 8, requires_grad=True) for _ in range(3))
    mask = BatchMask(generate_sliding_window(1000), 64)
    ref = reference_attention(q, k, v)
    samples = torch.stack([attend(q, k, v, mask, dropout_p=0.3).detach() for _ in range(400)])
    assert not torch.allclose(samples[0], samples[1])  # dropout is really drawn
    # inverted dropout keeps the expectation: the mean over draws approaches the no-dropout output
    err = (samples.mean(0) - ref.detach()).abs().mean() / ref.detach().abs().mean()
    assert err < 0.05
    # backward uses the same dropout mask as forward: compare with a central difference under the same seed
    torch.manual_seed(123)
    out = attend(q, k, v, mask, dropout_p=0.5)
    (gq,) = torch.autograd.grad(out.sum(), q)
    eps = 1e-3
    dq = torch.randn_like(q)
    torch.manual_seed(123)
    out_plus = attend((q + eps * dq).detach().requires_grad_(), k, v, mask, dropout_p=0.5)
    torch.manual_seed(123)
    out_minus = attend((q - eps * dq).detach().requires_grad_(), k, v, mask, dropout_p=0.5)
    numeric = (out_plus.sum() - out_minus.sum()) / (2 * eps)
    assert abs(numeric.item() - (gq * dq).sum().item()) < tol(2e-2) * max(1.0, abs(numeric.item()))


def test_cpu_policy_dense_for_dense_masks_block_sparse_for_sparse_training_flex_for_long_inference():
    q = torch.randn(1, 2, 2048, 8, requires_grad=True)
    dense_mask = BatchMask(generate_sliding_window(5000), 2048)  # every block
    sparse_mask = BatchMask(generate_sliding_window(10), 2048)  # 3 of 16 per row
    assert kernels.choose_path(q, dense_mask, 0.0, True, False) == "dense"
    assert kernels.choose_path(q, sparse_mask, 0.0, True, False) == "block_sparse"
    assert kernels.choose_path(q, sparse_mask, 0.1, False, False) == "block_sparse"  # dropout: never flex
    assert kernels.choose_path(q, sparse_mask, 0.0, False, False) == "flex"
    short = BatchMask(generate_sliding_window(10), 256)
    assert kernels.choose_path(q[:, :, :256], short, 0.0, False, False) == "dense"
    assert kernels.choose_path(q.double(), sparse_mask, 0.0, False, False) == "dense"  # flex does not compile fp64


@pytest.mark.parametrize("padded", [False, True])
def test_cpu_policy_runs_full_attention_on_sdpas_fused_kernel_at_any_length(padded):
    """`full` (ModernBERT's global layers, BERT past 4,096 tokens) is what the model on sdpa computes: the same fused
    kernel with no N×N mask, inference and training, never a flex compile."""
    n = 8192
    q = torch.randn(1, 2, n, 8)
    real = torch.ones(1, n, dtype=torch.bool)
    real[:, n - 100 :] = False
    mask = BatchMask(generate_full(), n, key_is_real=real if padded else None)
    for needs_grad, dropout_p in ((False, 0.0), (True, 0.0), (True, 0.1)):
        assert kernels.choose_path(q, mask, dropout_p, needs_grad, False) == "dense"
    attn_mask, _ = mask.sdpa_mask(q.dtype, read_values=True)
    assert (attn_mask is None) if not padded else (attn_mask.shape == (1, 1, 1, n))


def test_cuda_policy_uses_python_facts_only(monkeypatch):
    """On CUDA no tensor is read to choose: flex, except dropout (dense; flex_dropout past DENSE_MAX_ENTRIES) and
    deterministic bias gradients (dense)."""
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    monkeypatch.setattr(kernels, "block_density", lambda *a: pytest.fail("read the mask on CUDA"))
    q = torch.randn(1, 2, 256, 8)
    mask = BatchMask(generate_sliding_window(5000), 256)
    assert kernels.choose_path(q, mask, 0.0, True, False) == "flex"
    assert kernels.choose_path(q, mask, 0.1, True, False) == "dense"
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", 256 * 255)
    assert kernels.choose_path(q, mask, 0.1, True, False) == "flex_dropout"
    assert kernels.choose_path(q, mask, 0.0, True, True) == "flex"
    torch.use_deterministic_algorithms(True)
    try:
        assert kernels.choose_path(q, mask, 0.0, True, True) == "dense"
    finally:
        torch.use_deterministic_algorithms(False)


def test_float64_runs_exactly_through_the_dense_path():
    mask, _, (q, k, v), dense = _case(N=160)
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    bound = BatchMask(mask, 160, batch=2)
    out = attend(q, k, v, bound)
    assert out.dtype == torch.float64
    assert (out - reference_attention(q, k, v, dense)).abs().max() < tol(1e-12)
    assert torch.autograd.gradcheck(
        lambda a: attend(a, k[:, :1, :40], v[:, :1, :40], BatchMask(mask, 40, batch=2)),
        (q[:, :1, :40].detach().requires_grad_(),),
    )


def test_head_dims_below_16_are_padded_for_cuda_without_changing_the_result():
    from hf_flexattn.kernels.flex import pad_head_dim

    q, k, v = (torch.randn(1, 2, 30, 8) for _ in range(3))
    padded = [pad_head_dim(t, 16) for t in (q, k, v)]
    assert padded[0].shape[-1] == 16
    want = reference_attention(q, k, v, scale=8**-0.5)
    got = reference_attention(*padded, scale=8**-0.5)[..., :8]
    assert (want - got).abs().max() < tol(1e-6)


def test_pad_head_dim_leaves_head_dims_of_the_size_or_wider_alone():
    from hf_flexattn.kernels.flex import pad_head_dim

    wide = torch.randn(1, 2, 30, 32)  # fewer heads than 16: only the last axis decides
    assert pad_head_dim(wide, 16) is wide
    exact = torch.randn(1, 2, 30, 16)  # the size itself: no copy either
    assert pad_head_dim(exact, 16) is exact


def test_run_flex_pads_head_dims_below_16_only_when_asked_and_slices_the_padding_off(monkeypatch):
    """``pad_small_heads`` is CUDA's policy, which ``attend`` passes on every call; unasked (CPU's default) flex sees
    the head dims as they are. Either way the output (and the log-sum-exp asked for) is that of the unpadded inputs,
    also where only the query's and key's head dim is small (16 heads, 32 tokens: only the head dim decides)."""
    from hf_flexattn.kernels import flex

    seen = []

    def flex_stand_in(query, key, value, **options):
        seen.append((query.shape[-1], key.shape[-1], value.shape[-1]))
        return flex.flex_reference(query, key, value, **options)

    monkeypatch.setattr(flex, "compiled_flex_attention", lambda dynamic: flex_stand_in)
    q, k, v = (torch.randn(1, 2, 30, 8) for _ in range(3))
    block_mask = build_block_mask(generate_full(), 30, 30, device="cpu", block_size=128)
    plain = flex.run_flex(q, k, v, block_mask, None, 8**-0.5, dynamic=False)
    padded, lse = flex.run_flex(
        q, k, v, block_mask, None, 8**-0.5, dynamic=False, pad_small_heads=True, return_lse=True
    )
    assert seen == [(8, 8, 8), (16, 16, 16)]
    want = reference_attention(q, k, v, scale=8**-0.5)
    for out in (plain, padded):
        assert out.shape == (1, 2, 30, 8) and (out - want).abs().max() < tol(1e-6)
    assert (lse - torch.logsumexp(q @ k.transpose(-1, -2) * 8**-0.5, dim=-1)).abs().max() < tol(1e-5)

    q, k, v = torch.randn(1, 16, 32, 8), torch.randn(1, 16, 32, 8), torch.randn(1, 16, 32, 16)
    block_mask = build_block_mask(generate_full(), 32, 32, device="cpu", block_size=128)
    out = flex.run_flex(q, k, v, block_mask, None, 8**-0.5, dynamic=False, pad_small_heads=True)
    assert seen[2:] == [(16, 16, 16)]
    assert out.shape == (1, 16, 32, 16) and (out - reference_attention(q, k, v, scale=8**-0.5)).abs().max() < tol(1e-6)


def test_flex_reference_computes_what_flex_does():
    """The dense stand-in for the CUDA kernel against the reference: a mask and a score_mod that read the sample and
    the head, cross lengths, the default scale (heads, head dim and lengths all different), a row that sees no key
    (zeros), the log-sum-exp over each row's allowed keys, half-precision inputs (float32 scores, output in the
    inputs' dtype), no BlockMask at all, and meta tensors (no CPU index may sneak in)."""
    from hf_flexattn.kernels.flex import flex_reference

    torch.manual_seed(0)
    B, H, N, M, D = 2, 3, 40, 50, 8
    q, k, v = torch.randn(B, H, N, D), torch.randn(B, H, M, D), torch.randn(B, H, M, D)
    rule = Mask(lambda b, h, qi, kv: (kv <= qi + 5 * h) & (b + qi > 0))  # sample 0's row 0 sees nothing
    block_mask = build_block_mask(rule, N, M, batch=B, heads=H, block_size=64)

    def bias_mod(score, b, h, qi, kv):
        return score + 0.3 * b * (qi - kv) / N + 0.2 * h

    out, aux = flex_reference(q, k, v, bias_mod, block_mask, return_aux=AuxRequest(lse=True))
    b, h, qi, kv = (torch.arange(n).view(*shape) for n, (_, shape) in zip((B, H, N, M), _BHQK))
    allowed = rule.mask_mod(b, h, qi, kv)
    bias = bias_mod(torch.zeros(()), b, h, qi, kv)
    assert (out - reference_attention(q, k, v, allowed, bias)).abs().max() < tol(1e-5)
    assert out[0, :, 0].abs().max() == 0
    scores = (q @ k.transpose(-1, -2) * D**-0.5 + bias).masked_fill(~allowed, -float("inf"))
    assert aux.lse.shape == (B, H, N) and torch.allclose(aux.lse, torch.logsumexp(scores, -1), atol=tol(1e-5))
    assert (flex_reference(q, k, v) - reference_attention(q, k, v)).abs().max() < tol(1e-5)
    half = flex_reference(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias_mod, block_mask)
    assert half.dtype == torch.bfloat16 and (half.float() - out).abs().max() < 0.05
    meta = flex_reference(*(t.to("meta") for t in (q, k, v)), bias_mod, block_mask)
    assert meta.device.type == "meta"


def test_flash_missing_reads_whether_flash_attn_4s_cute_kernels_are_installed(monkeypatch):
    """FLASH needs ``flash_attn.cute`` importable: found, nothing is missing; absent (its parent package missing:
    find_spec raises), the reason names flash-attn-4."""
    import importlib.util

    from hf_flexattn.kernels import flex

    monkeypatch.setattr(flex, "flex_backends", lambda: ("AUTO", "TRITON", "FLASH"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "flash_attn.cute" else None)
    assert flex.flash_missing() == ""

    def no_parent(name):
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")

    monkeypatch.setattr(importlib.util, "find_spec", no_parent)
    assert flex.flash_missing().startswith("flash-attn-4 (flash_attn.cute), which FlexAttention's FLASH backend runs")


def test_too_many_compiles_error_names_the_count_the_limit_and_the_first_shapes(monkeypatch):
    from hf_flexattn.kernels import flex

    events = [dict(shape=(1, 2, n, 8), dynamic=n % 2 == 0) for n in range(10, 0, -1)]
    monkeypatch.setattr(flex, "compile_events", events)
    first = sorted({(e["shape"], e["dynamic"]) for e in events})[:8]
    assert str(flex._too_many_compiles()) == (
        f"hf_flexattn: FlexAttention was compiled 10 times in this process (limit "
        f"hf_flexattn.kernels.flex.MAX_COMPILES={flex.MAX_COMPILES}; first shapes: {first}). Instead of falling back "
        "to uncompiled flex (which builds the full N×N score matrix), hf_flexattn stops here. Pad inputs to a few "
        "fixed (batch size, length) shapes, or raise MAX_COMPILES."
    )
    assert str((1, 2, 3, 8)) in str(flex._too_many_compiles()) and str((1, 2, 9, 8)) not in str(first)


def test_each_compile_is_recorded_with_what_it_compiled_for_logged_and_counted_against_the_limit(monkeypatch, caplog):
    """A compile's record (``compile_events``, documented in docs/semantics.md and docs/gpu.md, and logged at debug
    level) says what it compiled for: the query's shape, the keys' length (unlike the queries' here), dtype, device,
    shape mode and the mask's name ("mask" for a mask_mod without one); one compile past MAX_COMPILES raises."""
    import functools
    import logging

    from hf_flexattn.kernels import flex

    monkeypatch.setattr(flex, "compile_events", [])
    monkeypatch.setattr(flex, "MAX_COMPILES", 2)
    query, key = torch.empty(2, 3, 256, 16, dtype=torch.float16), torch.empty(2, 3, 384, 16, dtype=torch.float16)
    named = build_block_mask(generate_sliding_window(8), 256, 384, device="cpu", block_size=128)
    unnamed = BlockMask.from_kv_blocks(
        named.kv_num_blocks, named.kv_indices, BLOCK_SIZE=128, mask_mod=functools.partial(named.mask_mod)
    )
    with caplog.at_level(logging.DEBUG, logger="hf_flexattn"):
        flex._record_compile(query, key, named, dynamic=True)
        flex._record_compile(query[:1], key[:1], unnamed, dynamic=False)
    record = dict(shape=(2, 3, 256, 16), kv_len=384, dtype="torch.float16", device="cpu", dynamic=True)
    assert flex.compile_events == [
        {**record, "mask": named.mask_mod.__name__},
        {**record, "shape": (1, 3, 256, 16), "dynamic": False, "mask": "mask"},
    ]
    assert named.mask_mod.__name__ != "mask"  # so that the name read is told from the fallback
    assert [r.getMessage() for r in caplog.records] == [
        f"hf_flexattn: compiled FlexAttention (#{i + 1}) for {event}" for i, event in enumerate(flex.compile_events)
    ]
    with pytest.raises(RuntimeError, match="compiled 3 times in this process"):
        flex._record_compile(query, key, named, dynamic=True)


def test_inside_the_users_compile_run_flex_calls_flex_itself_with_the_inputs_and_every_option(monkeypatch):
    """Under the user's torch.compile, flex is traced into their graph: run_flex calls flex_attention itself (not the
    process-wide compiled callable) on the query, key and value with the mask, score_mod, scale, kernel options and
    log-sum-exp request, and records no compile of its own. flex_reference stands in for flex (what it computes)."""
    from hf_flexattn.kernels import flex

    calls = []

    def flex_stand_in(query, key, value, **options):
        calls.append(options)
        return flex.flex_reference(query, key, value, **options)

    monkeypatch.setattr(flex, "flex_attention", flex_stand_in)
    monkeypatch.setattr(flex, "compiled_flex_attention", lambda dynamic: pytest.fail("a compile inside the compile"))
    monkeypatch.setattr(flex, "compile_events", [])
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 40, 8), torch.randn(1, 2, 56, 8), torch.randn(1, 2, 56, 12)
    mask = generate_sliding_window(8)
    block_mask = build_block_mask(mask, 40, 56, device="cpu", block_size=128)
    out, lse = flex.run_flex(
        q, k, v, block_mask, _bias_mod, 0.3, dynamic=True, return_lse=True, kernel_options={"A": 1}
    )
    assert [sorted(options) for options in calls] == [
        ["block_mask", "kernel_options", "return_aux", "scale", "score_mod"]
    ]
    assert calls[0]["block_mask"] is block_mask and calls[0]["kernel_options"] == {"A": 1} and flex.compile_events == []
    allowed = mask.dense(1, 2, 40, 56)
    bias = 0.01 * (torch.arange(40)[:, None] - torch.arange(56)).float() + 0.1 * torch.arange(2.0).view(2, 1, 1)
    assert (out - reference_attention(q, k, v, allowed, bias, scale=0.3)).abs().max() < tol(1e-5)
    scores = (q @ k.transpose(-1, -2) * 0.3 + bias).masked_fill(~allowed, -torch.inf)
    assert (lse - torch.logsumexp(scores, dim=-1)).abs().max() < tol(1e-5)


def test_memory_of_training_path_does_not_store_scores():
    """The autograd graph keeps q, k, v, out and lse only: no (N × window) score tensor is saved."""
    _, block_mask, (q, k, v), _ = _case(N=1024, block=128)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block_sparse_attention(q, k, v, block_mask)
    assert max(saved) <= q.numel()


def test_dense_path_with_a_score_mod_and_no_mask_matches_the_reference():
    """A ``score_mod`` that reads the sample and the head (B ≠ H), no mask, a scale given, float64 throughout (the
    bias is materialised in the inputs' dtype), and on the inputs' device (meta: no CPU tensor may sneak in)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=torch.float64) for _ in range(3))

    def bias_mod(score, b, h, qi, kv):
        return score + 0.1 * (qi - kv).to(score.dtype) + 0.2 * h.to(score.dtype) - 0.7 * b.to(score.dtype) * qi

    bias = bias_mod(torch.zeros((), dtype=torch.float64), *(torch.arange(n).view(*s) for n, s in _BHQK))
    got = dense_attention(q, k, v, None, bias_mod, scale=0.3)
    assert torch.allclose(got, reference_attention(q, k, v, bias=bias, scale=0.3), rtol=1e-12, atol=1e-12)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 0.3 + bias, -1)
    assert torch.allclose(attention_probabilities(q, k, None, bias_mod, 0.3), probs, rtol=1e-12, atol=1e-12)
    meta = [t.to("meta") for t in (q, k, v)]
    assert dense_attention(*meta, None, bias_mod, scale=0.3).device.type == "meta"
    assert attention_probabilities(*meta[:2], None, bias_mod).device.type == "meta"


_BHQK = ((2, (-1, 1, 1, 1)), (3, (1, -1, 1, 1)), (5, (1, 1, -1, 1)), (5, (1, 1, 1, -1)))


# ------------------------------------------------------------------------------ the policy's edges (mutation job)


def _short_mask(n=64):
    return BatchMask(generate_sliding_window(10), n)  # not full attention: the policy's every branch applies


def test_block_density_counts_visited_blocks_of_a_rectangular_mask():
    """One query block, four key blocks (lengths multiples of the block size, so bucketing pads nothing): the
    reference counts the blocks the dense mask has any key in."""
    mask = BatchMask(generate_sliding_window(10), 128, 512)
    blocks = mask.dense()[0, 0].view(1, 128, 4, 128).any(-1).any(1)
    assert kernels.block_density(torch.randn(1, 1, 128, 8), mask) == blocks.float().mean().item() == 0.5


def test_structured_paths_only_on_cpu_outside_compile(monkeypatch):
    q = torch.randn(1, 1, 8, 8)
    assert kernels.uses_structured_paths(q)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not kernels.uses_structured_paths(q)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    assert not kernels.uses_structured_paths(q)


def test_export_runs_the_dense_path(monkeypatch):
    monkeypatch.setattr(compat, "is_exporting", lambda: True)  # the library's seam (torch 2.11 reads export's flag)
    q = torch.randn(1, 2, 2048, 8)
    assert kernels.choose_path(q, BatchMask(generate_sliding_window(10), 2048), 0.0, False, False) == "dense"


def test_forced_flex_where_flex_computes_the_call_and_the_policy_elsewhere(monkeypatch):
    """``backend='flex'``/``'flash'`` run flex where auto would not (a short CPU mask: dense), never where flex cannot
    compute the call: dropout, CPU gradients, deterministic bias gradients (each then falls back to the policy)."""
    q, mask = torch.randn(1, 2, 64, 8), _short_mask()
    assert kernels.choose_path(q, mask, 0.0, False, False) == "dense"
    for backend in ("flex", "flash"):
        assert kernels.forces_flex(backend)
        assert kernels.choose_path(q, mask, 0.0, False, False, backend) == "flex"
    assert not kernels.forces_flex("auto") and not kernels.forces_flex("natten")
    assert kernels.choose_path(q, mask, 0.0, True, False, "flex") == "dense"  # CPU gradients
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    assert kernels.choose_path(q, mask, 0.5, False, False, "flex") == "dense"  # dropout: SDPA applies it
    assert kernels.choose_path(q, mask, 0.0, True, False, "flex") == "flex"
    torch.use_deterministic_algorithms(True)
    try:
        assert kernels.choose_path(q, mask, 0.0, False, True, "flex") == "flex"  # no gradient: nothing to accumulate
        assert kernels.choose_path(q, mask, 0.0, True, True, "flex") == "dense"
    finally:
        torch.use_deterministic_algorithms(False)


def test_flex_computes_a_training_call_on_cuda_unless_deterministic_bias_gradients(monkeypatch):
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    q = torch.randn(1, 1, 8, 8)
    torch.use_deterministic_algorithms(True)
    try:
        assert kernels.flex_computes(q, 0.0, True, False)
        assert kernels.flex_computes(q, 0.0, False, True)
        assert not kernels.flex_computes(q, 0.0, True, True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert kernels.flex_computes(q, 0.0, True, True)
    assert not kernels.flex_computes(q, 0.5, False, False)


def test_cpu_policy_thresholds_are_inclusive_sizes_and_strict_densities(monkeypatch):
    """The dense path runs up to and including ``DENSE_MAX_ENTRIES`` / ``DENSE_INFERENCE_MAX_ENTRIES`` entries (CUDA's
    dropout too), and above (not at) the density thresholds."""
    q, mask = torch.randn(1, 2, 64, 8), _short_mask()
    entries = 64 * 64
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", entries)
    monkeypatch.setattr(kernels, "DENSE_INFERENCE_MAX_ENTRIES", entries)
    monkeypatch.setattr(kernels, "block_density", lambda *a: 1.0)
    assert kernels.choose_path(q, mask, 0.0, True, False) == "dense"  # training at the size limit
    monkeypatch.setattr(kernels, "block_density", lambda *a: 0.0)
    assert kernels.choose_path(q, mask, 0.0, False, False) == "dense"  # inference at the short-input limit
    monkeypatch.setattr(kernels, "DENSE_INFERENCE_MAX_ENTRIES", entries - 1)
    monkeypatch.setattr(kernels, "block_density", lambda *a: 1.0)
    assert kernels.choose_path(q, mask, 0.0, False, False) == "dense"  # long inference, dense mask, at the limit
    monkeypatch.setattr(kernels, "block_density", lambda *a: kernels.DENSE_INFERENCE_DENSITY)
    assert kernels.choose_path(q, mask, 0.0, False, False) == "flex"
    monkeypatch.setattr(kernels, "block_density", lambda *a: kernels.DENSE_TRAINING_DENSITY)
    assert kernels.choose_path(q, mask, 0.0, True, False) == "block_sparse"
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    assert kernels.choose_path(q, mask, 0.1, True, False) == "dense"  # CUDA dropout at the size limit


def test_cpu_policy_past_the_dense_size_trains_block_sparse_whatever_the_density(monkeypatch):
    q, mask = torch.randn(1, 2, 64, 8), _short_mask()
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", 64 * 64 - 1)
    monkeypatch.setattr(kernels, "block_density", lambda *a: 1.0)
    assert kernels.choose_path(q, mask, 0.0, True, False) == "block_sparse"
    assert kernels.choose_path(q, mask, 0.1, False, False) == "block_sparse"


def test_cpu_policy_inside_torch_compile_reads_no_density(monkeypatch):
    """In a traced graph a value read would break the graph: training takes the dense path where it fits, inference
    flex past the short inputs, and the density (a tensor read) is never asked for."""
    q, mask = torch.randn(1, 2, 64, 8), _short_mask()
    monkeypatch.setattr(kernels, "DENSE_INFERENCE_MAX_ENTRIES", 64 * 64 - 1)
    monkeypatch.setattr(kernels, "block_density", lambda *a: pytest.fail("read the density inside torch.compile"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert kernels.choose_path(q, mask, 0.0, True, False) == "dense"
    assert kernels.choose_path(q, mask, 0.1, False, False) == "dense"
    assert kernels.choose_path(q, mask, 0.0, False, False) == "flex"
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", 64 * 64 - 1)
    assert kernels.choose_path(q, mask, 0.0, True, False) == "block_sparse"


def test_cpu_policy_runs_long_dense_masks_on_the_dense_path():
    q = torch.randn(1, 2, 2048, 8)
    assert kernels.choose_path(q, BatchMask(generate_sliding_window(5000), 2048), 0.0, False, False) == "dense"


def test_flash_refusals_say_why_and_what_to_do(monkeypatch):
    q = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError) as refused:
        kernels.check_flash_call(q, False)
    assert str(refused.value) == (
        "patch(backend='flash'): the attention runs on 'cpu', and FlexAttention's FLASH backend (FlashAttention-4) "
        "runs on CUDA only; move the model to a CUDA device, or use backend='auto' or 'flex'"
    )
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    kernels.check_flash_call(q, False)
    with pytest.raises(ValueError) as refused:
        kernels.check_flash_call(q, True)
    assert str(refused.value) == (
        "patch(backend='flash'): this call trains a tensor its score_mod reads (the model's relative position bias "
        "table), and FlexAttention's FLASH backend computes no gradient for captured tensors; freeze it "
        "(requires_grad=False), run it under torch.no_grad(), or use backend='auto' or 'flex'"
    )


def test_flex_runs_on_exact_lengths_with_dynamic_shapes_else_on_bucketed_ones(monkeypatch):
    """CPU compiles a sliding window with dynamic shapes (exact lengths) and a per-token table statically (lengths
    bucketed up to the block size); CUDA always runs dynamic shapes."""
    n, q = 100, torch.randn(1, 1, 100, 8)
    glob = torch.zeros(1, n, dtype=torch.bool)
    glob[:, 0] = True
    dynamic = BatchMask(generate_sliding_window(10), n)
    static = BatchMask(generate_sliding_window(10) | generate_global(glob), n)
    assert kernels._block_mask(q, dynamic).seq_lengths == (n, n)
    assert kernels._block_mask(q, static).seq_lengths == (padded_length(n), padded_length(n)) != (n, n)
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    assert kernels._block_mask(q, static).seq_lengths == (n, n)


def test_token_padding_to_the_block_masks_length():
    """``_pad_to`` pads the token axis (−2) with zeros, keeps an input of the length as it is, and refuses a longer
    one; heads (−3) are not tokens, even where their count equals a length."""
    x = torch.randn(1, 8, 5, 4)
    assert kernels._pad_to(x, 5) is x
    padded = kernels._pad_to(x, 8)
    assert padded.shape == (1, 8, 8, 4) and torch.equal(padded[:, :, :5], x) and not padded[:, :, 5:].any()
    assert kernels._pad_to(torch.randn(1, 9, 5, 4), 8).shape == (1, 9, 8, 4)
    with pytest.raises(ValueError) as refused:
        kernels._pad_to(torch.randn(1, 2, 5, 4), 4)
    assert str(refused.value) == "inputs have 5 tokens but the block mask was built for 4"


@pytest.mark.parametrize("dtype", [torch.int64, torch.float8_e4m3fn])
def test_attention_inputs_of_an_unsupported_dtype_are_refused(dtype):
    q = torch.zeros(1, 1, 4, 16).to(dtype)
    with pytest.raises(ValueError) as refused:
        attend(q, q, q)
    assert str(refused.value) == (
        f"hf_flexattn: attention inputs have dtype={dtype}; supported: float32, float16, bfloat16 (FlexAttention) and "
        "float64 (the dense path)"
    )


@pytest.mark.parametrize("scale", [None, 0.3])
def test_scale_given_or_the_inputs_head_dims_on_the_dense_path_and_under_cudas_head_padding(scale, monkeypatch):
    """A given scale and the score_mod reach the kernel; CUDA's flex call pads head dims below 16, and the default
    scale is the inputs' 8 ** -0.5, not the padded 16's."""
    mask, _, (q, k, v), dense = _case(N=160, D=8)
    want = reference_attention(q, k, v, dense, bias=_bias(160, 3), scale=scale)
    with torch.no_grad():
        assert rel_err(attend(q, k, v, BatchMask(mask, 160, batch=2), _bias_mod, scale), want) < tol(1e-5)  # dense
        use_cuda_policy(monkeypatch)
        assert rel_err(attend(q, k, v, BatchMask(mask, 160, batch=2), _bias_mod, scale), want) < tol(1e-5)  # flex


def test_attend_reads_tensor_values_on_cpu_only_and_hands_flex_cpus_inputs_detached(monkeypatch):
    """The dense path reads values (``has_key``) on CPU only, never on CUDA nor in a traced graph (export, compile:
    both set ``is_compiling``); CPU flex gets detached
    inputs at their own head dim (it refuses inputs that require grad, even under no_grad), CUDA's flex padded heads;
    both compile a sliding window with dynamic shapes. Each path's output is the reference's."""
    from hf_flexattn.kernels.flex import flex_reference

    q, k, v = (torch.randn(2, 3, 160, 8, requires_grad=True) for _ in range(3))
    bound = BatchMask(generate_sliding_window(20), 160, batch=2)  # no token table: CPU flex at the exact length
    want = reference_attention(q, k, v, bound.dense()).detach()
    reads, flex_calls = [], []
    real_dense = kernels.dense_attention

    def dense_spy(*args, read_values, **kwargs):
        reads.append(read_values)
        return real_dense(*args, read_values=read_values, **kwargs)

    def flex_spy(query, key, value, block_mask, score_mod, scale, dynamic, pad_small_heads=False, kernel_options=None):
        flex_calls.append((query.requires_grad, pad_small_heads, dynamic))
        return flex_reference(query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale)

    monkeypatch.setattr(kernels, "dense_attention", dense_spy)
    monkeypatch.setattr(kernels, "run_flex", flex_spy)
    with torch.no_grad():
        assert rel_err(attend(q, k, v, bound), want) < tol(1e-5)  # dense on CPU (short)
        assert rel_err(attend(q, k, v, bound, backend="flex"), want) < tol(1e-5)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert rel_err(attend(q, k, v, bound), want) < tol(1e-5)  # traced by torch.compile
        monkeypatch.setattr(compat, "is_exporting", lambda: True)
        assert rel_err(attend(q, k, v, bound), want) < tol(1e-5)  # traced by torch.export
        monkeypatch.setattr(compat, "is_exporting", lambda: False)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
        monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
        assert rel_err(attend(q, k, v, bound, dropout_p=0.0), want) < tol(1e-5)  # CUDA: flex
        assert rel_err(attend(q, k, v, bound, dropout_p=1e-9), want) < tol(1e-4)  # CUDA dropout: dense
    assert reads == [True, False, False, False]
    assert flex_calls == [(False, False, True), (True, True, True)]  # a sliding window: dynamic shapes on CPU


def test_deterministic_bias_gradients_on_cuda_take_the_dense_path(monkeypatch):
    """A trained table the score_mod reads, deterministic algorithms on: flex's atomic adds are not, so dense."""
    use_cuda_policy(monkeypatch)
    mask, _, (q, k, v), dense = _case(N=160, D=8)
    table = torch.zeros(3, requires_grad=True)
    paths, real_choose = [], kernels.choose_path
    monkeypatch.setattr(kernels, "choose_path", lambda *a, **kw: paths.append(real_choose(*a, **kw)) or paths[-1])
    torch.use_deterministic_algorithms(True)
    try:
        out = attend(q, k, v, BatchMask(mask, 160, batch=2), lambda s, b, h, qi, ki: s + table[h], None, 0.0, [table])
    finally:
        torch.use_deterministic_algorithms(False)
    assert paths == ["dense"]
    assert rel_err(out, reference_attention(q, k, v, dense)) < tol(1e-5)


def test_block_sparse_path_gets_the_score_mod_its_tables_and_the_scale(monkeypatch):
    """The score_mod's learnable table gets its gradient through the block-sparse path (``score_mod_params``)."""
    _, _, (q, k, v), _ = _case()
    bound = BatchMask(generate_sliding_window(40), 300, batch=2)
    table = torch.tensor([0.01, 0.02, 0.03], requires_grad=True)
    pos = torch.arange(300)
    bias = table.view(3, 1, 1) * (pos[:, None] - pos[None, :]).float()
    monkeypatch.setattr(kernels, "choose_path", lambda *a, **kw: "block_sparse")
    out = attend(q, k, v, bound, lambda s, b, h, qi, ki: s + table[h] * (qi - ki), 0.3, score_mod_params=[table])
    want = reference_attention(q, k, v, bound.dense(), bias=bias, scale=0.3)
    assert rel_err(out, want) < tol(1e-5)
    grad = torch.randn_like(want)
    (got,) = torch.autograd.grad(out, table, grad)
    assert rel_err(got, torch.autograd.grad(want, table, grad)[0]) < tol(1e-4)


def test_flex_dropout_path_gets_the_call_as_given(monkeypatch):
    """CUDA's dropout past ``DENSE_MAX_ENTRIES``: attend hands flex_dropout the inputs, the BlockMask, the score_mod,
    the scale, p, dynamic shapes and padded small heads, and returns its rows (the kernel is checked against its
    reference in test_flex_dropout.py)."""
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES", 1)
    q, k, v = (torch.randn(1, 2, 100, 8) for _ in range(3))
    bound = BatchMask(generate_sliding_window(10), 100)
    calls = []

    def spy(query, key, value, block_mask, score_mod, scale, dropout_p, dynamic, pad_small_heads=False):
        calls.append((query, key, value, block_mask, score_mod, scale, dropout_p, dynamic, pad_small_heads))
        return query + key * value

    monkeypatch.setattr(kernels, "flex_dropout_attention", spy)
    out = attend(q, k, v, bound, _bias_mod, 0.3, 0.25)
    assert torch.equal(out, q + k * v)
    [call] = calls
    assert all(got is want for got, want in zip(call[:5], (q, k, v, bound.block_mask(), _bias_mod)))
    assert call[5:] == (0.3, 0.25, True, True)
