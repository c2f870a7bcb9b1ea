"""scripts/finetune.py and scripts/evaluate_runs.py: smoke runs on tiny data, resume, metrics by hand, bad input."""

import gzip
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import evaluate_runs, finetune, recipes

from helpers import save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.cpu_only  # the scripts and the README run on CPU here; their --device flags cover GPUs


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory, minilm_dir):
    """A tiny BERT MLM with MiniLM's tokenizer, saved locally."""
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer, BertForMaskedLM, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tiny_docs(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs")
    words = "the quick brown fox jumps over the lazy dog while python reads long documents".split()
    for split, n in (("train", 6), ("test", 3)):
        with gzip.open(path / f"docs_{split}.jsonl.gz", "wt") as f:
            for i in range(n):
                f.write(json.dumps({"text": " ".join(words[(i + j) % len(words)] for j in range(300))}) + "\n")
    return str(path)


def _mlm_args(model, docs, out, *extra):
    return [
        "--model",
        model,
        "--dataset",
        docs,
        "--output-dir",
        str(out),
        "--max-length",
        "192",
        "--max-steps",
        "2",
        "--eval-docs",
        "2",
        "--option",
        "window=32",
        "--option",
        "global_tokens=[0]",
        *extra,
    ]


@pytest.fixture
def trainer_record(monkeypatch):
    """Runs of finetune.main record, per optimizer step, the learning rate the step uses, and the Trainer."""
    import transformers

    record = {"lr": {}, "lrs": {}, "trainers": []}

    class Recorder(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            record["lr"][state.global_step + 1] = optimizer.param_groups[0]["lr"]
            record["lrs"][state.global_step + 1] = [group["lr"] for group in optimizer.param_groups]

    class RecordingTrainer(transformers.Trainer):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), Recorder()], **kwargs)
            record["trainers"].append(self)

    monkeypatch.setattr(transformers, "Trainer", RecordingTrainer)
    return record


