"""Operator counts of one forward (torch.profiler): how many ATen calls a patched model makes against what it replaces.

    python -m scripts.benchmark.op_counts                       # MiniLM `longformer` (window 512) at 4,096 tokens
    python -m scripts.benchmark.op_counts --tokens 8192 --train  # a training step (forward + backward)
    python -m scripts.benchmark.op_counts --row vit_na           # a contention row: what it replaces vs patched

Counts do not depend on the machine's load (unlike times): each small operation is a parallel region in which every
torch thread waits for the others, so on a shared CPU a forward's count of them bounds how often it waits for a
descheduled thread. Writes op_counts.json and op_counts.md to --out (and prints the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch

import hf_flexattn as hfx

# the operators that run a parallel region over a tensor (the others, views and metadata, cost no wait)
VIEW_OPS = {
    "aten::as_strided", "aten::view", "aten::transpose", "aten::slice", "aten::select", "aten::unsqueeze",
    "aten::expand", "aten::reshape", "aten::_reshape_alias", "aten::flatten", "aten::permute", "aten::t",
    "aten::detach", "aten::alias", "aten::empty", "aten::empty_strided", "aten::lift_fresh", "aten::resolve_conj",
    "aten::resolve_neg", "aten::_unsafe_view", "aten::squeeze", "aten::split", "aten::chunk", "aten::narrow",
    "aten::unflatten", "aten::view_as", "aten::result_type", "aten::is_nonzero", "aten::item",
    "aten::_local_scalar_dense", "aten::empty_like", "aten::contiguous",
}  # fmt: skip


def count_ops(fn) -> Counter:
    """Top-level and nested ATen calls of ``fn()`` by name (every call the dispatcher records)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        fn()
    return Counter(event.name for event in profiler.events() if event.name.startswith("aten::"))


def text_models(tokens: int, window: int):
    from transformers import BertModel

    from .sections import minilm_path

    models = {}
    for name in ("hf_sdpa", "hfx_longformer"):
        model = BertModel.from_pretrained(minilm_path(), attn_implementation="sdpa", add_pooling_layer=False)
        if name == "hfx_longformer":
            hfx.patch(model, "longformer", window=window, global_tokens=[0])
        hfx.extend_position_embeddings(model, max(tokens, 512))
        models[name] = model.eval()
    return models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.op_counts", description=__doc__)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--train", action="store_true", help="a training step (forward + backward)")
    parser.add_argument("--row", default=None, help="a row of the contention section instead (its inference call)")
    parser.add_argument("--size", type=int, default=None, help="with --row: its size (default: the row's)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="outputs/benchmark")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (1, args.tokens))
    results = {}
    if args.row:
        from .contention import ROWS, build_case

        size = args.size or ROWS[args.row][1]
        calls = {arm: build_case(args.row, arm, size) for arm in ("replaced", "patched")}
    else:
        calls = text_models(args.tokens, args.window)
    for name, model in calls.items():

        def call(model=model):
            if args.row:
                with torch.no_grad():
                    model()
            elif args.train:
                model.zero_grad(set_to_none=True)
                model(input_ids=ids).last_hidden_state.sum().backward()
            else:
                with torch.no_grad():
                    model(input_ids=ids)

        call()  # plans, masks and lazy imports built before the counted call
        counts = count_ops(call)
        results[name] = {
            "total": sum(counts.values()),
            "parallel": sum(c for op, c in counts.items() if op not in VIEW_OPS),
            "ops": dict(counts.most_common()),
        }
    mode = "training step" if args.train else "forward"
    what = (
        f"`{args.row}` ({ROWS[args.row][0]}) at {size:,}"
        if args.row
        else f"MiniLM (6 layers) at {args.tokens:,} tokens"
    )
    lines = [
        f"`python -m scripts.benchmark.op_counts {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(
            " `", "`"
        )
        + f" (hf_flexattn {Path(hfx.__file__).parents[1].name}, load average {os.getloadavg()[0]:.1f})",
        "",
        f"ATen calls in one {mode} of {what}, torch {torch.__version__} "
        f"(profiler counts: independent of the machine's load). `non-view`: calls other than views and metadata.",
        "",
        "| op | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
        "| **all** | " + " | ".join(str(r["total"]) for r in results.values()) + " |",
        "| **non-view** | " + " | ".join(str(r["parallel"]) for r in results.values()) + " |",
    ]
    top = Counter()
    for r in results.values():
        top.update(r["ops"])
    for op, _ in top.most_common(args.top):
        lines.append(f"| {op} | " + " | ".join(str(r["ops"].get(op, 0)) for r in results.values()) + " |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.row}_{size}" if args.row else f"_{args.tokens}" + ("_train" if args.train else "")
    (out / f"op_counts{suffix}.json").write_text(json.dumps(dict(load=os.getloadavg()[0], **results), indent=2))
    (out / f"op_counts{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
