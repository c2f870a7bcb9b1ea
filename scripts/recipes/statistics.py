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
