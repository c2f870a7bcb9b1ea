"""Paired comparisons of two models' perplexities on the same masked tokens: per-document sums by position bucket and
a bootstrap over documents."""

from __future__ import annotations

import torch


def bucket_sums(tokens: dict[str, torch.Tensor], documents: int, edges: list[int]) -> torch.Tensor:
    """(buckets, documents, 2): per position bucket (``edges`` split positions: [0, e0), [e0, e1), …, [e_last, ∞)) and
    per document, the summed NLL and the number of masked tokens."""
    bucket = torch.bucketize(tokens["position"], torch.tensor(edges), right=True)
    out = torch.zeros(len(edges) + 1, documents, 2, dtype=torch.float64)
    out[..., 0].index_put_((bucket, tokens["document"]), tokens["nll"].double(), accumulate=True)
    out[..., 1].index_put_((bucket, tokens["document"]), torch.ones(len(bucket), dtype=torch.float64), accumulate=True)
    return out


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, resamples: int = 2000, seed: int = 0) -> dict:
    """Perplexities of two models on the same masked tokens, from per-document (sum NLL, count) pairs ``a`` and
    ``b`` (documents, 2), and a bootstrap over documents (resampled with replacement, the same draw for both) of
    the difference ppl(b) − ppl(a) and the ratio ppl(a) / ppl(b): 2.5 and 97.5 percentiles."""

    def ppl(sums):
        return torch.exp(sums[..., 0].sum(-1) / sums[..., 1].sum(-1).clamp(min=1))

    scored = (a[:, 1] > 0) | (b[:, 1] > 0)  # documents without tokens here are no sampling unit of this comparison
    a, b = a[scored], b[scored]
    generator = torch.Generator().manual_seed(seed)
    draw = torch.randint(0, a.shape[0], (resamples, a.shape[0]), generator=generator)
    pa, pb = ppl(a[draw]), ppl(b[draw])
    diff, ratio = pb - pa, pa / pb
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    return {
        "ppl_a": float(ppl(a)),
        "ppl_b": float(ppl(b)),
        "masked_tokens": int(a[:, 1].sum()),
        "diff_b_minus_a": float(ppl(b) - ppl(a)),
        "diff_ci95": torch.quantile(diff, q).tolist(),
        "ratio_a_over_b": float(ppl(a) / ppl(b)),
        "ratio_ci95": torch.quantile(ratio, q).tolist(),
    }


def linked_bootstrap(
    values: list[float], linked: list[list[int]], resamples: int = 2000, seed: int = 0
) -> tuple[float, list[float]]:
    """(mean, 95% interval) of per-query ``values`` (e.g. arm a's hit − arm b's), from a bootstrap that resamples
    DOCUMENTS and keeps every query with all the documents it is linked to.

    ``linked[i]`` are the documents query i depends on: its own and every document holding its duplicate. Each
    resample draws the documents with replacement; a query's weight is the product of the draw counts of its linked
    documents (Owen's pigeonhole bootstrap for crossed data, here over one set of units): a document left out takes
    every query that touches it along, both directions of a mirrored duplicate pair leave and come back together,
    and a document drawn twice counts its links twice. The point estimate is the plain mean. Connected components of
    the link graph would be the other clustering, but on a corpus whose boilerplate links most documents into one
    component they leave a handful of units, too few to resample."""
    import torch

    if not values:
        return float("nan"), [float("nan"), float("nan")]
    documents = sorted({d for row in linked for d in row})
    column = {d: i for i, d in enumerate(documents)}
    width = max(len(set(row)) for row in linked)
    # member columns per query, padded with a column of ones (a query's own count enters once per distinct document)
    members = torch.full((len(linked), width), len(documents))
    for i, row in enumerate(linked):
        unique = sorted({column[d] for d in row})
        members[i, : len(unique)] = torch.tensor(unique)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(documents), (resamples, len(documents)), generator=generator)
    counts = torch.zeros(resamples, len(documents) + 1, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones(draws.shape, dtype=torch.float64))
    counts[:, -1] = 1.0
    weights = counts[:, members].prod(-1)  # (resamples, queries)
    v = torch.tensor(values, dtype=torch.float64)
    means = (weights * v).sum(-1) / weights.sum(-1)
    means = means[weights.sum(-1) > 0]  # a resample that keeps no query says nothing
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(v.mean()), [low, high]


def exact_mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (binomial, p = 1/2)."""
    import math

    n = only_a + only_b
    if not n:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def binomial_tail(successes: int, trials: int, probability: float) -> float:
    """One-sided exact P(X >= successes) for X ~ Binomial(trials, probability): how surprising a hit count is
    under chance."""
    import math

    return sum(
        math.comb(trials, k) * probability**k * (1 - probability) ** (trials - k) for k in range(successes, trials + 1)
    )