def _linear_schedule(learning_rate, max_steps):
    """The learning rate of each step 1..max_steps of a run planned for max_steps from the start."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, max_steps // 10), max_steps)
    rates = []
    for _ in range(max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates, optimizer.param_groups[0]["lr"]


def test_mlm_smoke_and_resume(tiny_text_model, tiny_docs, tmp_path, trainer_record):
    out = tmp_path / "run"
    assert finetune.main(_mlm_args(tiny_text_model, tiny_docs, out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 2 and results["variant"] == "longformer"
    assert all(math.isfinite(v) for v in results["metrics"].values())
    # after − floor and its interval over the held-out documents, on the same masked tokens
    m, d = results["metrics"], results["details"]
    assert m["after_minus_floor"] == pytest.approx(m["perplexity_after"] - m["perplexity_unigram_baseline"])
    low, high = d["after_minus_floor_ci95"]
    assert low <= m["after_minus_floor"] <= high
    assert (out / "learning_curve.png").stat().st_size > 1000 and "model-index" in (out / "model_card.md").read_text()
    # the model was extended past its 128 positions and saved patched
    saved = json.loads((out / "config.json").read_text())
    assert saved["hf_flexattn"]["variant"] == "longformer" and saved["max_position_embeddings"] >= 192
    # resume: continue from checkpoint-2 to step 4
    assert finetune.main(_mlm_args(tiny_text_model, tiny_docs, out, "--resume", "--max-steps", "4")) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["global_step"] == 4
    assert len(resumed["train_loss"]) >= 1
    # the resumed steps run on the schedule of the new length (not at the old schedule's final rate, 0), and it
    # ends at step 4
    planned, final = _linear_schedule(2e-4, 4)
    assert trainer_record["lr"][3] > 0
    assert [trainer_record["lr"][k] for k in (3, 4)] == pytest.approx(planned[2:], rel=1e-6)
    assert trainer_record["trainers"][-1].lr_scheduler.get_last_lr()[0] == final == 0.0


def test_a_new_head_trains_from_the_floor_at_its_own_rate_and_resumes(
    tiny_encoder_only, tiny_docs, tmp_path, trainer_record
):
    out = tmp_path / "run"
    assert finetune.main(_mlm_args(tiny_encoder_only, tiny_docs, out, "--head-learning-rate", "1e-2")) == 0
    results = json.loads((out / "results.json").read_text())
    m, d = results["metrics"], results["details"]
    assert d["head_starts_at_unigram"] and m["perplexity_before"] == m["perplexity_unigram_baseline"]
    encoder, head = _linear_schedule(2e-4, 2)[0], _linear_schedule(1e-2, 2)[0]
    assert trainer_record["lrs"][2] == pytest.approx([encoder[1], head[1]], rel=1e-6)  # two groups, one schedule
    resumed = _mlm_args(
        tiny_encoder_only, tiny_docs, out, "--resume", "--max-steps", "4", "--head-learning-rate", "1e-2"
    )
    assert finetune.main(resumed) == 0
    encoder, head = _linear_schedule(2e-4, 4)[0], _linear_schedule(1e-2, 4)[0]
    for step in (3, 4):  # each group continues on the new length's schedule from its own peak
        assert trainer_record["lrs"][step] == pytest.approx([encoder[step - 1], head[step - 1]], rel=1e-6)


def test_demo_options_merge_with_given_ones():
    def options(*argv):
        return recipes.parse_variant_options(finetune.parse_args(list(argv)).option)

    assert options() == {"window": 256, "global_tokens": [0]}
    assert options("--option", "window=128") == {"window": 128, "global_tokens": [0]}
    assert options("--option", "global_tokens=[0, 9]", "--option", "window=64") == {
        "window": 64,
        "global_tokens": [0, 9],
    }
    assert options("--task", "image-classification", "--option", "dilation=2") == {"kernel_size": 5, "dilation": 2}
    # models other than the demos start from the library's defaults
    assert options("--model", "some/other-model", "--option", "window=128") == {"window": 128}


def test_help_shows_every_default_and_the_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: no hyphenated words broken across lines
    with pytest.raises(SystemExit) as exit_:
        finetune.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    options = [a for a in finetune.build_parser()._actions if a.dest != "help"]
    assert len(options) >= 20
    for action in options:
        block = next(b for b in blocks if b.startswith(action.option_strings[0]))
        assert "default" in block, f"{action.option_strings[0]} shows no default"
    assert "{mlm,image-classification}" in text
    assert "{none,full,longformer,neighborhood,swin,linformer,performer}" in text
    flat = " ".join(text.split())
    assert "default: 20 for mlm, 150 for image-classification" in flat and "window=256 global_tokens=[0]" in flat


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-steps", "0"], "argument --max-steps: 0 must be a positive integer"),
        (["--max-steps", "-5"], "argument --max-steps: -5 must be a positive integer"),
        (["--batch-size", "0"], "argument --batch-size: 0 must be a positive integer"),
        (["--learning-rate", "0"], "argument --learning-rate: 0 must be a positive number"),
        (["--eval-docs", "0"], "argument --eval-docs"),
        (["--attention-dropout", "1.5"], "argument --attention-dropout: 1.5 must be in [0, 1)"),
        (["--bf16", "--fp16"], "argument --fp16: not allowed with argument --bf16"),
    ],
)
def test_bad_numbers_are_refused_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        finetune.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_encoder_only(tmp_path_factory, minilm_dir):
    """A tiny BERT saved without an MLM head (as the MiniLM checkpoint is)."""
    from transformers import AutoTokenizer, BertModel

    return save_tiny_bert(
        tmp_path_factory.mktemp("tiny-encoder"),
        AutoTokenizer.from_pretrained(minilm_dir),
        lambda config: BertModel(config, add_pooling_layer=False),
        num_hidden_layers=1,
        max_position_embeddings=128,
    )


def test_a_missing_mlm_head_is_initialised_from_the_seed(tiny_encoder_only):
    def head(seed, rng):
        torch.manual_seed(rng)  # whatever the global RNG was before
        args = finetune.parse_args(["--model", tiny_encoder_only, "--seed", str(seed)])
        return finetune.load_mlm_model(args)[0].cls.predictions.transform.dense.weight.detach().clone()

    first = head(0, 1)
    assert torch.equal(first, head(0, 2))
    assert not torch.equal(first, head(1, 1))


def test_a_new_head_starts_at_the_unigram_table_so_before_is_the_floor(tiny_encoder_only, minilm_dir):
    """A new head's output is the unigram table whatever the encoder reads: the model's perplexity on the held-out
    masked tokens equals the table's, and gradients reach the head from the first step."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model, new_head = finetune.load_mlm_model(finetune.parse_args(["--model", tiny_encoder_only]))
    assert new_head
    train = [[1000 + (i * 7) % 50 for i in range(300)], [1010 + (i * 3) % 20 for i in range(200)]]
    held_out = [[1000 + (i * 11) % 60 for i in range(100)], [1005 + (i * 5) % 30 for i in range(90)]]
    finetune.start_head_at_unigram(model, recipes.unigram_log_probability(train, len(tokenizer)))
    model_ppl = recipes.masked_lm_nll(model, held_out, tokenizer, 64, seed=3)["perplexity"]
    floor = recipes.summarise_nll(recipes.unigram_token_nll(train, held_out, tokenizer, 64, seed=3))["perplexity"]
    assert model_ppl == pytest.approx(floor, rel=1e-4)  # the bias is float32
    ids = torch.tensor([[tokenizer.cls_token_id, *held_out[0][:20], tokenizer.sep_token_id]])
    labels = torch.full_like(ids, -100)
    labels[0, 5] = held_out[0][4]
    model.train()
    model(input_ids=ids, labels=labels).loss.backward()
    head = model.cls.predictions
    assert head.transform.LayerNorm.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0


