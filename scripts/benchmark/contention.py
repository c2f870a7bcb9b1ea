"""The contention section: hf_flexattn against what it replaces when the CPU is shared, each arm in fresh processes.

A row compares two arms: ``replaced`` (what a user runs without hf_flexattn: HF's model on sdpa, HF's own model,
dense SDPA) and ``patched`` (the same with hf_flexattn). Each arm runs in fresh worker processes
(``python -m scripts.benchmark.contention worker ...``: build the case, one first call, then ``calls`` timed calls,
their median reported) in four regimes:

* ``alone``: one worker, torch's default threads, nothing else started by the benchmark;
* ``neighbour``: one worker beside one busy neighbour process at normal priority that runs the row's *replaced* arm
  in a loop (default threads), started and warmed before the worker's timed calls;
* ``two_workers``: two workers of the arm at once (as two serving processes), default threads each;
* ``two_workers_1thread``: the same with ``torch.set_num_threads(1)`` in each worker.

Two workers start their timed calls together (each waits after its first call until both are ready). A row's time in
a regime is the mean of its workers' medians. Arms are interleaved (replaced, patched, then patched, replaced in the
next round) and the rounds repeated; the table gives the median over rounds of the per-round ratio and its range
(the spread). Targets, per row and regime: speed-up (replaced time / patched time) >= 1.0; and in the two regimes
with default threads that add load (``neighbour``, ``two_workers``), the patched arm's slowdown (time there / time
alone) at most 1.25 times the replaced arm's own.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

REGIMES = ("alone", "neighbour", "two_workers", "two_workers_1thread")
# the contended regimes whose slowdown is held against the replaced arm's (default threads, load added)
SLOWDOWN_REGIMES = ("neighbour", "two_workers")
MIN_SPEEDUP = 1.0
MAX_SLOWDOWN_RATIO = 1.25
# row → (description, size of the full run, size of a --quick run)
ROWS = {
    "text_4096": ("MiniLM `longformer` (window 512, global [CLS]) vs sdpa, 4,096 tokens", 4096, 1024),
    "text_8192": ("MiniLM `longformer` vs sdpa, 8,192 tokens", 8192, 2048),
    "text_16384": ("MiniLM `longformer` vs sdpa, 16,384 tokens", 16384, 2048),
    "longformer_ckpt": ("HF Longformer checkpoint (hidden 256, 4 heads, window 256) patched vs HF", 4096, 1024),
    "vit_na": ("ViT-S/16 (4 layers) `neighborhood` k=7 vs sdpa, px", 1024, 224),
    "swin_t": ("Swin-T `swin` vs HF Swin (sdpa), px", 224, 224),
    "op_band": ("band kernel (window 512, H=12, D=64) vs dense SDPA, tokens", 8192, 1024),
    "op_na2d": ("`ops.neighborhood_attention_2d` k=7 (H=4, D=64) vs dense SDPA, side", 64, 32),
}
DEFAULT_ROWS = tuple(ROWS)


# --------------------------------------------------------------------------------------------- the worker


def build_case(row: str, arm: str, size: int):
    """A no-argument callable running ``row``'s ``arm`` ("replaced" or "patched") at ``size`` (no_grad inside)."""
    import torch

    import hf_flexattn as hfx

    torch.manual_seed(0)
    patched = arm == "patched"
    if row.startswith("text_"):
        from transformers import BertModel

        from .sections import minilm_path

        model = BertModel.from_pretrained(minilm_path(), attn_implementation="sdpa", add_pooling_layer=False)
        if patched:
            hfx.patch(model, "longformer", window=512, global_tokens=[0])
        hfx.extend_position_embeddings(model, max(size, 512))
        model.eval()
        ids = torch.randint(1000, 20000, (1, size))
        return lambda: model(input_ids=ids)
    if row == "longformer_ckpt":
        from transformers import LongformerConfig, LongformerModel

        config = LongformerConfig(
            vocab_size=30000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
            attention_window=256, max_position_embeddings=size + 2,
        )  # fmt: skip
        model = LongformerModel(config, add_pooling_layer=False).eval()
        if patched:
            hfx.patch(model, "longformer")
        ids = torch.randint(1000, 20000, (1, size))
        glob = torch.zeros_like(ids)
        glob[:, 0] = 1
        return lambda: model(input_ids=ids, global_attention_mask=glob)
    if row == "vit_na":
        from transformers import ViTConfig, ViTModel

        config = ViTConfig(
            image_size=size, patch_size=16, hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
            intermediate_size=1536, attn_implementation="sdpa",
        )  # fmt: skip
        model = ViTModel(config, add_pooling_layer=False).eval()
        if patched:
            hfx.patch(model, "neighborhood")
        pixels = torch.randn(1, 3, size, size)
        return lambda: model(pixel_values=pixels)
    if row == "swin_t":
        from transformers import SwinConfig, SwinModel

        config = SwinConfig(image_size=size, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
        model = SwinModel(config, add_pooling_layer=False).eval()
        with torch.no_grad():  # trained checkpoints have non-zero bias tables (HF initialises them to zero)
            for name, p in model.named_parameters():
                if "relative_position_bias_table" in name:
                    p.normal_(0, 0.5)
        if patched:
            model = hfx.patch(copy.deepcopy(model), "swin")
        pixels = torch.randn(1, 3, size, size)
        return lambda: model(pixel_values=pixels)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if row == "op_band":
        from hf_flexattn import kernels
        from hf_flexattn.kernels.band import sliding_window_plan

        q, k, v = (torch.randn(1, 12, size, 64) for _ in range(3))
        if patched:
            plan = sliding_window_plan(size, 256)
            return lambda: kernels.tiled_attention(q, k, v, plan)
        return lambda: sdpa(q, k, v)
    if row == "op_na2d":
        from hf_flexattn import ops

        q, k, v = (torch.randn(1, 4, size, size, 64) for _ in range(3))
        if patched:
            return lambda: ops.neighborhood_attention_2d(q, k, v, 7)
        flat = [x.reshape(1, 4, size * size, 64) for x in (q, k, v)]
        return lambda: sdpa(*flat)
    raise ValueError(f"row={row!r}; allowed: {', '.join(ROWS)}")


def worker(argv=None) -> int:
    """One arm in this fresh process: first call, then (after "go" on stdin, where asked) timed calls or a loop."""
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.contention worker")
    parser.add_argument("--row", required=True, choices=sorted(ROWS))
    parser.add_argument("--arm", required=True, choices=["replaced", "patched"])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--wait", action="store_true", help="after the first call, wait for a line on stdin")
    parser.add_argument("--loop", action="store_true", help="a busy neighbour: call until killed")
    parser.add_argument("--library", default=None, help="import hf_flexattn from this checkout (compare.py)")
    args = parser.parse_args(argv)
    if args.library:
        sys.path.insert(0, args.library)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    fn = build_case(args.row, args.arm, args.size)
    with torch.no_grad():
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
        print(json.dumps({"ready": True, "first_s": first}), flush=True)
        if args.loop:
            while True:
                fn()
        if args.wait:
            sys.stdin.readline()
        times = []
        for _ in range(args.calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    import hf_flexattn

    library = str(Path(hf_flexattn.__file__).parents[1])
    print(
        json.dumps({"times": times, "threads": torch.get_num_threads(), "first_s": first, "library": library}),
        flush=True,
    )
    return 0


# --------------------------------------------------------------------------------------------- the parent

ROOT = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT_S = 1800


def _start(row, arm, size, calls, threads=None, *, wait=False, loop=False, library=None):
    command = [sys.executable, "-m", "scripts.benchmark.contention", "worker", "--row", row, "--arm", arm]
    command += ["--size", str(size), "--calls", str(calls)]
    command += ["--threads", str(threads)] if threads is not None else []
    command += ["--library", library] if library else []
    command += ["--wait"] if wait else []
    command += ["--loop"] if loop else []
    return subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def _json_line(process) -> dict:
    """The worker's next JSON line (its other output is passed over); fails if it exits or times out first."""
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 5.0)
        if not ready:
            continue
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"contention worker {process.args} exited with {process.wait()} before reporting")
        if line.startswith("{"):
            return json.loads(line)
    process.kill()
    raise RuntimeError(f"contention worker {process.args} timed out")


