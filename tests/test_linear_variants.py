"""Linformer and Performer: exactness limits, padding invariance, statistics of FAVOR+, save/reload, bad input."""

import copy

import pytest
import torch
from transformers import BertModel, ViTForImageClassification, ViTModel

import hf_flexattn as hfx
from hf_flexattn.kernels.linformer import LinformerAttention, linformer_attention
from hf_flexattn.kernels.performer import PerformerAttention, favor_attention, orthogonal_random_features
from hf_flexattn.variants import ForwardInputs, ForwardMasks
from hf_flexattn.variants.base import LayerCall

from helpers import (
    generator,
    no_dropout,
    padded_batch,
    reference_attention,
    tiny_bert_config,
    tiny_vit_config,
    tol,
    use_cuda_policy,
)


def _bert(**kw):
    torch.manual_seed(0)
    return BertModel(tiny_bert_config(**kw)).eval()


# ------------------------------------------------------------------------------------------------- Linformer


def test_linformer_with_identity_projections_equals_full():
    base = _bert()
    full, lin = copy.deepcopy(base), copy.deepcopy(base)
    hfx.patch(full, "full")
    hfx.patch(lin, "linformer", proj_len=24)
    with torch.no_grad():
        for layer in lin.encoder.layer:
            eye = torch.zeros(512, 24)
            eye[:24] = torch.eye(24)
            layer.attention.self.linformer.E.copy_(eye)
            layer.attention.self.linformer.F.copy_(eye)
    ids, _ = padded_batch(seq_len=24)
    with torch.no_grad():
        assert (full(input_ids=ids).last_hidden_state - lin(input_ids=ids).last_hidden_state).abs().max() <= tol(1e-5)


@pytest.mark.parametrize("variant,options", [("linformer", dict(proj_len=8)), ("performer", dict(num_features=32))])
def test_outputs_at_real_tokens_do_not_depend_on_padding(variant, options):
    model = hfx.patch(_bert(), variant, **options)
    ids, _ = padded_batch(batch=2, seq_len=40, lengths=[40, 13])
    with torch.no_grad():
        alone = model(input_ids=ids[1:, :13]).last_hidden_state
        batched = model(input_ids=ids, attention_mask=(torch.arange(40) < torch.tensor([[40], [13]])).long())
    assert (batched.last_hidden_state[1, :13] - alone[0]).abs().max() <= tol(1e-5)


def test_linformer_gradients_reach_E_and_F_on_cpu():
    model = no_dropout(hfx.patch(_bert(), "linformer", proj_len=8)).train()
    ids, mask = padded_batch()
    model(input_ids=ids, attention_mask=mask).last_hidden_state.pow(3).sum().backward()
    proj = model.encoder.layer[0].attention.self.linformer
    assert proj.E.grad is not None and proj.E.grad[:24].abs().sum() > 0 and proj.F.grad[:24].abs().sum() > 0
    assert proj.E.grad[24:].abs().sum() == 0  # rows past the input length are not used


def test_linformer_share_kv_has_one_matrix_and_vit_works():
    model = ViTForImageClassification(tiny_vit_config())
    hfx.patch(model, "linformer", proj_len=16, share_kv=True)
    proj = model.vit.layers[0].attention.linformer
    assert proj.F is None and proj.E.shape == (65, 16)
    assert [k for k in model.state_dict() if "linformer" in k][:1] == ["vit.layers.0.attention.linformer.E"]
    with torch.no_grad():
        assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 5)


def test_linformer_module_refuses_longer_input():
    proj = LinformerAttention(max_len=16, proj_len=4)
    x = torch.randn(1, 2, 17, 8)
    with pytest.raises(ValueError, match="input length 17 exceeds max_len=16"):
        proj(x, x, x)


def test_linformer_module_checks_its_sizes():
    """``LinformerAttention`` used directly (as ``ops`` users do): proj_len in 1..max_len, errors that say where."""
    with pytest.raises(ValueError, match=r"^linformer: proj_len=16; expected an int in 1\.\.max_len=8$"):
        LinformerAttention(max_len=8, proj_len=16)
    with pytest.raises(ValueError, match=r"^linformer: proj_len=0; expected a positive int$"):
        LinformerAttention(max_len=8, proj_len=0)
    assert LinformerAttention(max_len=8, proj_len=8).E.shape == (8, 8)  # a projection to max_len slots is allowed


