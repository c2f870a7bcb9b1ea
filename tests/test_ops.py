"""hf_flexattn.ops: each op equals its dense reference and what the patched HF module computes; mask pictures."""

import pytest
import torch
from transformers import BertModel, SwinConfig, SwinModel

import hf_flexattn as hfx
from hf_flexattn import kernels, ops
from hf_flexattn.kernels.performer import orthogonal_random_features
from hf_flexattn.patching import patch_state
from hf_flexattn.variants import VARIANTS, ForwardInputs, ForwardMasks
from hf_flexattn.variants.base import LayerCall

from helpers import (
    HALO_SIDE,
    NATTEN_1D_TOKENS,
    generator,
    hf_shift_rule,
    natten_1d_reference,
    natten_2d_reference,
    reference_attention,
    rel_err,
    tiny_bert_config,
    tol,
)

B, H, N, D = 2, 3, 40, 8


def _qkv(n=N, grad=False, seed=0):
    g = generator(seed)
    return [torch.randn(B, H, n, D, generator=g).requires_grad_(grad) for _ in range(3)]


def _padding(n=N, lengths=(40, 27)):
    return torch.arange(n)[None] < torch.tensor(lengths)[:, None]


def _check(out, ref, inputs, real=None):
    """Forward equal on real rows, and backward (CPU) equal for every input."""
    if real is None:
        assert (out - ref).abs().max() <= tol(1e-5)
        weights = torch.randn_like(out)
    else:
        diff = (out - ref).transpose(1, 2)[real]
        assert diff.abs().max() <= tol(1e-5)
        weights = torch.randn_like(out) * real[:, None, :, None]
    got = torch.autograd.grad((out * weights).sum(), inputs)
    want = torch.autograd.grad((ref * weights).sum(), inputs)
    for g, w in zip(got, want):
        assert rel_err(g, w) <= tol(1e-4)


def test_full_attention():
    q, k, v = _qkv(grad=True)
    real = _padding()
    _check(
        ops.full_attention(q, k, v, padding_mask=real),
        reference_attention(q, k, v, real[:, None, None, :]),
        (q, k, v),
        real,
    )


def test_longformer_attention():
    q, k, v = _qkv(grad=True)
    real = _padding()
    glob = torch.zeros(B, N, dtype=torch.bool)
    glob[:, 0] = True
    glob[1, 30] = True  # on a padded token: ignored
    pos = torch.arange(N)
    g = glob & real
    rule = (((pos[:, None] - pos[None]).abs() <= 4) | g[:, :, None] | g[:, None, :]) & real[:, None, :]
    out = ops.longformer_attention(q, k, v, window=8, global_mask=glob, padding_mask=real)
    _check(out, reference_attention(q, k, v, rule[:, None]), (q, k, v), real)


def test_neighborhood_attention_1d():
    q, k, v = _qkv(grad=True)
    real = _padding()
    rule = torch.zeros(B, 1, N, N, dtype=torch.bool)
    for b, n in enumerate((40, 27)):
        rule[b, 0, :n, :n] = natten_1d_reference(n, 7, 2)
    out = ops.neighborhood_attention_1d(q, k, v, kernel_size=7, dilation=2, padding_mask=real)
    _check(out, reference_attention(q, k, v, rule), (q, k, v), real)


def test_neighborhood_attention_2d_takes_grids():
    q, k, v = (t.view(B, H, 5, 8, D).detach().requires_grad_() for t in _qkv())
    out = ops.neighborhood_attention_2d(q, k, v, kernel_size=3, dilation=(1, 2))
    assert out.shape == (B, H, 5, 8, D)
    rule = natten_2d_reference(5, 8, (3, 3), (1, 2), 0)
    ref = reference_attention(*(t.flatten(2, 3) for t in (q, k, v)), rule).unflatten(2, (5, 8))
    _check(out, ref, (q, k, v))


