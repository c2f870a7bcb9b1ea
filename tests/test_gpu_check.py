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
