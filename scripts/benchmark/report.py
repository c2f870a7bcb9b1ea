"""Reporting: ratios against each section's baseline, the targets, the markdown table and the plots."""

from __future__ import annotations

import math

BASELINE = {
    "kernel": "sdpa_dense",
    "text": "hf_sdpa",
    "sweep": "hf_LongformerModel",
    "vision": None,
    "ops": "sdpa_dense",
    "masks": "hfx_forward_B2",
    "longformer_ckpt": "hf_LongformerModel",
    "modernbert": "hf_sdpa",
    "scale": None,
    "shapes_ckpt": "hf_LongformerModel",
    "shapes_bert": "hf_sdpa",
}


def add_ratios(rows):
    """speedup = baseline time / this time; memory ratio = this peak / baseline peak (same section, mode, N)."""
    index = {(r["section"], r["mode"], r["N"], r["impl"]): r for r in rows}
    for r in rows:
        base = BASELINE[r["section"]]
        if r["section"] == "vision":
            base = "hf_swin_sdpa" if "swin" in r["impl"] else "hf_vit_sdpa"
        ref = None if base is None else index.get((r["section"], r["mode"], r["N"], base))
        r["baseline"] = base
        measured = ref and ref["time_s"] and r["time_s"]  # neither ran out of memory
        r["speedup"] = ref["time_s"] / r["time_s"] if measured else None
        r["memory_ratio"] = r["peak_mb"] / ref["peak_mb"] if measured and ref["peak_mb"] > 1 else None
    return rows


def _ratio(rows, section, mode, n, impl, baseline):
    """baseline's time / impl's time in one (section, mode, N), or None where either was not run."""
    times = {
        r["impl"]: r["time_s"] for r in rows if (r["section"], r["mode"], r["N"]) == (section, mode, n) and r["time_s"]
    }
    return times[baseline] / times[impl] if impl in times and baseline in times else None


