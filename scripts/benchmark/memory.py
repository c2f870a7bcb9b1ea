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

Trace (``--trace 8192,16384``): where in a forward the peak comes from. One fresh inference process per arm and
length marks each layer's phases (HF's modules: the self-attention with its q/k/v projections, the attention's output
layer, the feed-forward's intermediate and output layers; in the patched arm also the tiled kernel's chunks, its
global keys' merge and the return to HF's forward) and records, per phase, the resident set at its end and its exact
peak: the kernel's high-water mark (VmHWM), reset at every mark (``/proc/self/clear_refs``), so no sampling misses a
short peak. Writes trace.json and trace.md to --out.

Many lengths (``--many-lengths 2048:10240:256``): what stays when one process sees many input lengths, as a service
does. One fresh process per arm (per repeat, arms alternating) calls the model once at each length in turn; the
resident set's growth after the last call, its peak on the way, and what the plan cache keeps (each length's plan
is shape-only). Writes many_lengths.json and many_lengths.md to --out.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ARMS = ("hf_sdpa", "hfx_longformer")
ROOT = Path(__file__).resolve().parents[2]
MB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _malloc_state() -> tuple[int, int]:
    """glibc's bytes in use (heap blocks and mmapped ones, every arena) and bytes free in its heaps (held, unused)."""
    try:
        info = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc ≥ 2.33
        return 0, 0
    info.restype = _MallInfo2
    state = info()
    return state.uordblks + state.hblkhd, state.fordblks


class PhaseTrace:
    """The resident set at each mark and the exact peak since the previous one (VmHWM, reset at every mark), with
    glibc's view at the mark: bytes the program holds, and bytes its heaps keep free (freed, not returned)."""

    def __init__(self):
        self.rows, self.start, self.start_used = [], None, 0

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024

    def reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the high-water mark to the current resident set

    def begin(self) -> None:
        self.reset()
        self.start, self.start_used = self._status("VmRSS"), _malloc_state()[0]

    def mark(self, label: str) -> None:
        peak, now = self._status("VmHWM"), self._status("VmRSS")
        used, free = _malloc_state()
        row = dict(phase=label, peak_mb=(peak - self.start) / MB, end_mb=(now - self.start) / MB)
        row |= dict(used_mb=(used - self.start_used) / MB, heap_free_mb=free / MB)
        self.rows.append(row)
        self.reset()

    def hook_bert(self, model) -> None:
        """Marks at the end of each layer's phases (HF's BertLayer: attention.self, attention.output, intermediate,
        output) and before the first layer (the embeddings)."""
        layers = model.encoder.layer
        layers[0].register_forward_pre_hook(lambda *_: self.mark("embeddings"))
        for i, layer in enumerate(layers):
            for name in ("attention.self", "attention.output", "intermediate", "output"):
                module = layer.get_submodule(name)
                module.register_forward_hook(lambda *_, label=f"{i}.{name}": self.mark(label))

    def hook_tiles(self, tiles) -> None:
        """Marks inside the tiled kernel (patched arm): after its chunks, after the global keys' merge."""
        merge, forward = tiles._merge_global_keys, tiles._TiledAttention.forward

        def traced_merge(*args, **kwargs):
            self.mark("  tiles: chunks")
            merge(*args, **kwargs)
            self.mark("  tiles: global keys' merge")

        def traced_forward(ctx, query, *args):
            self.mark("  before the kernel: q/k/v, plan, global rows")
            out = forward(ctx, query, *args)
            self.mark("  tiles: rest")
            return out

        tiles._merge_global_keys = traced_merge
        tiles._TiledAttention.forward = staticmethod(traced_forward)


