"""scripts/finetune.py and scripts/evaluate.py: smoke runs on tiny local data, resume, metrics by hand, bad input."""

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import evaluate_runs  # noqa: E402
import finetune  # noqa: E402
import recipes  # noqa: E402


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory, minilm_dir):
    """A tiny BERT MLM with MiniLM's tokenizer, saved locally."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


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


def test_mlm_smoke_and_resume(tiny_text_model, tiny_docs, tmp_path):
    out = tmp_path / "run"
    assert finetune.main(_mlm_args(tiny_text_model, tiny_docs, out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 2 and results["variant"] == "longformer"
    assert all(math.isfinite(v) for v in results["metrics"].values())
    assert (out / "learning_curve.png").stat().st_size > 1000 and "model-index" in (out / "model_card.md").read_text()
    # the model was extended past its 128 positions and saved patched
    saved = json.loads((out / "config.json").read_text())
    assert saved["hf_flexattn"]["variant"] == "longformer" and saved["max_position_embeddings"] >= 192
    # resume: continue from checkpoint-2 to step 4
    assert finetune.main(_mlm_args(tiny_text_model, tiny_docs, out, "--resume", "--max-steps", "4")) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["global_step"] == 4
    assert len(resumed["train_loss"]) >= 1


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
        (["--task", "translation"], "--task 'translation' is unknown"),
        (["--dataset", "/no/such/folder"], "no such file or folder"),
        (["--variant", "longformer", "--option", "window=7"], "window=7"),
        (["--variant", "sparse"], "--variant 'sparse' is unknown"),
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
def test_two_process_accelerate_launch(tiny_text_model, tiny_docs, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--cpu",
        str(ROOT / "scripts" / "finetune.py"),
        *_mlm_args(tiny_text_model, tiny_docs, out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["global_step"] == 2