def targets(rows):
    """The targets docs/benchmarks.md cites, each with its measured ratio, its threshold and whether it is met."""
    swin = lambda mode, n: _ratio(rows, "vision", mode, n, "hfx_swin", "hf_swin_sdpa")
    vit = lambda n: _ratio(rows, "vision", "inference b1", n, "hfx_vit_neighborhood_k7", "hf_vit_sdpa")
    op = lambda mode, n, base: _ratio(rows, "ops", mode, n, "hfx_ops", base)
    text = lambda n: _ratio(rows, "text", "inference", n, "hfx_longformer", "hf_sdpa")
    memory = lambda section, mode, n, impl: next(
        (r["memory_ratio"] for r in rows if (r["section"], r["mode"], r["N"], r["impl"]) == (section, mode, n, impl)),
        None,
    )
    scale = lambda mode, n, key: next(
        (r.get(key) for r in rows if (r["section"], r["mode"], r["N"]) == ("scale", mode, n)), None
    )
    train_modes = sorted({r["mode"] for r in rows if r["section"] == "vision" and r["mode"].startswith("train")})
    found = [
        ("Swin-T `swin` vs HF Swin, 224 px batch 1", swin("inference b1", 224), 1.0),
        ("Swin-T `swin` vs HF Swin, 224 px batch 8", swin("inference b8", 224), 1.0),
        ("Swin `swin` vs HF Swin, 384 px (window 12) batch 1", swin("inference b1", 384), 1.0),
        *[(f"Swin-T `swin` training step vs HF Swin, 224 px {m[6:]}", swin(m, 224), 0.9) for m in train_modes],
        ("ViT-S/16 (4 layers) `neighborhood` k=7 vs sdpa, 1,024 px", vit(1024), 1.5),
        ("ViT-S/16 (4 layers) `neighborhood` k=7 vs sdpa, 224 px", vit(224), 0.95),
        ("ViT-S/16 (4 layers) `neighborhood` k=7 vs sdpa, 384 px", vit(384), 0.95),
        ("`ops.neighborhood_attention_2d` 64×64 vs dense SDPA", op("2d k7", 4096, "sdpa_dense"), 2.0),
        ("`ops.neighborhood_attention_2d` 64×64 vs NATTEN (CPU, flex-fna)", op("2d k7", 4096, "natten"), 5.0),
        ("`ops.neighborhood_attention_2d` 128×128 vs dense SDPA", op("2d k7", 16384, "sdpa_dense"), 6.0),
        *[
            (f"MiniLM `longformer` (window 512) vs sdpa, {n:,} tokens", text(n), 0.95)
            for n in sorted({r["N"] for r in rows if r["section"] == "text"})
        ],
        ("MiniLM `longformer` vs sdpa, 8,192 tokens (long-text goal)", text(8192), 2.5),
        ("MiniLM `longformer` vs sdpa, 4,096 tokens (long-text goal)", text(4096), 1.5),
        (
            "sliding-window kernel (band) vs dense SDPA, 8,192 tokens",
            _ratio(rows, "kernel", "forward", 8192, "hfx_band", "sdpa_dense"),
            10.0,
        ),
        (
            "sliding-window kernel (band) training vs dense SDPA, 8,192 tokens",
            _ratio(rows, "kernel", "train", 8192, "hfx_band", "sdpa_dense"),
            10.0,
        ),
        ("`ops.neighborhood_attention_2d` 64×64 vs dense SDPA (kernel goal)", op("2d k7", 4096, "sdpa_dense"), 10.0),
        *[  # the HF Longformer checkpoint patched vs HF's model: its speed-up and its memory (at most 0.3×)
            goal
            for size in ("minilm", "base")
            for mode in ("inference", "train")
            for goal in (
                (
                    f"{size} HF Longformer checkpoint patched vs HF `LongformerModel`, {mode} 8,192 tokens",
                    _ratio(rows, "longformer_ckpt", f"{mode} {size}", 8192, "hfx_longformer", "hf_LongformerModel"),
                    3.0,
                ),
                (
                    f"{size} HF Longformer checkpoint patched: peak memory / HF `LongformerModel`'s, {mode} 8,192 "
                    "tokens",
                    memory("longformer_ckpt", f"{mode} {size}", 8192, "hfx_longformer"),
                    0.3,
                    "≤",
                ),
            )
        ],
        (
            "ModernBERT `full` vs HF sdpa, 8,192 tokens",
            _ratio(rows, "modernbert", "inference", 8192, "hfx_full", "hf_sdpa"),
            2.0,
        ),
        (
            "ModernBERT `full` vs HF flex_attention's steady state, 8,192 tokens",
            _ratio(rows, "modernbert", "inference", 8192, "hfx_full", "hf_flex_attention"),
            1.0,
        ),
        # memory, as the patched / baseline peak (at most the threshold)
        *[
            (
                f"MiniLM `longformer` peak memory / sdpa's, {mode} {n:,} tokens",
                memory("text", mode, n, "hfx_longformer"),
                1.0,
                "≤",
            )
            for mode in ("inference", "train")
            for n in sorted({r["N"] for r in rows if r["section"] == "text" and r["mode"] == mode})
        ],
        *[
            (
                f"sliding-window kernel (band) peak memory / dense SDPA's, {mode} 8,192 tokens",
                memory("kernel", mode, 8192, "hfx_band"),
                2.0,
                "≤",
            )
            for mode in ("forward", "train")
        ],
        (
            "`ops.neighborhood_attention_2d` 64×64 peak memory / dense SDPA's",
            memory("ops", "2d k7", 4096, "hfx_ops"),
            2.0,
            "≤",
        ),
        *[
            (f"`longformer` {what} per token, {mode} {n:,} / 8,192 tokens", scale(mode, n, key), 1.3, "≤")
            for mode, n in (("inference", 32768), ("inference", 65536), ("train", 32768))
            for what, key in (("time", "time_per_token_ratio"), ("memory", "memory_per_token_ratio"))
        ],
    ]
    for section, baseline in (("shapes_ckpt", "HF `LongformerModel`"), ("shapes_bert", "sdpa")):
        # the shape sweep: its worst and best rows, the targets at 4,096 (≥ 2x HF Longformer) and 8,192 (≥ 3x)
        shaped = [r for r in rows if r["section"] == section and r["impl"] == "hfx_longformer" and r["speedup"]]
        for n, threshold in (
            (4096, 2.0 if section == "shapes_ckpt" else 1.0),
            (8192, 3.0 if section == "shapes_ckpt" else 1.0),
        ):
            at_n = [r for r in shaped if r["N"] == n]
            if at_n:
                worst = min(at_n, key=lambda r: r["speedup"])
                found.append((f"shape sweep: worst `longformer` vs {baseline}, {n:,} tokens ({worst['mode']})",
                              worst["speedup"], threshold))  # fmt: skip
        if shaped:
            worst, best = min(shaped, key=lambda r: r["speedup"]), max(shaped, key=lambda r: r["speedup"])
            found.append((f"shape sweep: worst `longformer` vs {baseline}, any length ({worst['mode']}, "
                          f"{worst['N']:,} tokens; best {best['speedup']:.2f}x: {best['mode']}, {best['N']:,})",
                          worst["speedup"], 1.0))  # fmt: skip
    sweep = sorted((r["N"], r["time_s"]) for r in rows if r["section"] == "sweep" and r["impl"] == "hfx_longformer")
    if len(sweep) >= 2:  # time follows the window: the widest window costs clearly more than the narrowest
        found.append(
            ("window sweep: `longformer` time at the widest / narrowest window", sweep[-1][1] / sweep[0][1], 1.5)
        )
    goals = []
    for name, ratio, threshold, *at_most in found:
        if ratio is not None:
            at_most = bool(at_most)
            met = ratio <= threshold if at_most else ratio >= threshold
            goals.append(dict(target=name, measured=ratio, threshold=threshold, at_most=at_most, met=met))
    return goals


