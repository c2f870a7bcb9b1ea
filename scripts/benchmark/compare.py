"""This checkout's hf_flexattn against another checkout's on the contention section's rows: did a change slow them?

    python -m scripts.benchmark.compare --library /path/to/old/checkout --threads 1
    python -m scripts.benchmark.compare --library OLD --rows text_4096,vit_na --rounds 3 --out DIR

Each (row, checkout, round) runs the row's patched arm in a fresh process alone (contention.py's worker: build the
case, one first call, then ``--calls`` timed calls, their median), one process at a time; the two checkouts take
turns (this one first in even rounds, the other first in odd rounds), so that a slow spell of a shared machine falls
on both alike. The table gives, per row, the median over rounds of each checkout's time and of the per-round ratio
(other / this: above 1 means this checkout is faster) with its range. ``--threads 1`` measures the work each
checkout does with little of the waiting a loaded machine adds to parallel regions. Writes compare.json and
compare.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from .contention import ROOT, ROWS, _json_line, _start, _stop


def run_one(row: str, size: int, calls: int, threads: int | None, library: str | None) -> dict:
    process = _start(row, "patched", size, calls, threads, library=library)
    try:
        _json_line(process)  # the first call is done
        result = _json_line(process)
    finally:
        if process.poll() is None:
            _stop(process)
    return {"time_s": statistics.median(result["times"]), "first_s": result["first_s"], "library": result["library"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmark.compare", description=__doc__)
    parser.add_argument("--library", required=True, help="the other checkout (its hf_flexattn is imported)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"rows of the contention section: {','.join(ROWS)}")
    parser.add_argument("--sizes", default="", help="row=size pairs replacing the rows' sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process (their median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each worker (default: torch's)")
    parser.add_argument("--out", default="outputs/benchmark/compare")
    parser.add_argument("--table-only", action="store_true", help="table --out's compare_records.jsonl (a run stopped)")
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"argument --rows: {unknown}; allowed: {', '.join(ROWS)}")
    sizes = {row: ROWS[row][1] for row in rows}
    for pair in filter(None, args.sizes.split(",")):
        name, size = pair.split("=")
        sizes[name] = int(size)
    other = str(Path(args.library).resolve())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    records = []
    if args.table_only:  # the records of a run stopped before its table; the rows it reached
        lines = (out / "compare_records.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        rows = [row for row in rows if any(r["row"] == row for r in records)]
        sizes |= {r["row"]: r["size"] for r in records}
        load_before = min(r["load_before"] for r in records)
    for row in rows if not args.table_only else ():
        for round_ in range(args.rounds):
            order = (None, other) if round_ % 2 == 0 else (other, None)
            load = os.getloadavg()[0]
            times = {("this" if lib is None else "other"): run_one(row, sizes[row], args.calls, args.threads, lib)
                     for lib in order}  # fmt: skip
            record = dict(row=row, size=sizes[row], round=round_, load_before=load)
            record |= {f"{name}_s": t["time_s"] for name, t in times.items()}
            record |= {f"{name}_library": t["library"] for name, t in times.items()}
            records.append(record)
            with open(out / "compare_records.jsonl", "a") as f:  # kept as measured, should the run be stopped
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
    summary = []
    for row in rows:
        rounds = [r for r in records if r["row"] == row]
        ratios = [r["other_s"] / r["this_s"] for r in rounds]
        summary.append(
            dict(
                row=row,
                size=sizes[row],
                this_s=statistics.median(r["this_s"] for r in rounds),
                other_s=statistics.median(r["other_s"] for r in rounds),
                ratio=statistics.median(ratios),
                ratio_min=min(ratios),
                ratio_max=max(ratios),
                load=[min(r["load_before"] for r in rounds), max(r["load_before"] for r in rounds)],
            )
        )
    command = "python -m scripts.benchmark.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    threads = f"{args.threads} torch thread(s)" if args.threads else "torch's default threads"
    this = records[0]["this_library"] if records else str(ROOT)
    lines = [
        f"`{command}` on {machine}, {threads} (load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after); "
        f"this checkout: {this}, other: {other}; each row's patched arm alone in fresh processes, the checkouts "
        f"taking turns, {args.rounds} round(s) of {args.calls} timed call(s) each (scripts/benchmark/compare.py)"
        + (
            ", tabled from the records of a run stopped early (load: the lowest before a row)."
            if args.table_only
            else "."
        ),
        "",
        "| row | N | this s | other s | other / this (range) | load |",
        "|---|---|---|---|---|---|",
    ]
    for e in summary:
        lines.append(
            f"| {e['row']} | {e['size']:,} | {e['this_s']:.3f} | {e['other_s']:.3f} | {e['ratio']:.2f}x "
            f"({e['ratio_min']:.2f}–{e['ratio_max']:.2f}) | {e['load'][0]:.1f}–{e['load'][1]:.1f} |"
        )
    lines += ["", "Rows: " + "; ".join(f"`{row}` {ROWS[row][0]}" for row in rows)]
    (out / "compare.json").write_text(json.dumps({"records": records, "summary": summary}, indent=2))
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
