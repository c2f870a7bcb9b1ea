"""Runs one section of scripts/benchmark.py (imported, unmodified) at one chosen length, where the script's own
command line would run more lengths or sections than a shared machine allows; writes benchmark.md/.json to --out.

From the repository root:

    python model_cards/benchmark/perf_20261202/driver.py modernbert 8192 --repeats 3 --out DIR
        # families_section([], [8192], [], [], "cpu", 3): the ModernBERT rows only (no Longformer checkpoint rows)
    python model_cards/benchmark/perf_20261202/driver.py kernel 8192 --train --threads 1 --repeats 2 --out DIR
        # kernel_section([8192], "cpu", 2, [8192]): the sliding-window kernel, forward and training, at 8,192 only
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, "scripts")
import benchmark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("section", choices=["kernel", "modernbert"])
    parser.add_argument("length", type=int)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="kernel: the training rows too")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    before = os.getloadavg()[0]
    if args.section == "kernel":
        rows = benchmark.kernel_section([args.length], "cpu", args.repeats, [args.length] if args.train else [])
    else:
        rows = benchmark.families_section([], [args.length], [], [], "cpu", args.repeats)
    benchmark.add_ratios(rows)
    goals = benchmark.targets(rows)
    after = os.getloadavg()[0]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, fp32"
    )
    command = "python model_cards/benchmark/perf_20261202/driver.py " + " ".join(sys.argv[1:])
    header = (
        f"`{command}` (scripts/benchmark.py's own section, imported unmodified) on {machine} (load average "
        f"{before:.1f} before, {after:.1f} after); median of ≥ {args.repeats} side-by-side rounds after each case's "
        "first call (more rounds for fast cases)."
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": command, "machine": machine, "load_average_before_after": [before, after]}
    summary |= {"targets": goals, "rows": rows}
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2, default=str))
    text = benchmark.markdown(rows, header, goals, [])
    (out / "benchmark.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
