"""Evaluation: masked-LM perplexity on the same masked tokens for every model (and the unigram table's, the floor),
and classification accuracy."""

from __future__ import annotations

import math

import torch

from .models import mlm_head


def _logits_at(model, input_ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Logits at positions ``where`` of one sequence; the vocabulary projection runs at those positions only."""
    head = mlm_head(model)
    if head is None:
        return model(input_ids=input_ids[None]).logits[0, where]
    hidden = model.base_model(input_ids=input_ids[None]).last_hidden_state[0, where]
    return head(hidden)


def mask_document(ids: list[int], tokenizer, max_length: int, generator: torch.Generator, mask_probability: float):
    """(body, masked body, chosen) for the first ``max_length - 2`` tokens of a document: each token is replaced by
    [MASK] with ``mask_probability`` (drawn from ``generator``), the first always, so no document goes unscored."""
    body = torch.tensor(ids[: max_length - 2])
    chosen = torch.rand(len(body), generator=generator) < mask_probability
    chosen[0] = True
    return body, body.masked_fill(chosen, tokenizer.mask_token_id), chosen


@torch.no_grad()
def masked_lm_token_nll(
    model,
    documents: list[list[int]],
    tokenizer,
    max_length: int,
    chunk_length: int | None = None,
    mask_probability: float = 0.15,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The negative log-likelihood of every masked token, with its document and its position in the document.

    Tokens are masked in the first ``max_length - 2`` tokens of each document (positions drawn from ``seed``, so
    every model scores the same ones) and read as one [CLS] … [SEP] sequence, or, with ``chunk_length``, in
    consecutive [CLS] … [SEP] chunks of that length (how a 512-token model reads a long document). Returns tensors
    ``document``, ``position`` (0 = the document's first token) and ``nll``, one entry per masked token.
    """
    if chunk_length is not None and chunk_length < 3:
        raise ValueError(f"chunk_length={chunk_length}: a chunk needs room for [CLS], [SEP] and one token")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    cls, sep = torch.tensor([tokenizer.cls_token_id]), torch.tensor([tokenizer.sep_token_id])
    documents_, positions, nlls = [], [], []
    from tqdm.auto import tqdm

    for index, ids in enumerate(tqdm(documents, desc="masked-LM NLL", leave=False, disable=len(documents) < 4)):
        body, inputs, chosen = mask_document(ids, tokenizer, max_length, generator, mask_probability)
        step = len(body) if chunk_length is None else chunk_length - 2
        for start in range(0, len(body), max(step, 1)):
            end = min(start + step, len(body))
            where = chosen[start:end].nonzero()[:, 0]
            if len(where) == 0:
                continue
            seq = torch.cat([cls, inputs[start:end], sep]).to(device)
            logits = _logits_at(model, seq, (where + 1).to(device)).float()
            targets = body[start:end][where].to(device)
            nlls.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none").cpu())
            positions.append(where + start)
            documents_.append(torch.full((len(where),), index))
    return {"document": torch.cat(documents_), "position": torch.cat(positions), "nll": torch.cat(nlls).double()}


def unigram_log_probability(train_documents: list[list[int]], vocabulary_size: int) -> torch.Tensor:
    """The unigram table: log-probability of every token id from its count in ``train_documents``, add-one
    smoothed over the vocabulary (float64, ``vocabulary_size`` entries)."""
    counts = torch.ones(vocabulary_size, dtype=torch.float64)
    for ids in train_documents:
        counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocabulary_size)[:vocabulary_size]
    return counts.log() - counts.sum().log()


def unigram_token_nll(
    train_documents: list[list[int]],
    documents: list[list[int]],
    tokenizer,
    max_length: int,
    mask_probability: float = 0.15,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The baseline every masked LM must beat: a unigram table (token frequencies of ``train_documents``, add-one
    smoothed over the vocabulary) scoring the SAME masked tokens as ``masked_lm_token_nll`` with the same
    ``max_length``, ``mask_probability`` and ``seed``. It ignores all context. Same return format."""
    log_probability = unigram_log_probability(train_documents, len(tokenizer))
    generator = torch.Generator().manual_seed(seed)
    documents_, positions, nlls = [], [], []
    for index, ids in enumerate(documents):
        body, _, chosen = mask_document(ids, tokenizer, max_length, generator, mask_probability)
        where = chosen.nonzero()[:, 0]
        nlls.append(-log_probability[body[where]])
        positions.append(where)
        documents_.append(torch.full((len(where),), index))
    return {"document": torch.cat(documents_), "position": torch.cat(positions), "nll": torch.cat(nlls)}


def summarise_nll(tokens: dict[str, torch.Tensor], documents: int | None = None) -> dict:
    """Perplexity = exp(mean NLL) over the given masked tokens."""
    count = len(tokens["nll"])
    mean = float(tokens["nll"].sum()) / max(count, 1)
    documents = len(tokens["document"].unique()) if documents is None else documents
    return {"perplexity": math.exp(mean), "mean_nll": mean, "masked_tokens": count, "documents": documents}


def masked_lm_nll(
    model,
    documents: list[list[int]],
    tokenizer,
    max_length: int,
    chunk_length: int | None = None,
    mask_probability: float = 0.15,
    seed: int = 0,
) -> dict:
    """Perplexity = exp(mean NLL over masked tokens) on the first ``max_length`` tokens of each document.

    The masked positions come from a fixed seed, so every model sees the same ones. With ``chunk_length`` the
    model reads the (identically masked) tokens in consecutive [CLS] … [SEP] chunks of that length (how a
    512-token model reads a long document). See ``masked_lm_token_nll`` for the per-token values.
    """
    tokens = masked_lm_token_nll(model, documents, tokenizer, max_length, chunk_length, mask_probability, seed)
    return summarise_nll(tokens, len(documents))


@torch.no_grad()
def classification_accuracy(model, dataset, batch_size: int = 64) -> dict:
    """Top-1 accuracy of an image or text classifier on a dataset with ``pixel_values``/``input_ids`` and ``label``."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        pixels = torch.stack([torch.as_tensor(p) for p in batch["pixel_values"]]).to(device)
        predictions = model(pixel_values=pixels).logits.argmax(-1).cpu()
        correct += int((predictions == torch.tensor(batch["label"])).sum())
    return {"accuracy": correct / len(dataset), "examples": len(dataset)}
