"""sentence-transformers in one call: ``patch``, ``unpatch``, ``is_patched``, ``extend_position_embeddings`` and
``from_pretrained`` take a ``SentenceTransformer`` (the offline MiniLM, and a tiny random BERT for the saved extra
weights), and ``encode`` runs the patched model as sentence-transformers calls it (``auto_model.forward(**features)``).
"""

import copy
import subprocess
import sys

import pytest
import torch

import hf_flexattn as hfx

from helpers import save_tiny_bert

sentence_transformers = pytest.importorskip("sentence_transformers")
SentenceTransformer = sentence_transformers.SentenceTransformer

pytestmark = pytest.mark.cpu_only

SHORT = "FlexAttention computes attention with a mask."
LONG = " ".join(f"Sentence number {i} talks about long documents and their embeddings." for i in range(120))


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return SentenceTransformer(minilm_dir, device="cpu")


@pytest.fixture
def fresh_minilm(minilm):
    """A copy of the MiniLM pipeline for one test to change (loading it again would take longer)."""
    return copy.deepcopy(minilm)


def _tiny_pipeline(path, minilm_dir):
    from sentence_transformers import models
    from transformers import AutoTokenizer, BertModel

    save_tiny_bert(path, AutoTokenizer.from_pretrained(minilm_dir), BertModel)
    transformer = models.Transformer(str(path))
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")


def test_full_gives_the_unpatched_embeddings(fresh_minilm):
    model = fresh_minilm
    documents = [SHORT, LONG, "a b c"]  # a padded batch; LONG is cut at max_seq_length=256
    reference = model.encode(documents, convert_to_tensor=True)
    assert hfx.patch(model, "full") is model
    assert hfx.is_patched(model) and hfx.is_patched(model[0].auto_model)
    assert type(model[0].auto_model.encoder.layer[0].attention.self).__name__ == "FlexBertSelfAttention"
    torch.testing.assert_close(model.encode(documents, convert_to_tensor=True), reference, atol=1e-5, rtol=0)

    assert hfx.unpatch(model) is model
    assert not hfx.is_patched(model)
    assert type(model[0].auto_model.encoder.layer[0].attention.self).__name__ == "BertSelfAttention"
    assert torch.equal(model.encode(documents, convert_to_tensor=True), reference)


def test_extend_reads_the_whole_document(fresh_minilm):
    model = fresh_minilm
    tokens = len(model.tokenizer(LONG)["input_ids"])
    assert tokens > 1500
    edited = LONG[: LONG.rindex("Sentence")] + "Completely different closing words about cooking pasta."

    def differs_at_the_end():
        first, second = model.encode([LONG, edited], convert_to_tensor=True)
        return (first - second).abs().max().item() > 1e-4

    assert not differs_at_the_end()  # truncated at 256 tokens: the end of the document is not read
    hfx.extend_position_embeddings(model, 2048)
    hfx.patch(model, "longformer", window=256, global_tokens=[0])
    assert model.max_seq_length == 2048 and model.tokenizer.model_max_length == 2048
    assert model[0].auto_model.config.max_position_embeddings == 2048
    assert model.preprocess([LONG])["input_ids"].shape[1] == tokens
    assert differs_at_the_end()

    # the embedding is the patched model's, on every token: mean pooling and normalisation of its output
    features = model.preprocess([LONG])
    with torch.no_grad():
        hidden = model[0].auto_model(**features).last_hidden_state
    expected = torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1)
    torch.testing.assert_close(model.encode([LONG], convert_to_tensor=True), expected, atol=1e-5, rtol=0)


def test_extend_below_the_position_table_only_raises_max_seq_length(fresh_minilm):
    model = fresh_minilm
    table = model[0].auto_model.embeddings.position_embeddings.weight.clone()
    hfx.extend_position_embeddings(model, 512)
    assert model.max_seq_length == 512
    assert torch.equal(model[0].auto_model.embeddings.position_embeddings.weight, table)


@pytest.mark.parametrize("max_len", [100, 0, 1024.0, True])
def test_extend_refuses_a_bad_length(fresh_minilm, max_len):
    with pytest.raises(ValueError, match="max_len"):
        hfx.extend_position_embeddings(fresh_minilm, max_len)
    assert fresh_minilm.max_seq_length == 256