def test_linformer_function_defaults_dtypes_and_initialisation():
    """``linformer_attention`` without dropout by default, with inputs in another dtype than E (float64 inputs,
    float32 projections); E and F drawn uniformly in ±1/√proj_len (nn.Linear's bound for proj_len inputs)."""
    torch.manual_seed(0)
    proj = LinformerAttention(max_len=64, proj_len=16)
    bound = 16**-0.5
    for matrix in (proj.E, proj.F):
        assert matrix.abs().max() <= bound and matrix.min() < -0.9 * bound and matrix.max() > 0.9 * bound
    q, k, v = (torch.randn(2, 2, 10, 8, dtype=torch.float64) for _ in range(3))
    E = proj.E.detach()
    got = linformer_attention(q, k, v, E)
    keys, values = (torch.einsum("nk,bhnd->bhkd", E[:10].double(), x) for x in (k, v))
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.softmax(q @ keys.transpose(-1, -2) * 8**-0.5, -1) @ values, atol=1e-12)


def test_linformer_module_defaults_and_arguments():
    """Separate E and F by default; no dropout unless asked (the same output in training); the scale and the dropout
    it is given reach the softmax."""
    torch.manual_seed(0)
    proj = LinformerAttention(max_len=12, proj_len=4).train()
    assert isinstance(proj.F, torch.nn.Parameter) and proj.F is not proj.E and not proj.share_kv
    q, k, v = (torch.randn(2, 2, 10, 8) for _ in range(3))
    keys = torch.einsum("nk,bhnd->bhkd", proj.E[:10], k)
    values = torch.einsum("nk,bhnd->bhkd", proj.F[:10], v)
    for scale in (None, 0.05):
        want = torch.softmax(q @ keys.transpose(-1, -2) * (8**-0.5 if scale is None else scale), -1) @ values
        assert torch.allclose(proj(q, k, v, scale=scale), want, atol=1e-5)
    assert torch.equal(proj(q, k, v), proj(q, k, v))
    assert not torch.allclose(proj(q, k, v, dropout_p=0.5), proj(q, k, v))  # the dropout it is given is applied


# ------------------------------------------------------------------------------------------------- Performer


def _qkv(seed, n=64, d=16):
    g = generator(seed)
    q, k, v = (torch.randn(1, 2, n, d, generator=g) * s for s in (0.5, 0.5, 1.0))
    return q, k, v


def _kernel_estimates(features_fn, draws, seed, scale=0.15, d=16, pairs=256, m=64):
    """FAVOR+'s estimate of exp(x·y) for random pairs, ``draws`` feature draws each: (draws, pairs) / exact."""
    g = generator(10 + seed)
    x, y = (torch.randn(pairs, d, generator=g) * scale for _ in range(2))
    exact = torch.exp((x * y).sum(-1))
    gen = generator(100 + seed)

    def estimate(features):
        phi_x = torch.exp(x @ features.T - (x * x).sum(-1, keepdim=True) / 2)
        phi_y = torch.exp(y @ features.T - (y * y).sum(-1, keepdim=True) / 2)
        return (phi_x * phi_y).mean(-1)

    return torch.stack([estimate(features_fn(m, d, gen)) for _ in range(draws)]) / exact


def _gaussian(m, d, g):
    return torch.randn(m, d, generator=g)


def _constant_norm(m, d, g):
    features = orthogonal_random_features(m, d, generator=g)
    return features / features.norm(dim=-1, keepdim=True) * d**0.5


