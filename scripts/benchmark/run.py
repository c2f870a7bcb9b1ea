"""Speed and memory of hf_flexattn against what it replaces, side by side in one process, as ratios.

    python -m scripts.benchmark --quick                  # small sizes, one round: a smoke run (the tests run it)
    python -m scripts.benchmark                          # the full run behind docs/benchmarks.md's tables
    python -m scripts.benchmark --threads 1              # fix the thread count (default: torch's); it is recorded
    python -m scripts.benchmark --device cuda            # the same on a GPU

Sections (each row: median time of at least --repeats rounds (more for fast cases: 2 s of each) in which every
compared case runs once, in rotating order, so that a slow spell of a shared machine falls on all alike; the case's
first call before the rounds, which pays a new shape's compile where one runs, with the FlexAttention compiles
hf_flexattn counted in it; and peak memory):
  kernel  sliding-window attention (window 512, B=1, H=12, D=64): the band plan hf_flexattn runs on CPU
          (kernels/band.py, plan built once as a model's layers share it) and compiled flex vs dense SDPA; forward
          and forward+backward (flex's CPU backward is hf_flexattn's block-sparse path)
  text    MiniLM (the real checkpoint, positions extended) with `longformer` (window 512, global [CLS]) vs the same
          model on HF eager / sdpa / flex_attention, and HF LongformerModel of the same size and window; 512 … 16,384
          tokens (eager only to 4,096, HF flex_attention and training steps only to 8,192)
  sweep   the same `longformer` model at 8,192 tokens with window 64 → 2,048 vs HF LongformerModel with each window:
          time should follow the window (window_sweep.png)
  vision  Swin-T-sized `swin` vs HF Swin (sdpa): 224 px batch 1 and 8, 384 px with window 12 (as Swin-B 384), and
          a training step (forward + backward, bias-table gradients included); ViT-S/16-sized (4 layers)
          `neighborhood` k=7 vs the same ViT on sdpa at 224, 384, 448 and 1,024 px
  ops     `ops.neighborhood_attention_2d` (k=7, B=1, H=4, D=64, mask/plan built per call as a user calls it) at 64×64
          and 128×128 and `ops.neighborhood_attention_1d` (k=7) at 4,096 and 16,384 tokens vs dense SDPA and NATTEN's
          CPU path (`natten.na2d/na1d(..., backend="flex-fna")`, uncompiled: NATTEN refuses compiled flex on CPU, so
          it materialises the scores and runs only at 4,096 tokens). NATTEN is optional (`pip install -e ".[bench]"`);
          without it its rows are skipped with a note
  masks   per-batch BlockMask building (padding + globals) against the forward it serves, at N=4096
  families  (not run by default: --sections families, or one of its parts: longformer_ckpt, modernbert)
          HF `LongformerModel` (base- and MiniLM-sized, window 512) vs the same checkpoint patched,
          4,096/8,192/16,384 tokens, inference and a training step (up to 8,192, or at --train-lengths); ModernBERT
          (6 layers, hidden 384, window 128, global every 3rd layer) with `full` vs HF sdpa and HF flex_attention at
          2,048/8,192/16,384 tokens (first call = compile included). A base-sized HF training step at 16,384 did not fit
          in 20 GiB on the 24 GiB VM: --memory-limit-gb reports such a case as out of memory and goes on
  contention  each row against what it replaces in fresh processes, in four regimes (alone, beside a busy
          neighbour running the replaced path, two workers with default threads, two workers with one thread each):
          MiniLM `longformer` 4,096/8,192/16,384 vs sdpa, an HF Longformer checkpoint (hidden 256, 4 heads, window
          256, 4,096 tokens) vs HF, ViT-S NA k=7 1,024 px, Swin-T 224 px, the band kernel at 8,192 and NA-2D 64×64 vs
          dense SDPA (scripts/benchmark/contention.py; --contention-rows/-regimes/-sizes/-rounds/-calls shrink
          it; with --quick only where --sections names it: op_na2d at 32×32, one round). Writes contention.md
  shapes  (not run by default: --sections shapes) every shape, not the benchmarked one: head dim 32/64/128 (hidden
          384/256/768, 12/4/6 heads, 2 layers), window 128/256/512, 2,048 … 16,384 tokens: an HF Longformer
          checkpoint patched vs HF `LongformerModel`, and a BERT with `longformer` vs sdpa; the targets give the
          worst row (and the best) of each
  scale   the `longformer` model alone at 8,192, 32,768 and 65,536 tokens (inference) and a training step at 8,192
          and 32,768, where sdpa is too slow to compare: time and peak memory per token against 8,192's (linear
          growth: a ratio of 1)

benchmark.md opens with the targets docs/benchmarks.md cites, each with its measured ratio and whether it is met. Peak
memory: on CUDA `max_memory_allocated`; on CPU the peak resident-set growth over one call (the first round's, after
the case's first call has loaded its code and compiled what compiles), sampled every millisecond by a thread, after
returning freed memory to the OS (malloc_trim). Resident-set growth counts what the allocator keeps as well as live
tensors, so it varies by some MB from run to run (glibc keeps freed blocks below its mmap threshold). Writes
benchmark.json, benchmark.md, benchmark.png (time and memory against length, log-log: the text, kernel and families
sections where run) and window_sweep.png to --out.
The machine line records the device, the thread count and the load average before and after the run: on a shared
CPU, OpenMP timings with more threads than free cores inflate many times over (measure with --threads 1 there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from . import contention
from .measure import MIN_SECONDS_PER_CASE, Bench
from .report import add_ratios, markdown, memory_slope, plot, plot_sweep, targets
from .sections import (
    TEXT_BASELINES,
    families_section,
    kernel_section,
    mask_section,
    ops_section,
    scale_section,
    shapes_section,
    sweep_section,
    text_section,
    vision_section,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run of every section")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sections", default="kernel,text,sweep,vision,ops,masks,scale,contention")
    parser.add_argument("--shape-head-dims", default="32,64,128", help="shapes section: head dims (32, 64, 128)")
    parser.add_argument("--shape-windows", default="128,256,512", help="shapes section: windows")
    parser.add_argument("--shape-lengths", default=None, help="shapes section: lengths (default 2,048 … 16,384)")
    parser.add_argument("--shape-layers", type=int, default=2, help="shapes section: layers of each model")
    parser.add_argument(
        "--contention-rows",
        default=None,
        help=f"contention section: its rows (default: all; --quick: op_na2d): {','.join(contention.ROWS)}",
    )
    parser.add_argument(
        "--contention-regimes", default=",".join(contention.REGIMES), help="contention section: its regimes"
    )
    parser.add_argument(
        "--contention-rounds", type=int, default=None, help="contention section: rounds (default 3; --quick: 1)"
    )
    parser.add_argument(
        "--contention-calls", type=int, default=None, help="contention section: timed calls per worker (default 3)"
    )
    parser.add_argument(
        "--contention-omp-wait-policy",
        choices=["inherit", "passive", "active"],
        default="inherit",
        help="contention section: OMP_WAIT_POLICY of every worker and neighbour (inherit: this process's environment)",
    )
    parser.add_argument(
        "--contention-sizes",
        default=None,
        help="contention section: row=size pairs replacing the rows' sizes (tokens, px, or the grid side)",
    )
    parser.add_argument(
        "--text-baselines",
        default=",".join(TEXT_BASELINES),
        help="the text section's baselines beside hf_flexattn (sdpa is the one the ratios use)",
    )
    parser.add_argument("--out", default="outputs/benchmark")
    parser.add_argument(
        "--text-lengths",
        default=None,
        help="comma-separated text lengths (full run: 512…16384); with --sections families, the families' lengths too "
        "(training steps at those up to 8,192)",
    )
    parser.add_argument(
        "--family-sizes", default="minilm,base", help="families section: Longformer checkpoint sizes (minilm, base)"
    )
    parser.add_argument(
        "--train-lengths",
        default=None,
        help="comma-separated lengths of the text, kernel and families sections' training steps (full run: 4096,8192; "
        "families: its lengths up to 8,192)",
    )
    parser.add_argument(
        "--kernel-lengths",
        default=None,
        help="comma-separated lengths of the kernel section (training rows at those up to 8,192)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="CPU: cap the process's data size (RLIMIT_DATA) so that a case too large for the machine fails its "
        "allocation and is reported as 'out of memory' while the others go on (without it, Linux's OOM killer may end "
        "the whole run)",
    )
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype of models and inputs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda, but CUDA is not available")
    notes = []
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_limit_gb is not None:
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
        notes.append(
            f"the run's data size was capped at {args.memory_limit_gb:g} GiB (--memory-limit-gb); a case marked "
            "'out of memory' failed to allocate under that cap"
        )
    if args.quick:
        kernel_n, text_n, train_n, mask_n, repeats = [1024, 2048], [512, 1024], [512], 1024, args.repeats or 1
        sweep_n, windows = 1024, [64, 256]
        swin_cases, vit_sizes, swin_train_batch = [(224, 7, 1)], [224], 1
        sides_2d, lengths_1d = [32], [1024]
        scale_n, scale_train_n = [1024, 2048], [1024]
    else:
        kernel_n, text_n, train_n, mask_n, repeats = (
            [2048, 4096, 8192, 16384],
            [512, 1024, 2048, 4096, 8192, 16384],
            [4096, 8192],
            4096,
            args.repeats or 3,
        )
        sweep_n, windows = 8192, [64, 128, 256, 512, 1024, 2048]
        swin_cases, vit_sizes, swin_train_batch = [(224, 7, 1), (224, 7, 8), (384, 12, 1)], [224, 384, 448, 1024], 8
        sides_2d, lengths_1d = [64, 128], [4096, 16384]
        scale_n, scale_train_n = [8192, 32768, 65536], [8192, 32768]
    if args.text_lengths:
        text_n = [int(n) for n in args.text_lengths.split(",")]
    if args.train_lengths:
        train_n = [int(n) for n in args.train_lengths.split(",")]
    kernel_train_n = train_n
    if args.kernel_lengths:
        kernel_n = [int(n) for n in args.kernel_lengths.split(",")]
        kernel_train_n = [n for n in kernel_n if n <= 8192]
    # a smoke run (--quick): exactly the rounds asked for
    bench = Bench(args.device, DTYPES[args.dtype], repeats, min_seconds=0.0 if args.quick else MIN_SECONDS_PER_CASE)
    sections = args.sections.split(",")
    if args.quick and args.sections == parser.get_default("sections"):
        # a smoke run of the other sections; the contention section's own smoke test names it
        # (--sections contention): its fresh processes take tens of seconds each on a loaded machine
        sections.remove("contention")
    rows = []
    load_before = os.getloadavg()
    started = time.perf_counter()
    if "kernel" in sections:
        rows += kernel_section(bench, kernel_n, kernel_train_n)
    if "text" in sections:
        rows += text_section(bench, text_n, train_n, args.text_baselines.split(","))
    if "sweep" in sections:
        rows += sweep_section(bench, sweep_n, windows)
    if "vision" in sections:
        rows += vision_section(bench, swin_cases, vit_sizes, swin_train_batch)
    if "ops" in sections:
        rows += ops_section(bench, sides_2d, lengths_1d, notes)
    if "masks" in sections:
        rows += mask_section(bench, mask_n)
    # not in the default sections (long): --sections families, or one of its two parts
    longformer_ckpt = "families" in sections or "longformer_ckpt" in sections
    modernbert = "families" in sections or "modernbert" in sections
    if longformer_ckpt or modernbert:
        lengths = text_n if args.text_lengths else ([1024] if args.quick else None)
        if args.train_lengths:
            family_train_n = train_n
        else:  # a training step at each length up to 8,192
            family_train_n = [n for n in (lengths or [4096, 8192]) if n <= 8192]
        rows += families_section(
            bench,
            (lengths or [4096, 8192, 16384]) if longformer_ckpt else [],
            (lengths or [2048, 8192, 16384]) if modernbert else [],
            family_train_n,
            ["minilm"] if args.quick else args.family_sizes.split(","),
        )
    if "scale" in sections:
        rows += scale_section(bench, scale_n, scale_train_n)
    if "shapes" in sections:  # not in the default sections (long)
        ints = lambda text: [int(x) for x in text.split(",") if x]
        rows += shapes_section(
            bench,
            ints(args.shape_head_dims),
            ints(args.shape_windows),
            ints(args.shape_lengths or ("512,1024" if args.quick else "2048,4096,8192,16384")),
            args.shape_layers,
        )
    contention_summary, wait_policy = [], None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if "contention" in sections:
        if args.device != "cpu":
            notes.append("contention: CPU only (it measures a shared CPU); skipped")
        else:
            names = (args.contention_rows or ("op_na2d" if args.quick else ",".join(contention.ROWS))).split(",")
            unknown = [name for name in names if name not in contention.ROWS]
            if unknown:
                parser.error(f"argument --contention-rows: {unknown}; allowed: {', '.join(contention.ROWS)}")
            regimes = args.contention_regimes.split(",")
            if any(regime not in contention.REGIMES for regime in regimes):
                parser.error(
                    f"argument --contention-regimes: {regimes}; allowed: {', '.join(contention.REGIMES)} "
                    "(`alone` is needed for the slowdowns)"
                )
            sizes = {name: contention.ROWS[name][2 if args.quick else 1] for name in names}
            for pair in filter(None, (args.contention_sizes or "").split(",")):
                name, size = pair.split("=")
                sizes[name] = int(size)
            # the run's command and machine beside its records, so that a run stopped early can still be tabled
            # (python -m scripts.benchmark.contention table DIR...)
            if args.contention_omp_wait_policy != "inherit":  # read by OpenMP when a worker imports torch
                os.environ["OMP_WAIT_POLICY"] = args.contention_omp_wait_policy.upper()
            wait_policy = os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default: threads spin, then sleep)")
            run_note = dict(
                command="python -m scripts.benchmark " + " ".join(argv if argv is not None else sys.argv[1:]),
                machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                f"OMP_WAIT_POLICY {wait_policy}",
                load_before=os.getloadavg()[0],
            )
            (Path(args.out) / "contention_run.json").write_text(json.dumps(run_note))
            records = contention.contention_section(
                names,
                sizes,
                regimes,
                args.contention_rounds or (1 if args.quick else 3),
                args.contention_calls or (1 if args.quick else 3),
                records_path=Path(args.out) / "contention_records.jsonl",
            )
            contention_summary = contention.summarize(records)
    add_ratios(rows)
    goals = targets(rows) + contention.targets(contention_summary)
    load_after = os.getloadavg()
    command = "python -m scripts.benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    threads = torch.get_num_threads()
    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    ) + f", {threads} torch threads, torch {torch.__version__}, {args.dtype}"
    load = f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    slope = memory_slope(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": command,
        "machine": machine,
        "threads": threads,
        "load_average_before_after": [load_before[0], load_after[0]],
        "wall_time_s": time.perf_counter() - started,
        "memory_slope_loglog_hfx_longformer": slope,
        "targets": goals,
        "notes": notes,
        "rows": rows,
        "contention": contention_summary,
    }
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    header = (
        f"`{command}` on {machine} ({load}); median of ≥ {repeats} side-by-side rounds after each case's first "
        "call (more rounds for fast cases)."
        + (f" Peak memory of the patched long-text model grows as N^{slope:.2f}." if slope else "")
    )
    (out / "benchmark.md").write_text(markdown(rows, header, goals, notes))
    plot(rows, out / "benchmark.png")
    if any(r["section"] == "sweep" for r in rows):
        plot_sweep(rows, out / "window_sweep.png")
    print(markdown(rows, header, goals, notes))
    if contention_summary:
        contention_header = (
            f"`{command}` on {machine}, OMP_WAIT_POLICY {wait_policy} ({load}); each arm in fresh processes "
            "(torch's default threads unless the "
            "regime says one), arms interleaved; load: the 1-minute load average before each measurement."
        )
        (out / "contention.md").write_text(contention.markdown(contention_summary, contention_header))
        print(contention.markdown(contention_summary, contention_header))
    torch.set_num_threads(threads_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
