"""Two processes with Accelerate (launched by torchrun: `accelerate launch` on CPU runs one process unless MPI is
set up): both really run, their gradients are averaged (the ranks end equal), and the result equals one process on
the whole batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent / "distributed" / "train_two_steps.py"


def _launch(processes: int, out: Path) -> None:
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPT),
        str(out),
    ]
    if processes == 1:
        cmd = [sys.executable, str(SCRIPT), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.cpu_only
def test_two_processes_synchronise_and_match_one(tmp_path):
    _launch(2, tmp_path / "two")
    _launch(1, tmp_path / "one")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    single = torch.load(tmp_path / "one" / "rank0.pt")
    assert [r["world"] for r in ranks] == [2, 2] and single["world"] == 1
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    for key, want in single["weights"].items():
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key]), key  # gradients were all-reduced
        # each half has 36 labelled tokens, so the mean of the halves' losses is the whole batch's
        assert (ranks[0]["weights"][key] - want).abs().max() <= 1e-5, key