@pytest.fixture
def one_thread():
    """Thousands of tiny ops: a thread pool only adds barriers (and stalls badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", [0, 1])
def test_favor_kernel_estimate_is_unbiased_and_orthogonality_lowers_its_variance(seed, one_thread):
    """Measured separation over 2 seeds. Bias (|x|, |y| ≈ 1, 2,000 draws): 0.010 for the features shipped and for
    Gaussian features, 0.044 without QR's sign fix, 0.050 for constant-norm rows. Mean squared error (|x| ≈ 0.6,
    1,000 draws): 0.80x that of Gaussian features. Each bound sits about halfway between right and wrong."""
    features = lambda m, d, g: orthogonal_random_features(m, d, generator=g)
    bias = (_kernel_estimates(features, 2000, seed, scale=0.25) - 1).mean(0).abs().mean()
    assert bias < 0.022
    assert (_kernel_estimates(_constant_norm, 2000, seed, scale=0.25) - 1).mean(0).abs().mean() > 0.022
    ours, gaussian = (_kernel_estimates(f, 1000, seed, scale=0.15) - 1 for f in (features, _gaussian))
    assert (ours**2).mean() < 0.9 * (gaussian**2).mean()


def test_features_are_orthogonal_blocks_with_gaussian_norms():
    features = orthogonal_random_features(40, 16, generator=generator(0))
    for block in (features[:16], features[16:32], features[32:]):
        directions = block / block.norm(dim=-1, keepdim=True)
        gram = directions @ directions.T
        assert (gram - torch.eye(len(block))).abs().max() < tol(1e-5)  # orthonormal directions within a block
    norms = orthogonal_random_features(4096, 16, generator=generator(1)).norm(dim=-1)
    assert abs(norms.pow(2).mean().item() - 16) < 0.6  # chi(16): E|w|² = d


def _performer_layer_error(family, num_features, seed, swap=False):
    """Relative error of a patched model's Performer attention (its own projections, padding included) against
    softmax attention on the same q, k, v. Query/key weights are scaled so the softmax is far from uniform."""
    torch.manual_seed(0)
    if family == "bert":
        model = hfx.patch(BertModel(tiny_bert_config(hidden_size=64)).eval(), "performer", num_features=num_features)
        layer, scale = model.encoder.layer[0].attention.self, 3.0
        ids, mask = padded_batch(batch=2, seq_len=48, lengths=[48, 30])
        hidden, real = model.embeddings(input_ids=ids), mask.bool()
        projections, inputs = (layer.query, layer.key, layer.value), ForwardInputs(2, 48, hidden.device, real)
    else:
        model = hfx.patch(ViTModel(tiny_vit_config(hidden_size=64)).eval(), "performer", num_features=num_features)
        layer, scale = model.layers[0].attention, 5.0
        hidden = model.embeddings(torch.randn(2, 3, 32, 32, generator=generator(5)))
        real = torch.ones(2, 65, dtype=torch.bool)
        projections = (layer.q_proj, layer.k_proj, layer.v_proj)
        inputs = ForwardInputs(2, 65, hidden.device, grid=(8, 8), num_prefix_tokens=1)
    with torch.no_grad():
        projections[0].weight.mul_(scale)
        projections[1].weight.mul_(scale)
        q, k, v = (p(hidden).view(2, -1, 4, 16).transpose(1, 2) for p in projections)
        exact = reference_attention(q, k, v, real[:, None, None, :], scale=layer.scaling)
        if swap:  # what a q/k mix-up gives with infinitely many features
            got = reference_attention(k, q, v, real[:, None, None, :], scale=layer.scaling)
        else:
            layer.performer.features.copy_(orthogonal_random_features(num_features, 16, generator=generator(seed)))
            got = layer.hfx_variant.attend(
                LayerCall.of_module(layer.hfx_variant, layer, hidden, q, k, v, ForwardMasks(layer.hfx_variant, inputs))
            )
    rows = lambda t: t.transpose(1, 2)[real]
    return ((rows(got) - rows(exact)).norm() / rows(exact).norm()).item()


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_performer_in_a_patched_model_approaches_softmax_attention(family):
    """Measured: mean error 0.10 (16 features) → 0.018 (1,024) on BERT, 0.10 → 0.014 on ViT; a q/k swap costs
    0.078 / 0.037 even with infinitely many features, and returning v unchanged costs > 1."""
    few = sum(_performer_layer_error(family, 16, s) for s in range(4)) / 4
    many = sum(_performer_layer_error(family, 1024, s) for s in range(4)) / 4
    assert few > 2.5 * many
    assert many < 0.5 * _performer_layer_error(family, 1024, 0, swap=True)


def test_performer_probabilities_of_every_query_row_sum_to_one_beside_a_much_larger_row():
    """The weights ``output_attentions`` returns are stabilised per query row: a row whose projections are far larger
    than the others' (query 0 × 1,000) does not underflow the other rows' features to zero."""
    model = hfx.patch(_bert(), "performer", num_features=16)
    layer = model.encoder.layer[0].attention.self
    ids, mask = padded_batch()
    with torch.no_grad():
        hidden = model.embeddings(input_ids=ids)
        q, k, v = (p(hidden).view(3, 24, 4, 8).transpose(1, 2) for p in (layer.query, layer.key, layer.value))
        q[:, :, 0] *= 1000
        masks = ForwardMasks(layer.hfx_variant, ForwardInputs(3, 24, hidden.device, mask.bool()))
        probs = layer.hfx_variant.attention_probabilities(
            LayerCall.of_module(layer.hfx_variant, layer, hidden, q, k, v, masks)
        )
    assert (probs[:, :, 1:].sum(-1) - 1).abs().max() <= tol(1e-5)


def test_padded_keys_have_no_influence():
    q, k, v = _qkv(1)
    feats = orthogonal_random_features(32, 16)
    real = torch.ones(1, 64, dtype=torch.bool)
    real[:, 40:] = False
    a = favor_attention(q, k, v, feats, real)
    k2, v2 = k.clone(), v.clone()
    k2[..., 40:, :] = 100 * torch.randn_like(k2[..., 40:, :])
    v2[..., 40:, :] = 100 * torch.randn_like(v2[..., 40:, :])
    b = favor_attention(q, k2, v2, feats, real)
    assert torch.equal(a, b)
    c = favor_attention(q[..., :40, :], k[..., :40, :], v[..., :40, :], feats)
    assert (a[..., :40, :] - c).abs().max() <= tol(1e-5)


def test_performer_eval_is_deterministic_and_training_redraws_on_schedule():
    model = hfx.patch(_bert(), "performer", num_features=16, redraw_interval=2)
    ids, mask = padded_batch()
    feats = model.encoder.layer[0].attention.self.performer.features
    start = feats.clone()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b) and torch.equal(feats, start)
    model.train()
    with torch.no_grad():
        model(input_ids=ids)  # training forward 1
        model(input_ids=ids)  # 2
        assert torch.equal(feats, start)
        model(input_ids=ids)  # 3: redrawn before this one (every 2)
    assert not torch.equal(feats, start)


@pytest.mark.parametrize("policy", ["device", "cuda"])
def test_performer_training_under_torch_compile_is_one_graph_and_redraws_on_schedule(policy, monkeypatch):
    """The training-forward counter is read outside the graph (a custom op on a host tensor): a Python int read in a
    compiled model is guarded on, so each training step compiled a new graph (8 in 8 steps, then dynamo's limit ran
    the model eagerly). The compiled model redraws the features at the steps, and from the draws, the eager one does."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    if policy == "cuda":
        use_cuda_policy(monkeypatch)
    torch._dynamo.reset()
    model = hfx.patch(no_dropout(_bert()), "performer", num_features=16, redraw_interval=2).train()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    ids, mask = padded_batch()

    def performers(m):
        return [layer.attention.self.performer for layer in m.encoder.layer]

    graphs, redrawn = [], []
    for step in range(5):
        before, features = counters["stats"]["unique_graphs"], performers(model)[0].features.clone()
        for run in (compiled, eager):
            torch.manual_seed(step)
            run(input_ids=ids, attention_mask=mask).last_hidden_state.square().mean().backward()
        graphs.append(counters["stats"]["unique_graphs"] - before)
        redrawn.append(not torch.equal(performers(model)[0].features, features))
        for got, want in zip(performers(model), performers(eager)):
            assert torch.equal(got.features, want.features)
            assert got.training_calls == want.training_calls == step + 1
    assert graphs == [1, 0, 0, 0, 0]
    assert redrawn == [False, False, True, False, True]


