"""The score modifications of ``hf_flexattn.mods``, each compared entry by entry with Hugging Face's own definition:
Swin's relative position index, BEiT's index with its three CLS entries, Swin v2's log-spaced coordinates and
continuous position bias. Fast (no model): the mutation job (scripts/mutation.py) runs these first."""

import math
import warnings

import pytest
import torch
from torch import nn
from transformers.models.beit.modeling_beit import BeitRelativePositionBias
from transformers.models.swinv2.modeling_swinv2 import Swinv2SelfAttention

from hf_flexattn.mods import (
    continuous_position_bias_table,
    generate_relative_position_bias,
    generate_relative_position_bias_with_cls,
)
from hf_flexattn.mods.continuous_position import log_spaced_coordinates
from hf_flexattn.mods.relative_position import relative_position_row

from helpers import DispatchRecorder


def _apply(score_mod, heads, n_q, n_kv, batch=2):
    """Every entry (b, h, q, kv) of a ``score_mod`` over zero scores, by broadcasting index tensors."""
    b = torch.arange(batch).view(batch, 1, 1, 1)
    h = torch.arange(heads).view(1, heads, 1, 1)
    q = torch.arange(n_q).view(1, 1, n_q, 1)
    kv = torch.arange(n_kv).view(1, 1, 1, n_kv)
    score = torch.zeros(batch, heads, n_q, n_kv, dtype=torch.float64)
    return score_mod(score, b, h, q, kv)


def _hf_swin_index(window):
    """HF Swin's relative_position_index for a square window (modeling_swin.SwinSelfAttention)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1), coords


@pytest.mark.parametrize("window", [1, 2, 3, 7])
def test_relative_position_row_is_hf_swin_index(window):
    index, coords = _hf_swin_index(window)
    dr = coords[0][:, None] - coords[0][None, :]
    dc = coords[1][:, None] - coords[1][None, :]
    assert torch.equal(relative_position_row(dr, dc, window), index)
    # ints as well as tensors
    assert relative_position_row(int(dr[0, -1]), int(dc[0, -1]), window) == int(index[0, -1])


# (2, 20, 2): offsets far past the table's reach, whose clamped rows must still lie inside it
@pytest.mark.parametrize("rows,cols,table_window", [(5, 6, 3), (4, 4, 2), (3, 7, 4), (2, 2, 1), (2, 20, 2)])
def test_relative_position_bias_reads_swin_table(rows, cols, table_window):
    """Offsets within ±(W − 1) on both axes read the table's row for (dr, dc); the others get no bias."""
    heads = 3
    torch.manual_seed(0)
    table = torch.randn((2 * table_window - 1) ** 2, heads, dtype=torch.float64)
    got = _apply(generate_relative_position_bias(table, cols, table_window), heads, rows * cols, rows * cols)
    expected = torch.zeros(2, heads, rows * cols, rows * cols, dtype=torch.float64)
    reach = table_window - 1
    for q in range(rows * cols):
        for kv in range(rows * cols):
            dr, dc = q // cols - kv // cols, q % cols - kv % cols
            if abs(dr) <= reach and abs(dc) <= reach:
                row = (dr + reach) * (2 * table_window - 1) + dc + reach
                expected[:, :, q, kv] = table[row]
    assert torch.equal(got, expected)


def test_relative_position_bias_adds_to_the_score():
    table = torch.randn(9, 2, dtype=torch.float64)
    score_mod = generate_relative_position_bias(table, 3, 2)
    scores = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    h, q, kv = torch.arange(2).view(1, 2, 1, 1), torch.arange(9).view(1, 1, 9, 1), torch.arange(9).view(1, 1, 1, 9)
    bias = _apply(score_mod, 2, 9, 9, batch=1)
    assert torch.equal(score_mod(scores, torch.zeros(1, 1, 1, 1, dtype=torch.long), h, q, kv), scores + bias)


