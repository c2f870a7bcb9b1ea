"""Peak memory of one call, each in a fresh process: MiniLM `longformer` (window 512, global [CLS]) against sdpa.

    python -m scripts.benchmark.memory          # inference 8,192/16,384/32,768, training 4,096/8,192
    python -m scripts.benchmark.memory --inference 8192 --train "" --repeats 1

Method: every (arm, mode, length, repeat) runs in a fresh process that loads the model and its input, collects
garbage and returns freed memory to the OS (malloc_trim), then runs one call (inference under no_grad, or a
training step: forward, backward, eval mode) while a thread samples the resident set every millisecond
(:class:`~.measure.PeakMemory`); the figure is the peak resident-set growth over the loaded model. Arms alternate,
and the minimum over ``--repeats`` fresh processes is kept (the allocator's retained blocks vary by some MB from run
to run). ``--library DIR`` imports hf_flexattn from another checkout (a before/after comparison). Writes memory.json
and memory.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ARMS = ("hf_sdpa", "hfx_longformer")
ROOT = Path(__file__).resolve().parents[2]


def worker(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.memory worker")
    parser.add_argument("--arm", choices=ARMS, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--mode", choices=["inference", "train"], required=True)
    parser.add_argument("--library", default=None)
    args = parser.parse_args(argv)
    if args.library:
        sys.path.insert(0, args.library)
    import torch
    from transformers import BertModel

    import hf_flexattn as hfx

    from .measure import PeakMemory
    from .sections import minilm_path

    model = BertModel.from_pretrained(minilm_path(), attn_implementation="sdpa", add_pooling_layer=False)
    if args.arm == "hfx_longformer":
        hfx.patch(model, "longformer", window=512, global_tokens=[0])
    hfx.extend_position_embeddings(model, max(args.tokens, 512))
    model.eval()
    ids = torch.randint(1000, 20000, (1, args.tokens))
    with PeakMemory("cpu") as peak:
        if args.mode == "train":
            model(input_ids=ids).last_hidden_state.sum().backward()
        else:
            with torch.no_grad():
                model(input_ids=ids)
    print(json.dumps({"peak_mb": peak.bytes / 2**20, "library": str(Path(hfx.__file__).parents[1])}), flush=True)
    return 0


def measure(arm, tokens, mode, library=None) -> dict:
    command = [sys.executable, "-m", "scripts.benchmark.memory", "worker", "--arm", arm, "--tokens", str(tokens)]
    command += ["--mode", mode] + (["--library", library] if library else [])
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=3600).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.memory", description=__doc__)
    parser.add_argument("--inference", default="8192,16384,32768", help="inference lengths")
    parser.add_argument("--train", default="4096,8192", help="training-step lengths")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--library", default=None, help="import hf_flexattn from this checkout")
    parser.add_argument("--out", default="outputs/benchmark")
    parser.add_argument("--table-only", action="store_true", help="table --out's memory_records.jsonl (a run stopped)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [("inference", int(n)) for n in filter(None, args.inference.split(","))]
    cases += [("train", int(n)) for n in filter(None, args.train.split(","))]
    load_before = os.getloadavg()[0]
    rows = []
    if args.table_only:  # the rows a stopped run measured, as it printed and kept them
        lines = (out / "memory_records.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        cases = []
    for mode, tokens in cases:
        peaks = {arm: [] for arm in ARMS}
        for repeat in range(args.repeats):
            for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
                result = measure(arm, tokens, mode, args.library)
                peaks[arm].append(result["peak_mb"])
        row = dict(mode=mode, tokens=tokens, load=os.getloadavg()[0], library=result["library"])
        row |= {f"{arm}_mb": min(peaks[arm]) for arm in ARMS} | {f"{arm}_all_mb": peaks[arm] for arm in ARMS}
        row["ratio"] = row["hfx_longformer_mb"] / row["hf_sdpa_mb"]
        rows.append(row)
        with open(out / "memory_records.jsonl", "a") as f:  # kept as measured, should the run be stopped
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    command = "python -m scripts.benchmark.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch's default threads"
    lines = [
        f"`{command}` on {machine} (hf_flexattn from {rows[0]['library'] if rows else '—'}; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after; per row: the load when it ended); peak "
        "resident-set growth of one call over the loaded model, fresh process per call, the min over a row's "
        "processes per arm (scripts/benchmark/memory.py)"
        + ("; tabled from the rows a stopped run kept (memory_records.jsonl)." if args.table_only else "."),
        "",
        "| mode | tokens | sdpa MB | `longformer` MB | ratio (target ≤ 1.0) | processes per arm | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['tokens']:,} | {r['hf_sdpa_mb']:.0f} | {r['hfx_longformer_mb']:.0f} | "
            f"{r['ratio']:.2f} | {len(r['hf_sdpa_all_mb'])} | {r['load']:.1f} |"
        )
    (out / "memory.json").write_text(json.dumps(rows, indent=2))
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit(main())