@pytest.mark.parametrize("variant,options", [("linformer", dict(proj_len=8)), ("performer", dict(num_features=16))])
def test_save_and_reload_reproduces_outputs(tmp_path, variant, options):
    from transformers import BertModel as Cls

    model = hfx.patch(_bert(), variant, **options)
    ids, mask = padded_batch()
    model.save_pretrained(tmp_path)
    torch.manual_seed(123)  # a reload must not depend on the RNG: the added weights come from the file
    reloaded = hfx.from_pretrained(Cls, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).last_hidden_state,
            reloaded(input_ids=ids, attention_mask=mask).last_hidden_state,
        )


@pytest.mark.parametrize("variant,options", [("linformer", dict(proj_len=8)), ("performer", dict(num_features=16))])
def test_unpatch_removes_the_added_weights_and_restores_the_model(variant, options):
    original = _bert()
    model = hfx.unpatch(hfx.patch(copy.deepcopy(original), variant, **options))
    assert list(model.state_dict()) == list(original.state_dict())
    assert not any(hasattr(module, variant) for module in model.modules())
    ids, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).last_hidden_state,
            original(input_ids=ids, attention_mask=mask).last_hidden_state,
        )


@pytest.mark.parametrize(
    "variant,options,message",
    [
        ("linformer", dict(proj_len=0), "patch(variant='linformer'): proj_len=0; expected a positive int"),
        ("linformer", dict(share_kv=1), "patch(variant='linformer'): share_kv=1; expected "),
        ("performer", dict(num_features=0), "patch(variant='performer'): num_features=0; expected a positive int"),
        ("performer", dict(redraw_interval=-1), "patch(variant='performer'): redraw_interval=-1; expected an int ≥ 0"),
    ],
)
def test_bad_options_name_the_call_they_were_given_to(variant, options, message):
    with pytest.raises(ValueError) as raised:
        hfx.patch(_bert(), variant, **options)
    assert str(raised.value).startswith(message)