@pytest.mark.parametrize("grid", [(3, 4), (2, 2), (4, 1), (1, 5)])
def test_relative_position_bias_with_cls_is_hf_beit_index(grid):
    """Every (query, key) over [CLS, patches] reads the row of HF BEiT's index (its CLS → patch, patch → CLS and
    CLS → CLS entries included)."""
    heads = 2
    index = BeitRelativePositionBias.generate_relative_position_index(grid)
    entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    torch.manual_seed(1)
    table = torch.randn(entries, heads, dtype=torch.float64)
    n = grid[0] * grid[1] + 1
    got = _apply(generate_relative_position_bias_with_cls(table, grid), heads, n, n)
    expected = table[index].permute(2, 0, 1).unsqueeze(0).expand(2, -1, -1, -1)
    assert torch.equal(got, expected)


def test_relative_position_bias_with_cls_past_the_sequence_stays_in_the_table():
    """Positions past [CLS, patches] (a bucket's padding, never attended) read some row of the table instead of
    indexing out of it, and leave the real entries as they are."""
    grid, heads = (2, 3), 2
    table = torch.randn((2 * 2 - 1) * (2 * 3 - 1) + 3, heads, dtype=torch.float64)
    n = 7
    got = _apply(generate_relative_position_bias_with_cls(table, grid), heads, n + 60, n + 60)
    real = _apply(generate_relative_position_bias_with_cls(table, grid), heads, n, n)
    assert torch.equal(got[:, :, :n, :n], real)
    values = set(table.flatten().tolist())
    assert set(got.flatten().tolist()) <= values


def _hf_swinv2_attention(window, pretrained_window, heads=4):
    from transformers import Swinv2Config

    config = Swinv2Config(embed_dim=8 * heads, num_heads=[heads], depths=[1], window_size=window)
    torch.manual_seed(2)
    return Swinv2SelfAttention(
        config, 8 * heads, heads, window, pretrained_window_size=(pretrained_window, pretrained_window)
    )


@pytest.mark.parametrize("window,pretrained", [(4, 0), (3, 0), (5, 8), (4, 3)])
def test_log_spaced_coordinates_are_hf_swinv2_table(window, pretrained):
    attention = _hf_swinv2_attention(window, pretrained)
    normaliser = (pretrained, pretrained) if pretrained > 0 else (window, window)
    got = log_spaced_coordinates(window - 1, normaliser, torch.float32)
    assert torch.equal(got, attention.relative_coords_table[0])


def test_log_spaced_coordinates_not_divided():
    """normaliser None: offsets scaled to ±8 as they are, then log-spaced (in float32, as HF, then cast)."""
    got = log_spaced_coordinates(2, None, torch.float64)
    offsets = torch.arange(-2, 3, dtype=torch.float32) * 8
    spaced = (torch.sign(offsets) * torch.log2(offsets.abs() + 1) / math.log2(8)).double()
    assert got.dtype == torch.float64
    assert torch.equal(got[:, :, 0], spaced[:, None].expand(5, 5))
    assert torch.equal(got[:, :, 1], spaced[None, :].expand(5, 5))


def test_log_spaced_coordinates_on_each_axis():
    """Rows vary the first coordinate, columns the second, each divided by its own normaliser."""
    got = log_spaced_coordinates(1, (2, 5), torch.float64)
    torch.testing.assert_close(got[0, 1], torch.tensor([-math.log2(9) / 3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(got[1, 2], torch.tensor([0.0, math.log2(3) / 3], dtype=torch.float64))


@pytest.mark.parametrize("window,pretrained", [(4, 0), (3, 6)])
def test_continuous_position_bias_table_is_hf_swinv2(window, pretrained):
    """The table HF Swin v2 computes (16·sigmoid(cpb_mlp(coords)) per offset), and its gradient to the MLP."""
    heads = 4
    attention = _hf_swinv2_attention(window, pretrained, heads)
    mlp = attention.continuous_position_bias_mlp
    normaliser = (pretrained, pretrained) if pretrained > 0 else (window, window)
    got = continuous_position_bias_table(mlp, heads, window - 1, normaliser)
    expected = 16 * torch.sigmoid(mlp(attention.relative_coords_table).view(-1, heads))
    assert got.shape == ((2 * window - 1) ** 2, heads)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(got.square().sum(), [mlp[0].weight])
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), [mlp[0].weight])
    torch.testing.assert_close(grad, expected_grad)


def test_continuous_position_bias_table_follows_the_mlp_dtype():
    mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2, bias=False)).double()
    table = continuous_position_bias_table(mlp, 2, 1, (2, 2))
    assert table.dtype == torch.float64
    coords = log_spaced_coordinates(1, (2, 2), torch.float64)
    assert torch.equal(table, 16 * torch.sigmoid(mlp(coords.unsqueeze(0)).view(-1, 2)))


