"""python -m scripts.benchmark --quick runs every section and reports ratios (a smoke run: no timing assertions)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.benchmark import measure, run, sections

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.cpu_only  # the scripts and the README run on CPU here; their --device flags cover GPUs


@pytest.mark.slow
def test_quick_benchmark_writes_tables_ratios_targets_and_plots(tmp_path):
    assert run.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0  # contention: its own test
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    rows = summary["rows"]
    assert {r["section"] for r in rows} == {"kernel", "text", "sweep", "vision", "ops", "masks", "scale"}
    impls = {r["impl"] for r in rows if r["section"] == "text"}
    assert {"hf_sdpa", "hf_eager", "hf_flex_attention", "hfx_longformer", "hf_LongformerModel"} <= impls
    assert {r["impl"] for r in rows if r["section"] == "ops"} >= {"hfx_ops", "sdpa_dense"}
    if sections.natten_module() is not None:  # NATTEN, the optional peer, where installed
        assert {r["mode"] for r in rows if r["impl"] == "natten"} == {"2d k7", "1d k7"}
    else:
        assert any("NATTEN is not installed" in note for note in summary["notes"])
    assert {r["N"] for r in rows if r["section"] == "sweep" and r["impl"] == "hfx_longformer"} == {64, 256}
    assert {r["mode"] for r in rows if r["section"] == "vision"} == {"inference b1", "train b1"}
    for r in rows:
        assert r["time_s"] > 0 and math.isfinite(r["time_s"])
        assert r["first_s"] > 0 and r["compiles"] >= 0
        if r["impl"] != r["baseline"] and r["speedup"] is not None:
            assert r["speedup"] > 0
    assert any(r["mode"] == "train" for r in rows)
    assert summary["threads"] == 1 and "1 torch threads" in summary["machine"]
    goals = {g["target"]: g for g in summary["targets"]}
    assert "Swin-T `swin` vs HF Swin, 224 px batch 1" in goals and "window sweep" in " ".join(goals)
    assert all(
        g["met"] == (g["measured"] <= g["threshold"] if g["at_most"] else g["measured"] >= g["threshold"])
        for g in goals.values()
    )
    assert any(g["at_most"] and "peak memory" in name for name, g in goals.items())  # the memory targets
    scale = [r for r in rows if r["section"] == "scale"]  # per token against the shortest length: 1 there
    assert {(r["mode"], r["N"]) for r in scale} == {("inference", 1024), ("inference", 2048), ("train", 1024)}
    assert all(r["time_per_token_ratio"] == 1 for r in scale if r["N"] == 1024)
    text = (tmp_path / "benchmark.md").read_text()
    assert "speed-up vs baseline" in text and "| target | measured | needed | met |" in text
    assert (tmp_path / "benchmark.png").stat().st_size > 10_000
    assert (tmp_path / "window_sweep.png").stat().st_size > 10_000


def test_cases_are_measured_side_by_side_after_their_first_call():
    """Each round runs every case once, in rotating order; the first call (where a new shape compiles) is timed and
    its FlexAttention compiles counted apart from the median of the rounds."""
    import time

    from hf_flexattn.kernels.flex import compile_events

    calls = []

    def case(name, compiles):
        def fn():
            if compiles and name not in calls:
                time.sleep(0.05)
                compile_events.append({"shape": "test", "dynamic": False})  # as run_flex records a compile
            calls.append(name)

        return fn

    count = len(compile_events)
    try:  # min_seconds=0: exactly `repeats` rounds
        cases = {"a": case("a", True), "b": case("b", False)}
        results = measure.measure_cases(cases, "cpu", repeats=3, min_seconds=0.0)
    finally:
        del compile_events[count:]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # first calls, then rounds in rotating order
    assert results["a"]["compiles"] == 1 and results["b"]["compiles"] == 0
    assert results["a"]["first_s"] >= 0.05 > results["a"]["time_s"]
    assert all(r["peak_mb"] >= 0 and r["rounds"] == 3 for r in results.values())
    # fast cases get more rounds, up to MAX_ROUNDS
    fast = measure.measure_cases({"sleep": lambda: time.sleep(0.02)}, "cpu", repeats=3, min_seconds=0.2)["sleep"]
    assert 5 <= fast["rounds"] <= 10


OUT_OF_MEMORY_RUN = """
import sys, torch
from scripts.benchmark import run

