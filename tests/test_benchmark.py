"""scripts/benchmark.py --quick runs every section and reports ratios (a smoke run: no timing assertions)."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402


@pytest.mark.slow
def test_quick_benchmark_writes_tables_ratios_and_plot(tmp_path):
    assert benchmark.main(["--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    rows = summary["rows"]
    assert {r["section"] for r in rows} == {"kernel", "text", "vision", "masks"}
    impls = {r["impl"] for r in rows if r["section"] == "text"}
    assert {"hf_sdpa", "hf_eager", "hf_flex_attention", "hfx_longformer", "hf_LongformerModel"} <= impls
    for r in rows:
        assert r["time_s"] > 0 and math.isfinite(r["time_s"])
        if r["impl"] != r["baseline"] and r["speedup"] is not None:
            assert r["speedup"] > 0
    assert any(r["mode"] == "train" for r in rows)
    assert "speed-up vs baseline" in (tmp_path / "benchmark.md").read_text()
    assert (tmp_path / "benchmark.png").stat().st_size > 10_000