def test_continuous_position_bias_table_warns_nothing():
    mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2, bias=False))
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch warns once per process otherwise: an earlier call would hide the warning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. torch.meshgrid without its indexing argument
            continuous_position_bias_table(mlp, 2, 2, (3, 3))
    finally:
        torch.set_warn_always(warn_always)


def test_score_mods_follow_the_device_of_their_table():
    """A table (or MLP) on another device than torch's default (meta here, under the CPU default): what the
    score_mods capture, and the tables they build, are made there (anything made on the default device fails to mix
    with it, or comes out on the wrong device)."""
    heads = 2
    table = torch.randn(25, heads, device="meta")
    b, h = torch.arange(2, device="meta").view(2, 1, 1, 1), torch.arange(heads, device="meta").view(1, heads, 1, 1)
    q, kv = torch.arange(12, device="meta").view(1, 1, 12, 1), torch.arange(12, device="meta").view(1, 1, 1, 12)
    score = torch.zeros(2, heads, 12, 12, device="meta")
    cls_table = torch.randn((2 * 3 - 1) * (2 * 4 - 1) + 3, heads, device="meta")
    mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, heads, bias=False)).to("meta")
    # every tensor an operation reads or makes: a 0-dim CPU capture mixes with meta (or CUDA) tensors as a scalar in
    # eager mode, so only the operations show it (compiled on a GPU, flex cannot read a host tensor)
    with DispatchRecorder() as seen:
        swin = generate_relative_position_bias(table, 4, 3)(score, b, h, q, kv)
        beit = generate_relative_position_bias_with_cls(cls_table, (3, 4))(score, b, h, q, kv)
        coords = log_spaced_coordinates(2, (3, 3), torch.float32, device="meta")
        continuous = continuous_position_bias_table(mlp, heads, 2, (3, 3))
    assert seen.devices == {"meta"}
    assert all(t.device.type == "meta" for t in (swin, beit, coords, continuous))


def test_score_mods_keep_int32_indices_int32():
    """Flex hands a score_mod 0-dim int32 indices: the sizes the mods capture are int32 (their docstrings' contract),
    so no step of their index arithmetic is widened to int64 (emulated on GPUs), and the bias is the one the int64
    indices of the tests above read. (0-dim indices: a 0-dim int64 capture promotes them, a 1-dim index would hide
    it.)"""
    heads, grid = 2, (3, 4)
    swin = generate_relative_position_bias(torch.randn(25, heads, dtype=torch.float64), 4, 3)
    beit_table = torch.randn((2 * 3 - 1) * (2 * 4 - 1) + 3, heads, dtype=torch.float64)
    beit = generate_relative_position_bias_with_cls(beit_table, grid)
    score = torch.tensor(0.25, dtype=torch.float64)
    for score_mod, n in ((swin, 12), (beit, 13)):
        expected = _apply(score_mod, heads, n, n, batch=1) + score
        for q, kv in ((0, 0), (0, 5), (7, 0), (5, 11), (11, 1), (n - 1, n - 1)):
            b, h, qi, ki = (torch.tensor(v, dtype=torch.int32) for v in (0, 1, q, kv))
            with DispatchRecorder() as seen:
                biased = score_mod(score, b, h, qi, ki)
            assert seen.integer_dtypes == {torch.int32}, (score_mod.__name__, q, kv)
            assert torch.equal(biased, expected[0, 1, q, kv]), (score_mod.__name__, q, kv)
