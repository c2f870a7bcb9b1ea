"""Under CUDA's policy (the ``kernels.device_kind`` seam on CPU tensors), a bf16 model without autocast, training
with attention dropout on a padded batch, runs the dense path (FlexAttention has no dropout): SDPA must get its
padding mask in the query's dtype (CUDA refuses another; CPU converts silently, so only the dtype shows it), and the
factor that zeroes rows without a key keeps the activations' dtype. The CUDA-policy bf16 test elsewhere runs under
autocast, the bf16-mask test under CPU's policy: neither sees this."""

from unittest import mock

import pytest
import torch
from transformers import BertModel

import hf_flexattn as hfx

from helpers import padded_batch, tiny_bert_config, use_cuda_policy


@pytest.mark.parametrize(
    "variant,options",
    [("full", {}), ("longformer", dict(window=8)), ("longformer", dict(window=8, global_tokens=[0]))],
    ids=["full", "longformer", "longformer-globals"],
)
def test_bf16_training_with_dropout_on_a_padded_batch_hands_sdpa_bf16_masks(variant, options, monkeypatch):
    use_cuda_policy(monkeypatch)
    torch.manual_seed(0)
    config = tiny_bert_config(attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0)
    model = hfx.patch(BertModel(config).to(torch.bfloat16).train(), variant, **options)
    ids, mask = padded_batch(batch=3, seq_len=24)
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []

    def record(query, key, value, attn_mask=None, dropout_p=0.0, **kwargs):
        seen.append((query.dtype, None if attn_mask is None else attn_mask.dtype, dropout_p))
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)

    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", record):
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert seen and all(p == 0.5 for _, _, p in seen), seen  # the dense path, with the model's dropout
    assert all(query == torch.bfloat16 and mask_dtype in (None, torch.bool, query) for query, mask_dtype, _ in seen)
    assert out.dtype == torch.bfloat16
    (out.float() * mask[..., None]).square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
