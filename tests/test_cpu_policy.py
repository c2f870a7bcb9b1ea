"""The CPU device policy: which path each variant runs where, and that the structured paths compute what the generic
kernels compute (outputs and every gradient), through the patched models."""

import copy

import pytest
import torch
from transformers import BertModel, SwinConfig, SwinModel, ViTModel

import hf_flexattn as hfx
from hf_flexattn import kernels
from hf_flexattn.variants import swin
from hf_flexattn.variants.swin import SwinBlockVariant

from helpers import HALO_SIDE, NATTEN_1D_TOKENS, no_dropout, padded_batch, rel_err, tiny_bert_config, tiny_vit_config

pytestmark = pytest.mark.cpu_only  # the policy tested here is CPU's (CUDA's: test_device_readiness.py)

SWIN = dict(patch_size=2, embed_dim=16, depths=[2], num_heads=[2], window_size=4)


def _bert_inputs(n):
    ids, mask = padded_batch(batch=2, seq_len=n, lengths=[n, n - 11])
    mask[1, :3] = 0  # and left padding
    return dict(input_ids=ids, attention_mask=mask)


def _model(family, n):
    """A tiny model of ``family`` and its inputs of size ``n`` (tokens; patches per side for images)."""
    torch.manual_seed(0)
    if family == "bert":
        return BertModel(tiny_bert_config(max_position_embeddings=max(512, n))), _bert_inputs(n)
    pixels = torch.randn(2, 3, 4 * n if family == "vit" else 2 * n, 4 * n if family == "vit" else 2 * n)
    if family == "vit":
        return ViTModel(tiny_vit_config(), add_pooling_layer=False), dict(
            pixel_values=pixels, interpolate_pos_encoding=True
        )
    model = SwinModel(SwinConfig(image_size=2 * n, **SWIN), add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    return model, dict(pixel_values=pixels)


# (family, variant, options, size below the crossover, size past it): sizes in tokens, or patches per side
CASES = [
    ("bert", "longformer", dict(window=8, global_tokens=[0]), 1024, 1040),  # band from window + 1,024 tokens
    # dilation 2: two groups, each a sequence of its own
    ("bert", "neighborhood", dict(kernel_size=5, dilation=2), 2 * NATTEN_1D_TOKENS - 2, 2 * NATTEN_1D_TOKENS),
    ("vit", "neighborhood", dict(kernel_size=3), 8, HALO_SIDE),  # halo from HALO_SIDE² patches
    ("swin", "neighborhood", dict(kernel_size=5), 16, HALO_SIDE),
]


class PathSpy:
    """Counts the structured calls (tiled attention, Swin's window path) and the generic kernels' choices."""

    def __init__(self, monkeypatch):
        self.tiled, self.windows, self.generic = 0, 0, []
        tiled, windows, choose = kernels.tiled_attention, SwinBlockVariant._attend_windows, kernels.choose_path

        def count_tiled(*args, **kwargs):
            self.tiled += 1
            return tiled(*args, **kwargs)

        def count_windows(*args, **kwargs):
            self.windows += 1
            return windows(*args, **kwargs)

        def record_choice(*args, **kwargs):
            self.generic.append(choose(*args, **kwargs))
            return self.generic[-1]

        monkeypatch.setattr(kernels, "tiled_attention", count_tiled)
        monkeypatch.setattr(SwinBlockVariant, "_attend_windows", count_windows)
        monkeypatch.setattr(kernels, "choose_path", record_choice)


@pytest.mark.parametrize("family,variant,options,small,large", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_structured_path_past_the_crossover_dense_kernel_below_and_flex_on_cuda(
    family, variant, options, small, large, monkeypatch
):
    spy = PathSpy(monkeypatch)
    for size, want in ((small, "dense"), (large, "tiled")):
        model, inputs = _model(family, size)
        hfx.patch(model.eval(), variant, **options)
        spy.tiled, spy.generic = 0, []
        with torch.no_grad():
            model(**inputs)
        layers = hfx.patching.patch_state(model).variant.num_layers
        if want == "tiled":
            assert spy.tiled == layers and spy.generic == [], (size, spy.generic)
        else:
            assert spy.tiled == 0 and set(spy.generic) == {"dense"}, (size, spy.generic)
    # CUDA's policy on the large input: compiled flex (uncompiled here), never a structured path
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    monkeypatch.setattr(kernels.flex, "compiled_flex_attention", lambda dynamic: kernels.flex.flex_attention)
    spy.tiled, spy.generic = 0, []
    with torch.no_grad():
        model(**inputs)
    assert spy.tiled == 0 and set(spy.generic) == {"flex"}


def test_swin_runs_hfs_window_algorithm_on_cpu_and_cudas_choice_per_block_on_cuda(monkeypatch):
    """CPU: always the windows. CUDA: per block what ``swin.windows_pay`` says (tests/test_swin_cuda.py tests the
    choice itself): here forced one way, then the other."""
    spy = PathSpy(monkeypatch)
    model, inputs = _model("swin", 16)
    hfx.patch(model.eval(), "swin")
    with torch.no_grad():
        model(**inputs)
    assert spy.windows == 2 and spy.generic == []
    monkeypatch.setattr(kernels, "device_kind", lambda t: "cuda")
    monkeypatch.setattr(kernels.flex, "compiled_flex_attention", lambda dynamic: kernels.flex.flex_reference)
    with torch.no_grad():
        monkeypatch.setattr(swin, "windows_pay", lambda grid, window, shift: True)
        model(**inputs)
        assert spy.windows == 4 and spy.generic == []
        monkeypatch.setattr(swin, "windows_pay", lambda grid, window, shift: False)
        model(**inputs)
        assert spy.windows == 4 and spy.generic == ["flex", "flex"]
        model(**inputs, output_attentions=True)  # HF's per-window probabilities: the window path, on any device
    assert spy.windows == 6


def test_vit_swin_windows_are_tiles_on_cpu_and_padding_falls_back_to_the_generic_kernels(monkeypatch):
    spy = PathSpy(monkeypatch)
    model, inputs = _model("vit", 8)
    hfx.patch(model.eval(), "swin", window_size=4)
    with torch.no_grad():
        model(**inputs)
        assert spy.tiled == 2 and spy.generic == []
        model(**inputs, attention_mask=torch.ones(2, 65, dtype=torch.long))  # a padding mask: generic kernels
    assert spy.tiled == 2 and spy.generic == ["dense", "dense"]


STRUCTURED_CASES = [
    ("bert", "longformer", dict(window=8, global_tokens=[0, 5])),
    ("bert", "longformer", dict(window=8, global_tokens=[0], global_projections=True)),
    ("bert", "neighborhood", dict(kernel_size=5, dilation=2)),
    ("vit", "neighborhood", dict(kernel_size=(5, 3), dilation=(1, 2))),
    ("vit", "swin", dict(window_size=2, shift=1)),
    ("swin", "neighborhood", dict(kernel_size=7)),
    ("swin", "swin", dict(window_size=3)),  # smaller than the checkpoint's 4: the centre of its table
]


@pytest.mark.parametrize("family,variant,options", STRUCTURED_CASES, ids=[f"{c[0]}-{c[1]}" for c in STRUCTURED_CASES])
def test_structured_paths_train_like_the_generic_kernels(family, variant, options, monkeypatch):
    """Past the crossover, with padding on both sides for text: the same loss and the same gradient of every
    parameter (bias tables included) as the generic kernels (dense / block-sparse on CPU)."""
    # past each crossover
    size = {"bert": 1040 if variant == "longformer" else 2 * NATTEN_1D_TOKENS, "vit": HALO_SIDE, "swin": HALO_SIDE}[
        family
    ]
    model, inputs = _model(family, size)
    model = no_dropout(hfx.patch(model, variant, **options)).train()
    generic = copy.deepcopy(model)
    with torch.no_grad():
        shape = model(**inputs).last_hidden_state.shape
    readout = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    if family == "bert":
        readout = readout * inputs["attention_mask"][..., None]  # padded rows are no one's output
    spy = PathSpy(monkeypatch)
    losses = []
    for m, structured in ((model, True), (generic, False)):
        if not structured:
            assert spy.tiled + spy.windows > 0 and spy.generic == []  # the structured paths ran, only they
            monkeypatch.setattr(kernels, "uses_structured_paths", lambda t: False)
        loss = (m(**inputs).last_hidden_state * readout).sum()
        loss.backward()
        losses.append(loss.item())
    assert spy.generic  # ... and then the generic kernels
    assert abs(losses[0] - losses[1]) <= 1e-4 * max(1.0, abs(losses[1]))
    for (name, p), (_, g) in zip(model.named_parameters(), generic.named_parameters()):
        if g.grad is not None:  # (a key bias's gradient is 0 in exact arithmetic: float noise, hence the floor)
            assert rel_err(p.grad, g.grad, floor=1e-2) <= 1e-4, name
