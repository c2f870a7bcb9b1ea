"""Verify hf_flexattn on the first GPU it meets: one command, one JSON line per part.

    python scripts/gpu_check.py                 # on a CUDA machine: all parts, about 5-8 minutes on one H100
    python scripts/gpu_check.py --parts suite   # only the test suite on the GPU
    python scripts/gpu_check.py --device cpu --small --parts inference,training,swin,syncs   # a smoke run (CI)

Parts:
  suite      the test suite on the device (HF_FLEXATTN_TEST_DEVICE), every exactness and gradient test
  inference  BERT-base-sized `full` and `longformer` (window 512) at 4,096 tokens in fp32/bf16/fp16:
             time vs HF sdpa, compiles, max difference of `full` from HF sdpa
  training   20 steps at random lengths 300-4,096 (padded batches of 2) in bf16, `longformer`: compiles per step,
             step time, peak memory; with attention_dropout='off' (flex) and 'standard' (block-sparse path)
  swin       Swin-T-sized `swin` forward + backward vs HF Swin: output and bias-table gradient differences, time
  syncs      host syncs made by hf_flexattn's code in a steady-state forward (expect 0); on CPU the forward runs
             CUDA's policy (uncompiled flex standing in for the compiled kernel): CPU's own paths read tensors
             freely, where that costs nothing
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import hf_flexattn as hfx
from hf_flexattn import kernels
from hf_flexattn.kernels import flex

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("suite", "inference", "training", "swin", "syncs")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def emit(part: str, **fields) -> None:
    print(json.dumps({"part": part, **fields}, default=str), flush=True)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 3) -> float:
    fn()  # warm-up (compiles)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def bert_config(small: bool, positions: int):
    from transformers import BertConfig

    if small:
        return BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=positions,
        )
    return BertConfig(max_position_embeddings=positions)  # bert-base: 768 hidden, 12 layers, 12 heads of 64


def part_suite(args) -> None:
    env = {**os.environ, "HF_FLEXATTN_TEST_DEVICE": args.device}
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", str(ROOT / "tests")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.suite_timeout)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    emit(
        "suite",
        returncode=proc.returncode,
        summary=summary,
        failed=failed[:20],
        seconds=round(time.perf_counter() - start, 1),
    )


def part_inference(args) -> None:
    from transformers import BertModel

    n = 512 if args.small else 4096
    torch.manual_seed(0)
    config = bert_config(args.small, n)
    config._attn_implementation = "sdpa"
    reference = BertModel(config, add_pooling_layer=False)
    ids = torch.randint(1000 if not args.small else 5, 20000 if not args.small else 900, (1, n), device=args.device)
    for name, dtype in DTYPES.items():
        if args.device == "cpu" and dtype == torch.float16:
            continue
        base = copy.deepcopy(reference).to(args.device, dtype).eval()
        full = hfx.patch(copy.deepcopy(base), "full")
        local = hfx.patch(copy.deepcopy(base), "longformer", window=512 if not args.small else 64, global_tokens=[0])
        compiles = len(flex.compile_events)
        with torch.no_grad():
            t_sdpa, t_full, t_local = (timed(lambda m=m: m(input_ids=ids), args.device) for m in (base, full, local))
            diff = full(input_ids=ids).last_hidden_state.float() - base(input_ids=ids).last_hidden_state.float()
        emit(
            "inference",
            dtype=name,
            tokens=n,
            hf_sdpa_s=round(t_sdpa, 4),
            full_s=round(t_full, 4),
            longformer_s=round(t_local, 4),
            longformer_speedup=round(t_sdpa / t_local, 2),
            full_max_abs_diff=float(diff.abs().max()),
            compiles=len(flex.compile_events) - compiles,
        )


def part_training(args) -> None:
    from transformers import BertForMaskedLM

    max_n = 512 if args.small else 4096
    steps = 4 if args.small else 20
    dtype = torch.bfloat16
    for dropout in ("off", "standard"):
        torch.manual_seed(0)
        model = BertForMaskedLM(bert_config(args.small, max_n)).to(args.device, dtype).train()
        hfx.patch(model, "longformer", window=64 if args.small else 512, global_tokens=[0], attention_dropout=dropout)
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(300 if not args.small else 100, max_n + 1, (steps,), generator=g).tolist()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for n in lengths[: steps if dropout == "off" else 3]:
            ids = torch.randint(5, 900, (2, n), generator=g).to(args.device)
            mask = torch.ones_like(ids)
            mask[1, n // 2 :] = 0  # padded to the batch's longest
            compiles = len(flex.compile_events)
            synchronize(args.device)
            start = time.perf_counter()
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
            synchronize(args.device)
            rows.append((n, time.perf_counter() - start, len(flex.compile_events) - compiles, loss.item()))
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
        emit(
            "training",
            attention_dropout=dropout,
            dtype="bf16",
            steps=len(rows),
            lengths=[r[0] for r in rows],
            step_s=[round(r[1], 3) for r in rows],
            compiles_per_step=[r[2] for r in rows],
            losses=[round(r[3], 3) for r in rows],
            peak_gib=peak,
        )


def part_swin(args) -> None:
    from transformers import SwinConfig, SwinForImageClassification

    size = 64 if args.small else 224
    shape = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
    if args.small:
        shape = dict(patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4)
    # no stochastic depth or dropout: both models must draw nothing random to be compared
    config = SwinConfig(
        image_size=size, drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **shape
    )
    torch.manual_seed(0)
    original = SwinForImageClassification(config).to(args.device).train()
    with torch.no_grad():
        for name, p in original.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 0.5)
    patched = hfx.patch(copy.deepcopy(original), "swin")
    pixels = torch.randn(8, 3, size, size, device=args.device)
    labels = torch.randint(0, config.num_labels, (8,), device=args.device)

    def step(model):
        model.zero_grad(set_to_none=True)
        out = model(pixel_values=pixels, labels=labels)
        out.loss.backward()
        return out.logits

    want, got = step(original), step(patched)
    table = "swin.encoder.layers.0.blocks.1.attention.relative_position_bias.relative_position_bias_table"
    grads = dict(original.named_parameters())[table].grad, dict(patched.named_parameters())[table].grad
    emit(
        "swin",
        image=size,
        batch=8,
        logits_max_abs_diff=float((want - got).abs().max()),
        bias_grad_rel_diff=float((grads[0] - grads[1]).norm() / grads[0].norm()),
        hf_step_s=round(timed(lambda: step(original), args.device), 4),
        hfx_step_s=round(timed(lambda: step(patched), args.device), 4),
    )


def part_syncs(args) -> None:
    from torch.overrides import TorchFunctionMode
    from transformers import BertModel

    package = os.path.dirname(hfx.__file__)
    watched = {
        torch.Tensor.item,
        torch.Tensor.__bool__,
        torch.Tensor.tolist,
        torch.Tensor.nonzero,
        torch.nonzero,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.cpu,
        torch.tensor,
        torch.as_tensor,
    }

    class Counter(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, a=(), kw=None):
            if func in watched:
                frame = inspect.currentframe().f_back
                while frame is not None and os.path.basename(frame.f_code.co_filename) in (
                    "overrides.py",
                    "_tensor.py",
                ):
                    frame = frame.f_back
                if frame is not None and frame.f_code.co_filename.startswith(package):
                    self.calls.append(f"{func.__name__} at {frame.f_code.co_filename}:{frame.f_lineno}")
            return func(*a, **(kw or {}))

    torch.manual_seed(0)
    model = hfx.patch(
        BertModel(bert_config(True, 1024)).to(args.device).eval(), "longformer", window=64, global_tokens=[0]
    )
    ids = torch.randint(5, 900, (2, 700), device=args.device)
    mask = torch.ones_like(ids)
    mask[1, 400:] = 0
    policy = (kernels.device_kind, flex.compiled_flex_attention)
    if args.device == "cpu":  # CUDA's control flow, on CPU tensors
        kernels.device_kind = lambda t: "cuda"
        flex.compiled_flex_attention = lambda dynamic: flex.flex_attention
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
            with Counter() as counter:
                model(input_ids=ids, attention_mask=mask)
    finally:
        kernels.device_kind, flex.compiled_flex_attention = policy
    emit("syncs", device=args.device, host_syncs=len(counter.calls), where=counter.calls[:10])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    parser.add_argument("--small", action="store_true", help="tiny models (a smoke run of the script itself)")
    parser.add_argument("--suite-timeout", type=int, default=360, help="seconds for the suite part")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts {unknown[0]!r} is unknown; parts: {', '.join(PARTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available (use --device cpu --small for a smoke run)")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    emit(
        "machine",
        device=device_name,
        torch=torch.__version__,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
    )
    for part in parts:
        start = time.perf_counter()
        try:
            globals()[f"part_{part}"](args)
        except Exception as err:  # one failing part must not hide the others' results
            emit(part, error=f"{type(err).__name__}: {err}"[:2000], seconds=round(time.perf_counter() - start, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