def families_section(bench, *args):
    cases = {
        "hf_LongformerModel": lambda: torch.empty(2**31, dtype=torch.uint8).fill_(1),  # 2 GiB, over the cap
        "hfx_longformer": lambda: torch.ones(1000).sum(),
    }
    results = bench.measure_cases(cases)
    return [dict(section="longformer_ckpt", mode="inference base", impl=i, N=8192, **r) for i, r in results.items()]

run.families_section = families_section
argv = ["--sections", "longformer_ckpt", "--memory-limit-gb", "1.5", "--repeats", "2", "--out", sys.argv[1]]
sys.exit(run.main(argv))
"""


def test_a_case_over_the_memory_limit_is_reported_out_of_memory_and_the_others_go_on(tmp_path):
    """--memory-limit-gb caps the run's data size (in its own process here: the cap would bind pytest's too): a case
    whose allocation fails under it is reported as out of memory, with no time and no ratio, and the other cases
    still run their rounds; any other error stops the run."""
    subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_RUN, str(tmp_path)], check=True, cwd=ROOT, timeout=300)
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    rows = {r["impl"]: r for r in summary["rows"]}
    assert rows["hf_LongformerModel"]["out_of_memory"] and rows["hf_LongformerModel"]["time_s"] is None
    assert rows["hfx_longformer"]["rounds"] >= 2 and rows["hfx_longformer"]["time_s"] > 0
    assert rows["hfx_longformer"]["speedup"] is None and rows["hfx_longformer"]["memory_ratio"] is None
    assert "| hf_LongformerModel | out of memory | — | — | — |" in (tmp_path / "benchmark.md").read_text()
    assert any("capped at 1.5 GiB" in note for note in summary["notes"])

    calls = []

    def fits_once():  # its first call fits, a later one does not (as the allocator reports it)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 390832128 bytes")

    results = measure.measure_cases({"other": lambda: None, "fits_once": fits_once}, "cpu", repeats=3, min_seconds=0)
    assert results["fits_once"] == measure.OUT_OF_MEMORY and results["other"]["rounds"] == 3

    def fails():
        raise RuntimeError("not an allocation")

    with pytest.raises(RuntimeError, match="not an allocation"):
        measure.measure_cases({"fails": fails}, "cpu", repeats=1, min_seconds=0.0)


def test_gpu_check_runs_its_parts_on_cpu_as_a_smoke_run(capsys):
    """The GPU verification script is one command; on CPU with tiny models every part but the suite runs."""
    from scripts import gpu_check

    assert gpu_check.main(["--device", "cpu", "--small", "--parts", "inference,training,swin,syncs"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    parts = {line["part"]: line for line in lines}
    assert set(parts) == {"machine", "inference", "training", "swin", "syncs"}
    assert not any("error" in line for line in lines), [line for line in lines if "error" in line]
    assert parts["syncs"]["host_syncs"] == 0
    assert parts["swin"]["logits_max_abs_diff"] <= 1e-4 and parts["swin"]["bias_grad_rel_diff"] <= 1e-3
    inference = [line for line in lines if line["part"] == "inference"]
    assert {line["dtype"] for line in inference} == {"fp32", "bf16"} and inference[0]["full_max_abs_diff"] <= 1e-4


def test_section_parts_and_kernel_lengths_choose_what_runs(tmp_path, monkeypatch):
    """`--sections modernbert` runs the families section's ModernBERT rows alone (no Longformer-checkpoint rows);
    `--kernel-lengths` sets the kernel section's lengths and its training rows (those up to 8,192)."""
    calls = {}

    def record(name):
        def section(bench, *args):
            calls[name] = args
            return []

        return section

    monkeypatch.setattr(run, "families_section", record("families"))
    monkeypatch.setattr(run, "kernel_section", record("kernel"))
    assert run.main(["--sections", "modernbert", "--text-lengths", "8192", "--out", str(tmp_path / "m")]) == 0
    longformer_lengths, modernbert_lengths, _, _ = calls.pop("families")
    assert (longformer_lengths, modernbert_lengths) == ([], [8192])
    assert run.main(["--sections", "longformer_ckpt", "--family-sizes", "minilm", "--out", str(tmp_path / "l")]) == 0
    longformer_lengths, modernbert_lengths, _, sizes = calls.pop("families")
    assert (longformer_lengths, modernbert_lengths, sizes) == ([4096, 8192, 16384], [], ["minilm"])
    assert run.main(["--sections", "kernel", "--kernel-lengths", "8192,16384", "--out", str(tmp_path / "k")]) == 0
    assert calls.pop("kernel") == ([8192, 16384], [8192]) and not calls
    monkeypatch.setattr(run, "text_section", record("text"))
    argv = ["--sections", "text", "--text-lengths", "16384", "--train-lengths", "16384", "--out", str(tmp_path / "t")]
    assert run.main(argv) == 0
    assert calls.pop("text")[:2] == ([16384], [16384]) and not calls