def test_linformer_layer_gives_the_kernel_its_scale_and_padding_and_so_do_its_probabilities():
    """A call's scale (0.3 here, not the head dim's 1/√8) and padding reach the projections and the softmax, in the
    output and in the weights ``output_attentions`` returns (written out: softmax(q · (Eᵀ k_real)ᵀ · scale)), and
    its dropout rate reaches the kernel."""
    import dataclasses

    model = hfx.patch(_bert(), "linformer", proj_len=8)
    layer = model.encoder.layer[0].attention.self
    ids, mask = padded_batch()
    real = mask.bool()
    with torch.no_grad():
        hidden = model.embeddings(input_ids=ids)
        q, k, v = (p(hidden).view(3, 24, 4, 8).transpose(1, 2) for p in (layer.query, layer.key, layer.value))
        masks = ForwardMasks(layer.hfx_variant, ForwardInputs(3, 24, hidden.device, real))
        call = dataclasses.replace(LayerCall.of_module(layer.hfx_variant, layer, hidden, q, k, v, masks), scale=0.3)
        E, F = layer.linformer.E[:24], layer.linformer.F[:24]
        zeroed = lambda x: x * real[:, None, :, None]
        weights = torch.softmax(q @ (E.T @ zeroed(k)).transpose(-1, -2) * 0.3, dim=-1)
        assert (layer.hfx_variant.attention_probabilities(call) - weights).abs().max() <= tol(1e-5)
        want = weights @ (F.T @ zeroed(v))
        assert (layer.hfx_variant.attend(call) - want).abs().max() <= tol(1e-5)
        dropped = layer.hfx_variant.attend(dataclasses.replace(call, dropout_p=0.5))  # the call's rate reaches it
        assert (dropped - want).abs().max() > 0.1


def test_linformer_projects_to_as_many_slots_as_the_model_has_tokens():
    model = hfx.patch(_bert(max_position_embeddings=64), "linformer", proj_len=64)  # the largest allowed
    assert model.encoder.layer[0].attention.self.linformer.E.shape == (64, 64)


def test_linformer_projections_take_the_models_dtype():
    model = hfx.patch(_bert().double(), "linformer", proj_len=8)
    projection = model.encoder.layer[0].attention.self.linformer
    assert projection.E.dtype == projection.F.dtype == torch.float64


