"""Swin under CUDA's policy: per block the algorithm that computes fewer scores (HF's windows as one SDPA call, or
one whole-map flex call), chosen from block statistics counted on the host; both exact against HF Swin (outputs and
bias-table gradients)."""

import copy

import pytest
import torch
from transformers import SwinConfig, SwinForImageClassification

import hf_flexattn as hfx
from hf_flexattn.masks import BatchMask, generate_shifted_windows, generate_window_contiguous_windows
from hf_flexattn.variants import swin
from hf_flexattn.variants.swin import SwinBlockVariant, block_statistics

from helpers import no_dropout, rel_err, tol, use_cuda_policy

pytestmark = pytest.mark.cuda_policy  # also under HF_FLEXATTN_TEST_POLICY=cuda (conftest)


@pytest.mark.parametrize("grid,window,shift", [((56, 56), 7, 0), ((56, 56), 7, 3), ((14, 14), 7, 3), ((20, 12), 4, 2)])
def test_block_statistics_count_the_blocks_the_block_mask_visits(grid, window, shift):
    """The host-side count equals what the whole-map BlockMask visits (built and read here, on CPU)."""
    stats = block_statistics(grid, window, shift)
    n = grid[0] * grid[1]
    block_mask = BatchMask(generate_window_contiguous_windows(grid, window, shift)[0], n).block_mask()
    visited = block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()
    assert stats.visited_blocks == int(visited)
    assert stats.used_scores == int(generate_shifted_windows(grid, window, shift).dense(1, 1, n, n).sum())
    if grid == (56, 56) and shift == 0:  # Swin-T's first stage: 73 of 625 blocks, 12.8 % of their scores used
        assert (stats.visited_blocks, stats.total_blocks, round(100 * stats.flex_use, 1)) == (73, 625, 12.8)


def test_windows_are_chosen_where_they_compute_fewer_scores():
    assert swin.windows_pay((56, 56), 7, 3) and swin.windows_pay((24, 24), 12, 6)  # Swin-T, Swin-B 384
    assert not swin.windows_pay((64, 64), 16, 8)  # 256-token windows fill flex's blocks; their tiles would not


def _pair(image=36):
    torch.manual_seed(0)
    config = SwinConfig(
        image_size=image, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=3
    )
    original = no_dropout(SwinForImageClassification(config)).train()
    with torch.no_grad():  # HF initialises the bias tables to zero: make them matter
        for name, p in original.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    return original, hfx.patch(copy.deepcopy(original), "swin")


@pytest.mark.parametrize("algorithm", ["windows", "flex"])
def test_both_cuda_algorithms_match_hf_swin_with_bias_table_gradients(algorithm, monkeypatch):
    use_cuda_policy(monkeypatch)
    monkeypatch.setattr(swin, "windows_pay", lambda grid, window, shift: algorithm == "windows")
    ran = []
    for name in ("_attend_windows", "attend_map"):
        method = getattr(SwinBlockVariant, name)
        monkeypatch.setattr(SwinBlockVariant, name, lambda self, *a, m=method, n=name: ran.append(n) or m(self, *a))
    original, patched = _pair()
    pixels, labels = torch.randn(2, 3, 36, 36), torch.tensor([0, 2])
    want, got = original(pixel_values=pixels, labels=labels), patched(pixel_values=pixels, labels=labels)
    want.loss.backward()
    got.loss.backward()
    assert set(ran) == {"_attend_windows" if algorithm == "windows" else "attend_map"}
    assert (want.logits - got.logits).abs().max() <= tol(1e-5)
    tables = 0
    for (name, pw), (_, pg) in zip(original.named_parameters(), patched.named_parameters()):
        assert rel_err(pg.grad, pw.grad) <= tol(1e-4), name
        tables += "relative_position_bias_table" in name and pg.grad.abs().sum() > 0
    assert tables == 4  # every block's table received a gradient


@pytest.mark.parametrize("algorithm", ["windows", "flex"])
def test_swinv2_takes_the_cheaper_algorithm_as_swin_and_both_match_hf(algorithm, monkeypatch):
    """Swin v2's blocks choose as Swin's (:func:`swin.windows_pay`): HF's window algorithm with its cosine scores and
    continuous bias, or whole-map flex; both give HF Swin v2's logits and gradients (logit scale and bias MLP
    included)."""
    from transformers import Swinv2Config, Swinv2ForImageClassification

    use_cuda_policy(monkeypatch)
    choices = []
    monkeypatch.setattr(swin, "windows_pay", lambda *geometry: choices.append(geometry) or algorithm == "windows")
    ran = []
    method = SwinBlockVariant._attend_map_windows
    monkeypatch.setattr(SwinBlockVariant, "_attend_map_windows", lambda self, *a: ran.append(1) or method(self, *a))
    torch.manual_seed(0)
    config = Swinv2Config(
        image_size=36, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=3
    )
    original = no_dropout(Swinv2ForImageClassification(config)).train()
    patched = hfx.patch(copy.deepcopy(original), "swin")
    pixels, labels = torch.randn(2, 3, 36, 36), torch.tensor([0, 2])
    want, got = original(pixel_values=pixels, labels=labels), patched(pixel_values=pixels, labels=labels)
    want.loss.backward()
    got.loss.backward()
    assert len(choices) == 4 and len(ran) == (4 if algorithm == "windows" else 0)
    assert (want.logits - got.logits).abs().max() <= tol(1e-5)
    for (name, pw), (_, pg) in zip(original.named_parameters(), patched.named_parameters()):
        if pw.grad is not None:
            assert rel_err(pg.grad, pw.grad) <= tol(1e-4), name


def test_swinv2_at_64x64_window_8_takes_the_window_algorithm():
    """The issue's case: whole-map flex would use 18 % of the scores it computes."""
    stats = block_statistics((64, 64), 8, 4)
    assert round(100 * stats.flex_use) == 18 and swin.windows_pay((64, 64), 8, 4)
