"""Integration with the HF ecosystem and reliability: gradient checkpointing, torch.compile, PEFT LoRA, Trainer,
varying shapes, padding invariance, convergence (transformers' own attn_implementation path: test_native_path.py; the
bad-input battery: test_bad_input.py)."""

import copy

import pytest
import torch
from transformers import BertForMaskedLM, BertModel

import hf_flexattn as hfx

from helpers import (
    TINY_SWIN,
    generator,
    no_dropout,
    padded_batch,
    rel_err,
    tiny_bert_config,
    tol,
)


def _bert(cls=BertModel, **kw):
    torch.manual_seed(0)
    return cls(tiny_bert_config(**kw)).eval()


# ------------------------------------------------------------------------------------------------ works with ...


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = padded_batch()
    grads = []
    for checkpointing in (False, True):
        model = no_dropout(hfx.patch(_bert(BertForMaskedLM), "longformer", window=8, global_tokens=[0])).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append(model.bert.encoder.layer[0].attention.self.query.weight.grad)
    assert rel_err(grads[1], grads[0]) <= tol(1e-5)


def test_torch_compile_of_the_patched_model_with_padding():
    model = hfx.patch(_bert(), "neighborhood", kernel_size=5)
    compiled = torch.compile(model)
    ids, mask = padded_batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (want - got)[mask.bool()].abs().max() <= tol(1e-4)


def test_peft_lora_on_the_patched_projections():
    peft = pytest.importorskip("peft")
    model = hfx.patch(_bert(BertForMaskedLM), "longformer", window=8)
    ids, mask = padded_batch()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    with torch.no_grad():
        started = lora(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(started, before, atol=tol(1e-6))  # LoRA starts at 0
    lora.train()
    lora(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in lora.named_parameters() if "lora_" not in n)


def _token_mean_loss(outputs, labels, num_items_in_batch=None):
    """Masked-LM loss summed over labelled tokens and divided by the whole accumulated batch's count, as Trainer
    means it (transformers' BertForMaskedLM averages per micro-batch instead, ignoring num_items_in_batch)."""
    logits = outputs["logits"]
    total = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    return total / num_items_in_batch


def _train_one_step(tmp_path, model, batch, accumulation, loss_func=None):
    """One optimiser step of Trainer (plain SGD, no clipping: the update is lr × the gradient) on the same 4 samples."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        tmp_path / f"run-{accumulation}",
        max_steps=1,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(batch), compute_loss_func=loss_func)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_trainer_gradient_accumulation_matches_the_unpatched_model_and_the_full_batch(tmp_path):
    """Samples with different numbers of labelled tokens. The patched model's update equals the unpatched one's,
    with and without accumulation; and with a loss that honours num_items_in_batch, two accumulated micro-batches
    give the update of one batch of four (dropping num_items_in_batch moves it by ~10%)."""
    ids, mask = padded_batch(batch=4, lengths=[24, 21, 9, 5])
    labels = ids.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()}

    def run(variant, accumulation, loss_func=None):
        model = no_dropout(_bert(BertForMaskedLM, attn_implementation="sdpa"))
        if variant is not None:
            hfx.patch(model, variant, **(dict(window=8, global_tokens=[0]) if variant == "longformer" else {}))
        return _train_one_step(tmp_path, model, batch, accumulation, loss_func)

    def assert_same(a, b):
        for key, want in b.items():
            assert (a[key] - want).abs().max() <= tol(2e-6), key

    for accumulation in (1, 2):
        assert_same(run("full", accumulation), run(None, accumulation))
    one, accumulated = (run("longformer", a, _token_mean_loss) for a in (1, 2))
    assert_same(accumulated, one)
    full = run("full", 1, _token_mean_loss)
    assert max((accumulated[k] - full[k]).abs().max() for k in full) > 1e-4  # the comparison can fail


# ------------------------------------------------------------------------------------------------ shapes that vary


def test_twenty_random_lengths_compile_once_per_bucket(monkeypatch):
    import torch._dynamo.utils as dynamo_utils

    from hf_flexattn import kernels

    monkeypatch.setattr(kernels, "uses_structured_paths", lambda t: False)  # flex, as on CUDA (CPU: band plans)
    model = hfx.patch(_bert(max_position_embeddings=512), "longformer", window=16)
    g = generator(0)
    lengths = torch.randint(5, 250, (20,), generator=g).tolist()
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for n in lengths:
            out = model(input_ids=torch.randint(5, 120, (2, n), generator=g)).last_hidden_state
            assert torch.isfinite(out).all()
    compiled = dynamo_utils.counters["stats"]["unique_graphs"] - before
    assert compiled <= 2, f"{compiled} compilations for lengths {sorted(set(lengths))}"  # buckets 128 and 256


def test_compile_limit_raises_instead_of_silently_running_unfused(monkeypatch):
    import torch._dynamo

    from hf_flexattn import kernels
    from hf_flexattn.kernels import flex

    torch._dynamo.reset()
    flex.reset()
    monkeypatch.setattr(flex, "MAX_COMPILES", 1)
    monkeypatch.setattr(kernels, "uses_structured_paths", lambda t: False)  # flex, as on CUDA (CPU: band plans)
    model = hfx.patch(_bert(max_position_embeddings=2048), "neighborhood", kernel_size=5)
    ids, mask = padded_batch(batch=1, seq_len=1100, lengths=[1000])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # 1,100 tokens: past the dense crossover, flex compiles
        with pytest.raises(RuntimeError, match=r"compiled 2 times in this process.*Instead of falling back"):
            model(input_ids=ids[:, :1050].repeat(2, 1), attention_mask=mask[:, :1050].repeat(2, 1))
    torch._dynamo.reset()
    flex.reset()


# ------------------------------------------------------------------------------------------------ defined behaviours


def test_defined_behaviours_all_padding_rows_and_fp16_close_to_fp32():
    """A sample with no real token gives finite outputs (flex zeroes the empty rows); fp16 (and bf16) run on CPU
    and stay within their precision of fp32."""
    model = hfx.patch(_bert(), "longformer", window=8, global_tokens=[0])
    ids, mask = padded_batch()
    mask[2] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.isfinite(out).all()
        full_mask = torch.ones_like(mask)
        fp32 = model(input_ids=ids, attention_mask=full_mask).last_hidden_state
        for dtype, bound in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
            low = copy.deepcopy(model).to(dtype)(input_ids=ids, attention_mask=full_mask).last_hidden_state
            assert low.dtype == dtype and (low.float() - fp32).abs().max() <= bound, dtype
    model.train()
    loss = model(input_ids=ids, attention_mask=mask).last_hidden_state.sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------------ padding invariance


@pytest.mark.parametrize(
    "variant,options",
    [
        ("full", {}),
        ("longformer", dict(window=8, global_tokens=[0])),
        ("neighborhood", dict(kernel_size=5, dilation=2)),
        ("linformer", dict(proj_len=8)),
        ("performer", dict(num_features=32)),
    ],
)
def test_outputs_at_real_tokens_do_not_change_with_more_padding(variant, options):
    model = hfx.patch(_bert(), variant, **options)
    g = generator(3)
    sample = torch.randint(5, 120, (1, 17), generator=g)
    with torch.no_grad():
        alone = model(input_ids=sample).last_hidden_state
        for total in (30, 140):
            ids = torch.randint(5, 120, (2, total), generator=g)
            ids[0, :17] = sample
            mask = torch.ones(2, total, dtype=torch.long)
            mask[0, 17:] = 0
            batched = model(input_ids=ids, attention_mask=mask).last_hidden_state
            assert (batched[0, :17] - alone[0]).abs().max() <= tol(1e-5), total


# ------------------------------------------------------------------------------------------------ convergence


def test_convergence_matches_the_unpatched_model():
    """Liger-Kernel style: same seed, 5 AdamW steps with and without the patch; losses within 1e-5 relative,
    every final weight within 1e-4 of its tensor's largest entry plus 1e-6 absolute (parameters whose true
    gradient is zero, like the key bias, only move by float noise that Adam normalises). Both run PyTorch's SDPA
    kernel (the unpatched model on sdpa; the patched one picks SDPA on the materialised mask for short inputs),
    so the comparison sees the patch, not the difference between two softmax implementations."""
    ids, mask = padded_batch(batch=4, seq_len=32, lengths=[32, 25, 18, 11])
    labels = ids.masked_fill(mask == 0, -100)
    histories, finals = [], []
    for patched in (False, True):
        model = no_dropout(_bert(BertForMaskedLM, attn_implementation="sdpa")).train()
        if patched:
            hfx.patch(model, "full")
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(5):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
            losses.append(loss.item())
        histories.append(losses)
        finals.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for a, b in zip(*histories):
        assert abs(a - b) <= tol(1e-5) * abs(a)
    assert histories[0][-1] < histories[0][0]  # it did train
    for key, want in finals[0].items():
        got = finals[1][key]
        assert (got.float() - want.float()).abs().max() <= tol(1e-4) * want.float().abs().max() + 1e-6, key


def _lora(model, targets):
    """``model`` with LoRA adapters on ``targets`` that start away from zero (seed 1), so that they change outputs."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(1)
    return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False))


