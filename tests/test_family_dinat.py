"""DiNAT revived (families/dinat.py): the patched model equals transformers' DiNAT run on a plain dense
implementation of NATTEN's legacy ops (`natten2dqkrpb` / `natten2dav`: the window rule and the relative position
bias written out from NATTEN's C++ index functions), outputs and every gradient (the bias tables included), per-layer
dilations, maps padded by DiNAT, odd-sized images; built with and without NATTEN installed."""

import copy
import json
import math
import subprocess
import sys

import pytest
import torch

import hf_flexattn as hfx
from hf_flexattn.patching import patch_state

from helpers import generator, rel_err, tol

# --- NATTEN's legacy ops, written out (natten/csrc: get_window_start, get_pb_start) -----------------------------


def _window_start(i, length, kernel, dilation):
    n = kernel // 2
    if dilation <= 1:
        return max(i - n, 0) + (i + n >= length) * (length - i - n - 1)
    if i - n * dilation < 0:
        return i % dilation
    if i + n * dilation >= length:
        imodd, a = i % dilation, (length // dilation) * dilation
        b = length - a
        return length - b + imodd - 2 * n * dilation if imodd < b else a + imodd - kernel * dilation
    return i - n * dilation


def _pb_start(i, length, kernel, dilation):
    n = kernel // 2
    if dilation <= 1:
        return n + (i < n) * (n - i) + (i + n >= length) * (length - i - 1 - n)
    if i - n * dilation < 0:
        return kernel - 1 - i // dilation
    if i + n * dilation >= length:
        return (length - i - 1) // dilation
    return n


def _windows(rows, cols, kernel, dilation):
    """For each query (i, j): the rows and columns of its keys and where its bias block starts."""
    for i in range(rows):
        ri, pi = _window_start(i, rows, kernel, dilation), _pb_start(i, rows, kernel, dilation)
        for j in range(cols):
            rj, pj = _window_start(j, cols, kernel, dilation), _pb_start(j, cols, kernel, dilation)
            yield i, j, [ri + a * dilation for a in range(kernel)], [rj + b * dilation for b in range(kernel)], pi, pj


def natten2dqkrpb(query, key, rpb, kernel, dilation):
    """(B, heads, H, W, D) queries and keys → (B, heads, H, W, k²) scores of each query's window, plus the bias."""
    batch, heads, rows, cols, _ = query.shape
    scores = []
    for i, j, key_rows, key_cols, pi, pj in _windows(rows, cols, kernel, dilation):
        window = key[:, :, key_rows][:, :, :, key_cols]  # (B, heads, k, k, D)
        score = torch.einsum("bhd,bhxyd->bhxy", query[:, :, i, j], window) + rpb[:, pi : pi + kernel, pj : pj + kernel]
        scores.append(score.reshape(batch, heads, kernel * kernel))
    return torch.stack(scores, dim=2).view(batch, heads, rows, cols, kernel * kernel)


def natten2dav(probs, value, kernel, dilation):
    """(B, heads, H, W, k²) window probabilities and (B, heads, H, W, D) values → (B, heads, H, W, D)."""
    batch, heads, rows, cols, _ = probs.shape
    outputs = []
    for i, j, key_rows, key_cols, _, _ in _windows(rows, cols, kernel, dilation):
        window = value[:, :, key_rows][:, :, :, key_cols].reshape(batch, heads, kernel * kernel, -1)
        outputs.append(torch.einsum("bhk,bhkd->bhd", probs[:, :, i, j], window))
    return torch.stack(outputs, dim=2).view(batch, heads, rows, cols, -1)


def legacy_neighborhood_attention(self, hidden_states, output_attentions=False):
    """DiNAT's NeighborhoodAttention as written for NATTEN's legacy ops (heads before the map)."""
    batch, rows, cols, channels = hidden_states.shape
    heads = lambda t: t.view(batch, rows, cols, self.num_attention_heads, -1).permute(0, 3, 1, 2, 4)
    query = heads(self.query(hidden_states)) / math.sqrt(self.attention_head_size)
    key, value = heads(self.key(hidden_states)), heads(self.value(hidden_states))
    probs = self.dropout(torch.softmax(natten2dqkrpb(query, key, self.rpb, self.kernel_size, self.dilation), dim=-1))
    context = natten2dav(probs, value, self.kernel_size, self.dilation)
    return (context.permute(0, 2, 3, 1, 4).reshape(batch, rows, cols, channels),)


# --- tests ------------------------------------------------------------------------------------------------------

MODELING = hfx.dinat_modeling()


def _config(**overrides):
    values = dict(
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        kernel_size=3,
        dilations=[[1, 2], [1, 2]],  # stage 2's 4x4 map is smaller than 3 x 2: DiNAT pads it to 6x6
        patch_size=4,
        num_labels=5,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return MODELING.DinatConfig(**values)


def _model(config=None, dtype=torch.float64):
    torch.manual_seed(0)
    model = MODELING.DinatForImageClassification(config or _config())
    with torch.no_grad():  # DiNAT initialises its bias tables to zero: give them values to get wrong
        for name, parameter in model.named_parameters():
            if name.endswith(".rpb"):
                parameter.normal_(0, 0.5)
    return model.to(dtype).eval()


@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["square", "odd-map"])
def test_equals_dinat_on_natten_legacy_ops_with_every_gradient(size, monkeypatch):
    original = _model()
    patched = hfx.patch(copy.deepcopy(original), "neighborhood")
    assert patch_state(patched).variant.dilations == (1, 2, 1, 2)  # each layer's own
    monkeypatch.setattr(MODELING.NeighborhoodAttention, "forward", legacy_neighborhood_attention)
    pixels = torch.randn(2, 3, *size, generator=generator(0), dtype=torch.float64)
    labels = torch.tensor([1, 3])
    for model in (original, patched):
        model.train()
        model(pixel_values=pixels, labels=labels).loss.backward()
    with torch.no_grad():
        want, got = original(pixel_values=pixels).logits, patched(pixel_values=pixels).logits
    assert (want - got).abs().max() <= tol(1e-10)
    reference = dict(original.named_parameters())
    for name, parameter in patched.named_parameters():
        assert rel_err(parameter.grad, reference[name].grad) <= tol(1e-9), name
    assert all(p.grad.norm() > 0 for n, p in patched.named_parameters() if n.endswith(".rpb"))


def test_a_smaller_kernel_reads_the_centre_of_the_bias_table(monkeypatch):
    original = _model(_config(kernel_size=5, dilations=[[1, 1], [1, 1]]))
    patched = hfx.patch(copy.deepcopy(original), "neighborhood", kernel_size=3)
    reference = _model(_config(kernel_size=3, dilations=[[1, 1], [1, 1]]))
    weights = original.state_dict()
    weights = {k: v[:, 2:-2, 2:-2] if k.endswith(".rpb") else v for k, v in weights.items()}
    reference.load_state_dict(weights)
    monkeypatch.setattr(MODELING.NeighborhoodAttention, "forward", legacy_neighborhood_attention)
    # maps of 16x16 and 8x8: no stage is padded to the checkpoint's kernel of 5, which the reference would not do
    pixels = torch.randn(2, 3, 64, 64, generator=generator(0), dtype=torch.float64)
    with torch.no_grad():
        assert (reference(pixel_values=pixels).logits - patched(pixel_values=pixels).logits).abs().max() <= tol(1e-10)


def test_a_dilation_that_only_fits_the_first_stage_is_refused_at_the_forward_naming_the_layer():
    """(Options refused at patch time: tests/test_bad_input.py.)"""
    model = _model()
    hfx.patch(model, "neighborhood", dilation=2)  # fits stage 1's 8x8 map, not stage 2's 4x4 one
    with pytest.raises(
        ValueError, match=r"layer 2: kernel_size=3 with dilation=2 spans 6 positions, more than its stage's 4x4"
    ):
        model(pixel_values=torch.randn(1, 3, 32, 32, dtype=torch.float64))


def test_output_attentions_are_probabilities_over_the_map():
    model = hfx.patch(_model(), "neighborhood")
    with torch.no_grad():
        attentions = model(
            pixel_values=torch.randn(1, 3, 32, 32, dtype=torch.float64), output_attentions=True
        ).attentions
    first = attentions[0]
    assert first.shape == (1, 2, 64, 64)
    assert torch.allclose(first.sum(-1), torch.ones_like(first.sum(-1)))
    assert ((first > 0).sum(-1) == 9).all()  # a 3x3 window per query, clamped at the borders


def test_built_without_natten_installed(tmp_path):
    """Without NATTEN, transformers refuses to build DiNAT; through hf_flexattn it builds and runs."""
    script = """
import importlib.util, json, sys
real_find_spec = importlib.util.find_spec
hidden = lambda name, package=None: None if name.split(".")[0] == "natten" else real_find_spec(name, package)
importlib.util.find_spec = hidden  # NATTEN is not installed, as far as anyone can tell
import torch, transformers
config = transformers.DinatConfig(embed_dim=16, depths=[1], num_heads=[2], dilations=[[2]], kernel_size=3)
try:
    transformers.DinatModel(config)
    plain = "built"
except ImportError as error:
    plain = "requires the natten library" in str(error)
import hf_flexattn
model = hf_flexattn.load_dinat("DinatModel", config)
shape = list(model(pixel_values=torch.randn(1, 3, 32, 32)).last_hidden_state.shape)
print(json.dumps({"plain_refused": plain, "shape": shape, "natten": "natten" in sys.modules}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "plain_refused": True,
        "shape": [1, 8, 8, 16],
        "natten": False,
    }


def test_save_and_reload_patched(tmp_path):
    model = hfx.patch(_model(dtype=torch.float32), "neighborhood")
    model.save_pretrained(tmp_path)
    reloaded = hfx.from_pretrained(MODELING.DinatForImageClassification, tmp_path).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (model(pixel_values=pixels).logits - reloaded(pixel_values=pixels).logits).abs().max() <= tol(1e-6)
    loaded = hfx.load_dinat("DinatForImageClassification", tmp_path)  # a stock checkpoint loads the same way
    assert patch_state(loaded).variant.dilations == (1, 2, 1, 2)
