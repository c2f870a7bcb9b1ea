"""Variant 'longformer': HF Longformer's semantics, checked against HF's own LongformerSelfAttention."""

import copy

import pytest
import torch
from transformers import BertForMaskedLM, BertModel, LongformerConfig, LongformerModel, RobertaConfig, RobertaModel

import hf_flexattn as hfx
from hf_flexattn.patching import patch_state
from hf_flexattn.variants import ForwardInputs, ForwardMasks

from helpers import (
    assert_equals_full,
    check_block_structure,
    dense_bert_layer,
    generator,
    no_dropout,
    padded_batch,
    reference_attention,
    rel_err,
    tiny_bert_config,
    tol,
)

SIZES = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=514,
    pad_token_id=1,
)


def _longformer_and_patched_roberta(window, global_projections, seed=0):
    """A tiny HF LongformerModel and a RoBERTa model patched with 'longformer', holding the same weights."""
    torch.manual_seed(seed)
    reference = LongformerModel(LongformerConfig(attention_window=window, **SIZES), add_pooling_layer=False).eval()
    weights = reference.state_dict()
    if not global_projections:  # HF Longformer without separate global weights = globals use the local ones
        for part in ("query", "key", "value"):
            for k in [k for k in weights if f".{part}_global." in k]:
                weights[k] = weights[k.replace(f"{part}_global", part)]
        reference.load_state_dict(weights)
    model = RobertaModel(RobertaConfig(**SIZES, attn_implementation="eager"), add_pooling_layer=False).eval()
    hfx.patch(model, "longformer", window=window, global_projections=global_projections)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=True)
    return reference, model