def test_precision_flags_reach_the_trainer(tiny_text_model, tiny_docs, tmp_path, trainer_record):
    for flag, name in (("--bf16", "bf16"), ("--fp16", "fp16")):
        training = finetune.training_arguments(finetune.parse_args(["--model", tiny_text_model, flag]))
        assert getattr(training, name) and not getattr(training, {"bf16": "fp16", "fp16": "bf16"}[name])
    plain = finetune.training_arguments(finetune.parse_args(["--model", tiny_text_model]))
    assert not plain.bf16 and not plain.fp16
    out = tmp_path / "bf16"
    assert finetune.main(_mlm_args(tiny_text_model, tiny_docs, out, "--bf16", "--max-steps", "1")) == 0
    assert trainer_record["trainers"][-1].accelerator.mixed_precision == "bf16"
    results = json.loads((out / "results.json").read_text())
    assert results["precision"] == "bf16" and math.isfinite(results["metrics"]["perplexity_after"])


def test_image_classification_smoke(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "vit"
    args = [
        "--task",
        "image-classification",
        "--model",
        "digits-vit",
        "--variant",
        "neighborhood",
        "--option",
        "kernel_size=3",
        "--image-size",
        "32",
        "--pretrain-steps",
        "2",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--output-dir",
        str(out),
    ]
    assert finetune.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["metrics"]["accuracy_after"] <= 1.0
    assert (tmp_path / "outputs" / "pretrained" / "digits-vit-32px-seed0" / "config.json").exists()
    rows_out = tmp_path / "eval"
    assert evaluate_runs.main(["--task", "image-classification", "--runs", str(out), "--out-dir", str(rows_out)]) == 0
    row = json.loads((rows_out / "eval.json").read_text())["rows"][0]
    assert row["variant"] == "neighborhood" and row["accuracy"] == results["metrics"]["accuracy_after"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--task", "translation"], "argument --task: invalid choice: 'translation'"),
        (["--dataset", "/no/such/folder"], "no such file or folder"),
        (["--variant", "longformer", "--option", "window=7"], "window=7"),
        (["--variant", "sparse"], "argument --variant: invalid choice: 'sparse'"),
    ],
)
def test_bad_input_exits_nonzero_and_leaves_no_output(argv, message, tiny_text_model, tiny_docs, tmp_path, capsys):
    out = tmp_path / "bad"
    base = ["--model", tiny_text_model, "--dataset", tiny_docs, "--output-dir", str(out), "--max-length", "64"]
    try:
        code = finetune.main(base + argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_perplexity_equals_a_hand_computation(tiny_text_model):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_text_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_text_model)
    doc = list(range(2000, 2030))
    got = recipes.masked_lm_nll(model, [doc], tokenizer, max_length=32, mask_probability=0.3, seed=5)
    # by hand: the same masked positions, one forward, mean negative log-likelihood of the true tokens
    chosen = torch.rand(30, generator=torch.Generator().manual_seed(5)) < 0.3
    chosen[0] = True
    body = torch.tensor(doc)
    ids = torch.cat(
        [
            torch.tensor([tokenizer.cls_token_id]),
            body.masked_fill(chosen, tokenizer.mask_token_id),
            torch.tensor([tokenizer.sep_token_id]),
        ]
    )
    with torch.no_grad():
        logp = model(input_ids=ids[None]).logits[0, 1:-1].log_softmax(-1)
    nll = -logp[chosen.nonzero()[:, 0], body[chosen]].mean()
    assert got["masked_tokens"] == int(chosen.sum())
    assert abs(got["perplexity"] - math.exp(nll.item())) <= 1e-3 * got["perplexity"]
    # chunked reading scores the same masked tokens
    chunked = recipes.masked_lm_nll(
        model, [doc], tokenizer, max_length=32, chunk_length=12, mask_probability=0.3, seed=5
    )
    assert chunked["masked_tokens"] == got["masked_tokens"]


