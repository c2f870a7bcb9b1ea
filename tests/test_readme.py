"""The README's quick start runs as written (on the offline MiniLM checkpoint instead of the hub name)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(minilm_dir, capsys):
    text = README.read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S).group(1)
    assert '"bert-base-uncased"' in block
    code = block.replace('"bert-base-uncased"', repr(minilm_dir))
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["logits"].shape[1] == 4096
    printed = capsys.readouterr().out
    assert "FlexBertSelfAttention(" in printed and "variant=longformer, window=256, global_tokens=[0]" in printed
