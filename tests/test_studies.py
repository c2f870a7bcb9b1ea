"""scripts/study_perplexity.py and scripts/study_embeddings.py: their building blocks against hand computations and
sentence-transformers' own evaluator, and a tiny smoke run of each script path."""

import gzip
import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from helpers import generator as device_generator
from helpers import save_tiny_bert, tol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import study_embeddings  # noqa: E402
import study_perplexity  # noqa: E402

import recipes  # noqa: E402


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
    assert (out / "warm_head" / "config.json").exists() and (out / "perplexity_by_position.png").exists()
    text = card.read_text()
    assert "study_perplexity.py" in text and "**Machine**" in text and "beyond it" in text
    assert (card.parent / "figures" / "ppl.png").exists() and "figures/ppl.png" in text
    card.unlink()  # --rewrite-card renders the same card again from results.json, without running anything
    assert study_perplexity.main(["--out", str(out), "--model-card", str(card), "--rewrite-card"]) == 0
    assert card.read_text() == text
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
    assert report["documents"] == 4 and report["queries"] == 8 and report["finetune_documents"] == 4
    assert list(report["metrics"]) == [
        "truncate-16",
        "truncate-32",
        "chunks-32-mean",
        "chunks-32-best",
        "longformer-128",
        "late-chunking-32",
        "longformer-128 fine-tuned",
        "late-chunking-32 fine-tuned",
    ]
    assert report["tokens_read_by_patched_model"]["max"] > 64  # past the checkpoint's positions
    assert len(report["finetune"]["train_loss"]) == 2
    assert report["evaluator_check"]["agrees"]
    assert [c["b"] for c in report["comparisons"][:5]] == [
        "truncate-32",
        "chunks-32-mean",
        "chunks-32-best",
        "longformer-128",
        "late-chunking-32",
    ]
    head = report["comparisons"][5]
    assert head["question"] == "the best long-context method vs the best standard one"
    mrr = {name: m["mrr@10"] for name, m in report["metrics"].items()}
    assert mrr[head["a"]] == max(v for n, v in mrr.items() if n.startswith(("longformer", "late-chunking")))
    assert mrr[head["b"]] == max(v for n, v in mrr.items() if n.startswith(("truncate", "chunks")))
    text = card.read_text()
    assert "study_embeddings.py" in text and "wins**" in text and "**Machine**" in text and "a vs b" in text
    card.unlink()
    assert study_embeddings.main(["--out", str(out), "--model-card", str(card), "--rewrite-card"]) == 0
    assert card.read_text() == text
    # --cut-passages without the fine-tune
    argv[argv.index("--ft-steps") + 1] = "0"
    assert study_embeddings.main([*argv, "--cut-passages", "--out", str(tmp_path / "cut")]) == 0
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert cut["settings"]["cut_passages"] and len(cut["metrics"]) == 6 and len(cut["comparisons"]) == 4


@pytest.mark.parametrize(
    "script,argv,message",
    [
        (study_perplexity, ["--steps", "0"], "argument --steps: 0 must be a positive integer"),
        (study_perplexity, ["--dataset", "/no/such"], "--dataset /no/such: no such file or folder"),
        (study_perplexity, ["--warm-head", "/no/such"], "--warm-head /no/such: no saved model"),
        (study_embeddings, ["--doc-tokens", "512"], "--doc-tokens 512 must exceed --chunk-tokens 512"),
        (study_embeddings, ["--ft-steps", "-1"], "argument --ft-steps: -1 must be 0 or more"),
        (study_embeddings, ["--short-tokens", "600"], "--short-tokens 600 must not exceed --chunk-tokens 512"),
    ],
)
def test_study_bad_input_is_refused_naming_the_argument(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        script.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- far-context study


def test_far_context_statistics_and_decision_rule_by_hand():
    import study_far_context as far

    a = [True, True, True, False, True, False]
    b = [False, False, True, False, True, True]
    out = far.paired_difference(a, b, groups=[0, 0, 1, 1, 2, 2], resamples=500, seed=0)
    assert out["diff"] == pytest.approx((4 - 3) / 6) and (out["only_a"], out["only_b"]) == (2, 1)
    assert out["mcnemar_p"] == pytest.approx(1.0)  # 2 vs 1 discordant: two-sided exact p = 2 · P(X ≤ 1 | n=3) = 1
    assert out["ci95"][0] <= out["diff"] <= out["ci95"][1]
    helps = {"queries": 9, "ci95": [0.01, 0.2]}
    assert far.decide(helps, {"queries": 3, "diff": -0.01}) == "HELPS"
    assert far.decide(helps, {"queries": 3, "diff": -0.05}) == "FAR GAIN BUT NEAR DAMAGE"
    assert far.decide({"queries": 9, "ci95": [-0.2, -0.01]}, {"queries": 3, "diff": 0.0}) == "HURTS"
    assert far.decide({"queries": 9, "ci95": [-0.1, 0.1]}, {"queries": 3, "diff": 0.0}) == "NOT SEPARATED"


def test_far_context_windows_cover_every_chunk_and_queries_share_spans(tokenizer):
    import study_far_context as far

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
    import study_far_context as far

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

    import study_far_context as far

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

    import study_far_context as far
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
    import study_far_context as far

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
