"""The ``backend`` option (``'auto' | 'flex' | 'natten' | 'flash'``, docs/gpu.md "Choosing the kernel"): which kernel
each runs, against the dense reference, and what each refuses, with the model left as it was.

NATTEN is optional (the ``bench`` extra; CI does not install it): the tests that run its kernels skip without it,
the refusals run everywhere. FlexAttention's FLASH backend needs CUDA and flash-attn-4: here the tests check the
refusals and, under CUDA's policy on CPU tensors, that its kernel options reach the flex call (not that it runs)."""

import copy
import types
import typing

import pytest
import torch
from transformers import BertModel

import hf_flexattn as hfx
from hf_flexattn import ops
from hf_flexattn.kernels import flex, natten_backend
from hf_flexattn.masks import generate_natten_2d

from helpers import (
    assert_same_snapshot,
    dense_bert_layer,
    natten_1d_reference,
    natten_2d_reference,
    no_dropout,
    padded_batch,
    reference_attention,
    snapshot,
    tiny_bert_config,
    tiny_model_and_input,
    tol,
    use_cuda_policy,
)

try:
    import natten
except ImportError:
    natten = None

needs_natten = pytest.mark.skipif(
    natten is None, reason="NATTEN is not installed (pip install natten==0.21.7, the bench extra; CI installs none)"
)


def refused(model, variant, match, **options):
    """``patch`` raises a ValueError matching ``match`` and leaves ``model`` exactly as it was."""
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        hfx.patch(model, variant, **options)
    assert not hfx.is_patched(model)
    assert_same_snapshot(before, snapshot(model))


def one_layer_bert():
    torch.manual_seed(0)
    return BertModel(tiny_bert_config(num_hidden_layers=1)).eval()


def flex_calls(monkeypatch) -> list:
    """Record every flex call's ``kernel_options``; the dense ``flex_reference`` computes it (no compile)."""
    seen = []

    def compiled(dynamic):
        def call(*args, **kwargs):
            seen.append(kwargs.get("kernel_options"))
            return flex.flex_reference(*args, **kwargs)

        return call

    monkeypatch.setattr(flex, "compiled_flex_attention", compiled)
    return seen


def assert_same_gradients(a, b):
    trained = 0
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:  # (BERT's pooler is not in last_hidden_state)
            assert (p.grad - q.grad).abs().max() <= tol(1e-5), name
            trained += 1
    assert trained > 0


def count_calls(monkeypatch, owner, name) -> list:
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


# ------------------------------------------------------------------------------------------------------- refusals


def test_an_unknown_backend_is_refused_untouched():
    refused(one_layer_bert(), "full", r"backend='triton'.*'auto' or 'flex' or 'natten' or 'flash'", backend="triton")


@pytest.mark.parametrize(
    "variant,options,backend,match",
    [
        ("longformer", {"window": 8}, "natten", r"backend='natten' is not available here: NATTEN's kernels compute"),
        ("linformer", {"proj_len": 8}, "flex", r"backend='flex' is not available here: 'linformer' computes"),
        ("performer", {"num_features": 8}, "flash", r"backend='flash' is not available here: 'performer' computes"),
    ],
)
def test_a_backend_the_pattern_has_no_kernel_for_is_refused(variant, options, backend, match):
    refused(one_layer_bert(), variant, match, backend=backend, **options)


def test_natten_on_a_biased_neighborhood_is_refused():
    """Swin's blocks add their relative position bias, which NATTEN's kernels do not apply."""
    model, _ = tiny_model_and_input("swin", 8)
    refused(model, "neighborhood", r"backend='natten'.*'neighborhood' on the swin family is not that", backend="natten")


def test_natten_on_beits_relative_position_bias_is_refused_at_the_first_call(monkeypatch):
    """BEiT's bias depends on the checkpoint's config, which the variant meets at its first call."""
    from family_checks import beit_config, family_model
    from transformers import BeitModel

    monkeypatch.setattr(natten_backend, "natten_version", lambda: (0, 21, 7))  # as if installed (CI installs none)
    model = hfx.patch(family_model(BeitModel, beit_config()), "neighborhood", kernel_size=3, backend="natten")
    with torch.no_grad(), pytest.raises(ValueError, match=r"relative position bias .* NATTEN's kernels do not apply"):
        model(pixel_values=torch.randn(1, 3, 32, 32))


