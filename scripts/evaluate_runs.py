"""Evaluate fine-tuned runs side by side: MLM perplexity on held-out long documents, or image accuracy.

    python -m scripts.evaluate_runs --task mlm --runs outputs/mlm-model-longformer outputs/mlm-model-none-512
    python -m scripts.evaluate_runs --task image-classification --runs outputs/image-classification-digits-vit-*

Perplexity is exp(mean NLL over masked tokens) on the first --max-length tokens of each held-out document, with
masked positions drawn from --seed so every model sees the same ones. A model with fewer positions than
--max-length (an unpatched 512-token checkpoint) reads the same masked tokens in consecutive 512-token chunks.
Writes eval.json and eval.md (a markdown table) to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts import recipes
from scripts.recipes.cli import positive_int
from scripts.recipes.data import DATA


def load_run(path: Path, task: str):
    """A saved model, patched again if it was saved patched (config.hf_flexattn), and its results.json."""
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForMaskedLM

    import hf_flexattn

    cls = AutoModelForMaskedLM if task == "mlm" else AutoModelForImageClassification
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"--runs {path}: no config.json (not a saved model)")
    config = AutoConfig.from_pretrained(path)
    model = hf_flexattn.from_pretrained(cls, path) if hasattr(config, "hf_flexattn") else cls.from_pretrained(path)
    results = json.loads((path / "results.json").read_text()) if (path / "results.json").exists() else {}
    return model.eval(), results


def evaluate_mlm(args) -> list[dict]:
    from transformers import AutoTokenizer

    from hf_flexattn.long_context import usable_positions

    docs = recipes.load_documents(args.dataset, "test")[: args.eval_docs]
    rows = []
    for run in args.runs:
        model, results = load_run(Path(run), "mlm")
        tokenizer = AutoTokenizer.from_pretrained(run)
        held_out = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in docs]
        positions = usable_positions(model)
        chunk = positions if positions is not None and positions < args.max_length else None
        metrics = recipes.masked_lm_nll(model, held_out, tokenizer, args.max_length, chunk_length=chunk, seed=args.seed)
        variant = (getattr(model.config, "hf_flexattn", None) or {}).get("variant", "none (HF attention)")
        rows.append(
            {
                "run": run,
                "variant": variant,
                "trained_length": results.get("max_length"),
                "reads": f"{chunk}-token chunks" if chunk else f"{args.max_length} tokens at once",
                **metrics,
            }
        )
    # the floor: a unigram table (train-split counts, no context) on the same masked tokens
    train = [tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in load_train(args.dataset)]
    floor = recipes.unigram_token_nll(train, held_out, tokenizer, args.max_length, seed=args.seed)
    rows.append(
        {
            "run": "unigram table (train-split counts, no context): the floor",
            "variant": "–",
            "trained_length": None,
            "reads": "no context",
            **recipes.summarise_nll(floor, len(held_out)),
        }
    )
    return rows


def load_train(dataset: str) -> list[str]:
    return recipes.load_documents(dataset, "train")


def evaluate_images(args) -> list[dict]:
    rows = []
    for run in args.runs:
        model, results = load_run(Path(run), "image-classification")
        size = results.get("image_size", args.image_size)
        data = recipes.load_image_dataset(args.dataset, size, results.get("seed", args.seed))
        test = data["test"].with_transform(recipes.image_transform(size))
        variant = (getattr(model.config, "hf_flexattn", None) or {}).get("variant", "none (HF attention)")
        rows.append(
            {
                "run": run,
                "variant": variant,
                "model_type": model.config.model_type,
                **recipes.classification_accuracy(model, test),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("mean_nll",)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.evaluate_runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", default="mlm", choices=["mlm", "image-classification"])
    parser.add_argument("--runs", nargs="+", required=True, help="output dirs of scripts/finetune.py (or saved models)")
    parser.add_argument("--dataset", default=None, help="held-out data (default: the shipped demo data / digits)")
    parser.add_argument("--max-length", type=positive_int, default=2048, help="tokens of each document to score (mlm)")
    parser.add_argument("--eval-docs", type=positive_int, default=12)
    parser.add_argument("--image-size", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="masking seed (mlm)")
    parser.add_argument("--out-dir", default="outputs/eval")
    args = parser.parse_args(argv)
    args.dataset = args.dataset or (str(DATA) if args.task == "mlm" else "digits")
    try:
        rows = evaluate_mlm(args) if args.task == "mlm" else evaluate_images(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m scripts.evaluate_runs " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "eval.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    table = markdown(rows)
    (out / "eval.md").write_text(f"`{command}`\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
