"""What only a GPU shows: compiled flex forward *and backward* on CUDA against the unpatched model, masks built on
the inputs' device, head dims below 16, inputs longer than one block, neighborhood and Swin's bias score_mod.

Skipped without CUDA. On a GPU, ``python scripts/gpu_check.py`` runs these with the whole suite
(``HF_FLEXATTN_TEST_DEVICE=cuda``), where every other exactness and gradient test runs on the GPU too.
"""

import copy

import pytest
import torch
from transformers import BertForMaskedLM, BertModel, SwinConfig, SwinForImageClassification

import hf_flexattn as hfx

from helpers import no_dropout, padded_batch, rel_err, tiny_bert_config, tol

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("head_dim", [8, 32], ids=["head-dim-8-zero-padded-to-16", "head-dim-32"])
@pytest.mark.parametrize(
    "variant,options",
    [("full", {}), ("longformer", dict(window=64, global_tokens=[0])), ("neighborhood", dict(kernel_size=31))],
)
def test_cuda_flex_forward_and_backward_match_the_dense_model(head_dim, variant, options):
    """300 tokens (three blocks), padded: the patched model trains on CUDA through compiled flex."""
    torch.manual_seed(0)
    config = tiny_bert_config(hidden_size=4 * head_dim, intermediate_size=8 * head_dim)
    original = no_dropout(BertForMaskedLM(config)).cuda().train()
    patched = hfx.patch(copy.deepcopy(original), "full" if variant == "full" else variant, **options)
    reference = hfx.patch(copy.deepcopy(original), variant, **options) if variant != "full" else original
    ids, mask = padded_batch(batch=2, seq_len=300, lengths=[300, 211])
    ids, mask = ids.cuda(), mask.cuda()
    labels = ids.masked_fill(mask == 0, -100)
    loss = patched(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    with torch.no_grad():  # the reference of a local variant: the same model run densely (float64 path)
        dense = copy.deepcopy(reference).double() if variant != "full" else None
    want_loss = (dense or original)(input_ids=ids, attention_mask=mask, labels=labels).loss
    want_loss.backward()
    assert abs(loss.item() - want_loss.item()) <= tol(1e-4) * abs(want_loss.item())
    want_params = dict((dense or original).named_parameters())
    for name, p in patched.named_parameters():
        if p.grad is not None:
            assert rel_err(p.grad.double(), want_params[name].grad.double()) <= tol(1e-3), name


def test_masks_follow_the_model_between_devices():
    torch.manual_seed(0)
    model = hfx.patch(BertModel(tiny_bert_config()).eval(), "longformer", window=8)
    ids, mask = padded_batch()
    seen = []
    model.encoder.layer[0].attention.self.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hfx_masks"]), with_kwargs=True
    )
    with torch.no_grad():
        cpu = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model.cuda()
        gpu = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state
        model.cpu()
        back = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert seen[1].for_layer(0, torch.device("cuda", 0)).local.block_mask().kv_num_blocks.is_cuda
    assert (gpu.cpu() - cpu)[mask.bool()].abs().max() <= tol(1e-4) and torch.equal(back, cpu)


def test_swin_bias_table_gradient_through_flex_on_cuda_matches_hf():
    torch.manual_seed(0)
    config = SwinConfig(
        image_size=64,
        patch_size=2,
        embed_dim=32,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=8,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    original = SwinForImageClassification(config).cuda().train()
    with torch.no_grad():
        for name, p in original.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    patched = hfx.patch(copy.deepcopy(original), "swin")
    pixels, labels = torch.randn(2, 3, 64, 64, device="cuda"), torch.tensor([0, 2], device="cuda")
    original(pixel_values=pixels, labels=labels).loss.backward()
    patched(pixel_values=pixels, labels=labels).loss.backward()
    for (name, pw), (_, pg) in zip(original.named_parameters(), patched.named_parameters()):
        assert rel_err(pg.grad, pw.grad) <= tol(1e-3), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("attention_dropout", [0.0, 0.1], ids=["no-dropout", "dropout-0.1"])
def test_mixed_precision_fine_tuning_step_on_cuda(dtype, attention_dropout):
    """BERT fine-tuned under autocast, padded, on a sparse pattern: compiled flex's backward without dropout, the
    dense path's with it. The step runs, its gradients are finite, and without dropout they follow float32's."""
    torch.manual_seed(0)
    config = tiny_bert_config(
        hidden_size=64, intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=attention_dropout
    )
    model = hfx.patch(BertForMaskedLM(config).cuda().train(), "longformer", window=64, global_tokens=[0])
    reference = copy.deepcopy(model)
    ids, mask = padded_batch(batch=2, seq_len=300, lengths=[300, 211])
    ids, mask = ids.cuda(), mask.cuda()
    labels = ids.masked_fill(mask == 0, -100)
    scale = 2.0**16  # as torch.amp.GradScaler: fp16 gradients this small would underflow
    with torch.autocast("cuda", dtype=dtype):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    (loss * scale).backward()
    (reference(input_ids=ids, attention_mask=mask, labels=labels).loss * scale).backward()
    want = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
            if attention_dropout == 0.0:  # the CPU stand-in's bound (tests/test_training_paths.py), 2× for the GPU
                bound = 1e-1 if dtype == torch.bfloat16 else 1e-2
                assert rel_err(p.grad / scale, want[name].grad / scale) <= bound, name