def test_swin_window_attention_with_trainable_bias():
    q, k, v = (t.requires_grad_() for t in _qkv(n=64))
    table = torch.randn(49, H, requires_grad=True)
    out = ops.swin_window_attention(q, k, v, window_size=4, shift=2, bias=table, grid=(8, 8))
    pos = torch.arange(64)
    dr = (pos[:, None] // 8 - pos[None] // 8).clamp(-3, 3) + 3
    dc = (pos[:, None] % 8 - pos[None] % 8).clamp(-3, 3) + 3
    ref = reference_attention(q, k, v, hf_shift_rule(8, 8, 4, 2), table[dr * 7 + dc].permute(2, 0, 1))
    _check(out, ref, (q, k, v, table))


@pytest.mark.cpu_only
@pytest.mark.parametrize("op", ["longformer", "neighborhood_1d", "neighborhood_2d"])
def test_ops_past_the_crossover_run_the_structured_plans_exactly(op, monkeypatch):
    """Long enough for the band / halo plans (CPU): the same numbers, padding on either side included."""
    calls = []
    tiled = kernels.tiled_attention
    monkeypatch.setattr(kernels, "tiled_attention", lambda *a, **kw: calls.append(op) or tiled(*a, **kw))
    grid = (HALO_SIDE + 1, HALO_SIDE)  # not square
    # 1,040: window 8 + 1,024; NATTEN 1D with dilation 2: two groups, each past the band's crossover
    n = {"longformer": 1040, "neighborhood_1d": 2 * NATTEN_1D_TOKENS, "neighborhood_2d": grid[0] * grid[1]}[op]
    q, k, v = (t.double().detach().requires_grad_() for t in _qkv(n=n))
    real = torch.ones(B, n, dtype=torch.bool)
    if op == "longformer":
        real[1, 1020:] = False
        glob = torch.zeros(B, n, dtype=torch.bool)
        glob[:, [0, 50]] = True
        pos = torch.arange(n)
        rule = (((pos[:, None] - pos[None]).abs() <= 4) | glob[:, :, None] | glob[:, None, :]) & real[:, None, :]
        out = ops.longformer_attention(q, k, v, window=8, global_mask=glob, padding_mask=real)
        rule = rule[:, None]
    elif op == "neighborhood_1d":
        real[1, :9] = False  # left padding
        rule = torch.zeros(B, 1, n, n, dtype=torch.bool)
        rule[0, 0] = natten_1d_reference(n, 7, 2)
        rule[1, 0, 9:, 9:] = natten_1d_reference(n - 9, 7, 2)
        out = ops.neighborhood_attention_1d(q, k, v, kernel_size=7, dilation=2, padding_mask=real)
    else:
        out = ops.neighborhood_attention_2d(q, k, v, kernel_size=(5, 3), dilation=(1, 2), grid=grid)
        rule = natten_2d_reference(*grid, (5, 3), (1, 2), 0)
    assert calls == [op]
    _check(out, reference_attention(q, k, v, rule), (q, k, v), real)


@pytest.mark.cpu_only
def test_ops_keep_shape_only_plans_for_the_next_call(monkeypatch):
    """A plan that depends on the shape alone is built once and reused by the next call of that shape (the answer
    still exact); another shape, batch or dtype, or a padding mask, gets a plan of its own."""
    ops.PLANS.clear()
    built, built_1d = [], []
    build, build_1d = ops.natten_2d_plan, ops.natten_1d_plan
    monkeypatch.setattr(ops, "natten_2d_plan", lambda *a, **kw: built.append((a, kw["batch"])) or build(*a, **kw))
    monkeypatch.setattr(ops, "natten_1d_plan", lambda *a, **kw: built_1d.append(a) or build_1d(*a, **kw))
    grid = (2 * HALO_SIDE, HALO_SIDE // 2)  # past the halo crossover, one long axis
    q, k, v = (t.double() for t in _qkv(n=grid[0] * grid[1]))
    rule = natten_2d_reference(*grid, (7, 5), (1, 1), 0)
    for _ in range(2):
        out = ops.neighborhood_attention_2d(q, k, v, kernel_size=(7, 5), grid=grid)
        assert (out - reference_attention(q, k, v, rule)).abs().max() <= 1e-12
    assert len(built) == 1
    ops.neighborhood_attention_2d(q[:1], k[:1], v[:1], kernel_size=(7, 5), grid=grid)
    ops.neighborhood_attention_2d(q.float(), k.float(), v.float(), kernel_size=(7, 5), grid=grid)
    assert len(built) == 3
    n = NATTEN_1D_TOKENS
    q, k, v = _qkv(n=n)
    ops.neighborhood_attention_1d(q, k, v, kernel_size=7)
    ops.neighborhood_attention_1d(q, k, v, kernel_size=7)
    ops.neighborhood_attention_1d(q, k, v, kernel_size=7, padding_mask=_padding(n, (n, n // 2)))
    assert len(built_1d) == 2  # the second call reused the first's plan; the padded one built its own
    assert len(ops.PLANS) == 4  # the shape-only plans: three 2D, one 1D


def test_linformer_and_performer_ops():
    q, k, v = _qkv(grad=True)
    real = _padding()
    E, F = torch.randn(64, 16, requires_grad=True), torch.randn(64, 16)
    out = ops.linformer_attention(q, k, v, E, F, padding_mask=real)
    m = real[:, None, :, None].float()
    ref = reference_attention(
        q, torch.einsum("nk,bhnd->bhkd", E[:N], k * m), torch.einsum("nk,bhnd->bhkd", F[:N], v * m)
    )
    _check(out, ref, (q, k, v, E))
    feats = orthogonal_random_features(32, D)
    out = ops.performer_attention(q, k, v, feats, padding_mask=real)
    module = ops.PerformerAttention(D, 32)
    module.features.copy_(feats)
    _check(out, module(q, k, v, real), (q, k, v))


def _layer_qkv(model, layer, inputs_embeds):
    """q, k, v of one patched BERT self-attention for given hidden states."""
    h = inputs_embeds
    split = lambda x: x.view(B, -1, layer.num_attention_heads, layer.attention_head_size).transpose(1, 2)
    return split(layer.query(h)), split(layer.key(h)), split(layer.value(h))


@pytest.mark.parametrize(
    "variant,options,op",
    [
        ("full", {}, lambda q, k, v, real, s: ops.full_attention(q, k, v, real, s)),
        (
            "longformer",
            dict(window=8, global_tokens=[0]),
            lambda q, k, v, real, s: ops.longformer_attention(
                q, k, v, 8, global_mask=(torch.arange(N) == 0).expand(B, N), padding_mask=real, scale=s
            ),
        ),
        (
            "neighborhood",
            dict(kernel_size=5, dilation=2),
            lambda q, k, v, real, s: ops.neighborhood_attention_1d(q, k, v, 5, 2, real, s),
        ),
    ],
)
def test_ops_equal_the_patched_module(variant, options, op):
    torch.manual_seed(0)
    model = hfx.patch(BertModel(tiny_bert_config()).eval(), variant, **options)
    layer = model.encoder.layer[0].attention.self
    hidden = torch.randn(B, N, 32)
    real = _padding()
    masks = ForwardMasks(patch_state(model).variant, ForwardInputs(B, N, torch.device("cpu"), key_is_real=real))
    with torch.no_grad():
        q, k, v = _layer_qkv(model, layer, hidden)
        module_out = layer.hfx_variant.attend(LayerCall.of_module(layer.hfx_variant, layer, hidden, q, k, v, masks))
        op_out = op(q, k, v, real, layer.scaling)
    assert (module_out - op_out).transpose(1, 2)[real].abs().max() <= tol(1e-6)


def test_swin_op_equals_the_patched_swin_block():
    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2], num_heads=[2], window_size=4)
    model = hfx.patch(SwinModel(config).eval(), "swin")
    block = model.encoder.layers[0].blocks[1]
    with torch.no_grad():
        block.attention.relative_position_bias.relative_position_bias_table.normal_()
        q, k, v = (torch.randn(1, 2, 256, 8) for _ in range(3))
        masks = ForwardMasks(block.hfx_variant, ForwardInputs(1, 256, torch.device("cpu")))
        module_out = block.hfx_variant.attend_map(block, q, k, v, (16, 16), (16, 16), masks)
        table = block.attention.relative_position_bias.relative_position_bias_table
        op_out = ops.swin_window_attention(q, k, v, 4, 2, table, grid=(16, 16), scale=block.attention.scaling)
    assert (module_out - op_out).abs().max() <= tol(1e-6)


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda q: ops.full_attention(q[0], q, q),
            r"q has shape \(3, 40, 8\); expected \(batch, heads, seq_len, head_dim\)",
        ),
        (lambda q: ops.full_attention(q, q[:, :2], q), "do not match"),
        (lambda q: ops.longformer_attention(q, q, q, window=5), "window=5; expected a positive even int"),
        (
            lambda q: ops.longformer_attention(q, q, q, 8, global_mask=torch.ones(2, 3)),
            r"global_mask has shape \(2, 3\)",
        ),
        (lambda q: ops.full_attention(q, q, q, padding_mask=torch.ones(2, 7)), r"padding_mask has shape \(2, 7\)"),
        (lambda q: ops.neighborhood_attention_1d(q, q, q, kernel_size=4), "kernel_size=4; expected a positive odd int"),
        (lambda q: ops.neighborhood_attention_2d(q, q, q, 3, grid=(6, 6)), r"grid=\(6, 6\); give \(rows, cols\)"),
        (
            lambda q: ops.neighborhood_attention_2d(q, q, q, 9, grid=(5, 8)),
            "spans 9 positions, more than the rows of the 5x8",
        ),
        (lambda q: ops.swin_window_attention(q, q, q, 3, grid=(5, 8)), "window_size=3 does not divide the grid"),
        (
            lambda q: ops.swin_window_attention(q, q, q, 2, shift=2, grid=(4, 10)),
            "shift=2; expected 0 ≤ shift < window_size=2",
        ),
        (lambda q: ops.performer_attention(q, q, q, torch.randn(16, 5)), r"features has shape \(16, 5\)"),
        (lambda q: ops.linformer_attention(q, q, q, torch.randn(20, 4)), "input length 40 exceeds max_len=20"),
        (lambda q: ops.PerformerAttention(8, num_features=0), "num_features=0"),
        (lambda q: ops.LinformerAttention(16, proj_len=0), "proj_len=0"),
    ],
)
def test_bad_shapes_and_options(call, message):
    q = torch.randn(2, 3, 40, 8)
    with pytest.raises(ValueError, match=message):
        call(q)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", ["small", "large"])
def test_plot_mask_writes_a_png_for_every_variant(tmp_path, variant, size):
    kwargs = dict(seq_len=64 if size == "small" else 2048)
    if variant == "swin":
        kwargs = dict(grid=(8, 8) if size == "small" else (48, 48), window_size=4, layer=1)
    path = hfx.plot_mask(variant, tmp_path / f"{variant}.png", **kwargs)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