def markdown(rows, header, goals=(), notes=()):
    lines = [header, ""]
    if goals:
        lines += ["| target | measured | needed | met |", "|---|---|---|---|"]
        lines += [
            f"| {g['target']} | {g['measured']:.2f}× | {'≤' if g.get('at_most') else '≥'} {g['threshold']}× "
            f"| {'✓' if g['met'] else '✗'} |"
            for g in goals
        ]
        lines.append("")
    lines += [f"Note: {note}" for note in notes] + ([""] if notes else [])
    lines += [
        "| section | mode | N / px / window | impl | time (s) | first call (s) | flex compiles | peak MB "
        "| speed-up vs baseline | memory vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['speedup']:.2f}× vs {r['baseline']}" if r["speedup"] is not None else "—"
        if "time_per_token_ratio" in r:  # the scale rows: per token against the shortest length
            speed = f"time/token {r['time_per_token_ratio']:.2f}× of {min_scale_n(rows, r['mode']):,}'s"
            r_mem = f"memory/token {r['memory_per_token_ratio']:.2f}×"
        mem = f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") is not None else "—"
        if "memory_per_token_ratio" in r:
            mem = r_mem
        first = f"{r['first_s']:.3f}" if r.get("first_s") is not None else "—"
        compiles = r["compiles"] if r["impl"].startswith("hfx") and r.get("compiles") is not None else "—"
        time_s, peak = (
            ("out of memory", "—") if r.get("out_of_memory") else (f"{r['time_s']:.4f}", f"{r['peak_mb']:.0f}")
        )
        lines.append(
            f"| {r['section']} | {r['mode']} | {r['N']} | {r['impl']} | {time_s} | {first} | {compiles} "
            f"| {peak} | {speed} | {mem} |"
        )
    return "\n".join(lines) + "\n"


def min_scale_n(rows, mode):
    return min(r["N"] for r in rows if r["section"] == "scale" and r["mode"] == mode)


def memory_slope(rows, impl="hfx_longformer", mode="inference"):
    points = [
        (r["N"], r["peak_mb"])
        for r in rows
        if r["section"] == "text" and r["impl"] == impl and r["mode"] == mode and (r["peak_mb"] or 0) > 1
    ]
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(m) for _, m in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


FAMILY_SECTIONS = ("longformer_ckpt", "modernbert")


def plot_panels(rows):
    """What benchmark.png shows, among what the run measured: the text section's time and memory and the kernel's
    time against length; the families' time and memory for each of their modes."""
    panels = [
        ("text", "inference", "time_s", "time (s)"),
        ("text", "inference", "peak_mb", "peak memory (MB)"),
        ("kernel", "forward", "time_s", "kernel time (s)"),
    ]
    for section, mode in sorted({(r["section"], r["mode"]) for r in rows if r["section"] in FAMILY_SECTIONS}):
        panels += [(section, mode, "time_s", "time (s)"), (section, mode, "peak_mb", "peak memory (MB)")]
    present = {(r["section"], r["mode"]) for r in rows}
    return [panel for panel in panels if panel[:2] in present]


def plot(rows, path):
    """Time and memory against length, log-log, one line per implementation (out-of-memory cases left out); writes
    nothing where the run has none of :func:`plot_panels`' rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = plot_panels(rows)
    if not panels:
        return
    columns = min(4, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5 * columns, 4.5 * lines), dpi=100, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (section, mode, key, label) in zip(axes.flat, panels):
        for impl in sorted({r["impl"] for r in rows if r["section"] == section}):
            pts = sorted(
                (r["N"], r[key])
                for r in rows
                if r["section"] == section and r["mode"] == mode and r["impl"] == impl and (r[key] or 0) > 0
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


def plot_sweep(rows, path):
    """Time against the window at a fixed length: hf_flexattn's should grow with the window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["section"] == "sweep"]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for impl in sorted({r["impl"] for r in sweep}):
        pts = sorted((r["N"], r["time_s"]) for r in sweep if r["impl"] == impl)
        ax.plot(*zip(*pts), "o-", label=impl)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("attention window (tokens)")
    ax.set_ylabel("forward time (s)")
    ax.set_title(f"MiniLM, {sweep[0]['mode'].split('=')[-1]} tokens: time against the window" if sweep else "")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