def test_chunked_perplexity_equals_a_hand_computation(tiny_text_model):
    """The 512-token baseline's path: each chunk is read as [CLS] + its masked tokens + [SEP], separately."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(tiny_text_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_text_model)
    docs = [torch.randint(1000, 20000, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (45, 23)]
    max_length, chunk_length = 40, 12  # 38 scored tokens of the first document: chunks of 10, 10, 10 and 8
    got = recipes.masked_lm_nll(
        model, docs, tokenizer, max_length, chunk_length=chunk_length, mask_probability=0.3, seed=3
    )
    generator = torch.Generator().manual_seed(3)
    nlls, where = [], []
    for index, doc in enumerate(docs):
        body = torch.tensor(doc[: max_length - 2])
        chosen = torch.rand(len(body), generator=generator) < 0.3
        chosen[0] = True
        for start in range(0, len(body), chunk_length - 2):
            piece, hit = body[start : start + chunk_length - 2], chosen[start : start + chunk_length - 2]
            ids = torch.cat(
                [
                    torch.tensor([tokenizer.cls_token_id]),
                    piece.masked_fill(hit, tokenizer.mask_token_id),
                    torch.tensor([tokenizer.sep_token_id]),
                ]
            )
            with torch.no_grad():
                logp = model(input_ids=ids[None]).logits[0, 1:-1].log_softmax(-1)
            nlls.extend((-logp[hit.nonzero()[:, 0], piece[hit]]).tolist())
            where.extend((index, start + int(i)) for i in hit.nonzero()[:, 0])
    assert got["masked_tokens"] == len(nlls) and got["documents"] == 2
    assert got["mean_nll"] == pytest.approx(sum(nlls) / len(nlls), rel=1e-5)
    # per token: the same values, with each token's position in its document
    tokens = recipes.masked_lm_token_nll(model, docs, tokenizer, max_length, chunk_length, 0.3, seed=3)
    assert tokens["nll"].tolist() == pytest.approx(nlls, rel=1e-4, abs=1e-5)
    assert list(zip(tokens["document"].tolist(), tokens["position"].tolist())) == where


def test_accuracy_equals_a_hand_computation():
    from datasets import Dataset

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values):
            logits = torch.stack([pixel_values.mean((1, 2, 3)), -pixel_values.mean((1, 2, 3))], -1)
            return type("Out", (), {"logits": logits})

    pixels = [torch.full((3, 4, 4), v) for v in (1.0, -1.0, 2.0, -3.0, 0.5)]
    labels = [0, 1, 1, 1, 0]  # predictions: 0, 1, 0, 1, 0 → 4 of 5 right
    data = Dataset.from_dict({"pixel_values": [p.tolist() for p in pixels], "label": labels})
    assert recipes.classification_accuracy(Fixed(), data, batch_size=2) == {"accuracy": 0.8, "examples": 5}


@pytest.mark.slow
@pytest.mark.cpu_only
def test_finetune_runs_as_two_processes(tiny_text_model, tiny_docs, tmp_path):
    """The script unchanged under a two-process launch (torchrun: `accelerate launch --cpu` starts one process on a
    machine without MPI); that the processes' gradients are averaged is tests/test_distributed.py's check."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "scripts" / "finetune.py"),
        *_mlm_args(tiny_text_model, tiny_docs, out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and results["global_step"] == 2
