"""scripts/studies/perplexity.py, embeddings.py and passkey.py: their building blocks
against hand computations and sentence-transformers' own evaluator, and a tiny smoke run of each script path."""

import gzip
import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch

from scripts import recipes
from scripts.studies import embeddings as study_embeddings
from scripts.studies import far_context as far
from scripts.studies import passkey as study_passkey
from scripts.studies import perplexity as study_perplexity
from scripts.studies import restate

from helpers import generator as device_generator
from helpers import save_tiny_bert, tol

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, tokenizer):
    """A tiny BERT (64 positions) saved without an MLM head, as the MiniLM checkpoint is."""
    from transformers import BertModel

    return save_tiny_bert(
        tmp_path_factory.mktemp("tiny-encoder"),
        tokenizer,
        lambda config: BertModel(config, add_pooling_layer=False),
        max_position_embeddings=64,
    )


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """Long-ish documents (~300 tokens) on different topics, so that retrieval is not pure chance."""
    path = tmp_path_factory.mktemp("docs")
    topics = [
        "socket network server client port",
        "regex pattern match group string",
        "thread lock queue worker pool",
        "decimal float rounding precision context",
        "path file directory glob open",
        "json encode decode dict",
        "unittest case assert mock fixture",
        "datetime date time zone delta",
    ]
    for split, which in (("train", range(5)), ("test", range(5, 8))):
        with gzip.open(path / f"docs_{split}.jsonl.gz", "wt") as f:
            for i in which:
                words = topics[i].split()
                text = " ".join(f"{words[(j * 7 + i) % len(words)]} the {j % 13}" for j in range(100))
                f.write(json.dumps({"text": text}) + "\n")
    return str(path)


def _mlm(tiny_encoder):
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    return AutoModelForMaskedLM.from_pretrained(tiny_encoder)


# ------------------------------------------------------------------------------------------------- MLM pieces


def test_masked_positions_loss_and_gradients_equal_the_hf_loss(tiny_encoder):
    model = _mlm(tiny_encoder).train()
    torch.manual_seed(1)
    ids = torch.randint(1000, 5000, (2, 40))
    labels = torch.where(torch.rand(2, 40) < 0.2, ids, -100)
    labels[0, 3] = ids[0, 3]
    attention = torch.ones_like(ids)
    attention[1, 30:] = 0
    labels[1, 30:] = -100
    model.config.hidden_dropout_prob = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ours = recipes.MaskedPositionsLM(model)(input_ids=ids, attention_mask=attention, labels=labels)["loss"]
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    theirs = model(input_ids=ids, attention_mask=attention, labels=labels).loss
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for got, want in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=tol(1e-4), atol=tol(1e-6))


def test_window_collator_cuts_each_sequence_into_windows(tokenizer):
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    example = {"input_ids": [cls, *range(1000, 1020), sep]}
    collator = recipes.WindowCollator(lambda rows: rows, tokenizer, window=8)
    rows = collator([example, {"input_ids": [cls, 7, 8, sep]}])
    assert [r["input_ids"] for r in rows] == [
        [cls, *range(1000, 1006), sep],
        [cls, *range(1006, 1012), sep],
        [cls, *range(1012, 1018), sep],
        [cls, 1018, 1019, sep],
        [cls, 7, 8, sep],
    ]


def test_warm_head_fits_the_head_only_and_lowers_its_loss(tiny_encoder, tokenizer):
    model = _mlm(tiny_encoder)
    embeddings = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is embeddings  # tied
    encoder_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("cls.")}
    head_before = model.cls.predictions.transform.dense.weight.clone()
    generator = device_generator(0)
    sequences = [
        [
            tokenizer.cls_token_id,
            *torch.randint(1000, 1100, (30,), generator=generator).tolist(),
            tokenizer.sep_token_id,
        ]
        for _ in range(24)
    ]
    info = recipes.warm_mlm_head(model, sequences, tokenizer, epochs=4, learning_rate=0.1, seed=0, batch_size=16)
    assert info["features"] > 50 and info["loss_per_epoch"][-1] < info["loss_per_epoch"][0] - 0.5
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in encoder_before.items())  # encoder and tied decoder untouched
    assert not torch.equal(head_before, model.cls.predictions.transform.dense.weight)
    assert all(p.requires_grad for p in model.parameters())


def test_bucket_sums_and_paired_bootstrap_by_hand():
    tokens = {
        "document": torch.tensor([0, 0, 1, 1, 1]),
        "position": torch.tensor([0, 7, 2, 8, 9]),
        "nll": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64),
    }
    sums = recipes.bucket_sums(tokens, documents=3, edges=[8])
    assert sums.tolist() == [[[3.0, 2.0], [3.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [9.0, 2.0], [0.0, 0.0]]]
    worse = sums.clone()
    worse[..., 0] += worse[..., 1] * 0.5  # +0.5 nats on every token
    result = recipes.paired_bootstrap(sums.sum(0), worse.sum(0), resamples=300, seed=0)
    assert result["ppl_a"] == pytest.approx(math.exp(15 / 5)) and result["ppl_b"] == pytest.approx(math.exp(17.5 / 5))
    assert result["ratio_ci95"] == pytest.approx([math.exp(-0.5)] * 2)  # the same on every resample
    low, high = result["diff_ci95"]
    assert 0 < low <= result["diff_b_minus_a"] <= high
    same = recipes.paired_bootstrap(sums.sum(0), sums.sum(0), resamples=50)
    assert same["diff_ci95"] == [0.0, 0.0]


def test_unigram_baseline_scores_the_models_masked_positions_by_hand(tiny_encoder, tokenizer):
    train = [[1000, 1000, 1001], [1000, 1002]]
    held_out = [list(range(1000, 1040)), list(range(1010, 1025))]
    model = _mlm(tiny_encoder)
    scored = recipes.masked_lm_token_nll(model, held_out, tokenizer, max_length=30, seed=3)
    unigram = recipes.unigram_token_nll(train, held_out, tokenizer, max_length=30, seed=3)
    assert torch.equal(unigram["document"], scored["document"]) and torch.equal(unigram["position"], scored["position"])
    counts = {1000: 3 + 1, 1001: 1 + 1, 1002: 1 + 1}  # add-one smoothing: each count + 1, over the vocabulary
    total = 5 + len(tokenizer)
    for document, position, nll in zip(*(unigram[k].tolist() for k in ("document", "position", "nll"))):
        token = held_out[document][position]
        assert nll == pytest.approx(-math.log(counts.get(token, 1) / total))


# ------------------------------------------------------------------------------------------------- retrieval pieces


def test_ranks_and_retrieval_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.4, 0.4, 0.1]])
    ranks = recipes.ranks_of_relevant(scores, torch.tensor([0, 1, 1]))
    assert ranks.tolist() == [1, 2, 2]  # a tie counts against the relevant document
    m = recipes.retrieval_metrics(ranks)
    assert m == pytest.approx({"recall@1": 1 / 3, "recall@10": 1.0, "mrr@10": (1 + 0.5 + 0.5) / 3})
    far = recipes.retrieval_metrics(torch.tensor([11, 1]))
    assert far["recall@10"] == 0.5 and far["mrr@10"] == 0.5
    with_ci = recipes.retrieval_metrics(ranks, groups=torch.tensor([0, 1, 1]), resamples=200)
    assert with_ci["recall@1_ci95"][0] == 0.0 and with_ci["recall@1_ci95"][1] == 1.0
    diff = recipes.paired_retrieval_difference(
        torch.tensor([1, 1, 2]), torch.tensor([2, 4, 2]), torch.tensor([0, 1, 2])
    )
    assert diff["mrr@10_diff"] == pytest.approx((0.5 + 0.75 + 0) / 3) and diff["ci95"][0] >= 0


