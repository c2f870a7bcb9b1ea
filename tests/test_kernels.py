"""kernels.attend: compiled flex and the CPU block-sparse autograd path against the dense reference."""

import pytest
import torch

from hf_flexattn.kernels import attend, block_sparse_attention, dense_attention
from hf_flexattn.masks import build_block_mask, generate_global, generate_key_padding, generate_sliding_window

from conftest import rel_err


def _case(seed=0, B=2, H=3, N=300, D=16, block=64):
    torch.manual_seed(seed)
    real = torch.ones(B, N, dtype=torch.bool)
    real[1, 200:] = False
    glob = torch.zeros(B, N, dtype=torch.bool)
    glob[:, 0] = True
    glob[1, 150] = True
    mask = (generate_sliding_window(40) | generate_global(glob)) & generate_key_padding(real)
    block_mask = build_block_mask(mask, B, 1, N, N, "cpu", block)
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
    ref = dense_attention(q, k, v, dense, bias=bias)
    assert (out - ref).abs().max() < 1e-5
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_learnable_score_mod_tensor_gets_gradient():
    _, block_mask, (q, k, v), dense = _case(N=200)
    table = torch.randn(401, requires_grad=True)

    def rel_bias(score, b, h, qi, kv):
        return score + table[qi - kv + 200]

    out = block_sparse_attention(q, k, v, block_mask, score_mod=rel_bias, score_mod_params=[table])
    pos = torch.arange(200)
    ref = dense_attention(q, k, v, dense, bias=table[pos[:, None] - pos[None, :] + 200])
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, table), grad)
    want = torch.autograd.grad(ref, (q, table), grad)
    assert rel_err(got[1], want[1]) < 1e-5
    assert rel_err(got[0], want[0]) < 1e-5


def test_compiled_flex_matches_dense_and_masked_rows_are_zero():
    _, block_mask, (q, k, v), dense = _case()
    dense = dense.clone()
    dense[0, :, 5] = False  # a row with no allowed key
    from hf_flexattn.masks import Mask

    rows = torch.ones(300, dtype=torch.bool)
    rows[5] = False
    mask = Mask(lambda b, h, qi, kv: dense[b, 0, qi, kv] & rows[qi] | (b > 0) & dense[b, 0, qi, kv])
    bm = build_block_mask(mask, 2, 1, 300, 300, "cpu", 64)
    with torch.no_grad():
        out = attend(q, k, v, bm)
        ref = dense_attention(q, k, v, mask.dense(2, 1, 300, 300))
    assert (out - ref).abs().max() < 1e-5
    assert torch.isfinite(out).all() and out[0, :, 5].abs().max() == 0
    # the training path agrees on the empty row as well
    out_train = attend(q, k, v, bm)
    assert (out_train - ref).abs().max() < 1e-5 and out_train[0, :, 5].abs().max() == 0


@pytest.mark.parametrize("attention", [attend, block_sparse_attention], ids=["attend(dense SDPA path)", "block_sparse"])
def test_dropout_is_applied_with_the_expected_mean_and_consistent_backward(attention):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 8, requires_grad=True) for _ in range(3))
    bm = build_block_mask(generate_sliding_window(1000), 1, 1, 64, 64, "cpu", 64)
    ref = dense_attention(q, k, v)
    samples = torch.stack([attention(q, k, v, bm, dropout_p=0.3).detach() for _ in range(400)])
    assert not torch.allclose(samples[0], samples[1])  # dropout is really drawn
    # inverted dropout keeps the expectation: the mean over draws approaches the no-dropout output
    err = (samples.mean(0) - ref.detach()).abs().mean() / ref.detach().abs().mean()
    assert err < 0.05
    # backward uses the same dropout mask as forward: compare with autograd through an explicit mask
    torch.manual_seed(123)
    out = attention(q, k, v, bm, dropout_p=0.5)
    (gq,) = torch.autograd.grad(out.sum(), q)
    eps = 1e-3
    dq = torch.randn_like(q)
    torch.manual_seed(123)
    qp = (q + eps * dq).detach().requires_grad_()
    out_plus = attention(qp, k, v, bm, dropout_p=0.5)
    torch.manual_seed(123)
    qm = (q - eps * dq).detach().requires_grad_()
    out_minus = attention(qm, k, v, bm, dropout_p=0.5)
    numeric = (out_plus.sum() - out_minus.sum()) / (2 * eps)
    assert abs(numeric.item() - (gq * dq).sum().item()) < 2e-2 * max(1.0, abs(numeric.item()))


def test_training_picks_sdpa_for_dense_masks_and_the_block_path_for_sparse_ones(monkeypatch):
    import hf_flexattn.kernels as kernels

    calls = []
    monkeypatch.setattr(kernels, "dense_masked_sdpa", lambda *a, **k: calls.append("dense") or kernels.dense_attention(*a[:3]))
    q, k, v = (torch.randn(1, 2, 2048, 8, requires_grad=True) for _ in range(3))
    kernels.attend(q, k, v, build_block_mask(generate_sliding_window(5000), 1, 1, 2048, 2048, "cpu"))  # all blocks
    kernels.attend(q, k, v, build_block_mask(generate_sliding_window(10), 1, 1, 2048, 2048, "cpu"))  # 3 of 16
    assert calls == ["dense"]


def test_dense_training_path_matches_reference_with_an_empty_row():
    from hf_flexattn.kernels import dense_masked_sdpa
    from hf_flexattn.masks import Mask

    rows = torch.ones(100, dtype=torch.bool)
    rows[7] = False
    mask = Mask(lambda b, h, qi, kv: rows[qi] & ((qi - kv).abs() < 60))
    bm = build_block_mask(mask, 1, 1, 100, 100, "cpu", 32)
    q, k, v = (torch.randn(2, 2, 100, 8, requires_grad=True) for _ in range(3))
    out = dense_masked_sdpa(q, k, v, bm, 8**-0.5)
    ref = dense_attention(q, k, v, mask.dense(1, 1, 100, 100))
    assert (out - ref).abs().max() < 1e-5 and out[:, :, 7].abs().max() == 0
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert rel_err(a, b) < 1e-5 and torch.isfinite(a).all()


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
