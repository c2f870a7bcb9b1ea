"""``torch.compile(model, fullgraph=True)`` of a patched model: one graph per forward, under CUDA's policy and
under CPU's (whose eager policy reads tensor values, which a traced graph may not branch on).

CPU tensors take CUDA's paths (the ``kernels.device_kind`` seam) and dynamo compiles with ``backend="aot_eager"``
(the graph is traced, forward and backward, but run eagerly: no inductor, no GPU). FlexAttention's own
higher-order op is traced into the graph; CPU flex refuses inputs that require grad, so its device check is lifted
here and the op's reference backward stands in for CUDA's kernel. Graphs are dynamo's ``unique_graphs`` count (an
analysis dynamo restarts, to specialise a float, is not a new graph).

Each case compiles one tiny model with dynamic shapes and runs, in order: a padded inference forward (one graph),
the same at a second length of the same bucket (no graph: nothing keyed on the length), a padded training step
(forward and backward; one graph: train mode is a new guard) and, in the full matrix, a training step without padding
(one graph: no attention mask is a new input). Compiled results equal the eager model's where no dropout draws.
``-m cuda_policy`` (CI's CUDA-policy leg; the default suite leaves them to it) runs one case per distinct path;
``-m exhaustive`` every family x variant, with and without attention dropout.
"""

import pytest
import torch
import torch.nn.attention.flex_attention as flex_api

from scripts.recipes import compile_graphs as cases
from scripts.recipes.compile_graphs import TEXT_LENGTHS, Scenario

from helpers import DEVICE, use_cuda_policy

SCENARIOS = [
    Scenario("inference", padded=True),
    Scenario("inference", padded=True, length=TEXT_LENGTHS[1]),
    Scenario("training", padded=True),
]
MATRIX_SCENARIOS = [*SCENARIOS, Scenario("training", padded=False)]

# one case per distinct CUDA path: a text mask with globals and padding (dropout: the dense SDPA path), a 2D mask
# through flex with its backward, Swin's blocks (whole-map flex with the bias table's score_mod)
DEFAULT_CASES = [("bert", "longformer", True), ("vit", "neighborhood", False), ("swin", "swin", False)]
MATRIX = [(f, v, dropout) for f, v in cases.family_variants() for dropout in (False, True)]


def _check(family, variant, attention_dropout, scenarios, monkeypatch, policy="cuda"):
    if policy == "cuda":
        use_cuda_policy(monkeypatch)
        monkeypatch.setattr(flex_api, "_validate_device", lambda *tensors: None)
    text = cases.FAMILY_MODELS[family][1]
    scenarios = [s for s in scenarios if text or (s.padded and s.length == TEXT_LENGTHS[0])]
    rows = cases.count_graphs(family, variant, attention_dropout, scenarios, "aot_eager", DEVICE)
    graphs = [row["graphs"] for row in rows]
    want = [0 if s.length != TEXT_LENGTHS[0] else 1 for s in scenarios]
    assert graphs == want, f"graphs per scenario {graphs}, want {want}: {scenarios}"
    for row in rows:
        if row["want"] is not None:
            torch.testing.assert_close(row["got"], row["want"], atol=1e-5, rtol=1e-4, msg=str(row["scenario"]))


@pytest.mark.cuda_policy
@pytest.mark.cuda_policy_leg
@pytest.mark.parametrize("family,variant,attention_dropout", DEFAULT_CASES)
def test_a_patched_model_compiles_as_one_graph_per_forward(family, variant, attention_dropout, monkeypatch):
    _check(family, variant, attention_dropout, SCENARIOS, monkeypatch)


@pytest.mark.exhaustive
@pytest.mark.cuda_policy
@pytest.mark.parametrize(
    "family,variant,attention_dropout", MATRIX, ids=[f"{f}-{v}-{'dropout' if d else 'nodropout'}" for f, v, d in MATRIX]
)
def test_every_family_and_variant_compiles_as_one_graph_per_forward(family, variant, attention_dropout, monkeypatch):
    _check(family, variant, attention_dropout, MATRIX_SCENARIOS, monkeypatch)


CPU_CASES = [("bert", "longformer", True), ("vit", "neighborhood", False)]
CPU_MORE = [("swin", "swin", False), ("bert", "full", True)]  # 40 s and 13 s: left to -m exhaustive


@pytest.mark.parametrize(
    "family,variant,attention_dropout",
    [*CPU_CASES, *(pytest.param(*case, marks=pytest.mark.exhaustive) for case in CPU_MORE)],
)
def test_a_patched_model_compiles_as_one_graph_per_forward_under_cpus_policy(
    family, variant, attention_dropout, monkeypatch
):
    # CPU's eager policy reads the mask's values (does every row have a key; the blocks' density): inside a user's
    # torch.compile it must not, or fullgraph stops at the first attention call (every family and variant did)
    _check(family, variant, attention_dropout, MATRIX_SCENARIOS, monkeypatch, policy="cpu")


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_an_op_past_cpus_density_rule_compiles_as_one_graph(mode):
    # past DENSE_INFERENCE_MAX_ENTRIES CPU's eager policy reads the BlockMask's density; a traced graph takes flex
    # (inference) or the dense path (training) instead, and computes what eager does
    from hf_flexattn import kernels, ops

    torch._dynamo.reset()
    n = 1100
    assert n * n > kernels.DENSE_INFERENCE_MAX_ENTRIES
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 16, generator=generator) for _ in range(3))
    global_mask = torch.zeros(2, n, dtype=torch.bool)
    global_mask[:, 0] = True
    padding = torch.ones(2, n, dtype=torch.bool)
    padding[1, n - 150 :] = False
    compiled = torch.compile(ops.longformer_attention, fullgraph=True, backend="aot_eager")
    inputs = [x.clone().requires_grad_(mode == "training") for x in (q, k, v)]
    eager_inputs = [x.clone().requires_grad_(mode == "training") for x in (q, k, v)]
    with torch.set_grad_enabled(mode == "training"):
        got = compiled(*inputs, 64, global_mask, padding)
        want = ops.longformer_attention(*eager_inputs, 64, global_mask, padding)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    if mode == "training":
        got.square().sum().backward()
        want.square().sum().backward()
        for x, y in zip(inputs, eager_inputs):
            torch.testing.assert_close(x.grad, y.grad, atol=2e-5, rtol=1e-4)
