"""The mutation job (scripts/mutation.py) points at what exists: every mapped module and test file, and the
equivalent mutants it argues name a mapped module (mutmut itself is an opt-in extra, not needed here)."""

import json
from pathlib import Path

import pytest

from scripts import mutation

REPO = Path(__file__).resolve().parent.parent


def test_every_mapped_module_and_test_file_exists():
    for module, tests in mutation.TESTS.items():
        assert (REPO / "hf_flexattn" / (module.replace(".", "/") + ".py")).is_file(), module
        for test in tests:
            assert (REPO / test.split("::")[0]).is_file(), (module, test)
    for module, function, _line in mutation.EQUIVALENT:
        assert module in mutation.TESTS, module
        assert function, module


def test_packages_expand_to_their_modules():
    assert mutation.modules_of(["mods"]) == [m for m in mutation.TESTS if m.startswith("mods.")]
    assert mutation.modules_of(["masks.core", "masks"])[0] == "masks.core"
    assert len(set(mutation.modules_of(["masks.core", "masks"]))) == len(mutation.modules_of(["masks"]))
    with pytest.raises(ValueError, match="--packages: 'mask' is not mapped"):
        mutation.modules_of(["mask"])


def test_function_of_mutant_names():
    assert mutation.function_of("hf_flexattn.masks.core.x_build_block_mask__mutmut_12") == "build_block_mask"
    assert mutation.function_of("hf_flexattn.masks.core.xǁBlockGridǁper_block__mutmut_3") == "BlockGrid.per_block"
    assert mutation.function_of("hf_flexattn.masks.core.xǁMaskǁ__init____mutmut_1") == "Mask.__init__"


def test_scratch_folder_is_named_by_the_set_of_modules():
    every = mutation.modules_of(["mods", "masks"])
    assert mutation.workdir_name(every) == mutation.workdir_name(list(reversed(every))) == "masks-mods"
    assert mutation.workdir_name(mutation.modules_of(["masks.core", "mods"])) == "masks.core-mods"


def test_a_mutant_that_only_deletes_is_named_by_the_deleted_line():
    diff = "--- a.py\n+++ a.py\n@@ -1,3 +1,2 @@\n     x = f(\n-        dtype=torch.bool,\n     )"
    assert mutation.mutated_lines(diff) == ["without: dtype=torch.bool,"]
    assert mutation.mutated_lines("--- a.py\n+++ a.py\n-    y = 1\n+    y = 2") == ["y = 2"]


def test_a_whole_run_supersedes_the_earlier_runs_of_its_modules():
    results = {"runs": [dict(modules=["masks.core", "mods.x"]), dict(modules=["masks.core"])], "modules": {}}
    mutation.log_run(results, dict(modules=["masks.core"]), "all")
    assert [run["modules"] for run in results["runs"]] == [["mods.x"], ["masks.core"]]
    mutation.log_run(results, dict(modules=["mods.x"]), "survivors")  # a partial run adds to the runs it completes
    assert [run["modules"] for run in results["runs"]] == [["mods.x"], ["masks.core"], ["mods.x"]]


def test_report_and_seed_from_the_committed_results(tmp_path):
    """The report reads only the results file (no mutmut, no scratch folder): the score counts equivalents out and
    timeouts as killed; a fresh scratch folder gets mutmut's metadata from the same file, and keeps its own."""
    diff = "--- hf_flexattn/masks/batch.py\n+++ hf_flexattn/masks/batch.py\n-    x\n+    dtype=None,"
    name = "hf_flexattn.masks.batch.xǁBatchMaskǁ_with_padding__mutmut_{}"
    statuses = {name.format(1): "killed", name.format(2): "survived", name.format(3): "timeout"}
    statuses |= {name.format(4): "survived", name.format(5): "not checked"}
    saved = dict(
        status_by_key=statuses,
        exit_code_by_key={key: 1 for key in statuses},
        hash_by_function_name={"xǁBatchMaskǁ_with_padding": "abc"},
        diffs={name.format(2): diff, name.format(3): diff, name.format(4): diff.replace("dtype=None,", "y")},
    )
    run = dict(date="d", command="c", commit="0" * 40, dirty=False, minutes=1.0, load="1", machine="m")
    results = {"runs": [run | dict(modules=["masks.batch"])], "modules": {"masks.batch": saved}}
    report = tmp_path / "report.md"
    score = mutation.write_report(report, results, note="a note")
    text = report.read_text()
    assert score == 2 / 3  # killed and timed out, over the 4 run less the argued equivalent
    assert "| hf_flexattn.masks.batch | 5 | 1 | 2 | 1 | 1 | 66.7% |" in text and "- a note" in text
    assert text.count("**not handled** (survived)") == 1 and "### `" + name.format(3) + "`" in text
    mutation.seed_results(tmp_path, ["masks.batch", "masks.core"], results)
    meta = json.loads(mutation.meta_path(tmp_path, "masks.batch").read_text())
    assert meta["exit_code_by_key"] == saved["exit_code_by_key"]
    assert meta["hash_by_function_name"] == saved["hash_by_function_name"]
    assert not mutation.meta_path(tmp_path, "masks.core").exists()
    mutation.meta_path(tmp_path, "masks.batch").write_text("{}")
    mutation.seed_results(tmp_path, ["masks.batch"], results)  # a scratch folder's own results are kept
    assert mutation.meta_path(tmp_path, "masks.batch").read_text() == "{}"


def test_a_packages_own_module_is_named_as_mutmut_names_it():
    """mutmut names an ``__init__``'s mutants by the package; the pattern keeps the package's other modules out."""
    import fnmatch

    pattern = mutation.mutant_pattern("kernels.__init__")
    assert fnmatch.fnmatch("hf_flexattn.kernels.x_choose_path__mutmut_1", pattern)
    assert not fnmatch.fnmatch("hf_flexattn.kernels.tiles.x_plan__mutmut_1", pattern)
    assert fnmatch.fnmatch("hf_flexattn.kernels.tiles.x_plan__mutmut_1", mutation.mutant_pattern("kernels.tiles"))


def test_a_resume_on_a_fresh_scratch_folder_lets_mutmut_find_the_changed_functions(tmp_path, monkeypatch):
    """Seeded from the committed results, every mutant has a result, so a resume would run nothing, and a function
    changed since the last run would keep its old results: until mutmut has mutated the module in this scratch
    folder, a resume is mutmut's own (no names: it runs what it has no result for, the changed functions' mutants)."""
    name = "hf_flexattn.masks.batch.xǁBatchMaskǁ_with_padding__mutmut_{}"
    statuses = {name.format(1): "killed", name.format(2): "survived"}
    monkeypatch.setattr(mutation, "read_results", lambda workdir, modules: {modules[0]: statuses})  # no mutmut here
    mutation.meta_path(tmp_path, "masks.batch").parent.mkdir(parents=True)
    pattern = [mutation.mutant_pattern("masks.batch")]
    assert mutation.mutants_to_run(tmp_path, "masks.batch", "resume") is None
    assert mutation.mutants_to_run(tmp_path, "masks.batch", "survivors") == [name.format(2)]
    mutation.meta_path(tmp_path, "masks.batch").with_suffix("").write_text("# mutated")
    assert mutation.mutants_to_run(tmp_path, "masks.batch", "resume") == []
    assert mutation.mutants_to_run(tmp_path, "masks.batch", "all") == pattern
