"""The CPU crossover rules' numbers, measured: one generated table (docs/crossover.md shows it).

    python -m scripts.benchmark.crossover                       # every rule, torch's default threads
    python -m scripts.benchmark.crossover --threads 2 --windows 512 --lengths 1024,1536,2048

Each row times a structured path against what the rule picks below its crossover, side by side (the benchmark's
rotating rounds, :func:`~.measure.measure_cases`), and says whether the rule agrees with the measurement:

* ``sliding_window`` (:func:`hf_flexattn.kernels.band.sliding_window_pays`): the band plan (window ``w`` around each
  query, a global [CLS], H=12) against the dense fused kernel with the same mask materialised, per window, head dim
  and length;
* ``natten_1d`` (:func:`~hf_flexattn.kernels.band.band_pays`): NATTEN 1D's band plan against the dense kernel with its
  mask, per kernel size and length;
* ``halo`` (:func:`~hf_flexattn.kernels.halo.halo_pays`): NATTEN 2D's halo plan (k=7, H=4, D=64) against the dense
  kernel with its mask, per grid side.

``--neighbour`` measures under contention: a busy neighbour process at normal priority (the contention section's
``op_band`` dense arm at 2,048 tokens, torch's default threads, in a loop) runs beside every case.

Writes crossover.json and crossover.md to --out; the header gives the command, machine, threads and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from hf_flexattn.kernels.band import band_pays, natten_1d_plan, sliding_window_pays, sliding_window_plan
from hf_flexattn.kernels.halo import halo_pays, natten_2d_plan
from hf_flexattn.kernels.tiles import tiled_attention

from .measure import MIN_SECONDS_PER_CASE, measure_cases

sdpa = torch.nn.functional.scaled_dot_product_attention


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))


def sliding_window_rows(windows, head_dims, lengths, repeats, min_seconds):
    rows = []
    for window in windows:
        for dim in head_dims:
            for n in lengths:
                if n <= window:
                    continue
                q, k, v = (torch.randn(1, n, 12, dim).transpose(1, 2) for _ in range(3))
                is_global = (torch.arange(n) == 0)[None]
                plan = sliding_window_plan(n, window // 2, is_global=is_global)
                pos = torch.arange(n)
                allowed = ((pos[:, None] - pos[None]).abs() <= window // 2) | is_global[0][:, None] | is_global
                mask = _additive(allowed)[None, None]
                cases = {"structured": lambda: tiled_attention(q, k, v, plan), "dense": lambda: sdpa(q, k, v, mask)}
                with torch.no_grad():
                    result = measure_cases(cases, "cpu", repeats, min_seconds=min_seconds)
                rows.append(
                    _row("sliding_window", f"window {window}, D {dim}", n, result, sliding_window_pays(n, window))
                )
    return rows


def natten_1d_rows(kernels, lengths, repeats, min_seconds):
    from hf_flexattn.masks.natten import natten_window

    rows = []
    for kernel in kernels:
        for n in lengths:
            q, k, v = (torch.randn(1, 4, n, 64) for _ in range(3))
            plan = natten_1d_plan(n, kernel)
            start, size = natten_window(torch.arange(n), kernel, torch.tensor(n))
            pos = torch.arange(n)
            allowed = (pos[None] >= start[:, None]) & (pos[None] < (start + size)[:, None])
            mask = _additive(allowed)[None, None]
            cases = {"structured": lambda: tiled_attention(q, k, v, plan), "dense": lambda: sdpa(q, k, v, mask)}
            with torch.no_grad():
                result = measure_cases(cases, "cpu", repeats, min_seconds=min_seconds)
            rows.append(_row("natten_1d", f"k {kernel}", n, result, band_pays(n, kernel)))
    return rows


def halo_rows(sides, repeats, min_seconds):
    from hf_flexattn.masks.natten import natten_window

    rows = []
    for side in sides:
        n = side * side
        q, k, v = (torch.randn(1, 4, n, 64) for _ in range(3))
        plan = natten_2d_plan((side, side), (7, 7))
        start, size = natten_window(torch.arange(side), 7, torch.tensor(side))
        axis = (torch.arange(side)[None] >= start[:, None]) & (torch.arange(side)[None] < (start + size)[:, None])
        allowed = (axis[:, None, :, None] & axis[None, :, None, :]).reshape(n, n)
        mask = _additive(allowed)[None, None]
        cases = {"structured": lambda: tiled_attention(q, k, v, plan), "dense": lambda: sdpa(q, k, v, mask)}
        with torch.no_grad():
            result = measure_cases(cases, "cpu", repeats, min_seconds=min_seconds)
        rows.append(_row("halo", "k 7, H 4, D 64", n, result, halo_pays((side, side)), f"{side}×{side}"))
    return rows


def _row(rule, shape, n, result, rule_picks_structured, size=None):
    speedup = result["dense"]["time_s"] / result["structured"]["time_s"]
    return dict(
        rule=rule,
        shape=shape,
        N=n,
        size=size or f"{n:,}",
        structured_s=result["structured"]["time_s"],
        dense_s=result["dense"]["time_s"],
        speedup=speedup,
        rule_picks_structured=rule_picks_structured,
        agrees=rule_picks_structured == (speedup >= 1.0),
    )


def markdown(rows, header):
    lines = [
        header,
        "",
        "| rule | shape | tokens | structured s | dense s | structured speed-up | rule picks | agrees |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['shape']} | {r['size']} | {r['structured_s']:.4f} | {r['dense_s']:.4f} | "
            f"{r['speedup']:.2f}x | {'structured' if r['rule_picks_structured'] else 'dense'} | "
            f"{'yes' if r['agrees'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.crossover", description=__doc__)
    parser.add_argument("--rules", default="sliding_window,natten_1d,halo")
    parser.add_argument("--windows", default="128,256,512,1024")
    parser.add_argument("--head-dims", default="32,64")
    parser.add_argument("--lengths", default="512,768,1024,1536,2048,3072")
    parser.add_argument("--natten-kernels", default="7,31,127")
    parser.add_argument("--natten-lengths", default="128,256,384,512,768,1024")
    parser.add_argument("--halo-sides", default="20,24,28,32,40")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round per case (a smoke run)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--neighbour", action="store_true", help="a busy neighbour process beside every case")
    parser.add_argument("--out", default="outputs/benchmark")
    args = parser.parse_args(argv)
    ints = lambda text: [int(x) for x in text.split(",") if x]
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats, min_seconds = (1, 0.0) if args.quick else (args.repeats, MIN_SECONDS_PER_CASE)
    neighbour = None
    if args.neighbour:
        from .contention import _json_line, _start, _stop

        neighbour = _start("op_band", "replaced", 2048, calls=1, loop=True)
        _json_line(neighbour)  # warmed up and busy
    load_before = os.getloadavg()[0]
    rules = args.rules.split(",")
    rows = []
    if "sliding_window" in rules:
        rows += sliding_window_rows(ints(args.windows), ints(args.head_dims), ints(args.lengths), repeats, min_seconds)
    if "natten_1d" in rules:
        rows += natten_1d_rows(ints(args.natten_kernels), ints(args.natten_lengths), repeats, min_seconds)
    if "halo" in rules:
        rows += halo_rows(ints(args.halo_sides), repeats, min_seconds)
    load_after = os.getloadavg()[0]
    if neighbour is not None:
        _stop(neighbour)
    command = "python -m scripts.benchmark.crossover " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    if neighbour is not None:
        machine += ", beside a busy neighbour (dense SDPA, 2,048 tokens, in a loop)"
    header = (
        f"`{command}` on {machine}, torch {torch.__version__}, fp32 (load average {load_before:.1f} before, "
        f"{load_after:.1f} after); median of ≥ {repeats} side-by-side rounds; speed-up = dense time / "
        "structured time; `agrees`: the rule picks the faster path."
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossover.json").write_text(json.dumps(dict(command=command, machine=machine, rows=rows), indent=2))
    (out / "crossover.md").write_text(markdown(rows, header))
    print(markdown(rows, header))
    torch.set_num_threads(threads_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
