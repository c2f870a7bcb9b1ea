"""Measuring: a case's time as the median of side-by-side rounds after its first call, and its peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass

import torch

from hf_flexattn.kernels.flex import compile_events


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_memory():
    """Collect garbage and return freed memory to the OS (glibc's malloc_trim), so a peak measures one call."""
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
        release_memory()
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


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation that failed (CUDA's allocator, or CPU's under a data-size limit such as --memory-limit-gb), as
    opposed to any other error, which should stop the run."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def _call(fn, device: str) -> float | None:
    """``fn``'s time, or None where an allocation failed (:func:`is_out_of_memory`); other errors propagate."""
    try:
        return _timed(fn, device)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        release_memory()
        return None


OUT_OF_MEMORY = {"out_of_memory": True, "first_s": None, "compiles": None, "peak_mb": None, "time_s": None}


# short cases get more rounds: at least this many seconds of each case (up to MAX_ROUNDS rounds)
MIN_SECONDS_PER_CASE = 2.0
MAX_ROUNDS = 30


def measure_cases(
    cases: dict, device: str, repeats: int, *, min_seconds: float = MIN_SECONDS_PER_CASE
) -> dict[str, dict]:
    """Each case's median time over at least ``repeats`` rounds, side by side: every round runs every case once, in
    an order that rotates from round to round, so that a slow spell of a shared machine falls on all of them alike
    (timing one case after another let such spells flip ratios by ±25% here); cases faster than
    ``min_seconds / repeats`` get more rounds. Before the rounds, each case's first call is timed (a new
    shape's compile included, where one runs) with the FlexAttention compiles hf_flexattn counted in it; the first
    round runs each call under :class:`PeakMemory`. Returns name → time_s, rounds, peak_mb, first_s, compiles; a case
    whose allocation fails (:func:`is_out_of_memory`) is reported as ``OUT_OF_MEMORY`` and dropped from the rounds, the
    others go on."""
    names = list(cases)
    out = {}
    for name in names:
        before = len(compile_events)
        first = _call(cases[name], device)
        if first is None:
            out[name] = dict(OUT_OF_MEMORY)
            continue
        out[name] = {"first_s": first, "compiles": len(compile_events) - before, "times": []}
    running = [name for name in names if "times" in out[name]]
    slowest = max((out[name]["first_s"] for name in running), default=0.0)
    rounds = max(repeats, min(MAX_ROUNDS, int(min_seconds / max(slowest, 1e-6))))
    for round_ in range(rounds):
        shift = round_ % max(len(running), 1)
        for name in running[shift:] + running[:shift]:
            with PeakMemory(device) if round_ == 0 else contextlib.nullcontext() as memory:
                took = _call(cases[name], device)
            if took is None:  # a later call may fail where the first fit (the others' memory around it)
                out[name] = dict(OUT_OF_MEMORY)
                running.remove(name)
                continue
            out[name]["times"].append(took)
            if round_ == 0:
                out[name]["peak_mb"] = memory.bytes / 2**20
    for name in running:
        out[name]["rounds"] = rounds
        out[name]["time_s"] = statistics.median(out[name].pop("times"))
    return out


@dataclass(frozen=True)
class Bench:
    """Where and how every section measures: on ``device`` in ``dtype``, at least ``repeats`` side-by-side rounds and
    at least ``min_seconds`` of each case (0 for a smoke run: ``repeats`` rounds only); see :func:`measure_cases`."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    repeats: int = 3
    min_seconds: float = MIN_SECONDS_PER_CASE

    def measure_cases(self, cases: dict, *, repeats: int | None = None) -> dict[str, dict]:
        repeats = self.repeats if repeats is None else repeats
        return measure_cases(cases, self.device, repeats, min_seconds=self.min_seconds)

    def measure(self, fn, *, repeats: int | None = None) -> dict:
        """One case alone."""
        return self.measure_cases({"case": fn}, repeats=repeats)["case"]
