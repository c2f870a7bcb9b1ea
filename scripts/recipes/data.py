"""Text and image data for the scripts: documents from local files or the hub, cut into [CLS] … [SEP] sequences;
scikit-learn's digits or an image folder, as ``datasets`` objects."""

from __future__ import annotations

import os
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1] / "data"  # the shipped long-document corpus (Python docs, PSF licence)


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