def test_scores_with_ranks_give_back_the_ranks():
    """restate.embeddings rebuilds a score matrix from the saved ranks: ranking it must give exactly those ranks."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (40, 7), generator=generator).float()  # many ties: they count against the document
    relevant = torch.randint(0, 7, (40,), generator=generator)
    ranks = recipes.ranks_of_relevant(scores, relevant)
    assert ranks.min() == 1 and ranks.max() == 7
    rebuilt = restate.scores_with_ranks(ranks, relevant, 7)
    assert torch.equal(recipes.ranks_of_relevant(rebuilt, relevant), ranks)


def test_late_chunks_by_hand():
    tokens = torch.arange(1, 8 * 2 + 1, dtype=torch.float32).view(8, 2)  # [CLS], 6 tokens, [SEP]
    chunks = recipes.late_chunks(tokens, 4)
    want = torch.stack([tokens[1:5].mean(0), tokens[5:7].mean(0)])
    torch.testing.assert_close(chunks, torch.nn.functional.normalize(want, dim=-1))


def test_deep_passage_queries(tokenizer, docs):
    texts = recipes.load_documents(docs, "test")
    for cut in (False, True):
        data = recipes.deep_passage_queries(
            texts, tokenizer, doc_tokens=200, query_tokens=10, per_doc=3, min_depth=60, seed=1, cut=cut
        )
        assert len(data["queries"]) == 9 and len(data["corpus"]) == 3
        for q, passage in data["queries"].items():
            doc = data["corpus"][data["relevant"][q]]
            assert 60 <= data["depth"][q] <= 190
            assert (passage in doc) != cut
            assert len(tokenizer(passage, add_special_tokens=False)["input_ids"]) == 10
        for d, doc in data["corpus"].items():
            starts = sorted(data["depth"][q] for q in data["queries"] if data["relevant"][q] == d)
            assert all(b - a >= 10 for a, b in itertools.pairwise(starts))  # passages do not overlap
            assert len(tokenizer(doc, add_special_tokens=False)["input_ids"]) <= 200
    with pytest.raises(ValueError, match="too short"):
        recipes.deep_passage_queries(texts, tokenizer, doc_tokens=80, query_tokens=10, per_doc=3, min_depth=60, seed=0)


@pytest.fixture(scope="module")
def sentence_transformer(tiny_encoder):
    st = pytest.importorskip("sentence_transformers")
    return lambda: st.SentenceTransformer(tiny_encoder, device="cpu")


def test_patched_sentence_transformer_reads_past_its_positions_and_agrees_on_short_input(sentence_transformer):
    plain, patched = sentence_transformer(), sentence_transformer()
    recipes.patch_sentence_transformer(patched, "longformer", {"window": 32, "global_tokens": [0]}, 256)
    assert patched.max_seq_length == 256 and patched.tokenizer.model_max_length == 256
    short = "the quick brown fox jumps over the lazy dog"  # 11 tokens, each within ±16 of all: the same attention
    torch.testing.assert_close(
        patched.encode([short], convert_to_tensor=True),
        plain.encode([short], convert_to_tensor=True),
        rtol=tol(1e-4),
        atol=tol(1e-5),
    )
    long = " ".join(["python reads long documents"] * 60)
    tokens = patched.encode([long], output_value="token_embeddings")[0]
    assert tokens.shape[0] == 242 and torch.isfinite(tokens).all()  # 240 words + [CLS] + [SEP], past 64 positions


def test_retrieval_metrics_agree_with_sentence_transformers_evaluator(sentence_transformer, tokenizer, docs):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    model = sentence_transformer()
    model.max_seq_length = 64
    texts = recipes.load_documents(docs, "train") + recipes.load_documents(docs, "test")
    data = recipes.deep_passage_queries(
        texts, tokenizer, doc_tokens=62, query_tokens=6, per_doc=2, min_depth=20, seed=0
    )
    doc_ids, query_ids = list(data["corpus"]), list(data["queries"])
    q = model.encode([data["queries"][i] for i in query_ids], convert_to_tensor=True, normalize_embeddings=True)
    d = model.encode([data["corpus"][i] for i in doc_ids], convert_to_tensor=True, normalize_embeddings=True)
    relevant = torch.tensor([doc_ids.index(data["relevant"][i]) for i in query_ids])
    ours = recipes.retrieval_metrics(recipes.ranks_of_relevant(q @ d.T, relevant))
    evaluator = InformationRetrievalEvaluator(
        data["queries"], data["corpus"], {i: {data["relevant"][i]} for i in query_ids}, write_csv=False
    )
    theirs = evaluator(model)
    assert 0 < ours["recall@1"] < 1  # neither trivial nor hopeless, so the comparison means something
    for ours_key, their_suffix in (("recall@1", "accuracy@1"), ("recall@10", "recall@10"), ("mrr@10", "mrr@10")):
        value = next(v for k, v in theirs.items() if k.endswith(their_suffix))
        assert ours[ours_key] == pytest.approx(value, abs=1e-6), ours_key


# ------------------------------------------------------------------------------------------------- smoke runs


def test_study_perplexity_smoke(tiny_encoder, docs, tmp_path):
    out, card = tmp_path / "ppl", tmp_path / "cards" / "ppl.md"
    argv = [
        "--model",
        tiny_encoder,
        "--dataset",
        docs,
        "--out",
        str(out),
        "--window-length",
        "64",
        "--windows",
        "2",
        "--window",
        "16",
        "--eval-docs",
        "2",
        "--warm-docs",
        "3",
        "--warm-epochs",
        "1",
        "--steps",
        "2",
        "--seeds",
        "0",
        "1",
        "--bootstrap",
        "50",
        "--model-card",
        str(card),
    ]
    assert study_perplexity.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["length"] == 126 and report["same_training_text"]  # past the checkpoint's 64 positions
    # B reads each of A's sequences as windows of 64 tokens (62 + [CLS] + [SEP])
    shapes = report["batch_shapes"]
    assert max(width for _, width in shapes["A"]) > 64
    assert [[-(-(width - 2) // 62), min(width, 64)] for _, width in shapes["A"]] == shapes["B"]
    assert set(report["after_training"]) == {"0", "1"} and report["over_seeds"]["all"]["n"] == 2
    assert all(len(v["A"]) == 2 == len(v["B"]) for v in report["train_loss"].values())
    assert all(math.isfinite(x) for row in report["perplexity"].values() for x in row.values())
    # the per-document records are in results.json: every perplexity is recomputed from them
    for name, sums in report["per_document_sums"]["models"].items():
        total = torch.tensor(sums, dtype=torch.float64)
        assert report["perplexity"][name]["all"] == pytest.approx(
            math.exp(float(total[..., 0].sum() / total[..., 1].sum())), rel=1e-9
        )
    assert (out / "warm_head" / "config.json").exists() and (out / "perplexity_by_position.png").exists()
    text = card.read_text()
    assert "-m scripts.studies.perplexity" in text and "**Machine**" in text and "beyond it" in text
    assert (card.parent / "figures" / "ppl.png").exists() and "figures/ppl.png" in text
    card.unlink()  # --rewrite-card renders the same card again from results.json, without running anything
    assert study_perplexity.main(["--out", str(out), "--model-card", str(card), "--rewrite-card"]) == 0
    assert card.read_text() == text
    # every number again from the per-document sums alone (the committed cards' test relies on it)
    assert restate.render_card("perplexity", restate.restate("perplexity", report), card, out) == text
    # the saved warmed head is reused as given, and gives the same warmed-head perplexity
    again = tmp_path / "again"
    argv2 = [
        "--model",
        tiny_encoder,
        "--dataset",
        docs,
        "--out",
        str(again),
        "--window-length",
        "64",
        "--windows",
        "2",
        "--window",
        "16",
        "--eval-docs",
        "2",
        "--steps",
        "1",
        "--bootstrap",
        "20",
        "--warm-head",
        str(out / "warm_head"),
    ]
    assert study_perplexity.main(argv2) == 0
    reused = json.loads((again / "results.json").read_text())
    assert reused["warm_head_perplexity_at_512"] == pytest.approx(report["warm_head_perplexity_at_512"], rel=1e-6)
    assert not (again / "warm_head").exists()


def test_study_embeddings_smoke(sentence_transformer, tiny_encoder, docs, tmp_path):
    out, card = tmp_path / "emb", tmp_path / "cards" / "emb.md"
    argv = [
        "--model",
        tiny_encoder,
        "--dataset",
        docs,
        "--out",
        str(out),
        "--doc-tokens",
        "128",
        "--chunk-tokens",
        "32",
        "--native-chunks",
        "8",
        "16",
        "--stride",
        "16",
        "--short-tokens",
        "16",
        "--query-tokens",
        "8",
        "--queries-per-doc",
        "2",
        "--min-depth",
        "32",
        "--eval-docs",
        "4",
        "--window",
        "16",
        "--ft-steps",
        "2",
        "--ft-batch",
        "2",
        "--ft-doc-tokens",
        "96",
        "--bootstrap",
        "50",
        "--model-card",
        str(card),
    ]
    assert study_embeddings.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["documents"] == 4 and report["finetune_documents"] == 4
    assert report["queries"] + len(report["queries_dropped_still_verbatim"]) == 8 and report["queries"] > 0
    assert report["queries_verbatim_in_own_document"] == 0  # cut out by default
    plain = ["truncate-16", "truncate-32"] + [f"chunks-{n}-{how}" for n in (8, 16, 32) for how in ("mean", "best")]
    patched = ["longformer-128", "late-chunking-8", "late-chunking-16", "late-chunking-32"]
    assert list(report["metrics"]) == [
        *plain,
        "windowed-late-8",
        "windowed-late-16",
        *patched,
        *(f"{name} fine-tuned" for name in patched),
    ]
    assert report["tokens_read_by_patched_model"]["max"] > 64  # past the checkpoint's positions
    assert len(report["finetune"]["train_loss"]) == 2
    assert report["evaluator_check"]["agrees"]
    # the per-query ranks are in results.json: every method's MRR@10 is recomputed from them
    for name, ranks in report["per_query"]["ranks"].items():
        mrr = sum(1 / r if r <= 10 else 0.0 for r in ranks) / len(ranks)
        assert report["metrics"][name]["mrr@10"] == pytest.approx(mrr, rel=1e-9)
    pairs = [(c["a"], c["b"]) for c in report["comparisons"]]
    assert pairs[:2] == [("late-chunking-8", "windowed-late-8"), ("late-chunking-16", "windowed-late-16")]
    assert all(c["question"].startswith("PRIMARY") for c in report["comparisons"][:2])
    head = report["comparisons"][-1]
    assert head["question"] == "the best with the plug-in vs the best without it"
    mrr = {name: m["mrr@10"] for name, m in report["metrics"].items()}
    assert mrr[head["a"]] == max(v for n, v in mrr.items() if n.startswith(("longformer", "late-chunking")))
    assert mrr[head["b"]] == max(v for n, v in mrr.items() if n.startswith(("truncate", "chunks", "windowed")))
    buckets = next(iter(report["by_depth"].values()))
    assert sum(b["queries"] for b in buckets.values()) == report["queries"]  # every query in one depth bucket
    text = card.read_text()
    assert "-m scripts.studies.embeddings" in text and "Plainly" in text and "**Machine**" in text and "a vs b" in text
    assert "| chance | a random order of the 4 documents | 0.250 | 1.000 | 0.521 |" in text  # (1 + 1/2 + 1/3 + 1/4) / 4
    card.unlink()
    assert study_embeddings.main(["--out", str(out), "--model-card", str(card), "--rewrite-card"]) == 0
    assert card.read_text() == text
    # every number again from the per-query ranks alone (the committed cards' test relies on it)
    again = restate.restate("embeddings", json.loads((out / "results.json").read_text()))
    assert restate.render_card("embeddings", again, card, out) == text
    # --keep-passages without the fine-tune: every query is in its own document
    argv[argv.index("--ft-steps") + 1] = "0"
    assert study_embeddings.main([*argv, "--keep-passages", "--out", str(tmp_path / "keep")]) == 0
    keep = json.loads((tmp_path / "keep" / "results.json").read_text())
    assert keep["settings"]["keep_passages"] and keep["queries_verbatim_in_own_document"] == keep["queries"] == 8
    assert len(keep["metrics"]) == 14 and not any("fine-tuned" in name for name in keep["metrics"])


def test_embeddings_chance_row_is_a_uniformly_random_order():
    """The card's chance row: under a random order the relevant document is at every rank equally often, so the
    metrics of one query at each rank 1..documents are the chance level (checked on fewer and more than 10)."""
    import torch

    from scripts.recipes import retrieval_metrics

    for documents in (4, 12, 120):
        every_rank = retrieval_metrics(torch.arange(1, documents + 1))
        assert study_embeddings.chance_metrics(documents) == pytest.approx(every_rank, rel=1e-12)


def test_embeddings_cut_queries_are_absent_from_the_indexed_text(tokenizer):
    """On the shipped corpus, as the study builds it: no query (lower-cased, whitespace collapsed) occurs in any
    indexed document, in any of its chunks, or verbatim; the dropped ones did occur somewhere."""
    args = study_embeddings.parse_args(["--eval-docs", "12", "--queries-per-doc", "4"])
    texts = recipes.load_documents(args.dataset, "test")[:12]
    data, dropped = study_embeddings.retrieval_set(texts, tokenizer, args, 2040)
    assert len(data["queries"]) + len(dropped) == 48 and len(data["queries"]) >= 40
    indexed = [study_embeddings._plain(d) for d in data["corpus"].values()]
    for q, text in data["queries"].items():
        assert not any(study_embeddings._plain(text) in doc for doc in indexed), q
    raw, _ = study_embeddings.retrieval_set(texts, tokenizer, study_embeddings.parse_args(["--keep-passages"]), 2040)
    for q in dropped:
        assert any(study_embeddings._plain(raw["queries"][q]) in doc for doc in indexed)
    assert all(raw["queries"][q] in raw["corpus"][raw["relevant"][q]] for q in raw["queries"])  # the old setting


def test_window_starts_and_chunk_windows_hold_every_chunk():
    for window, stride in ((510, 256), (30, 16), (8, 8)):
        for length in (1, window - 1, window, window + 1, 2 * window + 3, 2040, 4080):
            starts = study_embeddings.window_starts(length, window, stride)
            assert starts[0] == 0 and all(b - a == stride for a, b in itertools.pairwise(starts[:-1]))
            assert 0 < starts[-1] - starts[-2] <= stride if len(starts) > 1 else length <= window
            assert min(starts[-1] + window, length) == length  # covers the end, every window full
            assert all(s + window <= length for s in starts) or length < window
            for chunk in {1, window - stride + 1, max(1, (window - stride) // 2)}:
                placed = study_embeddings.chunk_windows(length, chunk, window, stride)
                assert [(b, e) for _, b, e in placed] == [(b, min(b + chunk, length)) for b in range(0, length, chunk)]
                for w, b, e in placed:
                    assert starts[w] <= b and e <= starts[w] + window
                    # no other window holding the chunk centres it better
                    gap = abs(2 * starts[w] + min(window, length - starts[w]) - b - e)
                    for s in starts:
                        if s <= b and e <= s + window:
                            assert gap <= abs(2 * s + min(window, length - s) - b - e)
    assert study_embeddings.window_starts(1000, 510, 256) == [0, 256, 490]
    with pytest.raises(ValueError, match="only up to 255 tokens"):
        study_embeddings.chunk_windows(1000, 256, 510, 256)


def test_windowed_late_chunks_pool_the_centring_window_as_late_chunking_does(sentence_transformer, tokenizer):
    """Each chunk vector = hf_flexattn.late_chunking of its window read alone, pooled over the chunk's tokens."""
    import hf_flexattn

    model = sentence_transformer()
    encoder = model[0].auto_model
    words = "the cat sat on a mat and then ran to its home with one red dog".split()  # one token each
    ids = tokenizer(" ".join(words[i * 7 % len(words)] for i in range(120)), add_special_tokens=False)["input_ids"]
    assert len(ids) == 120
    window, stride, chunk = 30, 16, 10
    got = study_embeddings.windowed_late_chunks(encoder, tokenizer, ids, [chunk], window, stride)[chunk]
    starts = study_embeddings.window_starts(len(ids), window, stride)
    placed = study_embeddings.chunk_windows(len(ids), chunk, window, stride)
    assert got.shape == (-(-len(ids) // chunk), encoder.config.hidden_size)
    assert len({w for w, _, _ in placed}) > 2  # several windows used
    for row, (w, b, e) in enumerate(placed):
        text = tokenizer.decode(ids[starts[w] : starts[w] + window])
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids[starts[w] : starts[w] + window]
        want = hf_flexattn.late_chunking(
            encoder, [text], chunk_spans=[[(b - starts[w], e - starts[w])]], tokenizer=tokenizer, normalize=True
        )[0][0]
        torch.testing.assert_close(got[row], want, rtol=tol(1e-4), atol=tol(1e-5))


# ------------------------------------------------------------------------------------------------- passkey probe


def test_passkey_sentence_sits_inside_one_chunk_at_its_depth(tokenizer):

    text = recipes.load_documents(study_passkey.DATA, "test")[0]
    for chunk in (128, 510):
        for depth in study_passkey.DEPTHS:
            placed = study_passkey.with_key(text, tokenizer, 4080, depth, 12345, chunk)
            tokens = tokenizer(placed["text"], add_special_tokens=False)["input_ids"]
            begin, end = placed["span"]
            assert len(tokens) == placed["tokens"] and abs(len(tokens) - 4080) <= 2
            assert begin // chunk == (end - 1) // chunk == placed["chunk"]
            sentence = tokenizer(study_passkey.key_sentence(12345), add_special_tokens=False)["input_ids"]
            assert tokens[begin:end] == sentence
            assert abs(begin - depth * 4080) <= chunk + 32  # near its depth (the nearest word start that fits)
    with pytest.raises(ValueError, match="the key sentence alone has"):
        study_passkey.with_key(text, tokenizer, 4080, 0.5, 12345, 8)


def test_passkey_scores_and_statistics_by_hand():

    basis = torch.eye(4)
    queries = basis[:2]  # query i points at axis i
    decoys = torch.stack([basis[2:3], basis[2:3]])  # one decoy query per document, along axis 2
    vectors = {
        # doc 0 = its query's axis; doc 1 = the decoy's axis: query 1 ties with query 0 on it (0 = 0) and with the
        # decoy loses (0 < 1); a tie counts against the document
        "whole-document": [basis[0:1], basis[2:3]],
        # doc 0: chunks (axis 3, axis 0): its query's best is chunk 1; doc 1: (axis 1, axis 2): its query's best is
        # chunk 0, and the decoy scores 1 on chunk 1, tying the query's 1
        "best-chunk": [torch.stack([basis[3], basis[0]]), torch.stack([basis[1], basis[2]])],
    }
    hits = study_passkey.score_depth(queries, decoys, vectors, key_chunks=[1, 1])
    assert hits["whole-document"] == {"document": [True, False], "key": [True, False]}
    assert hits["best-chunk"] == {"document": [True, True], "key": [True, False], "key_chunk": [True, False]}
    # the key chunk is the document's best chunk for its query, but a decoy query (other digits) scores higher on
    # it: the chunk kept the phrase, not the digits, and is no key-chunk hit
    phrase = torch.nn.functional.normalize(basis[0] + basis[1], dim=0)
    only_phrase = {"best-chunk": [torch.stack([basis[3], phrase])]}
    hit = study_passkey.score_depth(basis[:1], phrase[None, None], only_phrase, key_chunks=[1])
    assert hit["best-chunk"]["key_chunk"] == [False]
    kept = study_passkey.score_depth(basis[:1], basis[2:3][None], only_phrase, key_chunks=[1])
    assert kept["best-chunk"]["key_chunk"] == [True]
    assert study_passkey.wilson(0, 10)[0] == 0.0 and study_passkey.wilson(10, 10)[1] == 1.0
    assert study_passkey.wilson(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)  # the textbook value
    diff = study_passkey.paired_difference([[True, True, False]], [[False, True, False]], resamples=300)
    assert diff["diff"] == pytest.approx(1 / 3) and diff["ci95"][0] >= 0 and diff["ci95"][1] <= 1


def test_study_passkey_smoke(sentence_transformer, tiny_encoder, docs, tmp_path):

    out, card = tmp_path / "pk", tmp_path / "cards" / "pk.md"
    argv = ["--model", tiny_encoder, "--dataset", docs, "--out", str(out), "--docs", "3", "--doc-tokens", "200"]
    argv += ["--chunk-tokens", "30", "--window", "32", "--decoys", "4", "--model-card", str(card)]
    assert study_passkey.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert list(report["hits"]) == ["5%", "25%", "50%", "75%", "95%"] and report["documents"] == 3
    assert report["unpatched_windows"] == {"tokens": 62, "stride": 32}  # the tiny model's 64 positions
    for depth, by_method in report["hits"].items():
        assert set(by_method) == set(study_passkey.METHODS)
        assert all(len(v) == 3 for m in by_method.values() for v in m.values())
        assert set(by_method["best-chunk"]) == {"document", "key", "key_chunk"}
        assert all(t > 64 for t in report["placements"][depth]["document_tokens"])  # past the model's positions
    assert set(report["paired_differences"]) == {"late-chunk-best − best-chunk", "late-chunk-best − windowed-late-best"}
    text = card.read_text()
    assert "-m scripts.studies.passkey" in text and "**Machine**" in text and "Plainly" in text
    assert "ranks its own key's query above all 4 decoys'" in text  # the key-chunk hit says it needs the digits
    card.unlink()
    assert study_passkey.main(["--out", str(out), "--model-card", str(card), "--rewrite-card"]) == 0
    assert card.read_text() == text
    # every number again from the per-document hits alone (the committed cards' test relies on it)
    assert restate.render_card("passkey", restate.restate("passkey", report), card, tmp_path / "again") == text


@pytest.mark.parametrize(
    "script,argv,message",
    [
        (study_perplexity, ["--steps", "0"], "argument --steps: 0 must be a positive integer"),
        (study_perplexity, ["--dataset", "/no/such"], "--dataset /no/such: no such file or folder"),
        (study_perplexity, ["--warm-head", "/no/such"], "--warm-head /no/such: no saved model"),
        (study_embeddings, ["--doc-tokens", "512"], "--doc-tokens 512 must exceed --chunk-tokens 512"),
        (study_embeddings, ["--ft-steps", "-1"], "argument --ft-steps: -1 must be 0 or more"),
        (study_embeddings, ["--short-tokens", "600"], "--short-tokens 600 must not exceed --chunk-tokens 512"),
        (study_embeddings, ["--native-chunks", "300"], "hold every chunk only up to 257 tokens"),
        (study_embeddings, ["--native-chunks", "512"], "argument --native-chunks: 512 must be between 3 and"),
    ],
)
def test_study_bad_input_is_refused_naming_the_argument(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        script.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- far-context study


def test_far_context_statistics_and_decision_rule_by_hand():

    a = [True, True, True, False, True, False]
    b = [False, False, True, False, True, True]
    out = far.paired_difference(a, b, linked=[[0], [0], [1], [1], [2], [2]], resamples=500, seed=0)
    assert out["diff"] == pytest.approx((4 - 3) / 6) and (out["only_a"], out["only_b"]) == (2, 1)
    assert out["mcnemar_p"] == pytest.approx(1.0)  # 2 vs 1 discordant: two-sided exact p = 2 · P(X ≤ 1 | n=3) = 1
    assert out["ci95"][0] <= out["diff"] <= out["ci95"][1]
    helps = {"queries": 9, "ci95": [0.01, 0.2]}
    assert far.decide(helps, {"queries": 3, "diff": -0.01}) == "HELPS"
    assert far.decide(helps, {"queries": 3, "diff": -0.05}) == "FAR GAIN BUT NEAR DAMAGE"
    assert far.decide({"queries": 9, "ci95": [-0.2, -0.01]}, {"queries": 3, "diff": 0.0}) == "HURTS"
    assert far.decide({"queries": 9, "ci95": [-0.1, 0.1]}, {"queries": 3, "diff": 0.0}) == "NOT SEPARATED"


def test_far_context_windows_cover_every_chunk_and_queries_share_spans(tokenizer):

    for length in (100, 510, 511, 1000, 2048, 4080):
        starts = far.window_starts(length)
        for c in range(0, length, far.CHUNK):
            end = min(c + far.CHUNK, length)
            assert any(s <= c and end <= min(s + 510, length) for s in starts), (length, c)
    shared = "the function returns a new reference to the object it was given"
    texts = [
        "Alpha title\n\n" + "alpha words here. " * 80 + shared + " more alpha text. " * 30,
        "Beta title\n\n" + shared + " beta words follow. " * 100,
        "Gamma title\n\n" + "gamma only words. " * 120,
    ]
    docs = far.build_corpus(texts, tokenizer, 400)
    assert [d["heading"] for d in docs] == ["Alpha title", "Beta title", "Gamma title"]
    queries = far.shared_span_queries(docs, tokenizer, spans_per_chunk=1)
    assert queries and {q["doc"] for q in queries} <= {0, 1}
    for q in queries:
        assert 2 not in {d for d, _ in q["dups"]}
        own = docs[q["doc"]]["ids"][q["start"] : q["start"] + far.CHUNK]
        assert any(own[i : i + far.SPAN] == q["span"] for i in range(len(own)))
        for d, c in q["dups"]:
            other = docs[d]["ids"][c * far.CHUNK : (c + 1) * far.CHUNK]
            assert any(other[i : i + far.SPAN] == q["span"] for i in range(len(other)))


FAR_NAMES = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda")
FAR_SHARED = (  # documents 2k and 2k + 1 share sentence k
    "the function returns a new reference to the object it was given",
    "every worker thread must hold the lock before it writes to the queue",
    "a path object can be joined with another path to build a new one",
    "the parser reads each line of the file and stores the result in a list",
    "when the timer expires the event loop calls the callback with its argument",
)


def _far_texts(names=FAR_NAMES) -> list[str]:
    """Documents of ~900 tokens, each its own filler and heading; documents 2k and 2k + 1 share a prose sentence, near
    the start and again past token 640."""
    return [
        f"The {name} module\n\n"
        + f"{name} words here. " * 20
        + f" {FAR_SHARED[i // 2]}. "
        + f"{name} text. " * 200
        + f" {FAR_SHARED[i // 2]}. "
        for i, name in enumerate(names)
    ]


def test_far_context_split_keeps_training_documents_out_of_the_evaluation():

    evaluation, training = far.split_documents(documents=12, test_documents=3)
    assert training == [3, 6, 9] and evaluation == [0, 1, 2, 4, 5, 7, 8, 10, 11]  # test first, then train
    assert far.arm_plan(far.parse_args(["--ft-steps", "5"]))[:4] == [
        "ft-patched",
        "ft-windowed",
        "windowed-late",
        "patched-w512",
    ]
    assert "ft-patched" not in far.arm_plan(far.parse_args(["--ft-steps", "0"]))


def test_far_context_training_batch_plants_duplicates_without_erasing_a_query(tokenizer):
    import argparse
    import random

    docs = far.build_corpus(_far_texts()[:4], tokenizer, 512)
    args = argparse.Namespace(ft_docs_per_step=3, ft_tokens=512, ft_queries_per_doc=6)
    rng = random.Random(0)
    for _ in range(5):
        ids, queries, targets, planted = far.training_batch(docs, rng, args)
        assert [len(x) for x in ids] == [512] * 3 and sum(planted) == 9
        for query, target, plant in zip(queries, targets, planted):
            b, c = divmod(target, 4)  # 4 chunks of 128 per document
            span, heading = query[-far.SPAN :], query[: -far.SPAN]
            own = ids[b][c * far.CHUNK : (c + 1) * far.CHUNK]
            assert any(own[i : i + far.SPAN] == span for i in range(far.CHUNK - far.SPAN + 1))  # still there
            assert ids[b][: len(heading)] == heading  # the heading of the document the target chunk is in
            if plant:  # a copy of the span in another document of the batch
                assert any(ids[o][i : i + far.SPAN] == span for o in range(3) if o != b for i in range(505))


@pytest.fixture(scope="module")
def far_encoder(tmp_path_factory, tokenizer):
    """A tiny BERT with 512 positions (the windowed arm reads 512-token windows), saved as MiniLM is."""
    from transformers import BertModel

    return save_tiny_bert(
        tmp_path_factory.mktemp("far-encoder"), tokenizer, lambda config: BertModel(config, add_pooling_layer=False)
    )


@pytest.mark.parametrize(("reader", "tokens"), [("whole_late_chunks", 256), ("windowed_late_chunks", 768)])
def test_far_context_finetune_lowers_the_loss_on_a_tiny_case(far_encoder, tokenizer, reader, tokens):
    import argparse

    from transformers import AutoModel

    model = AutoModel.from_pretrained(far_encoder)
    docs = far.build_corpus(_far_texts()[:3], tokenizer, tokens)
    args = argparse.Namespace(
        ft_docs_per_step=2, ft_tokens=tokens, ft_queries_per_doc=8, ft_steps=20, ft_lr=1e-3, seed=0
    )
    log = far.finetune(model, getattr(far, reader), docs, tokenizer, args, "tiny")
    assert len(log["loss"]) == 20 and all(math.isfinite(x) for x in log["loss"])
    # batches differ step to step (2 of 3 documents, random spans): compare the first 3 steps with the last 10
    first, last = sum(log["loss"][:3]) / 3, sum(log["loss"][-10:]) / 10
    assert first > 0.5 and last < 0.8 * first, [round(x, 2) for x in log["loss"]]  # not trivial at first; learns


def test_far_context_smoke_run_reports_every_arm_and_a_time_budget_reports_what_did_not_run(far_encoder, tmp_path):

    data = tmp_path / "data"
    data.mkdir()
    texts = _far_texts()
    for split, rows in (("test", texts[:3]), ("train", texts[3:])):
        with gzip.open(data / f"docs_{split}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in rows)
    out, card = tmp_path / "out", tmp_path / "card.md"
    argv = ["--model", far_encoder, "--dataset", str(data), "--doc-tokens", "768", "--patched-windows", "512"]
    argv += ["--ft-steps", "2", "--ft-tokens", "256", "--ft-queries-per-doc", "2", "--bootstrap", "50"]
    assert far.main([*argv, "--out", str(out), "--model-card", str(card)]) == 0
    report = json.loads((out / "results.json").read_text())
    # training = train documents 0 and 3 (texts 3 and 6); evaluation = the other 7, the index and every query
    assert (report["training_documents"], report["evaluation_documents"]) == (2, 7)
    assert all(q["doc"] not in (3, 6) and all(d not in (3, 6) for d, _ in q["dups"]) for q in report["query_list"])
    assert set(report["outcomes"]) == {"ft-patched", "ft-windowed", "windowed-late", "patched-w512", "title", "naive"}
    assert all(len(o["pairwise"]) == report["queries"] for o in report["outcomes"].values())
    assert report["queries_by_bucket"].get("far") and not report["not_run"] and not report["pending"]
    assert [len(t["loss"]) for t in report["training"].values()] == [2, 2]
    text = card.read_text()
    assert "(pre-registered)" in text and "Fine-tuned: " in text and report["command"] in text

    assert far.main([*argv, "--out", str(tmp_path / "late"), "--time-budget-min", "1e-9"]) == 0
    late = json.loads((tmp_path / "late" / "results.json").read_text())
    assert late["not_run"] == far.arm_plan(far.parse_args(argv)) and not late["outcomes"] and not late["contrasts"]
    assert "Fine-tuned: not run" in (tmp_path / "late" / "report.md").read_text()


# ------------------------------------------------------------------------------------------------- linked bootstrap


def test_linked_bootstrap_resamples_duplicate_pairs_together_and_widens_the_interval():
    from scripts.recipes.statistics import exact_mcnemar, linked_bootstrap

    # 40 documents; queries of documents 2k and 2k + 1 are each other's duplicates (mirrored pairs), and the pair
    # shares its outcome: half the pairs all +1, half all 0
    values, own, linked = [], [], []
    for pair in range(20):
        for d in (2 * pair, 2 * pair + 1):
            for _ in range(3):
                values.append(float(pair % 2))
                own.append([d])
                linked.append([d, d ^ 1])
    mean, wide = linked_bootstrap(values, linked, resamples=2000, seed=0)
    _, narrow = linked_bootstrap(values, own, resamples=2000, seed=0)
    assert mean == pytest.approx(0.5)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]  # the pair is one unit: fewer units, wider interval
    # a query linked only to its own document: the plain document bootstrap (one unit per document)
    same, interval = linked_bootstrap([1.0, 1.0, 0.0], [[0], [0], [1]], resamples=500, seed=1)
    assert same == pytest.approx(2 / 3) and 0.0 <= interval[0] <= interval[1] <= 1.0
    # every resample keeps a constant: a zero-width interval
    assert linked_bootstrap([0.25] * 6, [[0, 1], [1, 2], [2], [0], [1], [2]], resamples=200)[1] == pytest.approx(
        [0.25, 0.25]
    )
    assert exact_mcnemar(2, 1) == pytest.approx(1.0) and exact_mcnemar(0, 10) == pytest.approx(2 / 2**10)


# ------------------------------------------------------------------------------------------------- committed cards


FAR_CARDS = {
    "far_context_study": "minilm-far-context-study.md",
    "far_context_study_4080_zero_shot": "minilm-far-context-study-4080-zero-shot.md",
    "far_context_study_4080_finetuned": "minilm-far-context-study-4080-finetuned.md",
}


@pytest.mark.parametrize("run", sorted(FAR_CARDS))
def test_far_context_cards_are_recomputed_from_their_results(run, tmp_path, monkeypatch):
    """Every number in a committed far-context card comes from its committed results.json: the per-query outcomes
    are scored again (accuracy, linked-document bootstrap, McNemar, decision) and the card rendered again must be the
    committed card, word for word."""
    cards = Path(__file__).resolve().parents[1] / "model_cards"
    saved = json.loads((cards / run / "results.json").read_text())
    again = far.restate(saved)
    for name, contrast in saved["contrasts"].items():
        far_pairwise = contrast["far/pairwise"]
        assert again["contrasts"][name]["far/pairwise"]["diff"] == pytest.approx(far_pairwise["diff"])
        assert again["contrasts"][name]["far/pairwise"]["ci95"] == pytest.approx(far_pairwise["ci95"])
        assert again["contrasts"][name]["decision"] == contrast["decision"]
    for arm, outcome in saved["outcomes"].items():  # the accuracies by hand
        far_rows = [i for i, q in enumerate(saved["query_list"]) if q["start"] >= far.FAR_START]
        assert again["accuracy"][arm]["far/pairwise"] == pytest.approx(
            sum(outcome["pairwise"][i] for i in far_rows) / len(far_rows)
        )
    committed = (cards / FAR_CARDS[run]).read_text()
    monkeypatch.chdir(tmp_path)  # rendered at the card's own relative path (the card names it), outside the repo
    far.write_card(Path("model_cards") / FAR_CARDS[run], again, again.get("preregistration_commit"))
    assert (tmp_path / "model_cards" / FAR_CARDS[run]).read_text() == committed
    assert "ORACLE" in committed and "| chance |" in committed and "← **this run**" in committed


RESTATED_CARDS = {  # results folder: (study, card); the cards whose run has committed its results.json
    "perplexity": ("perplexity", "minilm-long-context-perplexity-study.md"),
    "perplexity_3seeds": ("perplexity", "minilm-long-context-perplexity-3seeds.md"),
    "embeddings": ("embeddings", "minilm-long-document-embeddings-study.md"),
    "passkey": ("passkey", "minilm-passkey-probe.md"),
}
DECIMAL = re.compile(r"\d[\d,]*\.\d+")


def _assert_close(saved, again, where="results.json"):
    if isinstance(saved, dict):
        assert list(saved) == list(again), where
        for key in saved:
            _assert_close(saved[key], again[key], f"{where}[{key!r}]")
    elif isinstance(saved, list):
        assert len(saved) == len(again), where
        for i, (a, b) in enumerate(zip(saved, again)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(saved, float):
        assert again == pytest.approx(saved, rel=1e-9, abs=1e-12), where
    else:
        assert saved == again, where


@pytest.mark.parametrize("run", sorted(RESTATED_CARDS))
def test_study_cards_are_recomputed_from_their_results(run, tmp_path):
    """Every number in the committed perplexity, embeddings and passkey cards comes from the committed results.json:
    the statistics are recomputed from its per-document / per-query records (restate), they agree with the ones the
    run saved, and the card rendered from them is the committed card word for word, followed at most by a
    hand-written history section that quotes no decimal figure the rendered card does not hold."""
    study, name = RESTATED_CARDS[run]
    cards = ROOT / "model_cards"
    saved = json.loads((cards / run / "results.json").read_text())
    again = restate.restate(study, saved)  # from the records alone: restate drops the saved statistics first
    assert all(key in saved for key in restate.DERIVED[study])
    _assert_close(saved, {key: again[key] for key in saved})
    rendered = restate.render_card(study, again, tmp_path / name, tmp_path / "out")
    committed = (cards / name).read_text()
    assert committed.startswith(rendered)
    history = committed[len(rendered) :]
    assert history == "" or history.startswith("\n## History"), "only a history section may follow the rendering"
    assert not set(DECIMAL.findall(history)) - set(DECIMAL.findall(rendered))
    assert saved["command"] in rendered and f"--out model_cards/{run} " in saved["command"]


# ------------------------------------------------------------------------------------------ far-context fine-tune


def test_far_context_plants_only_far_from_the_heading(tokenizer):
    import argparse
    import random

    texts = [f"The {name} module\n\n" + f"{name} words here, one after another. " * 200 for name in FAR_NAMES[:4]]
    docs = far.build_corpus(texts, tokenizer, 896)
    assert all(len(d["ids"]) == 896 for d in docs)
    args = argparse.Namespace(ft_docs_per_step=3, ft_tokens=896, ft_queries_per_doc=6, ft_plant_from=640)
    rng = random.Random(0)
    for _ in range(5):
        ids, queries, targets, planted = far.training_batch(docs, rng, args)
        assert sum(planted) >= 6
        for query, target, plant in zip(queries, targets, planted):
            b, c = divmod(target, 7)  # 7 chunks of 128 per document
            span = query[-far.SPAN :]
            if plant:
                assert c * far.CHUNK >= 640  # the planted query's own chunk is far from its heading
                copies = [
                    i for o in range(3) if o != b for i in range(896 - far.SPAN + 1) if ids[o][i : i + far.SPAN] == span
                ]
                assert copies and all(i >= 640 for i in copies)  # and so is its copy


def test_far_context_finetune_decision_says_when_the_task_is_too_easy():
    from scripts.studies import far_context_finetune as fft

    helps = {"decision": "HELPS"}
    assert fft.decision(0.5, 0.35, helps) == "HELPS"
    assert fft.decision(0.1, 0.35, helps) == "TASK TOO EASY"
    log = {"loss": [1.0] * 10, "loss_planted": [9.0] * 8 + [1.0, 1.5], "loss_unique": [1.0] * 10}
    assert fft.planted_gap(log) == pytest.approx(0.25)  # the last 20% of the steps: 2 of 10


def test_far_context_finetune_smoke_20_steps(far_encoder, tmp_path):
    """The pre-registered fine-tuned study end to end on CPU: a tiny model, short documents, 20 steps per arm."""
    from scripts.studies import far_context_finetune as fft

    data = tmp_path / "data"
    data.mkdir()
    texts = _far_texts()
    for split, rows in (("test", texts[:3]), ("train", texts[3:])):
        with gzip.open(data / f"docs_{split}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in rows)
    out, card = tmp_path / "out", tmp_path / "card.md"
    argv = ["--model", far_encoder, "--dataset", str(data), "--doc-tokens", "768", "--window", "64", "--max-docs", "7"]
    argv += ["--steps", "20", "--docs-per-step", "2", "--queries-per-doc", "4", "--bootstrap", "50"]
    argv += ["--plant-from", "256", "--min-planted-gap", "100", "--out", str(out), "--model-card", str(card)]
    assert fft.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["outcomes"]) == {"ft-patched", "ft-windowed"}
    assert [len(t["loss"]) for t in report["training"].values()] == [20, 20]
    assert all(len(o["pairwise"]) == report["queries"] for o in report["outcomes"].values())
    assert report["queries_by_bucket"].get("far") and report["contrast"]["far/pairwise"]["queries"]
    assert report["windowed_planted_gap"] == pytest.approx(fft.planted_gap(report["training"]["ft-windowed"]))
    assert report["decision"] == "TASK TOO EASY"  # the gap cannot reach 100 nats: the run says so
    assert "TASK TOO EASY" in card.read_text() and report["command"] in card.read_text()


def test_gpu_check_runs_the_far_context_finetune_as_an_optional_part(tmp_path, monkeypatch, capsys):
    import subprocess

    from scripts import gpu_check

    seen = []

    def fake_run(command, **kwargs):  # the study itself is covered by the smoke test above
        seen.append(command)
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        report = {"contrast": {"far/pairwise": {"diff": 0.1, "ci95": [0.02, 0.2]}}, "decision": "HELPS"}
        (out / "results.json").write_text(json.dumps({**report, "windowed_planted_gap": 0.5}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    assert "far_context_finetune" not in gpu_check.PARTS  # not run by default
    argv = ["--device", "cpu", "--small", "--parts", "far_context_finetune", "--log-dir", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    assert seen[0][2] == "scripts.studies.far_context_finetune" and "--device" in seen[0]
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["part"] == "far_context_finetune" and line["decision"] == "HELPS" and line["far_ci95"] == [0.02, 0.2]
