"""The mutation job (scripts/mutation.py) points at what exists: every mapped module and test file, and the
equivalent mutants it argues name a mapped module (mutmut itself is an opt-in extra, not needed here)."""

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
