"""HF Longformer checkpoints (families/longformer.py): `patch(model, "longformer")` with no options computes the
checkpoint's own function (its per-layer windows, its global projections, the heads' automatic globals), equal to
the unpatched HF model in outputs and gradients, on padded batches with per-batch globals."""

import copy

import pytest
import torch
from transformers import (
    LongformerConfig,
    LongformerForMaskedLM,
    LongformerForMultipleChoice,
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
    LongformerForTokenClassification,
    LongformerModel,
)

import hf_flexattn as hfx
from hf_flexattn.families.longformer import LongformerFamily
from hf_flexattn.patching import patch_state

from helpers import generator, no_dropout, rel_err, tol

SEP = 2
SIZES = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=1202,
    pad_token_id=1,
    sep_token_id=SEP,
)


def _model(head=LongformerModel, window=(4, 8), dtype=torch.float32, **config):
    torch.manual_seed(0)
    model = head(LongformerConfig(attention_window=list(window), **SIZES, **config))
    return no_dropout(model).to(dtype).eval()


def _batch(n=30, batch=3, seed=0):
    """Padded ids (right padding, RoBERTa's pad id) with three separators per sample (question answering's format:
    question </s></s> context </s>)."""
    ids = torch.randint(5, 120, (batch, n), generator=generator(seed))
    lengths = [n, n - 10, n - 19][:batch]
    mask = (torch.arange(n)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, 1)
    for row, length in enumerate(lengths):
        ids[row, [4, 5, length - 1]] = SEP
    return ids, mask


def _globals(mask):
    glob = torch.zeros_like(mask)
    glob[:, 0] = 1
    glob[0, 17] = 1  # a global token in the middle of one sample only
    return glob


def _output(out):
    for name in ("last_hidden_state", "logits", "start_logits"):
        if name in out:
            return out[name]
    raise AssertionError(out.keys())


HEADS = [
    LongformerModel,
    LongformerForMaskedLM,
    LongformerForSequenceClassification,  # makes [CLS] global on its own
    LongformerForTokenClassification,
    LongformerForQuestionAnswering,  # makes the question tokens global on its own
]


@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__)
@pytest.mark.parametrize("explicit_globals", [False, True])
def test_no_options_equals_the_checkpoint(head, explicit_globals):
    original = _model(head)
    patched = hfx.patch(copy.deepcopy(original), "longformer")
    assert patch_state(patched).variant.windows == (4, 8)  # the checkpoint's own, per layer
    ids, mask = _batch()
    kwargs = {"global_attention_mask": _globals(mask)} if explicit_globals else {}
    with torch.no_grad():
        want = _output(original(input_ids=ids, attention_mask=mask, **kwargs))
        got = _output(patched(input_ids=ids, attention_mask=mask, **kwargs))
    if want.dim() == 3:  # per token: padded positions are HF's zero-filled rows, not outputs
        want, got = want[mask.bool()], got[mask.bool()]
    elif head is LongformerForQuestionAnswering:
        want, got = want.masked_fill(mask == 0, 0), got.masked_fill(mask == 0, 0)
    assert (want - got).abs().max() <= tol(1e-5)


def test_multiple_choice_head():
    original = _model(LongformerForMultipleChoice)
    patched = hfx.patch(copy.deepcopy(original), "longformer")
    ids, mask = _batch()
    two = lambda t: torch.stack([t, t.roll(1, 0)], dim=1)  # (batch, 2 choices, n)
    choices = {"input_ids": two(ids), "attention_mask": two(mask), "global_attention_mask": two(_globals(mask))}
    with torch.no_grad():
        want, got = original(**choices).logits, patched(**choices).logits
    assert (want - got).abs().max() <= tol(1e-5)


