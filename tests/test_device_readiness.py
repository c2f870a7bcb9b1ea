"""The CUDA path, checked where a CPU can check it: no host syncs in a forward, bounded compiles over random lengths,
masks per device, inference-mode masks kept apart from training, and attention dropout with one meaning everywhere."""

import inspect
import os
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import BertModel, SwinConfig, SwinModel, ViTModel

import hf_flexattn as hfx
from hf_flexattn import kernels
from hf_flexattn.kernels import flex
from hf_flexattn.variants import ForwardInputs, ForwardMasks

from helpers import count_batch_masks, generator, padded_batch, tiny_bert_config, tiny_vit_config, tol, use_cuda_policy

PACKAGE = os.path.dirname(hfx.__file__)
# what waits for the GPU when called on a CUDA tensor (or copies host data to it)
HOST_SYNCS = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.tolist,
    torch.Tensor.nonzero,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.nonzero,
    torch.tensor,
    torch.as_tensor,
}


TORCH_WRAPPERS = {"overrides.py", "_tensor.py"}


class HostSyncCounter(TorchFunctionMode):
    """Records host-syncing calls made from hf_flexattn's own code (not from torch's or transformers')."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_SYNCS:
            frame = inspect.currentframe().f_back
            while frame is not None and os.path.basename(frame.f_code.co_filename) in TORCH_WRAPPERS:
                frame = frame.f_back  # torch's own Python wrappers of the call (Tensor.__bool__ and the like)
            if frame is not None and frame.f_code.co_filename.startswith(PACKAGE):
                self.calls.append(f"{func.__name__} at {os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}")
        return func(*args, **(kwargs or {}))


def _bert_inputs(**kw):
    ids, mask = padded_batch()
    return dict(input_ids=ids, attention_mask=mask, **kw)


SWIN = dict(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4)
CASES = [
    ("bert", "full", {}, {}),
    ("bert", "longformer", dict(window=8, global_tokens=[0]), {}),
    ("bert", "longformer", dict(window=8, global_projections=True), {"global_attention_mask": True}),
    ("bert", "neighborhood", dict(kernel_size=5, dilation=2), {}),
    ("bert", "linformer", dict(proj_len=8), {}),
    ("bert", "performer", dict(num_features=16), {}),
    ("vit", "full", {}, {}),
    ("vit", "neighborhood", dict(kernel_size=3), {}),
    ("vit", "swin", dict(window_size=4), {}),
    ("swin", "swin", {}, {}),
    ("swin", "neighborhood", dict(kernel_size=3), {}),
]


def _model_and_inputs(family, extra, attention_dropout=0.0):
    torch.manual_seed(0)
    if family == "bert":
        model = BertModel(tiny_bert_config(attention_probs_dropout_prob=attention_dropout, hidden_dropout_prob=0.0))
        inputs = _bert_inputs()
        if extra.get("global_attention_mask"):
            inputs["global_attention_mask"] = torch.zeros_like(inputs["input_ids"])
            inputs["global_attention_mask"][:, 3] = 1
    elif family == "vit":
        model = ViTModel(tiny_vit_config(attention_probs_dropout_prob=attention_dropout))
        inputs = dict(pixel_values=torch.randn(2, 3, 32, 32))
    else:
        model = SwinModel(SwinConfig(**SWIN, attention_probs_dropout_prob=attention_dropout))
        inputs = dict(pixel_values=torch.randn(2, 3, 32, 32))
    return model, inputs


IDS = [f"{c[0]}-{c[1]}" for c in CASES]


@pytest.mark.parametrize("family,variant,options,extra", CASES, ids=IDS)
def test_a_steady_state_forward_makes_no_host_sync(family, variant, options, extra, monkeypatch):
    """With the device policy of CUDA (decisions from Python facts) and a stand-in for the compiled kernel, a second
    forward (caches warm, masks per batch) makes no call that would stall a CUDA stream."""
    use_cuda_policy(monkeypatch)
    model, inputs = _model_and_inputs(family, extra)
    hfx.patch(model.eval(), variant, **options)
    with torch.no_grad():
        model(**inputs)
        with HostSyncCounter() as counter:
            model(**inputs)
    assert counter.calls == []


@pytest.mark.parametrize("attention_dropout", ["standard", "off"], ids=["dropout-0.1", "dropout-off"])
@pytest.mark.parametrize("family,variant,options,extra", CASES, ids=IDS)
def test_a_training_step_makes_no_host_sync(family, variant, options, extra, attention_dropout, monkeypatch):
    """CUDA's default training step (the model's attention dropout, 0.1, applied: the dense path; or 'off': flex)
    under CUDA's policy: forward and backward, after a first step, make no call that would stall a CUDA stream."""
    use_cuda_policy(monkeypatch)
    model, inputs = _model_and_inputs(family, extra, attention_dropout=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # linformer, performer: no attention matrix to drop from
        hfx.patch(model.train(), variant, attention_dropout=attention_dropout, **options)
    model(**inputs).last_hidden_state.sum().backward()
    with HostSyncCounter() as counter:
        model(**inputs).last_hidden_state.sum().backward()
    assert counter.calls == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_compiles_stay_bounded_over_random_lengths(monkeypatch):
    """Random lengths, as a training run padding each batch to its longest: with dynamic shapes (a mask the CPU
    template compiles dynamically, and every mask on CUDA) one compile serves them all; padded batches (static
    buckets on CPU) compile once per bucket, never per batch."""
    import torch._dynamo

    monkeypatch.setattr(kernels, "uses_structured_paths", lambda t: False)  # compiled flex (CPU's policy: band)
    torch._dynamo.reset()
    flex.reset()
    torch.manual_seed(0)
    model = hfx.patch(BertModel(tiny_bert_config(max_position_embeddings=2048)).eval(), "longformer", window=64)
    g = generator(0)
    lengths = torch.randint(1100, 2000, (6,), generator=g).tolist()
    with torch.no_grad():
        for n in lengths:  # no padding: the sliding window compiles with dynamic shapes
            model(input_ids=torch.randint(5, 120, (1, n), generator=g))
        dynamic = [e for e in flex.compile_events if e["dynamic"]]
        assert len(flex.compile_events) == len(dynamic) <= 2, flex.compile_events
        for n in lengths:  # padded batches: a per-token table, static shapes on bucketed lengths
            ids, mask = padded_batch(batch=2, seq_len=n, lengths=[n, n - 50], seed=n)
            model(input_ids=ids, attention_mask=mask)
    buckets = {-(-n // 128) for n in lengths}
    static = [e for e in flex.compile_events if not e["dynamic"]]
    assert len(static) <= len(buckets), (static, sorted(buckets))
    torch._dynamo.reset()
    flex.reset()


@pytest.mark.cuda_policy  # also under HF_FLEXATTN_TEST_POLICY=cuda (conftest)
def test_masks_are_built_on_the_device_that_asks_for_them():
    """Layers on another device (device_map="auto") get masks there, built lazily once per device and forward."""
    torch.manual_seed(0)
    model = hfx.patch(BertModel(tiny_bert_config()), "longformer", window=8, global_tokens=[0])
    ids, mask = padded_batch()
    forward = ForwardMasks(hfx.patching.patch_state(model).variant, ForwardInputs(3, 24, ids.device, mask.bool()))
    here = forward.for_layer(0, torch.device("cpu"))
    there = forward.for_layer(0, torch.device("meta"))
    assert here.local.device.type == "cpu" and there.local.device.type == "meta"
    assert there.local.key_is_real.device.type == "meta"
    assert forward.prepared(torch.device("meta")).is_global.device.type == "meta"
    assert forward.for_layer(1, torch.device("meta")) is there  # same window: built once per device


@pytest.mark.cuda_policy  # also under HF_FLEXATTN_TEST_POLICY=cuda (conftest)
def test_masks_built_under_inference_mode_are_not_reused_for_training(monkeypatch):
    torch.manual_seed(0)
    model = hfx.patch(BertModel(tiny_bert_config()), "full")
    ids = torch.randint(5, 120, (2, 24))
    built = count_batch_masks(monkeypatch)
    with torch.inference_mode():
        model.eval()(input_ids=ids)
    assert len(built) == 1
    model.train()
    model(input_ids=ids).last_hidden_state.sum().backward()  # would fail on an inference tensor saved for backward
    assert len(built) == 2
    assert model.encoder.layer[0].attention.self.query.weight.grad is not None


@pytest.mark.cuda_policy  # also under HF_FLEXATTN_TEST_POLICY=cuda (conftest)
@pytest.mark.parametrize("setting", ["standard", "off"])
def test_attention_dropout_option_means_the_same_on_every_path(setting):
    """'standard' applies the model's rate (CPU: the block-sparse or dense path; CUDA: the dense path), 'off' none."""
    torch.manual_seed(0)
    model = hfx.patch(
        BertModel(tiny_bert_config(attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0)),
        "longformer",
        window=8,
        attention_dropout=setting,
    )
    ids, mask = padded_batch()
    with torch.no_grad():
        evaluated = model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        model.train()
        first = model(input_ids=ids, attention_mask=mask).last_hidden_state
        second = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    if setting == "off":
        assert torch.equal(first, second) and (first - evaluated)[real].abs().max() <= tol(1e-6)
    else:
        assert (first - second)[real].abs().max() > 1e-2
