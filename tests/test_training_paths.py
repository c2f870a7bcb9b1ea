"""Every training path the CUDA policy can choose, run on CPU tensors through the ``kernels.device_kind`` seam in bf16,
fp16 and under ``torch.autocast``, with and without attention dropout: the half-precision gradients against float32
gradients of the same (rounded) inputs, and a BERT fine-tuning step in mixed precision.

CUDA's policy trains on flex (no dropout; on a GPU, tests/test_gpu.py), on the dense path (dropout, and
deterministic bias-table gradients) and on flex with a hashed keep mask (dropout beyond ``DENSE_MAX_ENTRIES``).
Bounds are relative errors of whole gradients (‖got − want‖ / ‖want‖), measured on CPU with margin: bf16 keeps 8
mantissa bits (steps of 2⁻⁸ ≈ 0.4 %), fp16 11 (2⁻¹¹ ≈ 0.05 %).
"""

import copy

import pytest
import torch
from transformers import BertForMaskedLM

import hf_flexattn as hfx
from hf_flexattn import kernels
from hf_flexattn.masks import BatchMask, generate_global, generate_sliding_window, padded_length

from helpers import padded_batch, rel_err, tiny_bert_config, use_cuda_policy

# CPU tensors through the seam (a GPU's own kernels draw other dropout masks per dtype: tests/test_gpu.py there)
pytestmark = pytest.mark.cpu_only

BOUND = {torch.bfloat16: 1e-2, torch.float16: 2e-3}  # measured: 2.7e-3 and 3.0e-4
# a whole model under autocast: every linear layer in half precision too
LOSS_SCALE = 2.0**16
MODEL_BOUND = {torch.bfloat16: 5e-2, torch.float16: 5e-3}  # measured: 1.6e-2 and 6.1e-4
PRECISIONS = ["bfloat16", "float16", "autocast-bfloat16"]


def _case(seed=0, batch=2, heads=2, n=300, head_dim=16):
    """A padded sliding window with a global token, a learnable relative-position bias, and (B, H, N, D) inputs."""
    g = torch.Generator().manual_seed(seed)
    real = torch.ones(batch, n, dtype=torch.bool)
    real[1, 211:] = False
    is_global = torch.zeros(1, padded_length(n), dtype=torch.bool)  # per-token tables cover the bucketed length
    is_global[:, 0] = True
    mask = BatchMask(generate_sliding_window(40) | generate_global(is_global), n, batch=batch, key_is_real=real)
    reach = padded_length(n) - 1  # CPU's policy runs on the bucketed length
    table = (0.5 * torch.randn(2 * reach + 1, generator=g)).requires_grad_()

    def relative_bias(score, b, h, q, kv):
        return score + table[q - kv + reach]

    qkv = [torch.randn(batch, heads, n, head_dim, generator=g) for _ in range(3)]
    return mask, relative_bias, table, qkv, real


def _gradients(qkv, table, mask, score_mod, dropout_p, precision):
    """Output and gradients of q, k, v and the bias table, with inputs as ``precision`` makes them."""
    torch.manual_seed(1)  # one dropout mask for every precision (drawn per shape, not per dtype)
    leaves = [x.detach().clone().requires_grad_() for x in qkv]
    table.grad = None
    if precision.startswith("autocast"):
        # autocast hands the attention half-precision q/k/v, as its linear projections do under it
        with torch.autocast("cpu", dtype=torch.bfloat16):
            weight = torch.eye(leaves[0].shape[-1])
            inputs = [torch.nn.functional.linear(x, weight) for x in leaves]
            out = kernels.attend(*inputs, mask, score_mod, dropout_p=dropout_p, score_mod_params=[table])
    else:
        dtype = getattr(torch, precision)
        out = kernels.attend(
            *(x.to(dtype) for x in leaves), mask, score_mod, dropout_p=dropout_p, score_mod_params=[table]
        )
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.float().backward(grad_out)
    return out.float(), [x.grad for x in leaves] + [table.grad.clone()]


# (policy, path, dropout): CUDA's three training choices besides flex, and CPU's sparse training path without dropout
TRAINING_PATHS = [
    ("cuda", "dense", 0.0),  # deterministic bias-table gradients
    ("cuda", "dense", 0.1),  # attention dropout
    ("cuda", "flex_dropout", 0.1),  # attention dropout past DENSE_MAX_ENTRIES
    ("cpu", "block_sparse", 0.0),
]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    "policy,path,dropout_p", TRAINING_PATHS, ids=[f"{c[0]}-{c[1]}-p{c[2]}" for c in TRAINING_PATHS]
)
def test_training_paths_match_float32_in_half_precision(policy, path, dropout_p, precision, monkeypatch):
    if policy == "cuda":
        use_cuda_policy(monkeypatch)
    if path in ("block_sparse", "flex_dropout"):  # lower the dense path's limits: the path runs on a small case
        monkeypatch.setattr(kernels, "DENSE_MAX_ENTRIES" if policy == "cuda" else "DENSE_TRAINING_DENSITY", 1024)
    torch.use_deterministic_algorithms(policy == "cuda" and dropout_p == 0.0)
    try:
        mask, score_mod, table, qkv, real = _case()
        half = torch.bfloat16 if "bfloat16" in precision else torch.float16
        assert kernels.choose_path(qkv[0].to(half), mask, dropout_p, True, True) == path
        qkv = [x.to(half).float() for x in qkv]  # the same rounded values in both runs: only the arithmetic differs
        out, grads = _gradients(qkv, table, mask, score_mod, dropout_p, precision)
        want_out, want_grads = _gradients(qkv, table, mask, score_mod, dropout_p, "float32")
    finally:
        torch.use_deterministic_algorithms(False)
    rows = real[:, None, :, None].expand_as(out)
    assert rel_err(out[rows], want_out[rows]) <= BOUND[half]
    for name, got, want in zip(["q", "k", "v", "bias table"], grads, want_grads):
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), name
        assert rel_err(got, want) <= BOUND[half], name


@pytest.mark.parametrize("variant,options", [("full", {}), ("longformer", dict(window=16, global_tokens=[0]))])
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_a_mixed_precision_bert_fine_tuning_step_on_cuda_policy(precision, variant, options, monkeypatch):
    """The most common GPU use: BERT fine-tuned under autocast with its default attention dropout (0.1), on a padded
    batch. The step's gradients follow the float32 step's (the same seed draws the same dropout masks)."""
    use_cuda_policy(monkeypatch)
    dtype = getattr(torch, precision)
    torch.manual_seed(0)
    config = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.1, max_position_embeddings=160)
    model = hfx.patch(BertForMaskedLM(config), variant, **options).train()
    reference = copy.deepcopy(model)
    ids, mask = padded_batch(batch=2, seq_len=160, lengths=[160, 97])
    labels = ids.masked_fill(mask == 0, -100)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=dtype):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    (loss * LOSS_SCALE).backward()  # as torch.amp.GradScaler does: fp16 gradients this small would underflow
    torch.manual_seed(5)
    (reference(input_ids=ids, attention_mask=mask, labels=labels).loss * LOSS_SCALE).backward()
    want = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
            assert rel_err(p.grad / LOSS_SCALE, want[name].grad / LOSS_SCALE) <= MODEL_BOUND[dtype], name
