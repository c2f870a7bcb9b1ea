"""The README's code runs as written (the quick start on the offline MiniLM checkpoint instead of the hub name)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.cpu_only  # the scripts and the README run on CPU here; their --device flags cover GPUs


def _block(heading):
    return re.search(rf"## {heading}\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)


def test_quick_start_runs(minilm_dir, capsys):
    block = _block("Quick start")
    assert '"bert-base-uncased"' in block
    namespace = {}
    exec(compile(block.replace('"bert-base-uncased"', repr(minilm_dir)), str(README), "exec"), namespace)
    assert namespace["logits"].shape[1] == 4096
    printed = capsys.readouterr().out
    assert "FlexBertSelfAttention(" in printed and "variant=longformer, window=256, global_tokens=[0]" in printed


def test_ops_example_runs(capsys):
    namespace = {}
    exec(compile(_block("Using the ops directly"), str(README), "exec"), namespace)
    assert namespace["q"].grad is not None and namespace["q"].grad.abs().sum() > 0
    assert "torch.Size([1, 4, 1024, 64]) torch.Size([1, 4, 32, 32, 64])" in capsys.readouterr().out


def test_every_picture_the_readme_shows_exists():
    for path in re.findall(r"\]\((model_cards/figures/[^)]+\.png)\)", README.read_text()):
        assert (README.parent / path).stat().st_size > 5000, path