def kept_plan_tensors() -> list[dict] | None:
    """What the plan cache (``ops.PLANS``) holds after a call: every distinct tensor storage reachable from its
    entries (``ops.kept_tensors``: a TilePlan's index tables and its kept masks), largest first, as (name, shape,
    dtype, MB)."""
    from hf_flexattn import ops

    if not hasattr(ops, "kept_tensors"):  # a --library checkout from before it: not known
        return None
    entries = [ops.PLANS.get(key) for key in ops.PLANS.keys()]
    found = [
        dict(name=name, shape=list(t.shape), dtype=str(t.dtype), mb=t.untyped_storage().nbytes() / MB)
        for name, t in ops.kept_tensors(entries)
    ]
    return sorted(found, key=lambda t: -t["mb"])


def worker(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.memory worker")
    parser.add_argument("--arm", choices=ARMS, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--lengths", default="", help="many lengths: one inference call at each, in turn")
    parser.add_argument("--mode", choices=["inference", "train"], required=True)
    parser.add_argument("--library", default=None)
    parser.add_argument("--trace", action="store_true", help="mark each layer's phases (inference)")
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
    if args.lengths:
        return many_lengths_worker(model, [int(n) for n in args.lengths.split(",")])
    ids = torch.randint(1000, 20000, (1, args.tokens))
    trace = PhaseTrace() if args.trace else None
    if trace is not None:
        from hf_flexattn.kernels import tiles

        trace.hook_bert(model)
        if args.arm == "hfx_longformer":
            trace.hook_tiles(tiles)
    with PeakMemory("cpu") as peak:
        if trace is not None:
            trace.begin()
        if args.mode == "train":
            model(input_ids=ids).last_hidden_state.sum().backward()
        else:
            with torch.no_grad():
                model(input_ids=ids)
    if trace is not None:
        trace.mark("after the forward")
    result = {"peak_mb": peak.bytes / MB, "library": str(Path(hfx.__file__).parents[1])}
    if trace is not None:
        result["trace"] = trace.rows
        result["kept_plans"] = kept_plan_tensors()
    print(json.dumps(result), flush=True)
    return 0


def many_lengths_worker(model, lengths: list[int]) -> int:
    """One inference call at each of ``lengths`` in turn (a service that sees many input lengths): the resident set's
    growth over the loaded model after the last call and its peak, and what the plan cache keeps then."""
    import torch

    import hf_flexattn as hfx

    from .measure import PeakMemory, _rss

    with PeakMemory("cpu") as peak:
        start = peak.start
        for tokens in lengths:
            with torch.no_grad():
                model(input_ids=torch.randint(model.config.vocab_size, (1, tokens)))
        growth = _rss() - start
    kept = kept_plan_tensors()
    result = dict(
        peak_mb=max(peak.bytes, growth) / MB,  # the sampler may have missed the last reading
        growth_mb=growth / MB,
        kept_mb=None if kept is None else sum(t["mb"] for t in kept),
        library=str(Path(hfx.__file__).parents[1]),
    )
    print(json.dumps(result), flush=True)
    return 0


def measure(arm, tokens, mode, library=None, trace=False, lengths=None) -> dict:
    command = [sys.executable, "-m", "scripts.benchmark.memory", "worker", "--arm", arm, "--tokens", str(tokens)]
    command += ["--mode", mode] + (["--library", library] if library else []) + (["--trace"] if trace else [])
    command += ["--lengths", ",".join(map(str, lengths))] if lengths else []
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
    parser.add_argument("--trace", default="", help="inference lengths to trace phase by phase (trace.md), then stop")
    parser.add_argument(
        "--many-lengths",
        default="",
        metavar="FIRST:LAST:STEP",
        help="one process per arm calls the model at each length in turn (many_lengths.md), then stop",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.trace:
        return write_trace(args, out, [int(n) for n in args.trace.split(",")], argv)
    if args.many_lengths:
        first, last, step = (int(n) for n in args.many_lengths.split(":"))
        return write_many_lengths(args, out, list(range(first, last + 1, step)), argv)
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


def write_many_lengths(args, out: Path, lengths: list[int], argv) -> int:
    """Per arm (fresh processes, arms alternating over ``--repeats``): what stays after one call at each length."""
    load_before, results = os.getloadavg()[0], []
    for repeat in range(args.repeats):
        for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
            result = measure(arm, max(lengths), "inference", args.library, lengths=lengths)
            results.append(dict(arm=arm, load=os.getloadavg()[0], **result))
            print(json.dumps(results[-1]), flush=True)
    command = "python -m scripts.benchmark.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"`{command}` on {platform.machine()}, {os.cpu_count()} CPU cores, torch's default threads (hf_flexattn from "
        f"{results[0]['library']}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after). One "
        f"process per arm and repeat calls the loaded model once at each of {len(lengths)} lengths, "
        f"{lengths[0]:,} to {lengths[-1]:,} tokens, in turn (inference, batch 1, no padding: every plan is "
        "shape-only); over the loaded model: the resident set's growth after the last call and its peak on the way, "
        "and the tensors the plan cache (`ops.PLANS`) keeps then (scripts/benchmark/memory.py).",
        "",
        "| arm | resident growth after MB | peak growth MB | plan cache keeps MB | load |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        name = "sdpa" if r["arm"] == "hf_sdpa" else "`longformer`"
        kept = "—" if r["kept_mb"] is None else f"{r['kept_mb']:.1f}"  # a --library from before ops.kept_tensors
        lines.append(f"| {name} | {r['growth_mb']:.0f} | {r['peak_mb']:.0f} | {kept} | {r['load']:.1f} |")
    (out / "many_lengths.json").write_text(json.dumps(results, indent=2))
    (out / "many_lengths.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def write_trace(args, out: Path, lengths: list[int], argv) -> int:
    """One traced inference process per arm and length (see the module docstring): trace.json and trace.md."""
    load_before, results = os.getloadavg()[0], []
    for tokens in lengths:
        for arm in ARMS:
            result = measure(arm, tokens, "inference", args.library, trace=True)
            results.append(dict(arm=arm, tokens=tokens, load=os.getloadavg()[0], **result))
            print(json.dumps(results[-1]), flush=True)
    command = "python -m scripts.benchmark.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"`{command}` on {platform.machine()}, {os.cpu_count()} CPU cores, torch's default threads (hf_flexattn from "
        f"{results[0]['library']}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after); one "
        'fresh inference process per arm and length (scripts/benchmark/memory.py, "Trace"). Per phase, over the '
        "loaded model: the resident set's exact peak in the phase (VmHWM, reset at each mark) and at its end; glibc's "
        "bytes in use (every arena, mmapped blocks included) and bytes its heaps keep free (freed, not returned to "
        "the OS) at its end (mallinfo2).",
    ]
    for r in results:
        name = "sdpa" if r["arm"] == "hf_sdpa" else "`longformer`"
        lines += [
            "",
            f"**{name}, {r['tokens']:,} tokens**: peak {r['peak_mb']:.0f} MB (sampled), load {r['load']:.1f}",
            "",
        ]
        lines += ["| phase | peak MB | end MB | in use MB | heap free MB |", "|---|---|---|---|---|"]
        for t in r["trace"]:
            lines.append(
                f"| {t['phase'].strip()} | {t['peak_mb']:.0f} | {t['end_mb']:.0f} | {t['used_mb']:.0f} | "
                f"{t['heap_free_mb']:.0f} |"
            )
        kept = r.get("kept_plans") or []
        if kept:  # in use from the first layer's attention to the end of the forward, and kept for the next call
            lines += [
                "",
                f"Kept after the call by the plan cache (`ops.PLANS`, shared by every layer): "
                f"{sum(t['mb'] for t in kept):.1f} MB in {len(kept)} tensors; the largest:",
                "",
                "| tensor | shape | dtype | MB |",
                "|---|---|---|---|",
            ]
            lines += [f"| {t['name']} | {tuple(t['shape'])} | {t['dtype']} | {t['mb']:.2f} |" for t in kept[:8]]
    (out / "trace.json").write_text(json.dumps(results, indent=2))
    (out / "trace.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit(main())
