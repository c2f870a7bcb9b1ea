"""Timing and recording a run: the machine it ran on, the load average during it (a wall time on a shared machine
means little without it), a stopwatch, and the main every study shares."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import torch


def machine_description() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{device}, {platform.machine()}, torch {torch.__version__}"


class LoadMonitor:
    """Samples the 1-minute load average every ``every`` seconds while in use: a run's wall time on a shared machine
    means little without how busy the machine was."""

    def __init__(self, every: float = 15.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            try:
                self.samples.append(os.getloadavg()[0])
            except OSError:
                return
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def describe(self) -> str:
        if not self.samples:
            return "load average unknown"
        mean = sum(self.samples) / len(self.samples)
        return f"load average {mean:.1f} (max {max(self.samples):.1f}) on {os.cpu_count()} cores during the run"


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def study_main(module: str, args, argv, run, publish, summary, *, checkpoints: bool = False) -> int:
    """What the ``main`` of each study (the module ``module``, e.g. ``scripts.studies.perplexity``) does: with
    ``--rewrite-card``, re-publish the saved results; else run the study under a stopwatch and a load monitor, record
    its command (``python -m module …``) and machine, save results.json, publish (report and card) and print
    ``summary(report)``. A ``ValueError`` or missing file ends it with exit status 2 and one line.

    ``checkpoints=True``: ``run(args, checkpoint)`` gets a function that records, saves and publishes a partial
    report the same way (machine load "so far"), so a long study that stops early still leaves its results."""

    out = Path(args.out)
    if args.rewrite_card:
        if not (out / "results.json").exists():
            print(f"{module}: error: --rewrite-card: no {out / 'results.json'}", file=sys.stderr)
            return 2
        publish(args, json.loads((out / "results.json").read_text()))
        return 0
    words = argv if argv is not None else sys.argv[1:]
    command = f"python -m {module} " + " ".join(shlex.quote(a) for a in words)

    def save(report: dict, machine_load: str, seconds: float) -> None:
        report.update(command=command, machine=f"{machine_description()}; {machine_load}", wall_time_s=seconds)
        (out / "results.json").write_text(json.dumps(report, indent=2))
        publish(args, report)

    try:
        with Stopwatch() as clock, LoadMonitor() as load:

            def checkpoint(report: dict) -> None:
                save(report, f"{load.describe()} (so far)", time.perf_counter() - clock.start)

            report = run(args, checkpoint) if checkpoints else run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{module}: error: {err}", file=sys.stderr)
        return 2
    save(report, load.describe(), clock.seconds)
    print(summary(report))
    return 0
