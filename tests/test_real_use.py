"""What a new user does on the first day: pickle the model, reload it under another head or from a hub id, run it in
float64, ask for attention weights and switch attention implementations (the HF-native path:
tests/test_native_path.py)."""

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertForMaskedLM, BertModel

import hf_flexattn as hfx

from helpers import padded_batch, reference_attention, tiny_bert_config, tol


def _bert(cls=BertModel, **kw):
    torch.manual_seed(0)
    return cls(tiny_bert_config(**kw)).eval()


# ------------------------------------------------------------------------------------------------ pickling


@pytest.mark.parametrize("variant,options", [("longformer", dict(window=8, global_tokens=[0])), ("linformer", {})])
def test_patched_model_pickles_and_stays_patched(variant, options):
    model = hfx.patch(_bert(), variant, **options)
    ids, mask = padded_batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    for restored in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert hfx.is_patched(restored)
        assert type(restored.encoder.layer[0].attention.self).__name__ == "FlexBertSelfAttention"
        with torch.no_grad():
            assert torch.equal(restored(input_ids=ids, attention_mask=mask).last_hidden_state, want)
        hfx.unpatch(restored)  # the restored model's own patch state is there to undo
        assert type(restored.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
    assert hfx.is_patched(model)  # ...without touching the original


def test_torch_save_loads_in_a_fresh_process(tmp_path):
    """A fresh interpreter has never built the patched subclass: unpickling must build it from its family."""
    model = hfx.patch(_bert(), "neighborhood", kernel_size=3)
    ids, mask = padded_batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.save({"model": model, "ids": ids, "mask": mask}, tmp_path / "model.pt")
    torch.save(want, tmp_path / "want.pt")
    script = (
        "import torch, sys\n"
        f"saved = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)\n"
        "import hf_flexattn\n"
        "model = saved['model']\n"
        "assert hf_flexattn.is_patched(model), 'not patched'\n"
        "with torch.no_grad():\n"
        "    got = model(input_ids=saved['ids'], attention_mask=saved['mask']).last_hidden_state\n"
        f"print(float((got - torch.load({str(tmp_path / 'want.pt')!r})).abs().max()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) == 0.0


# ------------------------------------------------------------------------------------------------ reloading


@pytest.mark.parametrize("saved_cls,loaded_cls", [(BertModel, BertForMaskedLM), (BertForMaskedLM, BertModel)])
def test_reload_across_heads_brings_the_added_weights(tmp_path, saved_cls, loaded_cls):
    model = hfx.patch(_bert(saved_cls), "longformer", window=8, global_projections=True)
    base = model.base_model
    with torch.no_grad():  # make the global projections differ from their initial copies
        base.encoder.layer[0].attention.self.query_global.weight.add_(1.0)
    model.save_pretrained(tmp_path)
    reloaded = hfx.from_pretrained(loaded_cls, tmp_path)
    got = reloaded.base_model.encoder.layer[0].attention.self.query_global.weight
    assert torch.equal(got, base.encoder.layer[0].attention.self.query_global.weight)


def _fake_hub_cache(tmp_path, repo_id, model_dir):
    """The hub's cache layout (models--org--name/snapshots/<rev>, refs/main), as a download would leave it."""
    root = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in Path(model_dir).iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0" * 40)
    return tmp_path / "hub"


def test_from_pretrained_resolves_a_hub_id_like_transformers(tmp_path, monkeypatch):
    model = hfx.patch(_bert(), "linformer", proj_len=8)
    model.save_pretrained(tmp_path / "saved")
    cache = _fake_hub_cache(tmp_path, "someone/tiny-linformer", tmp_path / "saved")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reloaded = hfx.from_pretrained(BertModel, "someone/tiny-linformer", cache_dir=str(cache))
    ids, mask = padded_batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(reloaded.eval()(input_ids=ids, attention_mask=mask).last_hidden_state, want)


# ------------------------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("variant,options", [("full", {}), ("longformer", dict(window=8, global_tokens=[0]))])
def test_float64_runs_exactly(variant, options):
    """float64 (what gradient checks use) runs the dense path: equal to the float64 unpatched/dense model."""
    original = _bert().double()
    patched = hfx.patch(copy.deepcopy(original), variant, **options)
    ids, mask = padded_batch()
    with torch.no_grad():
        got = patched(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.dtype == torch.float64
    if variant == "full":
        with torch.no_grad():
            want = original(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (got - want)[mask.bool()].abs().max() <= tol(1e-12)


def test_integer_inputs_to_a_kernel_are_refused_by_name():
    from hf_flexattn.kernels import attend

    q = torch.ones(1, 1, 4, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"dtype=torch\.int32; supported: float32, float16, bfloat16 .* float64"):
        attend(q, q, q)


# ------------------------------------------------------------------------------------------------ attention weights


def test_output_attentions_returns_the_variants_probabilities():
    original = _bert(attn_implementation="eager")
    full = hfx.patch(copy.deepcopy(original), "full")
    local = hfx.patch(copy.deepcopy(original), "longformer", window=4, global_tokens=[0])
    ids, mask = padded_batch()
    with torch.no_grad():
        want = original(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        got = full(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        windowed = local(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert len(got) == len(want) == 2
    real = mask.bool()
    for w, g in zip(want, got):  # HF's eager weights, on real query rows
        assert (w - g).transpose(1, 2)[real].abs().max() <= tol(1e-6)
    # the longformer's: rows sum to one over exactly the allowed keys (window ±2, global 0, real keys)
    pos = torch.arange(24)
    rule = ((pos[:, None] - pos[None]).abs() <= 2) | (pos[:, None] == 0) | (pos[None] == 0)
    allowed = rule[None, None] & real[:, None, None, :]
    probs = windowed[0]
    assert (probs[~allowed.expand_as(probs)] == 0).all()
    assert torch.allclose(probs.sum(-1)[:, :, :17], torch.ones(3, 4, 17))


def test_output_attentions_of_linformer_and_performer_are_their_own_matrices():
    ids, mask = padded_batch()
    lin = hfx.patch(_bert(), "linformer", proj_len=8)
    per = hfx.patch(_bert(), "performer", num_features=16)
    with torch.no_grad():
        lin_weights = lin(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
        per_weights = per(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
    assert lin_weights.shape == (3, 4, 24, 8)  # each query over the projected slots
    assert torch.allclose(lin_weights.sum(-1), torch.ones(3, 4, 24))
    assert per_weights.shape == (3, 4, 24, 24)
    assert (per_weights[2, :, :, 10:] == 0).all()  # padded keys get no weight (sample 2 has 10 real tokens)
    assert torch.allclose(per_weights.sum(-1), torch.ones(3, 4, 24), atol=tol(1e-5))


def test_set_attn_implementation_on_a_patched_model_is_refused_not_ignored():
    model = hfx.patch(_bert(), "full")
    with pytest.raises(ValueError, match=r"attn_implementation='sdpa'.*patched by hf_flexattn.*unpatch"):
        model.set_attn_implementation("sdpa")  # said at the call, not at the next forward
    assert model.config._attn_implementation == "hf_flexattn"
    ids, mask = padded_batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # still the patched model
    hfx.unpatch(model)
    assert model.config._attn_implementation == "eager"  # unpatch restores what was set before patching
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)


def test_patched_model_builds_no_dense_mask_of_transformers():
    """A patched model names its attn_implementation 'hf_flexattn': transformers builds no N×N mask of its own."""
    from transformers import masking_utils

    model = hfx.patch(_bert(attn_implementation="sdpa"), "longformer", window=8)
    assert model.config._attn_implementation == "hf_flexattn"
    seen = []
    interface = masking_utils.ALL_MASK_ATTENTION_FUNCTIONS["hf_flexattn"]
    masking_utils.ALL_MASK_ATTENTION_FUNCTIONS["hf_flexattn"] = lambda *a, **k: seen.append(interface(*a, **k))
    try:
        ids, mask = padded_batch()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        masking_utils.ALL_MASK_ATTENTION_FUNCTIONS["hf_flexattn"] = interface
    assert seen == [None]
    hfx.unpatch(model)
    assert model.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------------------------------------ small things


def test_is_patched_is_public():
    model = _bert()
    assert not hfx.is_patched(model)
    hfx.patch(model, "full")
    assert hfx.is_patched(model)


def test_extend_position_embeddings_updates_the_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = hfx.patch(BertModel.from_pretrained(minilm_dir), "longformer", window=64)
    hfx.extend_position_embeddings(model, 1024, tokenizer=tokenizer)
    assert tokenizer.model_max_length == 1024
    ids = tokenizer("word " * 2000, truncation=True, return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 1024  # truncation now cuts at the new length, not at 512


def test_options_object_is_accepted_and_equals_keywords():
    a = hfx.patch(_bert(), hfx.LongformerOptions(window=8, global_tokens=[0]))
    b = hfx.patch(_bert(), "longformer", window=8, global_tokens=[0])
    assert a.config.hf_flexattn == b.config.hf_flexattn
    assert json.loads(json.dumps(a.config.hf_flexattn))["options"]["global_tokens"] == [0]
    with pytest.raises(ValueError, match="either in LongformerOptions or as keywords"):
        hfx.patch(_bert(), hfx.LongformerOptions(window=8), window=16)


def test_reference_is_what_the_tests_compare_with():
    """The dense reference itself: softmax over allowed keys, zero rows where none is allowed."""
    q = torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    out = reference_attention(q, q, q, mask)
    scores = (q[0, 0] @ q[0, 0].T) * 0.5
    row0 = torch.softmax(scores[0, [0, 2]], -1) @ q[0, 0, [0, 2]]
    assert torch.allclose(out[0, 0, 0], row0) and (out[0, 0, 1] == 0).all()