def test_natten_without_natten_is_refused_and_auto_runs_flex(monkeypatch):
    model = one_layer_bert()
    monkeypatch.setattr(natten_backend, "natten_version", lambda: None)
    refused(model, "neighborhood", r"backend='natten' needs .*NATTEN is not installed", kernel_size=5, backend="natten")
    monkeypatch.setattr(natten_backend, "natten_version", lambda: (0, 17, 5))
    refused(model, "neighborhood", r"NATTEN 0\.17\.5 is installed; .* needs NATTEN >= 0\.21", backend="natten")

    # "auto" is the policy as it was: on CUDA (its policy on CPU tensors here) compiled flex, never NATTEN
    use_cuda_policy(monkeypatch)
    seen = flex_calls(monkeypatch)
    hfx.patch(model, "neighborhood", kernel_size=5, dilation=2)
    ids = torch.randint(5, 120, (2, 30))
    with torch.no_grad():
        got = model(input_ids=ids).last_hidden_state
        want = dense_bert_layer(model, ids, natten_1d_reference(30, 5, 2))
    assert seen == [None]  # one flex call (one layer), without kernel options
    assert (got - want).abs().max() <= tol(1e-5)


def test_this_torch_offers_flexattention_flash_backend():
    """Every torch of the declared range (>= 2.11) offers ``BACKEND="FLASH"``: flash_missing reads it from the public
    FlexKernelOptions, and would refuse backend='flash' on every torch if torch declared it elsewhere."""
    assert {"AUTO", "TRITON", "FLASH"} <= set(flex.flex_backends())


def test_flash_without_its_install_is_refused(monkeypatch):
    model = one_layer_bert()
    monkeypatch.setattr(flex.importlib.util, "find_spec", lambda name, *args: None)
    refused(model, "neighborhood", r"backend='flash' needs .*flash-attn-4 \(flash_attn\.cute\)", backend="flash")

    class FlexKernelOptions(typing.TypedDict, total=False):  # as a torch without FLASH declares it
        BACKEND: typing.Literal["AUTO", "TRITON"]

    monkeypatch.setattr(flex.flex_module, "FlexKernelOptions", FlexKernelOptions)
    refused(model, "full", r"backend='flash' needs .*has no FLASH backend for FlexAttention", backend="flash")


@pytest.mark.cpu_only
def test_flash_refuses_a_cpu_device_at_the_first_call(monkeypatch):
    monkeypatch.setattr(ops, "flash_missing", lambda: "")  # as if flash-attn-4 were installed
    model = hfx.patch(one_layer_bert(), "neighborhood", kernel_size=5, backend="flash")
    with torch.no_grad(), pytest.raises(ValueError, match=r"backend='flash'\): the attention runs on 'cpu'"):
        model(input_ids=torch.randint(5, 120, (1, 20)))


@pytest.mark.cuda_policy
def test_flash_refuses_to_train_a_captured_bias(monkeypatch):
    """Swin's bias table is read by the score_mod; FLASH returns no gradient to captured tensors."""
    monkeypatch.setattr(ops, "flash_missing", lambda: "")
    use_cuda_policy(monkeypatch)
    seen = flex_calls(monkeypatch)
    model, inputs = tiny_model_and_input("swin", 8)
    hfx.patch(model, "neighborhood", kernel_size=3, backend="flash")
    with pytest.raises(ValueError, match=r"backend='flash'\): this call trains a tensor its score_mod reads"):
        model.train()(**inputs)
    with torch.no_grad():  # inference reads the table without training it: FLASH runs
        model.eval()(**inputs)
    assert seen and all(options == flex.FLASH_KERNEL_OPTIONS for options in seen)


# ------------------------------------------------------------------------------------------ what each backend runs


@pytest.mark.cuda_policy
@pytest.mark.parametrize("variant,options", [("neighborhood", {"kernel_size": 5}), ("longformer", {"window": 8})])
def test_flash_kernel_options_reach_the_flex_call(monkeypatch, variant, options):
    """Under CUDA's policy (CPU tensors, flex_reference computing each call) the flex calls of backend='flash' carry
    ``kernel_options={"BACKEND": "FLASH"}``, those of 'auto' none, and the outputs are the same."""
    monkeypatch.setattr(ops, "flash_missing", lambda: "")
    use_cuda_policy(monkeypatch)
    seen = flex_calls(monkeypatch)
    base = one_layer_bert()
    auto = hfx.patch(copy.deepcopy(base), variant, **options)
    flash = hfx.patch(copy.deepcopy(base), variant, backend="flash", **options)
    ids = torch.randint(5, 120, (2, 40))
    with torch.no_grad():
        want = auto(input_ids=ids).last_hidden_state
        assert seen == [None]
        got = flash(input_ids=ids).last_hidden_state
    assert seen == [None, flex.FLASH_KERNEL_OPTIONS]
    assert torch.equal(got, want)
    assert flash.config.hf_flexattn["options"]["backend"] == "flash"  # saved; 'auto' (the default) is not
    assert "backend" not in auto.config.hf_flexattn["options"]


