"""The perplexity, embeddings and passkey studies again from the records in their results.json, without a model.

Each study saves the per-document or per-query records every number in its card is computed from: the perplexity
study the summed NLL and masked-token count per held-out document and position bucket, the embeddings study the rank of
each query's relevant document under every method, the passkey probe one hit per document, depth, method and score.
``restate(study, saved)`` recomputes every statistic from those records (perplexities, bootstrap intervals, the
t-interval over seeds, recall and MRR with their intervals, paired differences) and reads back the rest (settings,
timings, the machine); ``render_card`` writes the card from it with the study's own renderer. A committed card must be
that rendering (tests/test_studies.py), followed at most by a hand-written history section.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts import recipes

STUDIES = ("perplexity", "embeddings", "passkey")
# what restate computes: the statistics in each study's results.json (the rest of it is records and settings)
DERIVED = {
    "perplexity": (
        "warm_head_perplexity_at_512",
        "perplexity",
        "before_training",
        "after_training",
        "over_seeds",
        "masked_tokens",
        "unigram",
    ),
    "embeddings": ("metrics", "by_depth", "comparisons"),
    "passkey": ("paired_differences",),
}


def records(study: str, saved: dict) -> dict:
    """``saved`` without the statistics restate recomputes: what a card's numbers must be computable from."""
    return {key: value for key, value in saved.items() if key not in DERIVED[study]}


def perplexity(saved: dict) -> dict:
    """Perplexities, bootstrap intervals and the spread over seeds from ``per_document_sums``."""
    import torch

    from scripts.studies import perplexity as study

    sums = saved["per_document_sums"]
    rows = {name: {"sums": torch.tensor(v, dtype=torch.float64)} for name, v in sums["models"].items()}
    seeds = {
        int(seed): {
            arm: {
                "sums": torch.tensor(v, dtype=torch.float64),
                "train_loss": saved["train_loss"][seed][arm],
                "seen": None,  # the check that both arms read the same sequences ran during the study
                "batch_shapes": saved["batch_shapes"][arm],
            }
            for arm, v in arms.items()
        }
        for seed, arms in sums["after"].items()
    }
    again = study.summarise(
        argparse.Namespace(**saved["settings"]), rows, seeds, saved["warm_head"], saved["length"], saved["edges"]
    )
    return {**saved, **{key: again[key] for key in DERIVED["perplexity"]}}


def scores_with_ranks(ranks, relevant, documents: int):
    """A query × document score matrix under which each query's relevant document has rank ``ranks`` (1-based, ties
    against it): the relevant document scores 0, the first ``rank − 1`` other documents 1, the rest −1. The study's
    comparisons depend on the scores only through these ranks."""
    import torch

    queries = len(ranks)
    column = torch.arange(documents).expand(queries, documents)
    # each other document's place among the query's non-relevant documents (0-based)
    place = column - (column > relevant[:, None]).long()
    scores = torch.where(place < (ranks[:, None] - 1), 1.0, -1.0)
    scores[torch.arange(queries), relevant] = 0.0
    return scores


def embeddings(saved: dict) -> dict:
    """Recall@1/@10, MRR@10 and their intervals, MRR@10 by depth and the paired comparisons from ``per_query``."""
    import torch

    from scripts.studies import embeddings as study

    s, records = saved["settings"], saved["per_query"]
    relevant = torch.tensor(records["relevant_document"])
    depth = torch.tensor(records["depth"])
    ranks = {name: torch.tensor(r) for name, r in records["ranks"].items()}
    metrics = {name: recipes.retrieval_metrics(r, relevant, s["bootstrap"], s["seed"]) for name, r in ranks.items()}
    body = study.whole_chunks(s["doc_tokens"], s["chunk_tokens"] - 2)
    buckets = study.depth_buckets(s["min_depth"], s["chunk_tokens"], body)
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
    scores = {name: scores_with_ranks(r, relevant, saved["documents"]) for name, r in ranks.items()}
    comparisons = study.comparisons(scores, relevant, s, s["bootstrap"], s["seed"])
    return {**saved, "metrics": metrics, "by_depth": by_depth, "comparisons": comparisons}


def passkey(saved: dict) -> dict:
    """The paired differences from ``hits`` (the tables, Wilson intervals, binomial tests and per-depth differences
    are computed from ``hits`` by the card's own renderer)."""
    from scripts.studies import passkey as study

    hits = saved["hits"]
    depths = list(hits)
    differences = {
        f"{a} − {b}": {
            score: study.paired_difference([hits[d][a][score] for d in depths], [hits[d][b][score] for d in depths])
            for score in study.SCORES
        }
        for a, b in study.COMPARED
    }
    return {**saved, "paired_differences": differences}


def restate(study: str, saved: dict) -> dict:
    """``saved`` (a results.json, with or without its statistics) with every statistic recomputed from its records."""
    if study not in STUDIES:
        raise ValueError(f"study={study!r}: one of {', '.join(STUDIES)}")
    return {"perplexity": perplexity, "embeddings": embeddings, "passkey": passkey}[study](records(study, saved))


def render_card(study: str, report: dict, card: Path, out: Path) -> str:
    """The card text the study's own renderer writes for ``report`` at ``card`` (``out``: where the passkey
    renderer also writes its report.md)."""
    if study == "perplexity":
        from scripts.studies import perplexity as module

        module.write_card(card, report, Path("figures") / f"{card.stem}.png")
    elif study == "embeddings":
        from scripts.studies import embeddings as module

        module.write_card(card, report)
    elif study == "passkey":
        from scripts.studies import passkey as module

        out.mkdir(parents=True, exist_ok=True)
        module.publish(argparse.Namespace(out=str(out), model_card=str(card)), report)
    else:
        raise ValueError(f"study={study!r}: one of {', '.join(STUDIES)}")
    return card.read_text()