@pytest.mark.parametrize(
    "n, many_globals",
    [(30, False), (1100, False), (1100, True)],  # 1,100: past the crossover (32 + 1,024 tokens)
    ids=["dense-path", "band-path", "band-path-many-globals"],
)
def test_outputs_and_gradients_equal_the_checkpoint(n, many_globals):
    """Outputs and every parameter's gradient (the global projections included), on the dense path and, past the
    band plan's crossover, on the band path: with fewer global rows than head_dim (their keys and values folded into
    the rows) and with more (projected). (fp32: HF Longformer's own float64 gradients are NaN, from its finfo.min
    mask arithmetic.)"""
    original = _model(window=(16, 32)).train()
    patched = hfx.patch(copy.deepcopy(original), "longformer").train()
    ids, mask = _batch(n)
    glob = _globals(mask)
    if many_globals:  # 12 global rows per sample, head_dim 8
        glob[:, 20:32] = 1
    readout = torch.randn(*ids.shape, 32, generator=generator(1)) * mask[..., None]
    outputs = []
    for model in (original, patched):
        out = model(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        (out * readout).sum().backward()
        outputs.append(out.detach()[mask.bool()])
    assert (outputs[0] - outputs[1]).abs().max() <= tol(1e-5)
    reference = dict(original.named_parameters())
    for name, parameter in patched.named_parameters():
        if reference[name].grad is None:  # the pooler: not in the read-out
            assert parameter.grad is None, name
            continue
        if reference[name].grad.norm() < 1e-6:  # zero in exact arithmetic (a key bias under softmax): float noise
            assert parameter.grad.norm() < 1e-6, name
            continue
        assert rel_err(parameter.grad, reference[name].grad) <= tol(1e-4), name
    assert any("query_global" in name and p.grad.norm() > 0 for name, p in patched.named_parameters())


def test_window_option_overrides_the_checkpoint():
    original = _model()
    patched = hfx.patch(copy.deepcopy(original), "longformer", window=4)
    narrower = _model(window=(4, 4))
    narrower.load_state_dict(original.state_dict())
    ids, mask = _batch()
    with torch.no_grad():
        want = narrower(input_ids=ids, attention_mask=mask).last_hidden_state
        got = patched(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (want - got)[mask.bool()].abs().max() <= tol(1e-5)


def test_only_the_longformer_variant_applies():
    model = _model()
    assert LongformerFamily().variants() == ["longformer"]
    with pytest.raises(ValueError, match="variant='full' does not support the longformer family"):
        hfx.patch(model, "full")


def test_save_reload_and_unpatch(tmp_path):
    original = _model(LongformerForMaskedLM)
    patched = hfx.patch(copy.deepcopy(original), "longformer", window=[8, 4])
    patched.save_pretrained(tmp_path)
    reloaded = hfx.from_pretrained(LongformerForMaskedLM, tmp_path).eval()
    assert patch_state(reloaded).variant.windows == (8, 4)
    ids, mask = _batch()
    with torch.no_grad():
        want = patched(input_ids=ids, attention_mask=mask).logits
        got = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(want, got)
    hfx.unpatch(patched)
    assert [type(m) for m in patched.modules()] == [type(m) for m in original.modules()]
    assert patched.state_dict().keys() == original.state_dict().keys()  # the global projections stay
    with torch.no_grad():
        assert torch.equal(
            patched(input_ids=ids, attention_mask=mask).logits, original(ids, attention_mask=mask).logits
        )


def _global_projections_called_as_modules(wrap):
    """Outputs and gradients of the band path (1,100 tokens, two global rows: fewer than head_dim, so plain linears
    are folded into the rows) with ``wrap`` applied to the same copy of the checkpoint, patched and not."""
    original = _model(window=(16, 32)).train()
    patched = hfx.patch(copy.deepcopy(original), "longformer").train()
    models = [wrap(original), wrap(patched)]
    ids, mask = _batch(1100)
    glob = _globals(mask)
    outputs, grads = [], []
    for model in models:
        out = model(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        (out * torch.randn(*out.shape, generator=generator(1)) * mask[..., None]).sum().backward()  # real tokens
        outputs.append(out.detach()[mask.bool()])
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.norm() > 1e-6})
    assert (outputs[0] - outputs[1]).abs().max() <= tol(1e-5)
    assert grads[1].keys() == grads[0].keys()
    for name, grad in grads[1].items():
        assert rel_err(grad, grads[0][name]) <= tol(1e-4), name
    return outputs, grads


def test_lora_on_the_global_projections_is_applied_on_the_band_path():
    """A PEFT adapter around key_global/value_global is not its weight: folding the weight into the rows ignored it
    (outputs off by the adapter's whole effect, no gradient to it); such projections are called as HF calls them."""
    peft = pytest.importorskip("peft")

    def lora(model):
        torch.manual_seed(1)
        config = peft.LoraConfig(r=4, target_modules=["key_global", "value_global"], init_lora_weights=False)
        return peft.get_peft_model(model, config)

    _, grads = _global_projections_called_as_modules(lora)
    assert any("key_global.lora_" in name for name in grads[1]) and any("value_global.lora_" in n for n in grads[1])


def test_a_forward_hook_on_a_global_projection_runs_on_the_band_path():
    """A hook that changes value_global's output (as activation steering or a quantisation simulator does) is
    honoured: the projection is called, not folded."""

    def hooked(model):
        for name, module in model.named_modules():
            if name.endswith("value_global"):
                module.register_forward_hook(lambda module, args, out: out * 1.5 + 0.25)
        return model

    outputs, _ = _global_projections_called_as_modules(hooked)
    plain, _ = _global_projections_called_as_modules(lambda model: model)
    assert (outputs[1] - plain[1]).abs().max() > 1e-2  # the hook changes the result, on both models alike