@pytest.mark.cpu_only
@pytest.mark.parametrize(
    "family,variant,options",
    [
        ("bert", "neighborhood", {"kernel_size": 5}),
        ("bert", "longformer", {"window": 8}),
        ("vit", "swin", {"window_size": 4}),
        ("swin", "swin", {}),  # auto: HF's window algorithm; flex: one whole-map flex call per block
    ],
)
def test_flex_runs_flex_where_auto_takes_another_path(monkeypatch, family, variant, options):
    """On CPU 'auto' runs these short inputs on the dense path or a tile plan; 'flex' runs flex, with the same
    outputs; a training step (CPU flex has no backward) takes auto's path, with auto's gradients."""
    seen = flex_calls(monkeypatch)
    config = {} if family == "swin" else {"num_hidden_layers": 1}
    base, inputs = tiny_model_and_input(family, 40 if family == "bert" else 8, **config)
    no_dropout(base)  # the training step below compares gradients
    auto = hfx.patch(copy.deepcopy(base).eval(), variant, **options)
    forced = hfx.patch(copy.deepcopy(base).eval(), variant, backend="flex", **options)
    with torch.no_grad():
        want = auto(**inputs).last_hidden_state
        assert seen == []
        got = forced(**inputs).last_hidden_state
    assert seen and set(seen) == {None}
    calls = len(seen)
    assert (got - want).abs().max() <= tol(1e-5)
    for model in (auto, forced):
        model.train()(**inputs).last_hidden_state.square().mean().backward()
    assert len(seen) == calls
    assert_same_gradients(auto, forced)


# ---------------------------------------------------------------------------------------------- NATTEN's kernels


@needs_natten
@pytest.mark.cpu_only
@pytest.mark.parametrize("kernel,dilation", [(5, 1), (3, 2), (7, 3)])
def test_natten_1d_matches_our_path_and_the_dense_reference(monkeypatch, kernel, dilation):
    """Unpadded: natten.na1d runs and gives the rule's outputs. Padded (NATTEN's neighborhood kernels have no
    per-sample lengths), and lines shorter than kernel × dilation: our path, the same function."""
    natten_calls = count_calls(monkeypatch, natten_backend, "natten_1d_attention")
    base = one_layer_bert()
    auto = hfx.patch(copy.deepcopy(base), "neighborhood", kernel_size=kernel, dilation=dilation)
    model = hfx.patch(copy.deepcopy(base), "neighborhood", kernel_size=kernel, dilation=dilation, backend="natten")
    ids = torch.randint(5, 120, (2, 30))
    with torch.no_grad():
        got = model(input_ids=ids).last_hidden_state
        assert natten_calls == ["natten_1d_attention"]
        ours = auto(input_ids=ids).last_hidden_state
        want = dense_bert_layer(model, ids, natten_1d_reference(30, kernel, dilation))
    assert (got - want).abs().max() <= tol(1e-5)
    assert (got - ours).abs().max() <= tol(1e-5)

    lengths = [30, 17, 9]
    ids, mask = padded_batch(seq_len=30, lengths=lengths)
    rule = torch.zeros(3, 1, 30, 30, dtype=torch.bool)
    for b, n in enumerate(lengths):
        rule[b, 0, :n, :n] = natten_1d_reference(n, kernel, dilation)
    short = torch.randint(5, 120, (1, kernel * dilation - 1))
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = dense_bert_layer(model, ids, rule)
        got_short = model(input_ids=short).last_hidden_state
        want_short = dense_bert_layer(model, short, natten_1d_reference(short.shape[1], kernel, dilation))
    assert natten_calls == ["natten_1d_attention"]  # neither took NATTEN
    assert (got - want)[mask.bool()].abs().max() <= tol(1e-5)
    assert (got_short - want_short).abs().max() <= tol(1e-5)


@needs_natten
@pytest.mark.cpu_only
@pytest.mark.parametrize("kernel,dilation,prefix", [((3, 3), (1, 1), 1), ((3, 5), (2, 1), 2), ((5, 3), (1, 2), 0)])
def test_natten_2d_matches_our_op_and_the_dense_reference(kernel, dilation, prefix):
    """natten.na2d on the grid, the prefix tokens global (NATTEN's additional keys for the grid's queries, SDPA for
    the prefix queries), against ops.neighborhood_attention_2d's rule and the entry-by-entry reference."""
    grid = (8, 10)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, prefix + 80, 16) for _ in range(3))
    got = natten_backend.natten_2d_attention(q, k, v, grid, kernel, dilation, 0.25, num_prefix_tokens=prefix)
    allowed = natten_2d_reference(*grid, kernel, dilation, prefix)
    want = reference_attention(q, k, v, allowed, scale=0.25)
    assert (got - want).abs().max() <= tol(1e-5)
    if prefix == 0:
        ours = ops.neighborhood_attention_2d(q, k, v, kernel, dilation, grid=grid, scale=0.25)
        assert (got - ours).abs().max() <= tol(1e-5)
    assert torch.equal(generate_natten_2d(grid, kernel, dilation, prefix).dense(1, 1, *allowed.shape)[0, 0], allowed)