def test_save_and_reload_patched_with_extra_weights(tmp_path, minilm_dir):
    model = _tiny_pipeline(tmp_path / "bert", minilm_dir)
    hfx.extend_position_embeddings(model, 1024)
    hfx.patch(model, "longformer", window=8, global_tokens=[0], global_projections=True)
    with torch.no_grad():  # the global projections start as copies of query/key/value: make them differ
        model[0].auto_model.encoder.layer[0].attention.self.query_global.weight.mul_(1.5)
    documents = [SHORT, LONG]
    expected = model.encode(documents, convert_to_tensor=True)

    model.save(str(tmp_path / "saved"))
    reloaded = hfx.from_pretrained(SentenceTransformer, tmp_path / "saved", device="cpu")
    assert hfx.is_patched(reloaded)
    assert reloaded.max_seq_length == 1024
    assert "variant=longformer, window=8, global_tokens=[0], global_projections=True" in repr(reloaded[0].auto_model)
    torch.testing.assert_close(reloaded.encode(documents, convert_to_tensor=True), expected, atol=1e-6, rtol=0)

    stock = SentenceTransformer(str(tmp_path / "saved"), device="cpu")  # the stock loader: unpatched, no globals
    assert not hfx.is_patched(stock)
    hfx.unpatch(model)
    model.save(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="not saved from a patched model"):
        hfx.from_pretrained(SentenceTransformer, tmp_path / "plain", device="cpu")


def test_a_pipeline_without_a_supported_transformer_is_refused():
    from sentence_transformers import models

    no_transformer = SentenceTransformer(modules=[models.BoW(vocab=["a", "b"])], device="cpu")
    calls = {
        "patch": lambda m: hfx.patch(m, "full"),
        "extend_position_embeddings": lambda m: hfx.extend_position_embeddings(m, 1024),
        "unpatch": hfx.unpatch,
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"{name}: model is a SentenceTransformer .* hold no transformers model"):
            call(no_transformer)
    assert not hfx.is_patched(no_transformer)


def test_a_failed_patch_leaves_the_pipeline_untouched(fresh_minilm):
    model = fresh_minilm
    reference = model.encode([SHORT], convert_to_tensor=True)
    with pytest.raises(ValueError, match="window"):
        hfx.patch(model, "longformer", window=-3)
    assert not hfx.is_patched(model)
    with pytest.raises(ValueError, match="not patched"):
        hfx.unpatch(model)
    assert torch.equal(model.encode([SHORT], convert_to_tensor=True), reference)


def test_sentence_transformers_stays_optional():
    code = "import sys, hf_flexattn; print('sentence_transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_long_documents_example_runs_as_written(minilm_dir, tmp_path, monkeypatch, capsys):
    """docs/long_context.md's "Long documents with sentence-transformers" example, on the offline MiniLM for the hub
    name."""
    from doc_pages import DOCS, python_blocks

    page = DOCS / "long_context.md"
    example, late_chunking = python_blocks(page, "Long documents with sentence-transformers")
    hub_name = '"sentence-transformers/all-MiniLM-L6-v2"'
    assert hub_name in example
    monkeypatch.chdir(tmp_path)  # the example saves a folder
    namespace = {}
    exec(compile(example.replace(hub_name, repr(minilm_dir)), str(page), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["(2, 384)", "True 4096"]
    model = namespace["model"]
    assert 3500 < len(model.tokenizer(namespace["document"])["input_ids"]) <= 4096  # read whole, as the text says
    assert "variant=longformer, window=256, global_tokens=[0]" in repr(model[0].auto_model)

    exec(compile(late_chunking, str(page), "exec"), namespace)
    vectors = namespace["chunk_vectors"]
    assert len(vectors) == 1 and vectors[0].shape[1] == 384 and vectors[0].shape[0] > 1


def test_a_pipeline_with_an_unsupported_transformer_is_refused_untouched(tmp_path, minilm_dir):
    from sentence_transformers import models
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30522)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    pipeline = SentenceTransformer(modules=[models.Transformer(str(tmp_path)), models.Pooling(16)], device="cpu")
    layer_class = type(pipeline[0].auto_model.h[0].attn)
    with pytest.raises(ValueError, match=r"patch: model's module '0' .*model_type='gpt2' is not supported"):
        hfx.patch(pipeline, "full")
    assert type(pipeline[0].auto_model.h[0].attn) is layer_class and not hfx.is_patched(pipeline)