def _swin_and_pixels():
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(0)
    config = SwinConfig(image_size=32, **TINY_SWIN)
    return no_dropout(SwinModel(config, add_pooling_layer=False)), torch.randn(2, 3, 32, 32, generator=generator(0))


@pytest.mark.cpu_only  # Swin's window algorithm (CPU's path) calls the projections of every window
def test_peft_lora_on_swins_projections_computes_what_it_computes_unpatched_and_merges():
    """The window algorithm calls q/k/v as HF does, so LoRA adapters around them are applied and trained (a fused
    weight read from ``.weight`` ignored them: 0.7 away, no gradient to the adapters); and PEFT's merge, which
    writes the weights through ``.data`` (no version bump), is seen by the next call."""
    original, pixels = _swin_and_pixels()
    patched = hfx.patch(copy.deepcopy(original), "swin")
    with torch.no_grad():
        patched(pixel_values=pixels)  # a call before the adapters: nothing kept from the weights may outlive them
    models = [_lora(model, ["q_proj", "k_proj", "v_proj"]) for model in (original, patched)]
    outputs, grads = [], []
    for model in models:
        out = model(pixel_values=pixels).last_hidden_state
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if "lora_" in n})
    assert (outputs[0] - outputs[1]).abs().max() <= tol(1e-5)
    assert grads[1] and grads[1].keys() == grads[0].keys()
    for name, grad in grads[1].items():
        assert rel_err(grad, grads[0][name]) <= tol(1e-4), name
    with torch.no_grad():
        merged = [model.merge_and_unload()(pixel_values=pixels).last_hidden_state for model in models]
    assert (merged[0] - merged[1]).abs().max() <= tol(1e-5)
    assert (merged[1] - outputs[1]).abs().max() <= tol(1e-5)  # the merged weights compute the adapters' function
