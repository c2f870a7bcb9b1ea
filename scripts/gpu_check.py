"""Verify hf_flexattn on the first GPU it meets: one command, one JSON line per part (also when a part fails).

    python scripts/gpu_check.py                 # on a CUDA machine: every part, cheap ones first (≤ ~45 min cold)
    python scripts/gpu_check.py --parts gpu_tests,suite   # only the tests on the GPU
    python scripts/gpu_check.py --device cpu --small --parts syncs,swin,inference,training   # a smoke run (CI)

Parts, in the order they run (the cheap ones report first):
  syncs      host syncs in warmed-up steps through every path CUDA's policy can choose, per family (its masked
             variant; text: globals, with and without padding): inference and training without dropout (flex),
             training with attention dropout 0.1 below and past kernels.DENSE_MAX_ENTRIES (the dense path,
             flex_dropout), and one BERT step with dropout at 4,200 tokens. On CUDA counted by
             torch.cuda.set_sync_debug_mode("warn") (no function mode: nothing recompiles; the flex compiles made
             while counting are reported, expect 0), with the paths each case took. Expect 0 syncs and no path
             missing. On CPU the steps run CUDA's policy (the ``kernels.device_kind`` seam, a dense stand-in for the
             compiled kernel) and hf_flexattn's value reads are counted
  graphs     torch.compile(model, fullgraph=True, dynamic=True) per family (its masked variant): graphs made by an
             inference forward, a second length of the same bucket (text; expect 0) and a training step (expect 1
             each), and the seconds each took (compile included); inductor on CUDA, aot_eager under CUDA's policy on CPU
  swin       Swin-T-sized `swin` forward + backward vs HF Swin: output and bias-table gradient differences, time,
             and which algorithm CUDA's policy chose per stage (windows or whole-map flex, with the block counts)
  inference  BERT-base-sized `full` and `longformer` (window 512) at 4,096 tokens in fp32/bf16/fp16:
             time vs HF sdpa, compiles, max difference of `full` from HF sdpa
  training   steps at random lengths 300-4,096 (padded batches of 2), `longformer`, under autocast bf16 with
             attention_dropout='off' (flex) and 'standard' (the dense path), and in bf16 weights: compiles per
             step, step time, peak memory, losses
  gpu_tests  tests/test_gpu.py on the device: compiled flex forward and backward, bf16/fp16 training steps
  suite      the whole test suite on the device (HF_FLEXATTN_TEST_DEVICE); a cold GPU compiles many flex forward
             and backward graphs, so it gets --suite-timeout (default 40 min). Its output streams to --log-dir;
             on a timeout the part still reports what finished (counts, failures, the last test seen)

Optional, run only when --parts names it:
  far_context_finetune  the pre-registered fine-tuned far-context study (docs/far_context_finetune_preregistration.md):
             both arms, 300 steps each, bf16, compiled flex; its decision, far-bucket interval and difficulty check
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import hf_flexattn as hfx
from hf_flexattn import kernels
from hf_flexattn.kernels import flex
from hf_flexattn.variants import swin

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("syncs", "graphs", "swin", "inference", "training", "gpu_tests", "suite")
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


def bert_config(*, small: bool, positions: int):
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


def run_pytest(part: str, pytest_args: list[str], env: dict, timeout: float, log: Path) -> dict:
    """Run pytest (verbose: one line per test) with its output streamed to ``log``; on a timeout stop it and report
    what finished. Returns the part's JSON fields."""
    cmd = [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", *pytest_args]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            returncode, timed_out = proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the session pytest leads: its workers and compile processes too
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            returncode, timed_out = None, True
    text = log.read_text(errors="replace")
    statuses = re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", text, re.M)
    counts = {status.lower(): sum(1 for _, s in statuses if s == status) for status in {s for _, s in statuses}}
    failed = sorted({test for test, status in statuses if status in ("FAILED", "ERROR")})
    lines = text.strip().splitlines()
    return dict(
        returncode=returncode,
        timed_out=timed_out,
        seconds=round(time.perf_counter() - start, 1),
        counts=counts,
        failed=failed[:30],
        last_test=statuses[-1][0] if statuses else None,
        summary=lines[-1] if lines and not timed_out else None,
        log=str(log),
    )


def part_gpu_tests(args) -> None:
    env = {**os.environ, "HF_FLEXATTN_TEST_DEVICE": args.device}
    emit("gpu_tests", **run_pytest("gpu_tests", ["tests/test_gpu.py"], env, 900, args.log_dir / "gpu_tests.log"))


def part_suite(args) -> None:
    env = {**os.environ, "HF_FLEXATTN_TEST_DEVICE": args.device}
    fields = run_pytest("suite", ["-m", "not slow", "tests"], env, args.suite_timeout, args.log_dir / "suite.log")
    emit("suite", **fields)


def part_inference(args) -> None:
    from transformers import BertModel

    n = 512 if args.small else 4096
    torch.manual_seed(0)
    config = bert_config(small=args.small, positions=n)
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


# (weights, autocast dtype, attention_dropout, steps): fp32 weights under autocast (the common fine-tuning set-up) with
# and without attention dropout, and bf16 weights
TRAINING_MODES = (
    ("fp32", torch.bfloat16, "standard", 8),
    ("fp32", torch.bfloat16, "off", 20),
    ("bf16", None, "off", 8),
)


def part_training(args) -> None:
    from transformers import BertForMaskedLM

    max_n = 512 if args.small else 4096
    for weights, autocast, dropout, steps in TRAINING_MODES:
        steps = 3 if args.small else steps
        torch.manual_seed(0)
        model = BertForMaskedLM(bert_config(small=args.small, positions=max_n)).to(args.device, DTYPES[weights]).train()
        hfx.patch(model, "longformer", window=64 if args.small else 512, global_tokens=[0], attention_dropout=dropout)
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(300 if not args.small else 100, max_n + 1, (steps,), generator=g).tolist()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for n in lengths:
            ids = torch.randint(5, 900, (2, n), generator=g).to(args.device)
            mask = torch.ones_like(ids)
            mask[1, n // 2 :] = 0  # padded to the batch's longest
            compiles = len(flex.compile_events)
            synchronize(args.device)
            start = time.perf_counter()
            with torch.autocast(args.device, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
            synchronize(args.device)
            rows.append((n, time.perf_counter() - start, len(flex.compile_events) - compiles, loss.item()))
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
        emit(
            "training",
            weights=weights,
            autocast=None if autocast is None else str(autocast),
            attention_dropout=dropout,
            steps=len(rows),
            lengths=[r[0] for r in rows],
            step_s=[round(r[1], 3) for r in rows],
            compiles_per_step=[r[2] for r in rows],
            losses=[round(r[3], 3) for r in rows],
            finite=all(map(math.isfinite, (r[3] for r in rows))),
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
    window = config.window_size
    stages = []
    for stage in range(len(config.depths)):
        side = size // 4 // 2**stage if not args.small else size // 2 // 2**stage
        stats = swin.block_statistics((side, side), min(window, side), window // 2 if side > window else 0)
        stages.append(
            dict(
                map=side,
                visited_blocks=f"{stats.visited_blocks}/{stats.total_blocks}",
                flex_use=round(stats.flex_use, 3),
                windows_chosen=swin.windows_pay((side, side), min(window, side), window // 2 if side > window else 0),
            )
        )
    # the step with CUDA's choice, then with each algorithm forced (the measurement behind the choice)
    times = {"hf_step_s": round(timed(lambda: step(original), args.device), 4)}
    choice = swin.windows_pay
    try:
        for name, forced in (("policy", None), ("windows", True), ("flex", False)):
            swin.windows_pay = choice if forced is None else (lambda *a, f=forced: f)
            patched.zero_grad(set_to_none=True)
            times[f"hfx_{name}_step_s"] = round(timed(lambda: step(patched), args.device), 4)
    finally:
        swin.windows_pay = choice
    emit(
        "swin",
        image=size,
        batch=8,
        logits_max_abs_diff=float((want - got).detach().abs().max()),
        bias_grad_rel_diff=float((grads[0] - grads[1]).norm() / grads[0].norm()),
        stages=stages,
        **times,
    )


# the generic paths CUDA's policy can choose (kernels.choose_path); Swin's window algorithm is SDPA outside it
CUDA_PATHS = ("flex", "dense", "flex_dropout")
SYNC_FAMILIES_SMALL = ("bert", "vit", "swin")  # text with globals, the 2D neighborhood, Swin's blocks
# (mode, attention dropout) per family: flex, flex with its backward, the dense path, flex_dropout
SYNC_STEPS = (("inference", "off"), ("training", "off"), ("training", "short"), ("training", "long"))


@dataclass(frozen=True)
class SyncCase:
    """One warmed-up step whose host syncs part ``syncs`` counts: a family's masked variant, inference or a training
    step, a padded batch or not (text), attention dropout ``"off"``, ``"short"`` (the dense SDPA path) or ``"long"``
    (past ``kernels.DENSE_MAX_ENTRIES``: flex with a hashed keep mask; the limit is lowered to reach it on the tiny
    models, the path's code being the same at any length)."""

    family: str
    variant: str
    mode: str
    padded: bool
    dropout: str

    @property
    def name(self) -> str:
        padding = "padded" if self.padded else "unpadded"
        return f"{self.family}/{self.variant} {self.mode} {padding} dropout={self.dropout}"


def sync_cases(families) -> list[SyncCase]:
    """Every CUDA path per family: inference and a training step without dropout (flex), training steps with short
    and long dropout (dense, flex_dropout), each with and without padding where the family reads text (padding is a
    per-token table in the mask; globals come with the text families' ``longformer`` variant)."""
    from scripts.recipes import compile_graphs as recipes

    cases = []
    for family in families:
        variant = recipes.representative_variant(family)
        text = recipes.FAMILY_MODELS[family][1]
        for padded in (True, False) if text else (True,):
            for mode, dropout in (
                ("inference", "off"),
                ("training", "off"),
                ("training", "short"),
                ("training", "long"),
            ):
                cases.append(SyncCase(family, variant, mode, padded, dropout))
    return cases


@contextlib.contextmanager
def long_dropout(dropout: str):
    """``kernels.DENSE_MAX_ENTRIES`` lowered to 0 for ``"long"`` dropout: every dropout call takes flex_dropout."""
    limit = kernels.DENSE_MAX_ENTRIES
    if dropout == "long":
        kernels.DENSE_MAX_ENTRIES = 0
    try:
        yield
    finally:
        kernels.DENSE_MAX_ENTRIES = limit


@contextlib.contextmanager
def recorded_paths():
    """The generic paths ``kernels.choose_path`` picks meanwhile (a list filled as calls choose)."""
    choose, paths = kernels.choose_path, []

    def recording(*args):
        paths.append(choose(*args))
        return paths[-1]

    kernels.choose_path = recording
    try:
        yield paths
    finally:
        kernels.choose_path = choose


def measure_syncs(cases: list[SyncCase], device: str, syncs_of) -> list[dict]:
    """Per case: the paths its warm-up step took (compiles, masks cached), then the syncs ``syncs_of`` counts in the
    same step run again and the flex compiles that step made (0 expected: nothing recompiles while syncs are
    counted)."""
    from scripts.recipes import compile_graphs as recipes

    models, rows = {}, []
    for case in cases:
        key = (case.family, case.variant, case.dropout != "off")
        if key not in models:
            models[key] = recipes.build_patched(case.family, case.variant, case.dropout != "off", device)
        run = functools.partial(
            recipes.run_scenario, models[key], case.family, recipes.Scenario(case.mode, padded=case.padded), device
        )
        with long_dropout(case.dropout):
            with recorded_paths() as paths:
                run()
            synchronize(device)
            compiles = len(flex.compile_events)
            calls = syncs_of(run)
            rows.append(
                dict(
                    case=case.name,
                    paths=sorted(set(paths)),
                    syncs=calls,
                    compiles=len(flex.compile_events) - compiles,
                )
            )
    return rows


def part_syncs(args) -> None:
    import warnings

    from torch.overrides import TorchFunctionMode

    from scripts.recipes import compile_graphs as recipes

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

    class ValueReads(TorchFunctionMode):
        """CPU: hf_flexattn's own reads of tensor values (each a host sync on CUDA)."""

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

    def syncs_of(run) -> list[str]:
        """The syncs ``run()`` makes: on CUDA torch's own sync debug mode (every sync, whoever makes it; no function
        mode, which would make compiled flex recompile), on CPU hf_flexattn's value reads."""
        if args.device != "cuda":
            with ValueReads() as reads:
                run()
            return reads.calls
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]

    families = list(SYNC_FAMILIES_SMALL) if args.small else list(recipes.FAMILY_MODELS)
    policy = recipes.cuda_policy_on_cpu() if args.device == "cpu" else contextlib.nullcontext()
    with policy:
        rows = measure_syncs(sync_cases(families), args.device, syncs_of)
        # and once at a real length past DENSE_MAX_ENTRIES (on CPU a short one with the limit lowered: the same path)
        limit = kernels.DENSE_MAX_ENTRIES
        if args.device == "cpu":
            kernels.DENSE_MAX_ENTRIES = 32 * 32
        try:
            n = 64 if args.device == "cpu" else 4200
            torch.manual_seed(0)
            model = hfx.patch(
                _dropout_bert(args.device, n), "longformer", window=16 if args.small else 512, global_tokens=[0]
            )
            ids = torch.randint(5, 900, (2, n), device=args.device)
            mask = torch.ones_like(ids)
            mask[1, n // 2 :] = 0
            with recorded_paths() as paths:
                step(model, "training", ids, mask)
            synchronize(args.device)
            compiles = len(flex.compile_events)
            calls = syncs_of(lambda: step(model, "training", ids, mask))
            rows.append(
                dict(
                    case=f"bert/longformer training padded dropout=long tokens={n}",
                    paths=sorted(set(paths)),
                    syncs=calls,
                    compiles=len(flex.compile_events) - compiles,
                )
            )
        finally:
            kernels.DENSE_MAX_ENTRIES = limit
    seen = sorted({path for row in rows for path in row["paths"]})
    emit(
        "syncs",
        device=args.device,
        families=len(families),
        cases=len(rows),
        host_syncs=sum(len(row["syncs"]) for row in rows),
        compiles_while_counting=sum(row["compiles"] for row in rows),
        paths_seen=seen,
        paths_missing=sorted(set(CUDA_PATHS) - set(seen)),
        where={row["case"]: row["syncs"][:5] for row in rows if row["syncs"]},
    )


def _dropout_bert(device: str, positions: int):
    """A small BERT with attention dropout 0.1 and ``positions`` positions."""
    from transformers import BertModel

    config = bert_config(small=True, positions=positions)
    config.attention_probs_dropout_prob = 0.1
    return BertModel(config).to(device)


def part_graphs(args) -> None:
    from scripts.recipes import compile_graphs as cases

    backend = "inductor" if args.device == "cuda" else "aot_eager"
    families = ["bert", "vit"] if args.small else list(cases.FAMILY_MODELS)
    policy = cases.cuda_policy_on_cpu() if args.device == "cpu" else contextlib.nullcontext()
    part_start = time.perf_counter()
    with policy:
        for i, family in enumerate(families):
            if time.perf_counter() - part_start > args.graphs_budget:  # report what finished, name what did not
                emit("graphs", skipped=families[i:], reason=f"past --graphs-budget={args.graphs_budget}s")
                break
            variant = cases.representative_variant(family)
            text = cases.FAMILY_MODELS[family][1]
            scenarios = [cases.Scenario("inference", padded=True), cases.Scenario("training", padded=True)]
            if text:
                scenarios.insert(1, cases.Scenario("inference", padded=True, length=cases.TEXT_LENGTHS[1]))
            start = time.perf_counter()
            try:
                rows = cases.count_graphs(family, variant, True, scenarios, backend, args.device)
            except Exception as err:  # one family failing must not hide the others
                emit("graphs", family=family, variant=variant, error=f"{type(err).__name__}: {err}"[:1000])
                continue
            emit(
                "graphs",
                family=family,
                variant=variant,
                backend=backend,
                scenarios=[f"{r['scenario'].mode} len={r['scenario'].length}" for r in rows],
                graphs=[r["graphs"] for r in rows],
                expected=[0 if r["scenario"].length != cases.TEXT_LENGTHS[0] else 1 for r in rows],
                seconds=[round(r["seconds"], 2) for r in rows],
                compile_s=round(time.perf_counter() - start, 1),
            )


def step(model, mode: str, ids, mask) -> None:
    """One inference forward, or one training step's forward and backward."""
    if mode == "inference":
        with torch.no_grad():
            model.eval()(input_ids=ids, attention_mask=mask)
    else:
        model.train()(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()


OPTIONAL_PARTS = ("far_context_finetune",)  # run only when --parts names them


def part_far_context_finetune(args) -> None:
    """The pre-registered fine-tuned far-context study (docs/far_context_finetune_preregistration.md), one command,
    bf16 and compiled flex on CUDA; with --small a few steps on a few documents (a smoke run of the command)."""
    out = args.log_dir / "far_context_finetune"
    command = [sys.executable, "-m", "scripts.studies.far_context_finetune", "--device", args.device, "--out", str(out)]
    if args.small:
        command += ["--max-docs", "10", "--doc-tokens", "768", "--steps", "4", "--docs-per-step", "2"]
    else:
        command += ["--model-card", str(ROOT / "model_cards" / "minilm-far-context-finetune-4080.md")]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        emit("far_context_finetune", error=done.stderr[-2000:], seconds=round(time.perf_counter() - start, 1))
        return
    report = json.loads((out / "results.json").read_text())
    far = report["contrast"]["far/pairwise"]
    emit(
        "far_context_finetune",
        decision=report["decision"],
        far_diff=far["diff"],
        far_ci95=far["ci95"],
        windowed_planted_gap=report["windowed_planted_gap"],
        seconds=round(time.perf_counter() - start, 1),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, of: {', '.join(PARTS)}; optional (named only): {', '.join(OPTIONAL_PARTS)}",
    )
    parser.add_argument("--small", action="store_true", help="tiny models (a smoke run of the script itself)")
    parser.add_argument(
        "--suite-timeout", type=int, default=2400, help="seconds for the suite part (a cold GPU compiles a lot)"
    )
    parser.add_argument(
        "--graphs-budget", type=int, default=1200, help="seconds for the graphs part (a cold compile per family)"
    )
    parser.add_argument("--log-dir", type=Path, default=ROOT / "gpu_check_logs", help="where the tests' output goes")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS) - set(OPTIONAL_PARTS))
    if unknown:
        parser.error(f"--parts {unknown[0]!r} is unknown; parts: {', '.join(PARTS + OPTIONAL_PARTS)}")
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
        finally:
            if args.device == "cuda":
                torch.cuda.empty_cache()  # the next part starts with the memory free
    return 0


if __name__ == "__main__":
    sys.exit(main())
