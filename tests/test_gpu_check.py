"""scripts/gpu_check.py's test parts: a suite that runs past its budget still reports what finished, as one JSON line,
and keeps its output."""

import json
import os

import pytest

from scripts import gpu_check

pytestmark = pytest.mark.cpu_only  # runs pytest in a subprocess on CPU


def test_a_suite_past_its_budget_reports_what_finished(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_part.py").write_text(
        "import time\n\n"
        "def test_passes():\n    pass\n\n"
        "def test_fails():\n    assert 1 == 2\n\n"
        "def test_hangs():\n    time.sleep(600)\n\n"
        "def test_never_reached():\n    pass\n"
    )
    log = tmp_path / "logs" / "suite.log"
    fields = gpu_check.run_pytest("suite", [str(tests)], dict(os.environ), timeout=12, log=log)
    assert fields["timed_out"] and fields["returncode"] is None and fields["seconds"] < 60
    assert fields["counts"] == {"passed": 1, "failed": 1}
    assert len(fields["failed"]) == 1 and fields["failed"][0].endswith("test_part.py::test_fails")
    assert fields["last_test"].endswith("test_part.py::test_fails")
    assert "test_part.py::test_hangs" in log.read_text()  # the partial output is kept
    json.dumps(fields)  # one JSON line


def test_a_finished_suite_reports_its_summary(tmp_path):
    (tmp_path / "test_ok.py").write_text("def test_one():\n    pass\n")
    fields = gpu_check.run_pytest("gpu_tests", [str(tmp_path)], dict(os.environ), timeout=120, log=tmp_path / "out.log")
    assert fields["returncode"] == 0 and not fields["timed_out"]
    assert fields["counts"] == {"passed": 1} and "1 passed" in fields["summary"]


def test_the_syncs_cases_reach_every_cuda_path_of_every_family():
    """Part ``syncs`` steps through each family's masked variant (text: globals, padded and not) without dropout, and
    with dropout below and past DENSE_MAX_ENTRIES: the dense path and flex_dropout."""
    from scripts.recipes import compile_graphs as recipes

    families = list(recipes.FAMILY_MODELS)
    cases = gpu_check.sync_cases(families)
    assert {case.family for case in cases} == set(families)
    for family in families:
        text = recipes.FAMILY_MODELS[family][1]
        got = {(case.mode, case.dropout, case.padded) for case in cases if case.family == family}
        paddings = (True, False) if text else (True,)
        assert got == {(mode, dropout, padded) for mode, dropout in gpu_check.SYNC_STEPS for padded in paddings}
    assert {dropout for _, dropout in gpu_check.SYNC_STEPS} == {"off", "short", "long"}
    with_globals = {f for f, v in recipes.family_variants() if v == "longformer"}
    assert with_globals and all(case.variant == "longformer" for case in cases if case.family in with_globals)


def test_the_syncs_part_dry_run_counts_no_read_and_reaches_every_cuda_path(capsys):
    """The CPU dry run of part ``syncs`` (CUDA's policy on CPU tensors, hf_flexattn's value reads counted): the case
    list runs, every generic CUDA path is taken, nothing is read and nothing recompiles while counting."""
    gpu_check.main(["--device", "cpu", "--small", "--parts", "syncs"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (report,) = [line for line in lines if line["part"] == "syncs"]
    assert "error" not in report, report
    assert report["cases"] == len(gpu_check.sync_cases(gpu_check.SYNC_FAMILIES_SMALL)) + 1
    assert report["host_syncs"] == 0 and report["where"] == {}
    assert report["paths_seen"] == sorted(gpu_check.CUDA_PATHS) and report["paths_missing"] == []
    assert report["compiles_while_counting"] == 0