def _text_batch(seed=0, n=45):
    g = generator(seed)
    ids = torch.randint(5, 120, (3, n), generator=g)
    mask = torch.ones(3, n, dtype=torch.long)
    mask[1, 30:] = 0
    mask[2, 12:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    return ids, mask


@pytest.mark.parametrize("global_projections", [False, True])
@pytest.mark.parametrize("with_globals", [False, True])
def test_matches_hf_longformer_self_attention(global_projections, with_globals):
    reference, model = _longformer_and_patched_roberta([8, 6], global_projections)
    ids, mask = _text_batch()
    kwargs = {}
    if with_globals:
        glob = torch.zeros_like(mask)
        glob[:, 0] = 1
        glob[0, 20] = 1  # a per-sample global in the middle
        glob[2, 25] = 1  # ... and one on a padded token: padding wins, as in HF
        kwargs["global_attention_mask"] = glob
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
        got = model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
    real = mask.bool()
    assert (want - got)[real].abs().max() <= tol(1e-5)


def test_global_tokens_option_equals_per_batch_global_mask():
    _, model = _longformer_and_patched_roberta([8, 8], False)
    ids, mask = _text_batch()
    glob = torch.zeros_like(mask)
    glob[:, 0] = 1
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
    hfx.unpatch(model)
    hfx.patch(model, "longformer", window=8, global_tokens=[0])
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (want - got)[mask.bool()].abs().max() <= tol(1e-6)


def test_training_gradients_match_hf_longformer():
    reference, model = _longformer_and_patched_roberta([8, 8], True)
    ids, mask = _text_batch()
    glob = torch.zeros_like(mask)
    glob[:, 0] = 1
    for m in (reference, model):
        no_dropout(m).train()
    # a fixed random read-out of the real positions (a sum of squares of LayerNorm outputs would be constant)
    readout = torch.randn(*ids.shape, 32, generator=generator(1)) * mask.bool()[..., None]
    loss_w = (
        reference(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state * readout
    ).sum()
    loss_g = (model(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state * readout).sum()
    loss_w.backward()
    loss_g.backward()
    ref_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert rel_err(p.grad, ref_params[name].grad) <= tol(1e-4), name


def test_window_covering_everything_equals_full():
    assert_equals_full("longformer", 40, window=2 * 64)


def test_per_batch_block_masks_equal_the_dense_rule():
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(max_position_embeddings=1024))
    hfx.patch(model, "longformer", window=[64, 200], global_tokens=[0])
    variant = patch_state(model).variant
    n = 300
    real = torch.ones(2, n, dtype=torch.bool)
    real[1, 222:] = False
    glob = torch.zeros(2, n, dtype=torch.bool)
    glob[1, 150] = True
    inputs = ForwardInputs(batch=2, seq_len=n, device=torch.device("cpu"), key_is_real=real, global_attention_mask=glob)
    forward = ForwardMasks(variant, inputs)
    for layer, window in enumerate([64, 200]):
        local, global_rows = forward.for_layer(layer, inputs.device)
        assert global_rows is None
        block_mask = local.block_mask(bucketed=True)
        npad = inputs.padded_len
        q = torch.arange(npad)[:, None]
        kv = torch.arange(npad)[None, :]
        is_global = torch.zeros(2, npad, dtype=torch.bool)
        is_global[:, 0] = True
        is_global[1, 150] = True
        real_pad = torch.zeros(2, npad, dtype=torch.bool)
        real_pad[:, :n] = real
        rule = ((q - kv).abs() <= window // 2) | is_global[:, :, None] | is_global[:, None, :]
        rule &= real_pad[:, None, :]
        dense = block_mask.to_dense()  # sanity on flex's own view: same blocks
        assert dense.shape[-2:] == (npad // 128, npad // 128)
        materialised = variant_mask_dense(block_mask, 2, npad)
        assert torch.equal(materialised, rule)
        check_block_structure(block_mask, rule[:, None])


def variant_mask_dense(block_mask, batch, n):
    b = torch.arange(batch)[:, None, None, None]
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    q = torch.arange(n)[None, None, :, None]
    kv = torch.arange(n)[None, None, None, :]
    return block_mask.mask_mod(b, h, q, kv).expand(batch, 1, n, n)[:, 0]


def _dense_rows(model, ids, rows, rule_rows):
    """One-layer BERT outputs at ``rows`` written densely: q of those rows against every key under ``rule_rows``
    (len(rows) × N), softmax, HF's own output and feed-forward. No N×N tensor, so it runs at 16k tokens."""
    layer = model.bert.encoder.layer[0]
    attn = layer.attention.self
    hidden = model.bert.embeddings(input_ids=ids)
    heads = lambda x: x.view(1, -1, 4, 8).transpose(1, 2)
    q = heads(attn.query(hidden[:, rows]))
    ctx = reference_attention(q, heads(attn.key(hidden)), heads(attn.value(hidden)), rule_rows[None, None])
    attended = layer.attention.output(ctx.transpose(1, 2).reshape(1, len(rows), -1), hidden[:, rows])
    return layer.output(layer.intermediate(attended), attended)


def test_long_inputs_16k_inference_and_4k_training_match_dense_rows():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(max_position_embeddings=512, num_hidden_layers=1))
    hfx.patch(model, "longformer", window=256, global_tokens=[0])
    hfx.extend_position_embeddings(model, 16384)
    ids = torch.randint(5, 120, (1, 16384))
    rows = torch.tensor([0, 1, 700, 8191, 16383])  # the global token, its neighbour, the middle, the end
    pos = torch.arange(16384)
    rule_rows = ((rows[:, None] - pos[None]).abs() <= 128) | (rows[:, None] == 0) | (pos[None] == 0)
    model.eval()
    with torch.no_grad():
        hidden = model.bert(input_ids=ids).last_hidden_state
        assert (hidden[0, rows] - _dense_rows(model, ids, rows, rule_rows)[0]).abs().max() <= tol(1e-5)
    # training at 4,096 tokens (the block-sparse CPU path): gradients of the rows' read-out equal the dense ones
    no_dropout(model).train()
    ids, rows = ids[:, :4096], rows[:3]
    rule_rows = rule_rows[:3, :4096]
    query = model.bert.encoder.layer[0].attention.self.query.weight
    got = torch.autograd.grad(model.bert(input_ids=ids).last_hidden_state[0, rows].sum(), query)[0]
    want = torch.autograd.grad(_dense_rows(model, ids, rows, rule_rows).sum(), query)[0]
    assert rel_err(got, want) <= tol(1e-4)


def test_long_training_step_matches_dense_reference():
    """At 1,024 tokens the CPU training path equals a dense masked computation, gradients included."""
    torch.manual_seed(0)
    config = tiny_bert_config(max_position_embeddings=1024, num_hidden_layers=1)
    model = no_dropout(BertModel(config)).train()
    hfx.patch(model, "longformer", window=128, global_tokens=[0, 700])
    ids = torch.randint(5, 120, (1, 1024))
    out = model(input_ids=ids).last_hidden_state
    attn = model.encoder.layer[0].attention.self
    pos = torch.arange(1024)
    glob = torch.zeros(1024, dtype=torch.bool)
    glob[[0, 700]] = True
    want = dense_bert_layer(model, ids, ((pos[:, None] - pos[None]).abs() <= 64) | glob[:, None] | glob[None])
    assert (out - want).abs().max() <= tol(1e-5)
    g_out = torch.autograd.grad(out.sum(), attn.query.weight)[0]
    g_ref = torch.autograd.grad(want.sum(), attn.query.weight)[0]
    assert rel_err(g_out, g_ref) <= tol(1e-4)


def test_fixed_global_tokens_beyond_the_input_are_absent_and_count_from_the_first_real_token():
    torch.manual_seed(0)
    base = BertModel(tiny_bert_config(max_position_embeddings=64)).eval()
    model = hfx.patch(copy.deepcopy(base), "longformer", window=4, global_tokens=[0, 30])
    first_only = hfx.patch(copy.deepcopy(base), "longformer", window=4, global_tokens=[0])
    ids = torch.randint(5, 120, (1, 24))
    with torch.no_grad():
        alone = model(input_ids=ids).last_hidden_state
        assert torch.equal(alone, first_only(input_ids=ids).last_hidden_state)  # position 30 of 24: absent
        # left padding: global position 0 is the first real token, not the pad (positions passed as a tokenizer
        # with left padding would, so that only attention differs)
        left = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
        mask = (torch.arange(29) >= 5).long()[None]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        padded = model(input_ids=left, attention_mask=mask, position_ids=positions).last_hidden_state[:, 5:]
    assert (padded - alone).abs().max() <= tol(1e-5)
    # and the global token matters: without it the same sample differs
    no_globals = hfx.patch(copy.deepcopy(base), "longformer", window=4)
    with torch.no_grad():
        assert (no_globals(input_ids=ids).last_hidden_state - alone).abs().max() > 1e-3


def test_bad_forward_inputs_give_clear_errors():
    model = BertModel(tiny_bert_config(max_position_embeddings=64)).eval()
    hfx.patch(model, "longformer", window=8)
    ids, mask = padded_batch(seq_len=24)
    with pytest.raises(ValueError, match=r"global_attention_mask has shape \(3, 20\)"):
        model(input_ids=ids, attention_mask=mask, global_attention_mask=torch.zeros(3, 20))
    with pytest.raises(ValueError, match=r"hf_flexattn\.extend_position_embeddings"):
        model(input_ids=torch.randint(5, 120, (1, 65)))


def test_global_projections_save_and_reload(tmp_path):
    _, model = _longformer_and_patched_roberta([8, 8], True)
    from transformers import RobertaModel as Cls

    ids, mask = _text_batch()
    model.save_pretrained(tmp_path)
    reloaded = hfx.from_pretrained(Cls, tmp_path).eval()
    layer = reloaded.encoder.layer[0].attention.self
    assert torch.equal(layer.query_global.weight, model.encoder.layer[0].attention.self.query_global.weight)
    assert not torch.equal(layer.query_global.weight, layer.query.weight)
    glob = torch.zeros_like(mask)
    glob[:, 0] = 1
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        b = reloaded(input_ids=ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
    assert torch.equal(a, b)
    hfx.unpatch(reloaded)
    assert not hasattr(reloaded.encoder.layer[0].attention.self, "query_global")


def test_global_attention_mask_flows_through_trainer_batches(tmp_path):
    """A collator that adds global_attention_mask to each batch: Trainer hands it to the model, and the
    patched model uses it (the loss differs from the same batch without it)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = no_dropout(hfx.patch(BertForMaskedLM(tiny_bert_config()), "longformer", window=4))
    ids, mask = padded_batch(batch=4, seq_len=24, lengths=[24, 24, 20, 16])
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist()})
    seen = []

    def collate(rows):
        batch = {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask")}
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        batch["global_attention_mask"] = torch.zeros_like(batch["input_ids"])
        batch["global_attention_mask"][:, 5] = 1
        return batch

    def record(module, args, kwargs):
        seen.append(kwargs.get("global_attention_mask"))

    hook = model.bert.register_forward_pre_hook(record, with_kwargs=True, prepend=True)  # before the patch reads it
    args = TrainingArguments(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        learning_rate=0.0,
    )
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate).train()
    hook.remove()
    assert seen and seen[0] is not None and seen[0][:, 5].all()
    model.eval()
    batch = collate([{"input_ids": i, "attention_mask": m} for i, m in zip(ids.tolist(), mask.tolist())])
    with torch.no_grad():
        with_globals = model(**batch, output_hidden_states=True).hidden_states[-1]
        batch.pop("global_attention_mask")
        without = model(**batch, output_hidden_states=True).hidden_states[-1]
    assert (with_globals[:, 12:16] - without[:, 12:16]).abs().max() > 1e-3  # far from token 5: only the global