@needs_natten
@pytest.mark.cpu_only
def test_natten_kernels_apply_the_scale_given_and_2d_defaults_to_no_prefix():
    """A scale other than head_dim ** -0.5 (0.3 for 8 dims) reaches NATTEN's kernels and the prefix rows' SDPA."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 30, 8) for _ in range(3))
    got = natten_backend.natten_1d_attention(q, k, v, 5, 2, 0.3)
    assert (got - reference_attention(q, k, v, natten_1d_reference(30, 5, 2), scale=0.3)).abs().max() <= tol(1e-5)
    grid = (6, 5)
    q, k, v = (torch.randn(2, 3, 1 + 30, 8) for _ in range(3))
    got = natten_backend.natten_2d_attention(q, k, v, grid, (3, 3), (1, 1), 0.3, num_prefix_tokens=1)
    want = reference_attention(q, k, v, natten_2d_reference(*grid, (3, 3), (1, 1), 1), scale=0.3)
    assert (got - want).abs().max() <= tol(1e-5)
    q, k, v = (x[:, :, 1:] for x in (q, k, v))
    got = natten_backend.natten_2d_attention(q, k, v, grid, (3, 3), (1, 1), 0.3)
    want = reference_attention(q, k, v, natten_2d_reference(*grid, (3, 3), (1, 1), 0), scale=0.3)
    assert (got - want).abs().max() <= tol(1e-5)


@pytest.mark.parametrize(
    "version,want",
    [
        ("0.21.7", (0, 21, 7)),
        ("0.21.0+torch280cu128", (0, 21, 0)),
        ("0.17.5.dev1", (0, 17, 5)),
        ("1.0rc1", (1, 0)),
        ("0.21.7+cu12.8", (0, 21, 7)),
    ],
)
def test_natten_version_reads_the_releases_leading_numbers(monkeypatch, version, want):
    """A wheel's local label (+torch…cu…) and a pre-release's letters are not version numbers."""
    installed = types.SimpleNamespace(__version__=version)  # the module as imported
    monkeypatch.setattr(natten_backend.importlib.util, "find_spec", lambda name, *args: object())
    monkeypatch.setattr(natten_backend.importlib, "import_module", lambda name: installed)
    assert natten_backend.natten_version() == want


@needs_natten
@pytest.mark.cpu_only
def test_natten_runs_a_vit_and_trains_on_our_path(monkeypatch):
    """A ViT (CLS + 8×8 grid): natten.na2d in inference, with our path's outputs; NATTEN's CPU backend has no
    backward, so a training step takes our path: the same gradients as 'auto'."""
    natten_calls = count_calls(monkeypatch, natten_backend, "natten_2d_attention")
    base, inputs = tiny_model_and_input("vit", 8)
    no_dropout(base)  # the training step below compares gradients
    options = {"kernel_size": 3, "dilation": 2}
    auto = hfx.patch(copy.deepcopy(base).eval(), "neighborhood", **options)
    model = hfx.patch(copy.deepcopy(base).eval(), "neighborhood", backend="natten", **options)
    with torch.no_grad():
        got = model(**inputs).last_hidden_state
        want = auto(**inputs).last_hidden_state
    assert natten_calls == ["natten_2d_attention"] * 2  # both layers
    assert (got - want).abs().max() <= tol(1e-5)
    for m in (auto, model):
        m.train()(**inputs).last_hidden_state.square().mean().backward()
    assert len(natten_calls) == 2
    assert_same_gradients(auto, model)


@needs_natten
@pytest.mark.cuda_policy
def test_natten_without_its_compiled_kernels_is_refused_on_a_gpu(monkeypatch):
    """On a GPU NATTEN without libnatten would run its uncompiled flex (every score materialised): refused."""
    monkeypatch.setattr(natten, "HAS_LIBNATTEN", False)
    use_cuda_policy(monkeypatch)
    model = hfx.patch(one_layer_bert(), "neighborhood", kernel_size=5, backend="natten")
    refusal = (
        r"no compiled kernels \(natten\.HAS_LIBNATTEN is False.*"
        r"install a NATTEN wheel built for your CUDA and torch, or use backend='auto' or 'flex'$"
    )
    with torch.no_grad(), pytest.raises(ValueError, match=refusal):
        model(input_ids=torch.randint(5, 120, (1, 20)))