def _stop(process) -> None:
    process.kill()
    process.wait()


def run_regime(row: str, arm: str, size: int, calls: int, regime: str) -> dict:
    """One arm in one regime in fresh processes: the workers' medians and their mean."""
    neighbour = None
    if regime == "neighbour":
        neighbour = _start(row, "replaced", size, calls, loop=True)
        _json_line(neighbour)  # warmed up and busy
    try:
        count = 2 if regime.startswith("two_workers") else 1
        threads = 1 if regime == "two_workers_1thread" else None
        workers = [_start(row, arm, size, calls, threads, wait=True) for _ in range(count)]
        try:
            for process in workers:
                _json_line(process)
            for process in workers:  # all warmed: start the timed calls together
                process.stdin.write("go\n")
                process.stdin.flush()
            results = [_json_line(process) for process in workers]
        finally:  # each worker has reported (or failed): nothing more to wait for (an exit under load takes minutes)
            for process in workers:
                if process.poll() is None:
                    _stop(process)
    finally:
        if neighbour is not None:
            _stop(neighbour)
    medians = [statistics.median(r["times"]) for r in results]
    return {"time_s": statistics.mean(medians), "worker_medians_s": medians, "threads": results[0]["threads"]}


def contention_section(
    rows, sizes: dict, regimes, rounds: int, calls: int, log=print, records_path: Path | None = None
) -> list[dict]:
    """Every row in every regime, arms interleaved, ``rounds`` rounds: one record per (row, regime, round), each
    also appended to ``records_path`` (JSON lines) as it is measured, so that a run cut short keeps what it did."""
    records = []
    for row in rows:
        for round_ in range(rounds):
            arms = ("replaced", "patched") if round_ % 2 == 0 else ("patched", "replaced")
            for regime in regimes:
                load = os.getloadavg()[0]
                times = {arm: run_regime(row, arm, sizes[row], calls, regime) for arm in arms}
                record = dict(row=row, size=sizes[row], regime=regime, round=round_, load_before=load)
                record |= {f"{arm}_s": times[arm]["time_s"] for arm in arms}
                record |= {f"{arm}_worker_medians_s": times[arm]["worker_medians_s"] for arm in arms}
                record["threads"] = times["patched"]["threads"]
                records.append(record)
                if records_path is not None:
                    with open(records_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                log(
                    f"contention {row} N={sizes[row]} {regime} round {round_}: replaced {record['replaced_s']:.3f} s, "
                    f"patched {record['patched_s']:.3f} s (load {load:.1f})"
                )
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Per (row, regime): median replaced/patched times, the speed-up (median of the rounds' ratios, its range), the
    slowdowns against the same round's ``alone`` and the targets."""
    summary = []
    keys = list(dict.fromkeys((r["row"], r["size"], r["regime"]) for r in records))
    alone = {(r["row"], r["round"]): r for r in records if r["regime"] == "alone"}
    for row, size, regime in keys:
        rounds = [r for r in records if (r["row"], r["size"], r["regime"]) == (row, size, regime)]
        ratios = [r["replaced_s"] / r["patched_s"] for r in rounds]
        entry = dict(
            row=row,
            size=size,
            regime=regime,
            rounds=len(rounds),
            replaced_s=statistics.median(r["replaced_s"] for r in rounds),
            patched_s=statistics.median(r["patched_s"] for r in rounds),
            speedup=statistics.median(ratios),
            speedup_min=min(ratios),
            speedup_max=max(ratios),
            load=[min(r["load_before"] for r in rounds), max(r["load_before"] for r in rounds)],
        )
        entry["speedup_met"] = entry["speedup_min"] >= MIN_SPEEDUP
        if regime in SLOWDOWN_REGIMES:
            paired = [(r, alone[(row, r["round"])]) for r in rounds if (row, r["round"]) in alone]
            if paired:
                entry["slowdown_replaced"] = statistics.median(r["replaced_s"] / a["replaced_s"] for r, a in paired)
                entry["slowdown_patched"] = statistics.median(r["patched_s"] / a["patched_s"] for r, a in paired)
                entry["slowdown_ratio"] = entry["slowdown_patched"] / entry["slowdown_replaced"]
                entry["slowdown_met"] = entry["slowdown_ratio"] <= MAX_SLOWDOWN_RATIO
        summary.append(entry)
    return summary


def markdown(summary: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        f"Targets: speed-up >= {MIN_SPEEDUP:g}x in every round (its lowest round is checked); in "
        f"{' and '.join(SLOWDOWN_REGIMES)}, the patched slowdown (time there / time alone, same round) at most "
        f"{MAX_SLOWDOWN_RATIO:g}x the replaced path's.",
        "",
        "| row | N | regime | replaced s | patched s | speed-up (range) | slowdown replaced / patched (ratio) | "
        "load | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        slowdown = "—"
        if "slowdown_ratio" in e:
            slowdown = f"{e['slowdown_replaced']:.2f} / {e['slowdown_patched']:.2f} ({e['slowdown_ratio']:.2f})"
        met = e["speedup_met"] and e.get("slowdown_met", True)
        lines.append(
            f"| {e['row']} | {e['size']:,} | {e['regime']} | {e['replaced_s']:.3f} | {e['patched_s']:.3f} | "
            f"{e['speedup']:.2f}x ({e['speedup_min']:.2f}–{e['speedup_max']:.2f}) | {slowdown} | "
            f"{e['load'][0]:.1f}–{e['load'][1]:.1f} | {'yes' if met else '**no**'} |"
        )
    lines += [
        "",
        "Rows: " + "; ".join(f"`{name}` {ROWS[name][0]}" for name in dict.fromkeys(e["row"] for e in summary)),
    ]
    return "\n".join(lines) + "\n"


def targets(summary: list[dict]) -> list[dict]:
    """The contention targets in the shape of the benchmark's other targets."""
    goals = []
    for e in summary:
        name = f"contention {e['row']} N={e['size']} {e['regime']}"
        goals.append(
            dict(target=f"{name}: speed-up (lowest round)", measured=e["speedup_min"], threshold=MIN_SPEEDUP,
                 at_most=False, met=e["speedup_met"])
        )  # fmt: skip
        if "slowdown_ratio" in e:
            goals.append(
                dict(target=f"{name}: slowdown vs the replaced path's", measured=e["slowdown_ratio"],
                     threshold=MAX_SLOWDOWN_RATIO, at_most=True, met=e["slowdown_met"])
            )  # fmt: skip
    return goals


def table(argv=None) -> int:
    """One table from the records of one or more runs (each DIR's contention_records.jsonl, as measured), for runs
    stopped before they wrote their own table or measured in parts; the header names each run's command."""
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.contention table")
    parser.add_argument("dirs", nargs="+", help="--out folders of contention runs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    records, sources = [], []
    for folder in map(Path, args.dirs):
        lines = (folder / "contention_records.jsonl").read_text().splitlines()
        records += [json.loads(line) for line in lines if line.strip()]
        note_path = folder / "contention_run.json"
        if note_path.exists():
            note = json.loads(note_path.read_text())
            sources.append(f"`{note['command']}` on {note['machine']} (load average {note['load_before']:.1f} before)")
        else:  # a run from before contention_run.json: its records only
            sources.append(f"{folder}: records only")
        sources[-1] += f", {len(lines)} measurement(s)"
    summary = summarize(records)
    command = "python -m scripts.benchmark.contention table " + " ".join(argv if argv is not None else sys.argv[2:])
    header = (
        f"`{command}`: the records of {'; '.join(sources)}; each arm in fresh processes (torch's default threads "
        "unless the regime says one), arms interleaved; load: the 1-minute load average before each measurement."
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "contention.md").write_text(markdown(summary, header))
    (out / "contention.json").write_text(json.dumps({"sources": sources, "summary": summary}, indent=2))
    print(markdown(summary, header))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        sys.exit(table(sys.argv[2:]))
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m scripts.benchmark.contention worker --row ROW --arm ARM --size N | table DIR...")
    sys.exit(worker(sys.argv[2:]))