def test_contention_summary_checks_both_targets_against_the_same_rounds_alone():
    """The contention table: per row and regime the median of the rounds' speed-ups and their range; the speed-up
    target holds on the lowest round; the slowdown (time there / time alone in the same round) of the patched arm
    is held against the replaced arm's own."""
    from scripts.benchmark import contention

    def record(regime, round_, replaced, patched):
        return dict(row="text_4096", size=4096, regime=regime, round=round_, load_before=2.0, threads=2,
                    replaced_s=replaced, patched_s=patched)  # fmt: skip

    records = [
        record("alone", 0, 2.0, 1.0),
        record("alone", 1, 2.0, 0.8),
        record("neighbour", 0, 3.0, 1.8),  # slowdowns 1.5 and 1.8: ratio 1.2 (met)
        record("neighbour", 1, 3.0, 1.6),  # 1.5 and 2.0: ratio 1.33; median slowdowns 1.5 / 1.9
        record("two_workers_1thread", 0, 2.0, 2.5),  # 0.8x: a round below 1.0
        record("two_workers_1thread", 1, 2.0, 1.0),
    ]
    summary = {e["regime"]: e for e in contention.summarize(records)}
    assert summary["alone"]["speedup"] == 2.25 and summary["alone"]["speedup_met"]
    neighbour = summary["neighbour"]
    assert math.isclose(neighbour["slowdown_replaced"], 1.5) and math.isclose(neighbour["slowdown_patched"], 1.9)
    assert math.isclose(neighbour["slowdown_ratio"], 1.9 / 1.5) and not neighbour["slowdown_met"]
    assert neighbour["speedup_met"]  # 1.67x and 1.875x
    one_thread = summary["two_workers_1thread"]
    assert (one_thread["speedup_min"], one_thread["speedup_max"]) == (0.8, 2.0) and not one_thread["speedup_met"]
    assert "slowdown_ratio" not in one_thread  # one thread each: no slowdown target
    goals = {g["target"]: g for g in contention.targets(list(summary.values()))}
    assert not goals["contention text_4096 N=4096 neighbour: slowdown vs the replaced path's"]["met"]
    table = contention.markdown(list(summary.values()), "header")
    assert "| text_4096 | 4,096 | neighbour | 3.000 | 1.700 | 1.77x (1.67–1.88) | 1.50 / 1.90 (1.27) |" in table


