"""Every ``mask_mod`` and ``score_mod`` a patched model hands FlexAttention computes its integers in int32.

FlexAttention traces the mods on 0-dim int32 indices (b, h, q, kv). An int64 tensor the mod captures (a size, a
per-token table) promotes everything it meets to int64, which a GPU emulates (several times slower per score). Each
family x variant runs once under CUDA's policy on CPU tensors (a padded batch: the padding tables included); the
mods its flex calls receive are then evaluated on 0-dim int32 indices under a dispatch mode that records every
intermediate's dtype. (Indices with dimensions, as tests/test_natten_cuda.py once used, hide the promotion: a 0-dim
int64 capture does not promote a 1-dim int32 tensor.)
"""

import pytest
import torch

from hf_flexattn import kernels
from scripts.recipes import compile_graphs as cases

from helpers import DEVICE, DispatchRecorder, use_cuda_policy

pytestmark = pytest.mark.cuda_policy


def _flex_mods(family, variant, monkeypatch):
    """The (mask_mod, score_mod) pairs of every flex call of one padded inference forward under CUDA's policy."""
    use_cuda_policy(monkeypatch)
    calls = []
    run_flex = kernels.run_flex

    def recording(query, key, value, block_mask, score_mod, *args, **kwargs):
        calls.append((block_mask.mask_mod, score_mod))
        return run_flex(query, key, value, block_mask, score_mod, *args, **kwargs)

    monkeypatch.setattr(kernels, "run_flex", recording)
    model = cases.build_patched(family, variant, attention_dropout=False, device=DEVICE)
    cases.run_scenario(model, family, cases.Scenario("inference", padded=True), DEVICE)
    return calls


# (b, h, q, kv) index values: the second sample (padded), a query and key in its real part and past it
INDICES = [(0, 0, 0, 0), (1, 1, 5, 3), (1, 0, 9, 17), (1, 1, 38, 2)]
MASKED = [(f, v) for f, v in cases.family_variants() if v not in ("linformer", "performer")]


@pytest.mark.parametrize("family,variant", MASKED, ids=[f"{f}-{v}" for f, v in MASKED])
def test_every_mod_computes_in_int32_on_0_dim_int32_indices(family, variant, monkeypatch):
    calls = _flex_mods(family, variant, monkeypatch)
    assert calls, f"{family}/{variant} made no flex call under CUDA's policy"
    for mask_mod, score_mod in calls:
        for values in INDICES:
            index32 = [torch.tensor(v, dtype=torch.int32, device=DEVICE) for v in values]
            index64 = [torch.tensor(v, dtype=torch.int64, device=DEVICE) for v in values]
            score = torch.tensor(0.25, device=DEVICE)
            with DispatchRecorder() as recorder:
                allowed = mask_mod(*index32)
                biased = score if score_mod is None else score_mod(score, *index32)
            name = getattr(mask_mod, "__name__", "mask_mod"), getattr(score_mod, "__name__", None)
            assert recorder.int64_ops == [], f"{family}/{variant} {name} at {values}: int64 from {recorder.int64_ops}"
            # the same values as with int64 indices: int32 changes the arithmetic's width, not its meaning
            assert bool(allowed) == bool(mask_mod(*index64)), (name, values)
            if score_mod is not None:
                assert torch.equal(biased, score_mod(score, *index64)), (name, values)
