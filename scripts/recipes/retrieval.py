"""Retrieval from long documents: queries cut from deep inside them, late chunking, the rank of the relevant document
and its metrics (as sentence-transformers' InformationRetrievalEvaluator computes them) with bootstrap intervals."""

from __future__ import annotations

import random

import torch


def token_spans(text: str, tokenizer, max_tokens: int) -> list[tuple[int, int]]:
    """Character (start, end) of each of the first ``max_tokens`` tokens of ``text`` (no special tokens)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [tuple(span) for span in encoded["offset_mapping"][:max_tokens]]


def text_chunks(text: str, spans: list[tuple[int, int]], tokens_per_chunk: int) -> list[str]:
    """``text`` cut at token boundaries into pieces of ``tokens_per_chunk`` tokens (of the tokens in ``spans``)."""
    return [
        text[spans[i][0] : spans[min(i + tokens_per_chunk, len(spans)) - 1][1]]
        for i in range(0, len(spans), tokens_per_chunk)
    ]


def deep_passage_queries(
    texts: list[str],
    tokenizer,
    *,
    doc_tokens: int,
    query_tokens: int,
    per_doc: int,
    min_depth: int,
    seed: int,
    cut: bool = False,
) -> dict:
    """A retrieval set from long documents: queries are passages from deep inside them, the corpus the documents.

    Each document is its first ``doc_tokens`` tokens. From each, ``per_doc`` non-overlapping passages of
    ``query_tokens`` tokens starting at or after token ``min_depth`` (one random start per equal slice of that
    range, from ``seed``) become queries whose one relevant document is their source. With ``cut`` the passages
    are removed from the document's text (the model must recognise the context, not the passage itself).
    Returns ``corpus`` (id → text), ``queries`` (id → text), ``relevant`` (query id → document id), ``depth``
    (query id → first token), ``spans`` (document id → token character spans of the corpus text).
    """
    rng = random.Random(seed)
    corpus, queries, relevant, depth, spans_by_doc = {}, {}, {}, {}, {}
    for d, text in enumerate(texts):
        spans = token_spans(text, tokenizer, doc_tokens)
        room = len(spans) - query_tokens - min_depth
        if room < per_doc * query_tokens:
            raise ValueError(
                f"document {d}: {len(spans)} tokens; too short for {per_doc} passages of {query_tokens} "
                f"tokens after token {min_depth}"
            )
        slice_ = room // per_doc
        starts = [min_depth + k * slice_ + rng.randrange(0, slice_ - query_tokens + 1) for k in range(per_doc)]
        doc_id = f"d{d}"
        cuts = []
        for k, start in enumerate(starts):
            q = f"{doc_id}q{k}"
            begin, end = spans[start][0], spans[start + query_tokens - 1][1]
            queries[q], relevant[q], depth[q] = text[begin:end], doc_id, start
            cuts.append((begin, end))
        body = text[: spans[-1][1]]
        if cut:
            for begin, end in reversed(cuts):
                body = body[:begin] + "\n" + body[end:]
        corpus[doc_id] = body
        spans_by_doc[doc_id] = token_spans(body, tokenizer, doc_tokens)
    return {"corpus": corpus, "queries": queries, "relevant": relevant, "depth": depth, "spans": spans_by_doc}


def late_chunks(token_embeddings: torch.Tensor, tokens_per_chunk: int) -> torch.Tensor:
    """Late chunking: mean-pool a document's token embeddings (one forward over the whole document, [CLS] and
    [SEP] dropped) per consecutive piece of ``tokens_per_chunk`` tokens, L2-normalised: one vector per chunk, each
    computed with the whole document in view."""
    pieces = token_embeddings[1:-1].float().split(tokens_per_chunk)
    return torch.nn.functional.normalize(torch.stack([p.mean(0) for p in pieces]), dim=-1)


def ranks_of_relevant(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's relevant document among all documents (ties count against it)."""
    return (scores >= scores.gather(1, relevant[:, None])).sum(1)


def retrieval_metrics(
    ranks: torch.Tensor, groups: torch.Tensor | None = None, resamples: int = 0, seed: int = 0
) -> dict:
    """Recall@1, recall@10 and MRR@10 (as sentence-transformers' InformationRetrievalEvaluator computes them with one
    relevant document per query) from the relevant document's rank; with ``resamples``, 95% intervals from a
    bootstrap over ``groups`` (the queries' source documents, resampled with replacement)."""

    def metrics(r):
        r = r.double()
        return torch.stack(
            [(r <= 1).double().mean(-1), (r <= 10).double().mean(-1), torch.where(r <= 10, 1 / r, 0.0).mean(-1)]
        )

    values = metrics(ranks)
    out = {name: float(v) for name, v in zip(("recall@1", "recall@10", "mrr@10"), values)}
    if resamples:
        ids = groups.unique()
        members = [torch.nonzero(groups == g)[:, 0] for g in ids]
        generator = torch.Generator().manual_seed(seed)
        draws = torch.randint(0, len(ids), (resamples, len(ids)), generator=generator)
        samples = torch.stack([metrics(ranks[torch.cat([members[i] for i in draw])]) for draw in draws.tolist()])
        low, high = torch.quantile(samples, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
        for i, name in enumerate(("recall@1", "recall@10", "mrr@10")):
            out[f"{name}_ci95"] = [float(low[i]), float(high[i])]
    return out


def paired_retrieval_difference(
    ranks_a: torch.Tensor, ranks_b: torch.Tensor, groups: torch.Tensor, resamples: int = 2000, seed: int = 0
) -> dict:
    """MRR@10(a) − MRR@10(b) on the same queries, with a 95% bootstrap interval over the queries' documents."""
    rr_a = torch.where(ranks_a <= 10, 1 / ranks_a.double(), 0.0)
    rr_b = torch.where(ranks_b <= 10, 1 / ranks_b.double(), 0.0)
    ids = groups.unique()
    members = [torch.nonzero(groups == g)[:, 0] for g in ids]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(ids), (resamples, len(ids)), generator=generator)
    diffs = torch.stack(
        [(rr_a[idx] - rr_b[idx]).mean() for idx in (torch.cat([members[i] for i in draw]) for draw in draws.tolist())]
    )
    low, high = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return {"mrr@10_diff": float((rr_a - rr_b).mean()), "ci95": [float(low), float(high)]}