def test_contention_table_merges_runs_stopped_early_with_their_commands(tmp_path, capsys):
    """`contention table DIR...`: one summary over the records of several runs (a run stopped before its own table
    included), the header naming each run's command, or saying a run left its records only."""
    from scripts.benchmark import contention

    def record(row, regime, replaced, patched):
        return dict(row=row, size=64, regime=regime, round=0, load_before=3.0, threads=2,
                    replaced_s=replaced, patched_s=patched)  # fmt: skip

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, records in ((first, [record("op_na2d", "alone", 2.0, 1.0), record("op_na2d", "neighbour", 3.0, 2.0)]),
                            (second, [record("swin_t", "alone", 1.0, 2.0)])):  # fmt: skip
        folder.mkdir()
        (folder / "contention_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    note = dict(command="python -m scripts.benchmark --sections contention", machine="x86_64", load_before=3.0)
    (first / "contention_run.json").write_text(json.dumps(note))
    assert contention.table([str(first), str(second), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "contention.md").read_text()
    assert "`python -m scripts.benchmark --sections contention` on x86_64" in table and "records only" in table
    assert "| op_na2d | 64 | neighbour | 3.000 | 2.000 | 1.50x (1.50–1.50) | 1.50 / 2.00 (1.33) |" in table
    assert "| swin_t | 64 | alone | 1.000 | 2.000 | 0.50x (0.50–0.50) | — |" in table and "**no**" in table
    capsys.readouterr()


@pytest.mark.slow
def test_contention_section_runs_fresh_workers_and_reports_them(tmp_path):
    """A smoke run of the section on the NA-2D op at 32×32: every arm in fresh processes (two at once, one thread
    each, in the regime that says so), both regimes in the table and the JSON, with their targets."""
    argv = ["--sections", "contention", "--contention-rows", "op_na2d", "--contention-sizes", "op_na2d=32"]
    argv += ["--contention-regimes", "alone,two_workers_1thread", "--contention-rounds", "1", "--contention-calls", "1"]
    assert run.main([*argv, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    by_regime = {e["regime"]: e for e in summary["contention"]}
    assert set(by_regime) == {"alone", "two_workers_1thread"}
    for entry in by_regime.values():
        assert entry["replaced_s"] > 0 and entry["patched_s"] > 0 and entry["size"] == 32
    assert any(g["target"].startswith("contention op_na2d N=32 alone") for g in summary["targets"])
    assert "| op_na2d | 32 | two_workers_1thread |" in (tmp_path / "contention.md").read_text()
    records = [json.loads(line) for line in (tmp_path / "contention_records.jsonl").read_text().splitlines()]
    assert [r["regime"] for r in records] == ["alone", "two_workers_1thread"]  # kept as measured
    with pytest.raises(SystemExit):
        run.main(["--sections", "contention", "--contention-rows", "nope", "--out", str(tmp_path)])


def test_contention_worker_reports_its_threads_and_calls(tmp_path):
    """One worker in a fresh process: its first call, then the timed calls, with the thread count it was given."""
    command = [sys.executable, "-m", "scripts.benchmark.contention", "worker", "--row", "op_na2d", "--arm", "patched"]
    command += ["--size", "24", "--calls", "2", "--threads", "1", "--library", str(tmp_path)]
    lines = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=600).stdout
    reports = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    assert reports[0]["ready"] and reports[0]["first_s"] > 0
    assert len(reports[1]["times"]) == 2 and reports[1]["threads"] == 1
    # --library goes first on sys.path (compare.py's other checkout); an empty folder leaves this checkout's
    assert reports[1]["library"] == str(ROOT)


@pytest.mark.slow
def test_shape_sweep_reports_each_shape_against_its_baseline_and_the_worst_row(tmp_path):
    """`--sections shapes`: an HF Longformer checkpoint patched vs HF's model and a BERT with `longformer` vs sdpa
    at every (head dim, window, length) asked for; the targets name the worst row of each."""
    argv = ["--quick", "--sections", "shapes", "--shape-head-dims", "32,64", "--shape-windows", "64"]
    argv += ["--shape-lengths", "256", "--shape-layers", "1", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    rows = {(r["section"], r["mode"], r["impl"]): r for r in summary["rows"]}
    for dim in (32, 64):
        ckpt = rows[("shapes_ckpt", f"D{dim} w64", "hfx_longformer")]
        bert = rows[("shapes_bert", f"D{dim} w64", "hfx_longformer")]
        assert ckpt["baseline"] == "hf_LongformerModel" and bert["baseline"] == "hf_sdpa"
        assert ckpt["speedup"] > 0 and bert["speedup"] > 0 and ckpt["N"] == 256
    worst = [g for g in summary["targets"] if g["target"].startswith("shape sweep: worst `longformer` vs sdpa")]
    bert_speedups = [r["speedup"] for key, r in rows.items() if key[0] == "shapes_bert" and key[2] == "hfx_longformer"]
    assert len(worst) == 1 and worst[0]["measured"] == min(bert_speedups)


def test_memory_and_compare_table_the_rows_a_stopped_run_kept(tmp_path, capsys):
    """`--table-only`: memory.py and compare.py table the rows a run kept as it measured them (memory_records.jsonl,
    compare_records.jsonl), with each row's own count of processes or rounds, not the options' defaults."""
    from scripts.benchmark import compare, memory

    row = dict(mode="inference", tokens=16384, load=20.0, library="/x", hf_sdpa_mb=500.0, hfx_longformer_mb=575.0,
               hf_sdpa_all_mb=[500.0, 570.0], hfx_longformer_all_mb=[575.0, 630.0], ratio=1.15)  # fmt: skip
    (tmp_path / "memory_records.jsonl").write_text(json.dumps(row) + "\n")
    assert memory.main(["--table-only", "--out", str(tmp_path)]) == 0
    assert "| inference | 16,384 | 500 | 575 | 1.15 | 2 | 20.0 |" in (tmp_path / "memory.md").read_text()
    libraries = dict(this_library="/this", other_library=str(tmp_path))
    records = [dict(row="op_na2d", size=64, round=i, load_before=3.0 + i, this_s=1.0, other_s=other, **libraries)
               for i, other in enumerate((1.2, 1.0))]  # fmt: skip
    (tmp_path / "compare_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["--library", str(tmp_path), "--table-only", "--rounds", "2", "--calls", "1", "--out", str(tmp_path)]
    assert compare.main(argv) == 0
    table = (tmp_path / "compare.md").read_text()
    assert "| op_na2d | 64 | 1.000 | 1.100 | 1.10x (1.00–1.20) | 3.0–4.0 |" in table and "swin_t |" not in table
    capsys.readouterr()


def test_memory_trace_lists_what_the_plan_cache_keeps():
    """``memory.py --trace`` reports the tensors the plan cache keeps after a call (what the patched arm holds beside
    sdpa's through the feed-forward): each distinct storage once, with its size."""
    import torch

    import hf_flexattn as hfx
    from hf_flexattn import kernels, ops
    from scripts.benchmark import memory

    from helpers import tiny_model_and_input

    ops.PLANS.clear()
    assert memory.kept_plan_tensors() == []
    model, inputs = tiny_model_and_input("bert", 1100)  # past the band plan's crossover: a shape-only plan is kept
    hfx.patch(model, "longformer", window=8, global_tokens=[0]).eval()
    with torch.no_grad():
        model(**inputs)
    kept = memory.kept_plan_tensors()
    plans = [value for key in ops.PLANS.keys() for value in [ops.PLANS.get(key)] if isinstance(value, kernels.TilePlan)]
    assert len(plans) == 1
    key_index = next(t for t in kept if t["name"] == "TilePlan.key_index")
    assert key_index["mb"] == plans[0].key_index.untyped_storage().nbytes() / memory.MB > 0
    assert key_index["shape"] == list(plans[0].key_index.shape) and key_index["dtype"] == "torch.int64"
    sizes = [t["mb"] for t in kept]
    assert sizes == sorted(sizes, reverse=True)
    ops.PLANS.clear()


def test_memory_many_lengths_reports_what_stays_and_what_the_plan_cache_keeps(tmp_path, capsys, monkeypatch):
    """``memory.py --many-lengths``: the worker calls the model at each length in turn and reports the plan cache's
    bytes after the last; the table has one row per arm and process, with the lengths it ran."""

    import hf_flexattn as hfx
    from hf_flexattn import kernels, ops
    from scripts.benchmark import memory

    from helpers import tiny_model_and_input

    ops.PLANS.clear()
    model, _ = tiny_model_and_input("bert", 1200)
    hfx.patch(model, "longformer", window=8, global_tokens=[0]).eval()
    capsys.readouterr()
    assert memory.many_lengths_worker(model, [1100, 1200]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    plans = [ops.PLANS.get(key) for key in ops.PLANS.keys()]
    assert {plan.seq_len for plan in plans if isinstance(plan, kernels.TilePlan)} == {1100, 1200}
    assert result["kept_mb"] == pytest.approx(ops.PLANS.kept_bytes() / memory.MB) and result["kept_mb"] > 0
    assert result["peak_mb"] >= result["growth_mb"]
    ops.PLANS.clear()

    def measured(arm, tokens, mode, library=None, trace=False, lengths=None):
        assert (tokens, mode, lengths) == (300, "inference", [100, 200, 300])
        kept = 0.0 if arm == "hf_sdpa" else 12.5
        return dict(peak_mb=90.0, growth_mb=40.0 + kept, kept_mb=kept, library="/x")

    monkeypatch.setattr(memory, "measure", measured)
    assert memory.main(["--many-lengths", "100:300:100", "--repeats", "1", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "many_lengths.md").read_text()
    assert "once at each of 3 lengths, 100 to 300 tokens" in table
    assert "| sdpa | 40 | 90 | 0.0 |" in table and "| `longformer` | 52 | 90 | 12.5 |" in table
    capsys.readouterr()