def test_performer_warns_once_that_the_models_attention_dropout_cannot_be_applied(monkeypatch):
    """Said once per process (the ``performer-dropout`` key), only where the model has attention dropout and it is
    not turned off: FAVOR+ has no attention matrix to drop entries of."""
    import warnings

    from hf_flexattn import warnings as hfx_warnings

    monkeypatch.setattr(hfx_warnings, "_warned", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        hfx.patch(_bert(attention_probs_dropout_prob=0.0), "performer", num_features=16)
        hfx.patch(_bert(), "performer", num_features=16, attention_dropout="off")  # BERT's 0.1, turned off
        assert seen == [] and hfx_warnings._warned == set()
        hfx.patch(_bert(), "performer", num_features=16)
        hfx.patch(_bert(), "performer", num_features=16)  # once
    assert [str(w.message) for w in seen] == [
        "hf_flexattn: performer has no attention matrix, so the model's attention dropout (0.1) cannot be applied; "
        "pass attention_dropout='off' to say so and silence this warning"
    ]
    assert hfx_warnings._warned == {"performer-dropout"}


@pytest.mark.parametrize("rate", [0.0, 0.2])
def test_performer_reads_the_attention_dropout_where_the_family_keeps_it(rate, monkeypatch):
    """DistilBERT names its rate ``attention_dropout``, not ``attention_probs_dropout_prob``: the warning reads the
    rate the module applies, so a DistilBERT losing its attention dropout is told (and one without is not)."""
    import warnings

    from family_checks import distilbert_config
    from transformers import DistilBertModel

    from hf_flexattn import warnings as hfx_warnings

    monkeypatch.setattr(hfx_warnings, "_warned", set())
    torch.manual_seed(0)
    model = DistilBertModel(distilbert_config(attention_dropout=rate))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        hfx.patch(model, "performer", num_features=16)
    messages = [str(w.message) for w in seen if "performer has no attention matrix" in str(w.message)]
    assert messages == ([f"hf_flexattn: performer has no attention matrix, so the model's attention dropout ({rate}) "
                         "cannot be applied; pass attention_dropout='off' to say so and silence this warning"]
                        if rate else [])  # fmt: skip


def _favor_reference(q, k, v, features, real=None):
    """FAVOR+ in closed form, float64, no stabiliser: φ(x) = exp(w·x' − |x'|²/2), x' = x·D^(−1/4)."""
    q, k, v, w = (t.double() for t in (q, k, v, features))
    scaled = lambda x: x * x.shape[-1] ** -0.25
    phi = lambda x: torch.exp(scaled(x) @ w.T - (scaled(x) ** 2).sum(-1, keepdim=True) / 2)
    weights = phi(q) @ phi(k).transpose(-1, -2)
    if real is not None:
        weights = weights * real[:, None, None, :]
    return (weights @ v) / weights.sum(-1, keepdim=True)


def test_favor_attention_is_the_random_feature_kernel_in_closed_form():
    """Keys of different norms (their |k'|²/2 does not cancel), per-feature values that must keep their ratios, and
    inputs in another dtype than the features (float64 inputs, float32 buffer)."""
    g = generator(0)
    q, k, v = (torch.randn(2, 2, 9, 16, generator=g, dtype=torch.float64) for _ in range(3))
    k = k * torch.linspace(0.2, 1.5, 9, dtype=torch.float64)[:, None]
    features = orthogonal_random_features(24, 16, generator=g)
    got = favor_attention(q, k, v, features)
    assert got.dtype == torch.float64
    assert torch.allclose(got, _favor_reference(q, k, v, features), rtol=1e-9, atol=1e-12)


def test_favor_attention_keeps_rows_and_heads_of_very_different_sizes():
    """One query and one key far along a long feature (projection 120): each query row is stabilised by its own
    maximum and the keys by their own head's, so neither the other rows nor the other head underflow to zero
    (exp(-120) is 0 in float32) and nothing overflows."""
    g = generator(1)
    features = orthogonal_random_features(32, 16, generator=g)
    features[0] = 0.0
    features[0, 0] = 20.0
    q, k, v = (0.3 * torch.randn(1, 2, 6, 16, generator=g) for _ in range(3))
    q[0, 0, 0], k[0, 0, 1] = torch.zeros(16), torch.zeros(16)
    q[0, 0, 0, 0] = k[0, 0, 1, 0] = 12.0  # x' = x / 2: 6 along feature 0 (norm 20): projection 120, |x'|²/2 = 18
    got = favor_attention(q, k, v, features)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), _favor_reference(q, k, v, features), rtol=1e-4, atol=1e-5)


def test_orthogonal_random_features_follow_the_generator_device_and_dtype():
    """A seeded generator reproduces the draw and leaves torch's global one alone; the draw is made in float32
    whatever torch's default dtype, then returned in the dtype and on the device asked for."""
    state = torch.get_rng_state()
    a = orthogonal_random_features(20, 8, generator=generator(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, orthogonal_random_features(20, 8, generator=generator(3)))
    wide = orthogonal_random_features(20, 8, generator=generator(3), dtype=torch.float64)
    assert wide.dtype == torch.float64 and torch.equal(wide, a.double())
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert torch.equal(orthogonal_random_features(20, 8, generator=generator(3)), a)
    finally:
        torch.set_default_dtype(default)
    meta = orthogonal_random_features(20, 8, device="meta")
    assert meta.device.type == "meta" and meta.shape == (20, 8)


def test_performer_module_defaults_errors_and_redraw_count():
    """The README's defaults (256 features, a redraw every 1000 training forwards); the error names the variant;
    ``step`` counts every training forward and redraws before the (interval + 1)-th, then every interval."""
    module = PerformerAttention(16)
    assert (module.num_features, module.redraw_interval) == (256, 1000)
    with pytest.raises(ValueError, match=r"^performer: num_features=0; expected a positive int$"):
        PerformerAttention(16, num_features=0)
    module = PerformerAttention(16, num_features=8, redraw_interval=3)
    seen = [module.features.clone()]
    for _ in range(7):
        module.step()
        seen.append(module.features.clone())
    assert module.training_calls == 7
    changed = [i for i in range(1, 8) if not torch.equal(seen[i], seen[i - 1])]
    assert changed == [4, 7]
